"""The cache root: where built backbones, the demo base and generated mini-CoIN live.

``$DYMOE_CACHE`` or ``~/.cache/dymoe``. Everything that builds into the cache (:mod:`dymoe.runner.resources`,
:mod:`dymoe.demo.base`) asks this module for the root, so neither needs the other.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root (``$DYMOE_CACHE`` or ``~/.cache/dymoe``), created if needed."""
    root = Path(os.environ.get("DYMOE_CACHE") or Path.home() / ".cache" / "dymoe")
    root.mkdir(parents=True, exist_ok=True)
    return root
