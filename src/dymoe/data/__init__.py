"""Data: benchmark definitions (:mod:`.tasks`), CoIN files (:mod:`.coin`), images (:mod:`.images`), instruction
templates (:mod:`.templates`), collation through the backbone's processor (:mod:`.collate`) and ``verify-data``
(:mod:`.verify`)."""
