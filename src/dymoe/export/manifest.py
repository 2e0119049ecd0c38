"""``dymoe_export.json``: what an export folder holds (run, method, task K, adapter kind, backbone)."""

from __future__ import annotations

from pathlib import Path

MANIFEST = "dymoe_export.json"


def manifest(trained, fmt: str, kind: str) -> dict:
    """What an export holds: run, method, task K, the kind of adapter, the backbone it applies to."""
    import dymoe

    return {
        "format": f"dymoe-export/{fmt}",
        "run_dir": str(Path(trained.dir.root).resolve()),
        "method": trained.method.name,
        "adapter_kind": kind,
        "after_task": trained.after_task,
        "task": trained.task,
        "tasks": trained.tasks[: trained.after_task],
        "backbone": str(trained.backbone),
        "dymoe_version": dymoe.__version__,
    }
