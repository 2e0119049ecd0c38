"""The expert-layer protocol: what every growable expert layer offers to injection, checkpoints and methods.

Two kinds implement it: :class:`~dymoe.layers.moe_lora.MoELoRALinear` (routed LoRA experts on a frozen linear) and
:class:`~dymoe.layers.moe_ffn.MoEFFN` (routed SwiGLU experts beside a frozen MLP block). The adapter, the
checkpoint code and the methods talk to a layer only through this interface:

- **groups** of experts (one per expansion, normally one per task), each expert with a group id, a unique id
  (stable across folds), a size (LoRA rank or FFN width) and a trainable flag; frozen experts come first, the one
  trainable group (if any) last;
- **growth**: :meth:`add_group` (optionally initialised from existing experts: the mean of a group, a copy of an
  expert), :meth:`fold` (the trainable group joins the frozen bank), :meth:`prune` (remove experts by id);
- **structure**: :meth:`structure` / :meth:`load_structure` (JSON that rebuilds empty tensors of the right shapes)
  and :meth:`named_tensors` (the declared tensor names: the checkpoint content);
- :meth:`trainable_parameters`, a ``stream`` tag (``"text"`` or ``"vision"``: which rows the layer sees) and
  parameter accounting (:meth:`parameter_counts`, :meth:`activated_per_token`).

The expert metadata lives on the host (plain lists: growth, structure and accounting never read the device, and a
layer on the ``meta`` device can be grown and counted) and is mirrored in buffers for the forward.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from dymoe.layers.context import STREAMS, RoutingContext

EXPERT_INITS = ("default", "mean", "copy")


class ExpertLayer(nn.Module):
    """Base class of the expert layers (see the module docstring for the protocol).

    Subclasses declare ``kind``, ``size_name`` (the per-expert size buffer: ``expert_rank`` / ``expert_width``),
    ``trainable_names`` and ``frozen_names`` (their tensors, trainable group and frozen bank, in checkpoint order),
    and implement the growth operations and the forward.
    """

    kind: ClassVar[str] = ""
    size_name: ClassVar[str] = ""
    trainable_names: ClassVar[tuple[str, ...]] = ()
    frozen_names: ClassVar[tuple[str, ...]] = ()

    context: RoutingContext
    stream: str

    # ------------------------------------------------------------------ metadata
    @property
    def meta_names(self) -> tuple[str, ...]:
        return ("expert_group", "expert_id", self.size_name, "expert_trainable")

    def _init_meta(self, device, stream: str) -> None:
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        self.stream = stream
        self._next_expert_id = 0
        self._meta: dict[str, list] = {name: [] for name in self.meta_names}
        for name in self.meta_names:
            dtype = torch.bool if name == "expert_trainable" else torch.long
            self.register_buffer(name, torch.zeros(0, dtype=dtype, device=device))
        self._refresh()

    def _set_meta(self, meta: dict[str, list], device) -> None:
        """Replace the metadata (host lists are the truth; buffers mirror them on ``device``)."""
        for name in self.meta_names:
            values = list(meta[name])
            self._meta[name] = values
            dtype = torch.bool if name == "expert_trainable" else torch.long
            setattr(self, name, torch.tensor(values, dtype=dtype, device=device))
        self._refresh()

    def _refresh(self) -> None:
        # host-side copies of the bank's shape, so the forward never syncs with the device
        meta = self._meta
        self._n_experts = len(meta["expert_id"])
        self._n_frozen = sum(1 for t in meta["expert_trainable"] if not t)
        self._groups = list(dict.fromkeys(meta["expert_group"]))
        sizes = meta[self.size_name]
        self._size = sizes[0] if sizes and all(s == sizes[0] for s in sizes) else None

    def _new_ids(self, n: int) -> list[int]:
        ids = list(range(self._next_expert_id, self._next_expert_id + n))
        self._next_expert_id += n
        return ids

    def _check_new_group(self, group_id: int, num_experts: int, size: int, trainable: bool) -> None:
        if num_experts <= 0 or size <= 0:
            raise ValueError(f"num_experts and {self.size_name[7:]} must be positive, got {num_experts}, {size}")
        if group_id in self._groups:
            raise ValueError(f"group {group_id} already exists in this layer")
        if trainable and self.has_trainable_group:
            raise ValueError("the layer already has a trainable group; fold or freeze it first")

    def _appended_meta(self, group_id: int, num_experts: int, size: int, trainable: bool) -> tuple[list[int], dict]:
        """New experts' ids and the metadata with them in place (a frozen group goes before the trainable one)."""
        ids = self._new_ids(num_experts)
        new = {
            "expert_group": [group_id] * num_experts,
            "expert_id": ids,
            self.size_name: [size] * num_experts,
            "expert_trainable": [trainable] * num_experts,
        }
        at = self._n_experts if trainable else self._n_frozen
        return ids, {k: v[:at] + new[k] + v[at:] for k, v in self._meta.items()}

    def _meta_spec(self) -> dict:
        return {**{k: list(v) for k, v in self._meta.items()}, "next_expert_id": self._next_expert_id}

    def _read_meta_spec(self, spec: dict) -> tuple[dict[str, list], int]:
        """Validated metadata lists from a :meth:`structure` dict; returns them and the number of frozen experts."""
        meta = {name: [bool(v) if name == "expert_trainable" else int(v) for v in spec[name]] for name in self.meta_names}
        n = len(meta["expert_id"])
        if any(len(v) != n for v in meta.values()):
            raise ValueError("expert metadata lists differ in length")
        n_frozen = sum(1 for t in meta["expert_trainable"] if not t)
        if any(meta["expert_trainable"][:n_frozen]):
            raise ValueError("frozen experts must come before trainable ones")
        return meta, n_frozen

    def _keep_after_prune(self, expert_ids: list[int]) -> list[bool]:
        ids = sorted(set(int(i) for i in expert_ids))
        present = set(self._meta["expert_id"])
        missing = [i for i in ids if i not in present]
        if missing:
            raise ValueError(f"no experts with ids {missing} in this layer")
        drop = set(ids)
        return [i not in drop for i in self._meta["expert_id"]]

    def positions(self, expert_ids: list[int]) -> list[int]:
        """Bank positions of the experts with these ids (in the given order)."""
        where = {e: k for k, e in enumerate(self._meta["expert_id"])}
        missing = [e for e in expert_ids if e not in where]
        if missing:
            raise ValueError(f"no experts with ids {missing} in this layer")
        return [where[e] for e in expert_ids]

    def group_positions(self, group_ids: list[int] | None = None) -> list[int]:
        """Bank positions of the experts of these groups (every expert if None)."""
        if group_ids is None:
            return list(range(self._n_experts))
        missing = [g for g in group_ids if g not in self._groups]
        if missing:
            raise ValueError(f"no groups {missing} in this layer (it has {self._groups})")
        wanted = set(group_ids)
        return [k for k, g in enumerate(self._meta["expert_group"]) if g in wanted]

    # ------------------------------------------------------------------ read-only views
    @property
    def num_experts(self) -> int:
        return self._n_experts

    @property
    def num_frozen(self) -> int:
        return self._n_frozen

    @property
    def trainable_mask(self) -> torch.Tensor:
        """``[E]`` bool: true for experts of the trainable group (frozen experts come first)."""
        return self.expert_trainable

    @property
    def groups(self) -> list[int]:
        """Group ids present in this layer, in bank order."""
        return list(self._groups)

    @property
    def has_trainable_group(self) -> bool:
        return self._n_experts > self._n_frozen

    @property
    def expert_sizes(self) -> list[int]:
        """Per-expert size (rank or width), bank order."""
        return list(self._meta[self.size_name])

    @property
    def expert_ids(self) -> list[int]:
        return list(self._meta["expert_id"])

    @property
    def expert_groups(self) -> list[int]:
        return list(self._meta["expert_group"])

    # ------------------------------------------------------------------ tensors
    def optional_tensor_names(self) -> tuple[str, ...]:
        """Names of tensors that exist only when a feature is in use (e.g. a router bank)."""
        return ()

    def named_tensors(self):
        """``(name, tensor)`` for every adapter tensor of this layer, frozen and trainable (checkpoint content).

        Names are attribute paths inside the layer, so ``<module name>.<name>`` is the parameter's name in the model.
        """
        for name in self.frozen_names + self.trainable_names + self.optional_tensor_names():
            yield name, self.get_parameter(name)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Non-empty parameters that require grad (what the optimizer gets), in declaration order."""
        return [p for _, p in self.named_tensors() if p.requires_grad and p.numel() > 0]

    def structure(self) -> dict:
        """JSON-serialisable description of the bank (enough to rebuild empty tensors of the right shapes)."""
        return self._meta_spec()

    # ------------------------------------------------------------------ the rest of the protocol
    def add_group(self, group_id: int, num_experts: int, size: int, *, trainable: bool = True,
                  init: str = "default", source=None) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fold(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def prune(self, expert_ids: list[int]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_structure(self, spec: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def expert_state(self, expert_ids: list[int]) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def parameter_counts(self) -> dict:  # pragma: no cover - abstract
        """``{"experts": {group: n}, "routers": {group: n}, "shared": n}`` learnable parameters."""
        raise NotImplementedError

    def activated_per_token(self, mean_active: float | None = None) -> float:  # pragma: no cover - abstract
        raise NotImplementedError
