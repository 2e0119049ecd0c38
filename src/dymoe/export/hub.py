"""``--format hub``: a folder ready for ``huggingface_hub.upload_folder``, and ``--push REPO``.

The folder holds the adapter (a PEFT LoRA at the top level when the run's adapter is one, else the dymoe
checkpoint after task K in ``dymoe_adapter/``: safetensors + JSON either way), the run's result files
(``protocol.json``, ``matrix.json``, ``metrics.json``, ``format_forgetting.json``, ``config.yaml``, ``env.json``,
``report.md`` and its plots) and ``README.md``: a model card with the Hub's YAML header
(``huggingface_hub.ModelCardData``: library, tags, base model when the backbone is a Hub id) and the accuracy matrix,
the metrics, the protocol and how to load the adapter.

Nothing is uploaded unless ``--push REPO`` is given; offline (dymoe's default, ``HF_HUB_OFFLINE=1``) it stops with
a message saying that pushing needs a network and where the folder is.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dymoe.errors import OutputError

RESULT_FILES = ("protocol.json", "matrix.json", "metrics.json", "format_forgetting.json", "config.yaml", "env.json",
                "report.md")
ADAPTER_DIR = "dymoe_adapter"


def write_hub(trained, out: Path, *, kind: str) -> None:
    from dymoe.export.lora import write_json, write_peft
    from dymoe.export.manifest import MANIFEST, manifest

    if kind == "lora":
        write_peft(trained.adapter, out, base_model=_hub_id(trained.cfg.backbone.path))
    else:
        shutil.copytree(trained.dir.checkpoint(trained.after_task, trained.task), out / ADAPTER_DIR)
    root = Path(trained.dir.root)
    for name in RESULT_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, out / name)
    if (root / "plots").is_dir():
        shutil.copytree(root / "plots", out / "plots")
    write_json(out / MANIFEST, manifest(trained, "hub", kind))
    (out / "README.md").write_text(model_card(trained, kind, root))


def _hub_id(path: str) -> str | None:
    """The backbone as a Hub id (``org/name`` that is no local folder), else None."""
    if ":" in path or Path(path).exists() or path.count("/") != 1 or path.startswith((".", "/")):
        return None
    return path


def model_card(trained, kind: str, root: Path) -> str:
    """``README.md`` in the Hub's format (YAML header + Markdown)."""
    from huggingface_hub import ModelCardData

    from dymoe.runner.protocol import card_summary, read_card

    method, k = trained.method.name, trained.after_task
    base = _hub_id(trained.cfg.backbone.path)
    data = ModelCardData(
        library_name="peft" if kind == "lora" else "dymoe",
        base_model=base,
        tags=["dymoe", "continual-learning", "lora" if kind == "lora" else "mixture-of-lora-experts", method],
    )
    lines = [f"# {trained.cfg.display_label} after task {k} ({trained.task})", "",
             f"Trained with dymoe, method `{method}` on the task sequence "
             f"{', '.join(trained.tasks)}; this adapter is the model after task {k}.", ""]
    matrix = _read(root / "matrix.json")
    if matrix:
        tasks, rows = matrix["tasks"], matrix["accuracy"]
        lines += ["## Accuracy matrix (%)", "", "Row *j*: after training task *j*; column *i*: evaluated task.", "",
                  "| after \\ on | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        for j, row in enumerate(rows):
            lines.append(f"| {tasks[j]} | " + " | ".join(f"{v:.2f}" for v in row) + " |" + " |" * (len(tasks) - len(row)))
        lines.append("")
    metrics = _read(root / "metrics.json")
    if metrics:
        keys = [m for m in ("MFT", "MFN", "MAA", "BWT") if metrics.get(m) is not None]
        lines += ["## Metrics", "", "| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys),
                  "| " + " | ".join(f"{metrics[m]:.2f}" for m in keys) + " |", ""]
    card = read_card(root)
    if card:
        lines += card_summary(card)
    lines += ["## Use", ""]
    if kind == "lora":
        lines += ["A standard PEFT LoRA (the sum of the run's LoRAs, one LoRA of the summed rank):", "", "```python",
                  "from peft import PeftModel", "model = PeftModel.from_pretrained(base_model, \"<this repo>\")",
                  "```", "", "LoRA servers (vLLM `--enable-lora`) load it as any PEFT adapter."]
    else:
        lines += [f"A token-routed mixture of LoRA experts ({method}): no LoRA server runs it. The dymoe checkpoint "
                  f"is in `{ADAPTER_DIR}/`; `config.yaml` is the run's config. Load it with dymoe "
                  "(`dymoe export RUN --format merged` gives a self-contained folder, "
                  "`dymoe.export.merged.load_merged`)."]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def push(folder: str | Path, repo: str, *, private: bool = False) -> str:
    """Upload ``folder`` to the Hub model repository ``repo`` (created if missing); returns the commit URL.

    Raises:
        OutputError: offline (``HF_HUB_OFFLINE`` set, dymoe's default) or the upload failed; the message says where
            the folder is, so it can be uploaded later.
    """
    later = (f"The folder is ready at {folder}: upload it later with `huggingface-cli upload {repo} {folder}` or "
             "`huggingface_hub.upload_folder`.")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "no", ""):
        raise OutputError("--push needs a network, and dymoe runs offline (HF_HUB_OFFLINE=1, the default); run "
                          f"with HF_HUB_OFFLINE=0 and a Hub token (huggingface-cli login) to upload. {later}")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                                 commit_message="dymoe export")
    except Exception as err:  # noqa: BLE001 - network / auth errors of the hub client, reported with the way out
        raise OutputError(f"uploading to {repo} failed ({type(err).__name__}: {err}). {later}") from None
    return str(getattr(info, "commit_url", info))


__all__ = ["RESULT_FILES", "model_card", "push", "write_hub"]
