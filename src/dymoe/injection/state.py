"""Adapter checkpoints: only what was added, as safetensors + JSON (never pickle).

A checkpoint directory holds:

- ``adapter.safetensors``: every wrapped module's bank, keys ``<module>.<tensor>`` with the tensor names each layer
  kind declares (:meth:`~dymoe.layers.base.ExpertLayer.named_tensors`: ``frozen_A``, ``lora_A``, ... for LoRA
  banks, ``w_gate``, ``router_w1``, ... for FFN banks, ``router_bank.frozen`` when a router bank is in use);
- ``adapter.json``: format tag, the :class:`AdapterConfig` (sites included), each module's bank structure (group,
  id and size of every expert, which are trainable, router-bank rows) and free-form metadata (method name, task
  index, ...);
- ``method_state.safetensors`` (optional): tensors a method keeps across tasks (EWC's Fisher, prototypes, ...).

Loading rebuilds the same structure on a fresh base model and gives bit-identical outputs. The directory is
written to a temporary sibling and renamed into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dymoe.errors import CheckpointError
from dymoe.injection.adapter import ExpertAdapter
from dymoe.injection.config import AdapterConfig
from dymoe.injection.inject import inject
from dymoe.io import apply_umask, make_temp_dir, read_text

FORMAT = "dymoe-adapter"
VERSION = 1
ADAPTER_FILE = "adapter.safetensors"
META_FILE = "adapter.json"
METHOD_FILE = "method_state.safetensors"


def _atomic_dir(path: Path):
    """Create a temporary sibling of ``path``; returns it and a commit function that swaps it into place."""
    tmp = make_temp_dir(path.parent, path.name)  # umask permissions (mkdtemp alone gives 0700)

    def commit() -> None:
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    return tmp, commit


def save_adapter(
    adapter: ExpertAdapter,
    path: str | os.PathLike,
    *,
    metadata: dict | None = None,
    method_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the adapter (and optional method tensors) to directory ``path`` atomically; returns the path."""
    path = Path(path)
    tensors = {k: t.detach().contiguous().cpu() for k, t in adapter.named_tensors()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": adapter.config.to_dict(),
        "modules": adapter.structure(),
        "metadata": metadata or {},
    }
    tmp, commit = _atomic_dir(path)
    try:
        save_file(tensors, str(tmp / ADAPTER_FILE), metadata={"format": FORMAT})
        if method_state:
            save_file({k: v.detach().contiguous().cpu() for k, v in method_state.items()}, str(tmp / METHOD_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        for f in tmp.iterdir():
            apply_umask(f)  # safetensors creates its files 0600
        commit()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_adapter_meta(path: str | os.PathLike) -> dict:
    """The parsed ``adapter.json`` of a checkpoint, validated for format and version."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: not an adapter checkpoint ({META_FILE} is missing)")
    try:
        meta = json.loads(read_text(meta_path, error=CheckpointError))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path}: invalid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        meta = meta if isinstance(meta, dict) else {}
        raise CheckpointError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_path}: version {meta.get('version')!r} is not supported (expected {VERSION})")
    for key in ("config", "modules"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: key {key!r} is missing")
    return meta


def load_method_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The method tensors saved beside the adapter (empty if there are none); an unreadable file (truncated,
    damaged) raises :class:`CheckpointError` naming it."""
    f = Path(path) / METHOD_FILE
    if not f.is_file():
        return {}
    try:
        return load_file(str(f))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{f}: cannot read ({err})") from None


def load_adapter_into(adapter: ExpertAdapter, path: str | os.PathLike) -> dict:
    """Resize ``adapter``'s banks to the checkpoint's structure and copy its tensors in; returns the metadata.

    Every module and tensor must match: a missing or unexpected key, or a shape that differs from the one the
    structure implies, raises :class:`CheckpointError` naming the key.
    """
    path = Path(path)
    meta = read_adapter_meta(path)
    wanted = set(meta["modules"])
    have = set(adapter.modules)
    if wanted - have:
        raise CheckpointError(
            f"{path}: checkpoint has experts for modules the model does not have, e.g. {sorted(wanted - have)[:3]}"
        )
    try:
        tensors = load_file(str(path / ADAPTER_FILE))
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise CheckpointError(f"{path / ADAPTER_FILE}: cannot read ({err})") from None
    for name, module in adapter.modules.items():
        spec = meta["modules"].get(name)
        if spec is None:
            raise CheckpointError(f"{path}: no entry for module {name!r} in {META_FILE}")
        try:
            module.load_structure(spec)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{path / META_FILE}: bad structure for module {name!r} ({err})") from None
    expected = dict(adapter.named_tensors())
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path / ADAPTER_FILE}: unexpected key {unexpected[0]!r}")
    with torch.no_grad():
        for key, target in expected.items():
            if key not in tensors:
                raise CheckpointError(f"{path / ADAPTER_FILE}: missing key {key!r}")
            src = tensors[key]
            if target.dim() == 2 and target.shape[1] == 0 and key.endswith("router") and src.shape[0] == target.shape[0]:
                src = src[:, :0]  # a checkpoint from before router "none" dropped its unused router rows
            if tuple(src.shape) != tuple(target.shape):
                raise CheckpointError(
                    f"{path / ADAPTER_FILE}: key {key!r} has shape {tuple(src.shape)}, "
                    f"expected {tuple(target.shape)} (from the module's structure and the base model)"
                )
            target.copy_(src.to(target.dtype))
    return meta.get("metadata", {})


def load_adapter(model: nn.Module, path: str | os.PathLike) -> tuple[ExpertAdapter, dict]:
    """Inject experts into a fresh base ``model`` exactly as saved; returns the adapter and the metadata."""
    meta = read_adapter_meta(path)
    try:
        config = AdapterConfig.from_dict(meta["config"])
    except TypeError as err:
        raise CheckpointError(f"{Path(path) / META_FILE}: bad adapter config ({err})") from None
    adapter = inject(model, config)
    return adapter, load_adapter_into(adapter, path)
