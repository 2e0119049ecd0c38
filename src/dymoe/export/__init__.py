"""Adapters that leave dymoe: ``dymoe export RUN_DIR --after-task K --format {peft,merged,hub}``.

- ``peft``: for methods whose adapter is a plain LoRA once folded (LoRA, EWC, LwF, IncLoRA, O-LoRA: the sum of
  their LoRAs is one LoRA of the summed rank, :mod:`dymoe.export.lora`), a standard PEFT adapter folder that
  ``peft.PeftModel.from_pretrained`` loads and LoRA servers (vLLM multi-LoRA) accept. Token-routed mixtures
  (MoELoRA, IncMoELoRA, LLaVA-DyMoE) get a clear message instead: no LoRA server can run them. Per-task adapters
  with a ``routing.json`` for task-routed methods wait for those methods (CMoE, D-MoLE).
- ``merged``: the full model in one folder. A plain LoRA is merged into the base weights (a plain transformers
  model, no dymoe needed to load it); a routed mixture keeps its experts as dymoe modules: ``model/`` (the
  backbone, ``save_pretrained``) + ``dymoe/`` (the run's config, task list and the checkpoint after task K),
  loaded by :func:`dymoe.export.merged.load_merged`.
- ``hub``: a folder for ``huggingface_hub.upload_folder``: the adapter (PEFT when it is a LoRA, else the dymoe
  checkpoint, safetensors either way), ``protocol.json``, ``matrix.json``, ``metrics.json`` and the other result
  files, and a model card (``README.md``) with the Hub's YAML header and the accuracy table
  (:mod:`dymoe.export.hub`). ``--push REPO`` uploads it when online; nothing is uploaded by default.

Every output folder is written to a temporary sibling and renamed into place (nothing half-written).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dymoe.errors import DymoeError, OutputError
from dymoe.export.manifest import MANIFEST, manifest
from dymoe.io import make_temp_dir

FORMATS = ("peft", "merged", "hub")

__all__ = ["FORMATS", "MANIFEST", "export_run"]


def export_run(run_dir: str | os.PathLike, output: str | os.PathLike, *, fmt: str = "peft",
               after_task: int | None = None, overwrite: bool = False) -> Path:
    """Export the model of ``run_dir`` after task ``after_task`` (default: the last finished) to ``output``.

    Raises:
        NotALoRA: ``fmt="peft"`` for a routed mixture (the message says why and what to use instead).
        DymoeError: not a run directory, K out of range, an unknown format, ``output`` exists (without
            ``overwrite``) or lies inside the run directory.
    """
    if fmt not in FORMATS:
        raise DymoeError(f"--format {fmt!r}: expected one of {list(FORMATS)}")
    run_dir, output = Path(run_dir), Path(output)
    if output.resolve().is_relative_to(run_dir.resolve()):
        raise DymoeError(f"--output {output} is inside the run directory {run_dir}; give a folder outside it")
    if output.exists() and not overwrite:
        raise OutputError(f"{output} already exists; remove it or pass --overwrite")
    from dymoe.runner.trained import TrainedRun

    trained = TrainedRun(run_dir, after_task=after_task, device="cpu")
    from dymoe.export.lora import explain_not_lora, plain_lora_kind

    kind = plain_lora_kind(trained.method, trained.adapter)
    if fmt == "peft" and kind != "lora":
        from dymoe.export.lora import NotALoRA

        raise NotALoRA(explain_not_lora(kind, trained.method.name))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(output.parent, output.name)
    try:
        if fmt == "peft":
            _peft(trained, tmp)
        elif fmt == "merged":
            from dymoe.export.merged import write_merged

            write_merged(trained, tmp, kind=kind)
        else:
            from dymoe.export.hub import write_hub

            write_hub(trained, tmp, kind=kind)
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _peft(trained, out: Path) -> None:
    from dymoe.export.lora import write_json, write_peft

    write_peft(trained.adapter, out, base_model=str(trained.backbone))
    write_json(out / MANIFEST, manifest(trained, "peft", "lora"))
