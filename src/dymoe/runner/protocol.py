"""The protocol card of a run (``protocol.json``, shown at the top of ``report.md``) and protocol comparison.

A card says *under what protocol* a run's numbers were made, so that two runs are only put in one table when they
were made the same way (the field's recurring complaint: instruction-tuned vs untuned bases, 10 % subsets, other
ranks compared side by side). Sections:

- ``backbone``: the config value, the resolved folder, ``config_sha256`` (sha256 of ``config.json``), ``weights``
  (``{file: sha256}`` of every weight file: a manifest), ``weights_sha256`` (one digest of that manifest) and
  ``instruction_tuned`` (``false`` for folders built by ``dymoe build-base``, whose ``dymoe_base.json`` stamps it;
  ``null`` = not known);
- ``benchmark``: name, instruction type, task order, and per task its training and evaluation files (sha256 and
  size in bytes), the number of test questions evaluated, and the subsampling (``max_train_samples``,
  ``max_eval_samples``, replay);
- ``adapter``: the configured budget (experts per group, expert rank, K, alpha, target names), the wrapped modules
  (count and names) and, as the run proceeds, the parameters trainable per task;
- ``recipe``: global batch, per-device batch, lr, epochs, schedule, warmup, max length, backbone dtype, precision;
- ``evaluation``: scorer variant, per-task scorers, generation length;
- ``hardware`` / ``versions`` / ``dymoe_commit``: informative, never part of the comparison.

:func:`protocol_key` flattens the fields that define the protocol (what the method does not choose) into
``{dotted name: value}``; ``dymoe compare`` groups runs by it and refuses to mix groups (``--allow-mixed``).
Hashes of large weight files are cached by (path, size, mtime) in ``$DYMOE_CACHE/hashes.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from dymoe.errors import DataError
from dymoe.io import read_json

PROTOCOL_FILE = "protocol.json"
FORMAT = "dymoe-protocol/1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")

# the fields that define a protocol (dotted paths into the card); the method's own choices are not among them
KEY_FIELDS: tuple[str, ...] = (
    "backbone.config_sha256", "backbone.weights_sha256", "backbone.instruction_tuned",
    "benchmark.name", "benchmark.instruction_type", "benchmark.order", "benchmark.files_sha256",
    "benchmark.max_train_samples", "benchmark.max_eval_samples", "benchmark.eval_questions",
    "adapter.experts_per_group", "adapter.expert_rank", "adapter.top_k", "adapter.targets", "adapter.sites",
    "recipe.global_batch_size", "recipe.lr", "recipe.epochs", "recipe.schedule", "recipe.warmup_ratio",
    "recipe.max_length", "recipe.dtype", "recipe.mixed_precision",
    "evaluation.scorer_variant", "evaluation.scorers", "evaluation.max_new_tokens",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike, *, cache: bool = True) -> str:
    """sha256 of a file; with ``cache`` the digest is reused while the file's path, size and mtime are unchanged."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    store = _cache_file() if cache and st.st_size > (1 << 20) else None
    table = _read_cache(store) if store else {}
    if key in table:
        return table[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if store is not None:
        table[key] = digest
        try:
            from dymoe.io import atomic_write_json

            atomic_write_json(store, table)
        except OSError:
            pass  # a read-only cache only costs time
    return digest


def _cache_file() -> Path | None:
    try:
        from dymoe.cache import cache_dir

        return cache_dir() / "hashes.json"
    except Exception:  # noqa: BLE001 - no cache directory: hash every time
        return None


def _read_cache(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def backbone_card(config_value: str, folder: str | os.PathLike) -> dict[str, Any]:
    """The ``backbone`` section for a resolved model folder (see the module docstring)."""
    from dymoe.models.build_base import read_base_card

    folder = Path(folder)
    config = folder / "config.json"
    weights = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES
    }
    base = read_base_card(folder) if folder.is_dir() else None
    return {
        "path": config_value,
        "folder": str(folder.resolve()),
        "config_sha256": sha256_file(config) if config.is_file() else None,
        "weights": weights,
        "weights_sha256": _digest(weights) if weights else None,
        "instruction_tuned": base.get("instruction_tuned") if base else None,
        "base_kind": base.get("kind") if base else None,
    }


def _file_entry(path: Path) -> dict[str, Any]:
    return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def benchmark_card(cfg, benchmark, eval_questions: dict[str, int]) -> dict[str, Any]:
    """The ``benchmark`` section: identity of every task file, sizes, subsampling, instruction type, order."""
    tasks = []
    for t in benchmark.tasks:
        sets = []
        for es in t.eval_sets:
            entry = {"name": es.name, "scorer": es.scorer, **_file_entry(es.path)}
            entry["annotations"] = {k: _file_entry(Path(p)) for k, p in sorted(es.annotations.items())}
            sets.append(entry)
        train = [{**_file_entry(f.path), "repeat": f.repeat} for f in t.train_files]
        tasks.append({"name": t.name, "train": train, "eval": sets, "eval_questions": eval_questions.get(t.name)})
    files = {t["name"]: [f["sha256"] for f in t["train"]] + [s["sha256"] for s in t["eval"]]
             + [a["sha256"] for s in t["eval"] for a in s["annotations"].values()] for t in tasks}
    b = cfg.benchmark
    return {
        "name": str(benchmark.name),
        "file": b.file if b.file not in ("minicoin", "minidomains") else f"{b.file}:{b.minicoin_scale}",
        "instruction_type": benchmark.instruction_type,
        "order": [t.name for t in benchmark.tasks],
        "tasks": tasks,
        "files_sha256": _digest(files),
        "max_train_samples": b.max_train_samples,
        "max_eval_samples": b.max_eval_samples,
        "eval_questions": [eval_questions.get(t.name) for t in benchmark.tasks],
        "replay_samples_per_task": cfg.replay.samples_per_task,
    }


def build_card(cfg, *, benchmark, backbone_folder: str | os.PathLike, adapter, batching, accelerator,
               environment: dict[str, Any], eval_questions: dict[str, int], scorers: dict[str, str]) -> dict[str, Any]:
    """The whole protocol card of a run at setup (``adapter.trainable_per_task`` is filled in as tasks finish)."""
    a, t = cfg.adapter, cfg.training
    mixed = str(accelerator.mixed_precision) if accelerator is not None else cfg.mixed_precision
    return {
        "format": FORMAT,
        "backbone": backbone_card(cfg.backbone.path, backbone_folder),
        "benchmark": benchmark_card(cfg, benchmark, eval_questions),
        "adapter": {
            "experts_per_group": a.experts_per_group, "expert_rank": a.expert_rank, "top_k": a.top_k,
            "alpha": a.alpha, "targets": list(a.targets), "router": a.router,
            "sites": a.to_dict().get("sites"),  # injection sites beyond the flat default (vision, MLP experts)
            "method_adapter": adapter.config.to_dict(),
            "wrapped_modules": len(adapter.modules),
            "wrapped_module_names": sorted(adapter.modules),
            "trainable_per_task": {},
        },
        "recipe": {
            "global_batch_size": batching.global_batch_size if batching is not None else t.global_batch_size,
            "batch_size": t.batch_size, "lr": t.lr, "epochs": t.epochs, "schedule": t.schedule,
            "warmup_ratio": t.warmup_ratio, "weight_decay": t.weight_decay, "max_length": t.max_length,
            "dtype": cfg.backbone.dtype, "mixed_precision": mixed, "seed": t.seed,
        },
        "evaluation": {
            "scorer_variant": cfg.evaluation.scorer_variant, "scorers": dict(scorers),
            "max_new_tokens": cfg.evaluation.max_new_tokens, "max_length": cfg.evaluation.max_length,
        },
        "method": dict(cfg.method),
        "hardware": {k: environment.get(k) for k in ("device", "num_processes", "distributed_type", "platform")},
        "versions": {k: environment.get(k) for k in ("python", "torch", "transformers", "accelerate")},
        "dymoe_commit": environment.get("git_commit"),
    }


# ---------------------------------------------------------------------------------------------- comparing


def read_card(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A run's ``protocol.json`` (None for runs made before protocol cards existed)."""
    path = Path(run_dir) / PROTOCOL_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def _get(card: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = card
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def protocol_key(card: dict[str, Any] | None) -> dict[str, Any]:
    """``{field: value}`` of :data:`KEY_FIELDS` that the card has (``{}`` for a run without a card)."""
    if not card:
        return {}
    out = {}
    for name in KEY_FIELDS:
        found, value = _get(card, name)
        if found:
            out[name] = value
    return out


def differing_fields(keys: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Fields whose values differ between the runs (among those every run's card has), and the fields some runs'
    cards lack (not compared: say so rather than guess)."""
    if not keys:
        return [], []
    shared = set.intersection(*(set(k) for k in keys))
    every = set.union(*(set(k) for k in keys))
    differ = [f for f in KEY_FIELDS if f in shared and any(k[f] != keys[0][f] for k in keys[1:])]
    unknown = [f for f in KEY_FIELDS if f in every - shared]
    return differ, unknown


def protocol_groups(keys: list[dict[str, Any]]) -> list[int]:
    """Protocol index (0, 1, ...) of every run, in order of first appearance, over the fields all runs have."""
    differ, _ = differing_fields(keys)
    seen: dict[str, int] = {}
    out = []
    for k in keys:
        ident = json.dumps([k.get(f) for f in differ], sort_keys=True, default=str)
        out.append(seen.setdefault(ident, len(seen)))
    return out


def short(value: Any, width: int = 48) -> str:
    """A one-line, shortened rendering of a card value (hashes to 12 hex digits)."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


def card_summary(card: dict[str, Any]) -> list[str]:
    """Markdown lines for the top of ``report.md``."""
    b, bench, a, r, e = (card.get(k, {}) for k in ("backbone", "benchmark", "adapter", "recipe", "evaluation"))
    tuned = {True: "yes", False: "no (the untuned base the papers use)", None: "unknown"}.get(b.get("instruction_tuned"))
    per_task = a.get("trainable_per_task") or {}
    hw, ver = card.get("hardware", {}), card.get("versions", {})
    lines = [
        "## Protocol",
        "",
        "| field | value |",
        "|---|---|",
        f"| backbone | {b.get('path')} (config {short(b.get('config_sha256'))}, weights {short(b.get('weights_sha256'))}, "
        f"{len(b.get('weights') or {})} file(s)) |",
        f"| instruction-tuned base | {tuned} |",
        f"| benchmark | {bench.get('name')} ({bench.get('file')}), instruction type {bench.get('instruction_type')}, "
        f"files {short(bench.get('files_sha256'))} |",
        f"| order | {', '.join(bench.get('order') or [])} |",
        f"| subsampling | train {bench.get('max_train_samples') or 'all'}, eval {bench.get('max_eval_samples') or 'all'} "
        f"(questions {bench.get('eval_questions')}), replay {bench.get('replay_samples_per_task')} per task |",
        f"| adapter budget | {a.get('experts_per_group')} experts × rank {a.get('expert_rank')} per group, "
        f"K = {a.get('top_k')}, alpha {a.get('alpha')}, {a.get('wrapped_modules')} wrapped modules "
        f"({', '.join(a.get('targets') or [])}) |",
        f"| trainable per task | {', '.join(f'{k}: {v:,}' for k, v in per_task.items()) or 'n/a'} |",
        f"| recipe | global batch {r.get('global_batch_size')}, lr {r.get('lr')}, {r.get('epochs')} epoch(s), "
        f"{r.get('schedule')} (warmup {r.get('warmup_ratio')}), max length {r.get('max_length')}, "
        f"{r.get('dtype')} / {r.get('mixed_precision')} |",
        f"| scorers | {e.get('scorer_variant')} variant: "
        f"{', '.join(f'{k}={v}' for k, v in (e.get('scorers') or {}).items())} |",
        f"| hardware | {hw.get('device')} × {hw.get('num_processes')} ({hw.get('distributed_type')}) |",
        f"| versions | torch {ver.get('torch')}, transformers {ver.get('transformers')}, dymoe "
        f"{short(card.get('dymoe_commit'), 12) if card.get('dymoe_commit') else 'n/a'} |",
        "",
        f"Full card: [{PROTOCOL_FILE}]({PROTOCOL_FILE}).",
        "",
    ]
    return lines
