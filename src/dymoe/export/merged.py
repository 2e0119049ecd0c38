"""``--format merged``: the full model in one folder.

- plain LoRA (:func:`dymoe.export.lora.plain_lora_kind` = ``"lora"``): the folded LoRA is merged into the base
  weights (``W ← W + s · B A``) and the model and processor are written with ``save_pretrained``: a plain
  transformers model (``AutoModelForImageTextToText.from_pretrained`` or the family's class loads it);
- a routed mixture: the experts cannot be merged (their weights depend on the token), so they stay dymoe modules:
  ``model/`` is the backbone (``save_pretrained``), ``dymoe/`` a minimal run directory (``config.yaml``,
  ``env.json``, the checkpoints of tasks 1..K, the last with its method state); :func:`load_merged` rebuilds it with the
  method's inference routing (a :class:`~dymoe.runner.trained.TrainedRun`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dymoe.errors import DymoeError

MODEL_DIR = "model"
DYMOE_DIR = "dymoe"


def write_merged(trained, out: Path, *, kind: str) -> None:
    from dymoe.export.lora import merge_into_base, write_json
    from dymoe.export.manifest import MANIFEST, manifest
    from dymoe.models.llava import load_backbone

    if kind == "lora":
        merge_into_base(trained.model, trained.adapter)
        trained.model.save_pretrained(out)
        trained.processor.save_pretrained(out)
    else:
        # a clean copy of the backbone (the trained model's linears are wrapped)
        base, processor = load_backbone(trained.backbone, dtype=trained.model.dtype)
        base.save_pretrained(out / MODEL_DIR)
        processor.save_pretrained(out / MODEL_DIR)
        run = out / DYMOE_DIR
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy2(trained.dir.config, run / "config.yaml")
        env = json.loads(trained.dir.env.read_text())
        write_json(run / "env.json", {"tasks": env["tasks"][: trained.after_task]})
        for k, name in enumerate(trained.tasks[: trained.after_task], start=1):  # the runner's layout: tasks 1..K
            ckpt = trained.dir.checkpoint(k, name)
            shutil.copytree(ckpt, run / "checkpoints" / ckpt.name)
    write_json(out / MANIFEST, manifest(trained, "merged", kind))


def load_merged(folder: str | Path, *, device: str | None = None):
    """A routed-mixture export of ``--format merged`` loaded for inference (a :class:`TrainedRun`); a plain-LoRA
    export is a transformers model: load it with transformers."""
    from dymoe.runner.trained import TrainedRun

    folder = Path(folder)
    if not (folder / DYMOE_DIR / "config.yaml").is_file():
        raise DymoeError(f"{folder}: not a dymoe merged export with experts ({DYMOE_DIR}/config.yaml is missing); a "
                         "plain-LoRA export is a transformers model folder")
    return TrainedRun(folder / DYMOE_DIR, device=device, backbone=folder / MODEL_DIR)
