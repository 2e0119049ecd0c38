"""A trained run loaded for inference: the backbone, the adapter after task K and the method's inference routing.

:class:`TrainedRun` rebuilds what :class:`~dymoe.runner.continual.ContinualRun` had after task K (same config,
same method, checkpoint ``checkpoints/task_K_<name>`` with its method state) and answers questions with the
method's evaluation routing exactly as the runner's evaluation applies it: ``routing_policy("eval")`` on the
shared routing context and ``group_mask(batch, "eval")`` set for every generation batch (so DyMoE's task router,
and the task locators of later peer methods, act as they do in ``dymoe run`` / ``dymoe eval``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from dymoe.errors import DymoeError

__all__ = ["TrainedRun", "eval_routing"]


@contextmanager
def eval_routing(method: Any, adapter: Any) -> Iterator[Any]:
    """The method's inference routing on ``adapter``'s context (:class:`~dymoe.runner.routing.EvalRouting`, the
    runner's own); yields the per-batch hook for generation (the main evaluation variant, no true task known)."""
    from dymoe.runner.routing import EvalRouting

    with EvalRouting(method, adapter.context) as hook:
        yield hook


class TrainedRun:
    """A run directory's model after task ``after_task`` (default: the last finished task).

    Attributes:
        model, processor, method, adapter, cfg: as in the run; tasks: the run's task names; backbone: the model
        folder loaded (``backbone`` overrides the config's);
        after_task: K (1-based); task: the name of task K.

    Raises:
        DymoeError: not a run directory, no finished task, or K out of range.
    """

    def __init__(self, run_dir: str | Path, *, after_task: int | None = None, device: str | None = None,
                 backbone: str | Path | None = None):
        from dymoe.config import load_config
        from dymoe.injection.inject import inject
        from dymoe.injection.state import load_adapter_into, load_method_state
        from dymoe.methods import build_method
        from dymoe.methods.base import attach_method_modules
        from dymoe.models.llava import load_backbone
        from dymoe.runner.resources import resolve_backbone_path
        from dymoe.runner.rundir import RunDir

        self.dir = RunDir(run_dir)
        if not self.dir.config.is_file():
            raise DymoeError(f"{run_dir}: not a run directory (config.yaml is missing)")
        self.cfg = cfg = load_config(self.dir.config)
        self.tasks = self._task_names()
        done = self.dir.completed_tasks(self.tasks)
        if done == 0:
            raise DymoeError(f"{run_dir}: no finished task yet (no checkpoints/task_1_*)")
        k = done if after_task is None else after_task
        if not 1 <= k <= done:
            raise DymoeError(f"--after-task {k}: the run has checkpoints for tasks 1..{done}")
        self.after_task, self.task = k, self.tasks[k - 1]
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = cfg.backbone.dtype
        if dtype == "auto":
            dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
        # ``backbone``: another folder holding the same model (an export carries its own copy)
        self.backbone = str(backbone) if backbone is not None else resolve_backbone_path(cfg.backbone.path)
        self.model, self.processor = load_backbone(
            self.backbone, dtype=dtype,
            attn_implementation=cfg.backbone.attn_implementation, trust_remote_code=cfg.backbone.trust_remote_code,
        )
        self.method = build_method(cfg.method)
        self.adapter = inject(self.model, self.method.configure_adapter(cfg.adapter))
        attach_method_modules(self.model, self.method)
        self.method.setup(self.model, self.adapter)
        ckpt = self.dir.checkpoint(k, self.task)
        load_adapter_into(self.adapter, ckpt)
        # the method's own tensors and its registered modules (a task locator, ...), as the runner restores them
        self.method.load_checkpoint_state(load_method_state(ckpt))
        self.model.to(device).eval()

    def _task_names(self) -> list[str]:
        try:
            names = json.loads(self.dir.env.read_text())["tasks"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise DymoeError(f"{self.dir.env}: cannot read the run's task order ({e})") from None
        if not isinstance(names, list) or not names:
            raise DymoeError(f"{self.dir.env}: 'tasks' must be a non-empty list of task names")
        return [str(n) for n in names]

    def answer(self, questions: Sequence[tuple[str | Path | None, str]], *, max_new_tokens: int | None = None,
               batch_size: int | None = None) -> list[str]:
        """Greedy answers to ``(image path or None, question)`` pairs, with the method's inference routing."""
        from dymoe.data.coin import TestSample
        from dymoe.eval.generate import generate_predictions

        ev = self.cfg.evaluation
        samples = []
        for i, (image, question) in enumerate(questions):
            path = Path(image) if image is not None else None
            if path is not None and not path.is_file():
                raise DymoeError(f"image {path} does not exist")
            samples.append(TestSample(i, path, question, {}))
        with torch.no_grad(), eval_routing(self.method, self.adapter) as hook:
            rows = generate_predictions(
                self.model, self.processor, samples, batch_size=batch_size or ev.batch_size,
                max_new_tokens=max_new_tokens or ev.max_new_tokens, max_length=ev.max_length, desc="chat",
                batch_hook=hook,
            )
        return [r["text"] for r in rows]
