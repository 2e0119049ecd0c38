"""Per-batch routing: a method's :meth:`~dymoe.methods.base.Method.batch_routing` applied to the routing context.

The method returns ``{context attribute: value}`` for a batch; :func:`apply_batch_routing` sets those attributes on
the model's :class:`~dymoe.layers.context.RoutingContext` and returns what to restore after the forward (so nothing
set for one batch leaks into the next, or from evaluation into training). The reserved key ``"predicted_task"``
(:data:`~dymoe.methods.base.PREDICTED_TASK`) is not a context input: it is the locator's task per sample, returned to
the caller, which writes it beside each prediction (``routed_task``) and scores it (:func:`locator_report`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dymoe.errors import DymoeError
from dymoe.methods.base import PREDICTED_TASK

__all__ = ["EvalRouting", "apply_batch_routing", "locator_report", "restore_routing"]

# per-forward outputs of the context (never a method's input)
_NOT_INPUTS = {"observers", "recording", "attention_mask"}


def _inputs_of(context: Any) -> set[str]:
    """The per-batch inputs of a routing context (:data:`dymoe.layers.context.INPUT_DEFAULTS` for the model's
    context; any public attribute but the per-forward outputs for another object)."""
    from dymoe.layers.context import INPUT_DEFAULTS, RoutingContext

    if isinstance(context, RoutingContext):
        return set(INPUT_DEFAULTS)
    return {k for k in vars(context) if k not in _NOT_INPUTS and not k.startswith("_")}


def apply_batch_routing(context: Any, decision: Mapping[str, Any] | None, rows: int) -> tuple[dict, torch.Tensor | None]:
    """Set ``decision``'s routing inputs on ``context``; returns ``(saved values, predicted task [B] or None)``.

    Raises:
        DymoeError: a key that is not an input of this routing context (named, with the known ones), or a
            ``predicted_task`` that is not one task per batch row.
    """
    if not decision:
        return {}, None
    saved: dict[str, Any] = {}
    predicted = None
    for key, value in decision.items():
        if key == PREDICTED_TASK:
            predicted = torch.as_tensor(value).detach().reshape(-1).long().cpu()
            if predicted.numel() != rows:
                raise DymoeError(f"batch_routing: predicted_task has {predicted.numel()} entries for {rows} batch rows")
            continue
        inputs = _inputs_of(context)
        if key not in inputs:
            known = sorted(inputs)
            raise DymoeError(f"batch_routing: {key!r} is not a routing input of this model's context; known: {known}")
        saved[key] = getattr(context, key)
        setattr(context, key, value)
    return saved, predicted


def restore_routing(context: Any, saved: Mapping[str, Any]) -> None:
    """Undo :func:`apply_batch_routing` (its first return value)."""
    for key, value in saved.items():
        setattr(context, key, value)


def locator_report(true_tasks: Sequence[int], predicted: Sequence[int], names: Sequence[str]) -> dict:
    """A task locator's accuracy and confusion matrix from per-sample (true task, predicted task) pairs.

    Returns ``{"accuracy": {task: %}, "mean": %, "samples": {task: n}, "predicted": {task: [counts per predicted
    task]}, "confusion": [[...]], "tasks": [...]}``: ``confusion[i][j]`` counts samples of task ``i`` routed to task
    ``j`` (rows: the true tasks evaluated, in task order; columns: every task of ``names``, a prediction outside them
    counted in an extra last column "other"); ``accuracy`` is the diagonal share, ``mean`` its mean over the
    evaluated tasks. The keys match DyMoE's task-router report (``accuracy``, ``mean``, ``samples``, ``predicted``).
    """
    n = len(names)
    counts: dict[int, list[int]] = {}
    for t, p in zip(true_tasks, predicted):
        row = counts.setdefault(int(t), [0] * (n + 1))
        row[int(p) if 0 <= int(p) < n else n] += 1
    evaluated = sorted(counts)
    other = any(counts[t][n] for t in evaluated)
    exact = {names[t]: 100.0 * counts[t][t] / max(sum(counts[t]), 1) for t in evaluated}
    out = {
        "accuracy": {t: round(a, 2) for t, a in exact.items()},
        "mean": round(sum(exact.values()) / len(exact), 2) if exact else None,
        "samples": {names[t]: sum(counts[t]) for t in evaluated},
        "predicted": {names[t]: counts[t] if other else counts[t][:n] for t in evaluated},
        "confusion": [counts[t] if other else counts[t][:n] for t in evaluated],
        "tasks": list(names) + (["other"] if other else []),
    }
    return out


class EvalRouting:
    """A method's evaluation routing on a routing context, as the runner's evaluation and ``dymoe chat`` apply it.

    Used as a context manager (``routing_policy("eval")`` set on entry, recording off; everything reset on exit);
    the instance is the generation ``batch_hook``: per batch it sets ``group_mask(batch, "eval")`` and the method's
    :meth:`~dymoe.methods.base.Method.batch_routing` for a :class:`~dymoe.methods.base.BatchInfo` of phase
    ``"eval"`` (the set given to :meth:`begin`, the batch's sample indices), and returns ``{"routed_task": [B]}``
    when the method's locator predicted tasks (written into the prediction rows).
    """

    def __init__(self, method: Any, context: Any):
        self.method, self.ctx = method, context
        self._saved: dict = {}
        self._where = dict(task_index=-1, task="", eval_set=None, variant="", stage=0)

    def begin(self, *, task_index: int, task: str, eval_set: str | None, variant: str = "", stage: int = 0) -> None:
        """The batches that follow come from ``eval_set`` of task ``task_index`` (the true task), in ``variant``."""
        self._where = dict(task_index=task_index, task=task, eval_set=eval_set, variant=variant, stage=stage)

    def __enter__(self) -> EvalRouting:
        self.ctx.policy, self.ctx.group_mask, self.ctx.recording = self.method.routing_policy("eval"), None, False
        return self

    def __exit__(self, *exc) -> None:
        restore_routing(self.ctx, self._saved)
        self._saved = {}
        self.ctx.policy, self.ctx.group_mask = None, None

    def __call__(self, batch: dict) -> dict | None:
        from dymoe.data.collate import split_meta
        from dymoe.methods.base import BatchInfo

        restore_routing(self.ctx, self._saved)
        inputs, meta = split_meta(batch)
        self._map_images(inputs)
        self.ctx.group_mask = self.method.group_mask(inputs, "eval")
        idx, img = meta.get("sample_index"), meta.get("image_sample")
        info = BatchInfo(phase="eval", indices=[] if idx is None else idx.tolist(),
                         image_sample=[] if img is None else img.tolist(), **self._where)
        self._saved, predicted = apply_batch_routing(self.ctx, self.method.batch_routing(inputs, info),
                                                     inputs["input_ids"].shape[0])
        return None if predicted is None else {"routed_task": predicted.tolist()}

    def _map_images(self, inputs: dict) -> None:
        """Set ``context.image_rows`` (the sample of each image) for this batch: ``generate`` in transformers 5 encodes
        the images *before* the model's forward (``mm_encoder_outputs``), where the injection pre-hook cannot map
        them, so experts in the vision tower would meet a stale map in a batch mixing samples with and without
        images."""
        from dymoe.injection.inject import image_rows, image_token_id

        model, pv = getattr(self.method, "model", None), inputs.get("pixel_values")
        if model is None or not isinstance(pv, torch.Tensor) or "input_ids" not in inputs:
            return
        token = image_token_id(model)
        if token is not None:
            self.ctx.image_rows = image_rows(inputs["input_ids"], pv.shape[0], token)
