"""User-facing errors.

Anything a user can cause (bad config, bad data file, wrong checkpoint) raises :class:`DymoeError` with a message
that names the file, row or key and what was expected. The CLI prints the message (no traceback) and exits with
status 2.
"""


class DymoeError(Exception):
    """An error caused by user input; the message is shown as is, without a traceback."""


class ConfigError(DymoeError):
    """Invalid configuration: unknown key, wrong type or out-of-range value."""


class DataError(DymoeError):
    """Invalid data file: malformed JSON, missing field, unreadable or escaping image path."""


class CheckpointError(DymoeError):
    """Adapter checkpoint that does not match the model (missing key, wrong shape, unknown format)."""


class OutputError(DymoeError):
    """An output file cannot be written (full disk, read-only file system, no permission)."""


class RunLockedError(DymoeError):
    """Another process is using the run directory."""
