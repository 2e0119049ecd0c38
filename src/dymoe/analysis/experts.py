"""The expert-activation view (dymoe.md §12.4, the paper's Fig. 4): how much routing mass each task's experts get.

For a run's checkpoint after task K, every seen task's evaluation prompts are pushed through the model in
teacher-forced, no-grad forwards (the prompt only, as :func:`~dymoe.data.collate.build_generation_batch` builds it
for generation, with the evaluation routing policy). An observer on the routing context (``recording=True``) sums
the gate weights over non-pad tokens per expert in every wrapped module ("routing scores aggregated as the
expert activation strength") and merges them per expert group, i.e. per task (group id = task index), and per
decoder layer (all wrapped projections of a layer added up).

Result: ``mass[eval task][layer][group]``, plus its per-layer normalisation ``share`` (each layer's row sums to 1)
that the circle plot draws (circle area ∝ share).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from dymoe.analysis.drift import layer_index
from dymoe.analysis.plots import _save
from dymoe.errors import CheckpointError, DataError
from dymoe.injection.inject import ExpertAdapter
from dymoe.io import atomic_write_json
from dymoe.layers.context import RoutingEvent, RoutingPolicy

__all__ = [
    "RoutingMassRecorder",
    "expert_activation_view",
    "group_mass",
    "plot_expert_activation",
    "recording",
    "routing_mass",
]


def group_mass(
    weights: torch.Tensor, expert_group: torch.Tensor, groups: Sequence[int], token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Summed gate weight per expert group over (non-pad) tokens.

    Args:
        weights: ``[N, E]`` gate weights of one module's forward.
        expert_group: ``[E]`` group id of each expert.
        groups: the group ids to report, in column order (a group absent from the layer gets 0).
        token_mask: ``[N]`` bool, true for tokens to count; None counts every token.

    Returns:
        ``[G]`` float64 (on the CPU): ``Σ_tokens Σ_{i in group g} w_i``.
    """
    w = weights.detach().double()
    if token_mask is not None:
        w = w * token_mask.to(w.device, torch.float64)[:, None]  # [N, E]
    per_expert = w.sum(0).cpu()  # [E]
    eg = expert_group.detach().cpu()
    return torch.stack([per_expert[eg == g].sum() for g in groups]) if groups else torch.zeros(0, dtype=torch.float64)


class RoutingMassRecorder:
    """Observer summing :func:`group_mass` per decoder layer (see the module docstring).

    Attributes:
        groups: group ids (columns). mass: ``{layer key: [G] float64}`` with the layer key the decoder-layer
            index as a string (``"other"`` for modules outside ``layers.<i>``). tokens: ``{layer key: n}``
            non-pad tokens seen by the layer's first module.
    """

    def __init__(self, adapter: ExpertAdapter, groups: Sequence[int]):
        self.groups = list(groups)
        self._key: dict[int, str] = {}
        self._first: dict[str, int] = {}
        for name, module in adapter.modules.items():
            idx = layer_index(name)
            key = str(idx) if idx is not None else "other"
            self._key[id(module)] = key
            self._first.setdefault(key, id(module))
        self.mass: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}

    def reset(self) -> None:
        """Forget the sums."""
        self.mass.clear()
        self.tokens.clear()

    def __call__(self, event: RoutingEvent) -> None:
        key = self._key.get(id(event.layer))
        if key is None:
            return
        m = group_mass(event.weights, event.layer.expert_group, self.groups, event.token_mask)  # [G]
        self.mass[key] = self.mass[key] + m if key in self.mass else m
        if self._first[key] == id(event.layer):
            n = event.weights.shape[0] if event.token_mask is None else int(event.token_mask.sum())
            self.tokens[key] = self.tokens.get(key, 0) + n

    def matrix(self) -> tuple[list[str], list[list[float]]]:
        """``(layer keys in order, [[mass per group] per layer])``."""
        keys = sorted(self.mass, key=lambda k: (k == "other", int(k) if k.isdigit() else 0))
        return keys, [self.mass[k].tolist() for k in keys]


@contextlib.contextmanager
def recording(adapter: ExpertAdapter, observer: Callable[[RoutingEvent], None],
              policy: RoutingPolicy | None = None) -> Iterator[None]:
    """Attach ``observer`` to the routing context with ``recording=True`` (and ``policy``); restores on exit."""
    ctx = adapter.context
    saved = (ctx.policy, ctx.group_mask, ctx.recording, list(ctx.observers))
    ctx.policy, ctx.recording = policy, True
    ctx.observers.append(observer)
    try:
        yield
    finally:
        ctx.policy, ctx.group_mask, ctx.recording = saved[:3]
        ctx.observers[:] = saved[3]


@torch.no_grad()
def routing_mass(
    model: torch.nn.Module,
    adapter: ExpertAdapter,
    batches: Iterable[Mapping[str, torch.Tensor]],
    groups: Sequence[int],
    *,
    policy: RoutingPolicy | None = None,
    batch_hook: Callable[[dict], None] | None = None,
) -> RoutingMassRecorder:
    """Sum the routing mass per (layer, group) over no-grad forwards of ``batches``.

    Args:
        model: the model with experts injected (switched to eval mode for the forwards, restored after).
        adapter: its :class:`ExpertAdapter`.
        batches: model inputs (``input_ids [B, T]``, ``attention_mask [B, T]``, optionally ``pixel_values``),
            already on the model's device; the attention mask decides which tokens count.
        groups: group ids (columns of the result).
        policy: the routing policy to apply (the method's eval policy); group_mask: see ``batch_hook``.
        batch_hook: called with each batch before its forward (e.g. to set a task router's group mask).

    Returns:
        the :class:`RoutingMassRecorder` with the sums.
    """
    recorder = RoutingMassRecorder(adapter, groups)
    was_training = model.training
    model.eval()
    try:
        with recording(adapter, recorder, policy):
            for batch in batches:
                batch = dict(batch)
                if batch_hook is not None:
                    batch_hook(batch)
                model(**batch)
    finally:
        model.train(was_training)
    return recorder


# ---------------------------------------------------------------------------- a run's checkpoint
def _prompt_batches(processor: Any, samples: Sequence[Any], batch_size: int, max_length: int,
                    device: torch.device, dtype: torch.dtype, desc: str) -> Iterator[dict]:
    from dymoe.data.collate import build_generation_batch

    for k in tqdm(range(0, len(samples), batch_size), desc=desc, unit="batch"):
        batch = build_generation_batch(processor, list(samples[k: k + batch_size]), max_length=max_length)
        batch = {n: v.to(device) for n, v in batch.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(dtype)  # [N_img, 3, H, W]
        yield batch


def expert_activation_view(
    run_dir: str | Path,
    *,
    after_task: int | None = None,
    output: str | Path | None = None,
    max_samples: int | None = None,
    batch_size: int | None = None,
) -> dict:
    """Fig. 4 for a run directory: the routing mass per (evaluated task, layer, expert group) after task K.

    Args:
        run_dir: a ``dymoe run`` directory (``config.yaml`` and ``checkpoints/task_<k>_<name>``); not modified.
        after_task: K (1-based); None = the last finished task.
        output: the PNG path (default ``<run_dir>/plots/experts_after_<K>.png``); the JSON is written beside it
            with the suffix ``.json``.
        max_samples: evaluation prompts per task (default: the run's ``benchmark.max_eval_samples`` subset).
        batch_size: prompts per forward (default: the run's ``evaluation.batch_size``).

    Returns:
        ``{"run_dir", "after_task", "tasks" (evaluated, 1..K), "groups", "group_tasks", "layers",
        "mass": {task: [[per group] per layer]}, "share": {task: rows normalised to 1}, "tokens": {task: n},
        "aggregate": {"mass", "share"} (summed over the evaluated tasks), "png", "json"}``.
    """
    from dymoe.config import load_config
    from dymoe.data.formats import load_test
    from dymoe.injection.inject import inject
    from dymoe.injection.state import load_adapter_into, load_method_state
    from dymoe.methods import build_method
    from dymoe.models.llava import load_backbone
    from dymoe.runner.continual import resolve_benchmark
    from dymoe.runner.resources import resolve_backbone_path
    from dymoe.runner.rundir import RunDir

    rd = RunDir(run_dir)
    if not rd.config.is_file():
        raise DataError(f"{rd.config}: not found; RUN_DIR must be a `dymoe run` output directory")
    cfg = load_config(rd.config)
    bench = resolve_benchmark(cfg)
    names = [t.name for t in bench.tasks]
    done = rd.completed_tasks(names)
    if done == 0:
        raise CheckpointError(f"{rd.root}: no finished task checkpoint")
    k = done if after_task is None else int(after_task)
    if not 1 <= k <= done:
        raise CheckpointError(f"--after-task {k}: {rd.root} has checkpoints after tasks 1..{done}")

    dtype = cfg.backbone.dtype
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    model, processor = load_backbone(resolve_backbone_path(cfg.backbone.path), dtype=dtype,
                                     attn_implementation=cfg.backbone.attn_implementation,
                                     trust_remote_code=cfg.backbone.trust_remote_code)
    method = build_method(cfg.method)
    adapter = inject(model, method.configure_adapter(cfg.adapter))
    method.setup(model, adapter)
    ckpt = rd.checkpoint(k, names[k - 1])
    load_adapter_into(adapter, ckpt)
    method.load_state_dict(load_method_state(ckpt))
    model.to(device)
    param_dtype = next(model.parameters()).dtype

    groups = adapter.groups()
    n_eval = max_samples if max_samples is not None else cfg.benchmark.max_eval_samples
    bs = batch_size or cfg.evaluation.batch_size
    ctx = adapter.context

    def hook(batch: dict) -> None:
        ctx.group_mask = method.group_mask(batch, "eval")

    mass: dict[str, list[list[float]]] = {}
    tokens: dict[str, int] = {}
    layers: list[str] = []
    for task in bench.tasks[:k]:
        samples = load_test(task, instruction_type=bench.instruction_type, seed=0)
        if n_eval is not None and n_eval < len(samples):
            # the runner's evaluation subset (same seed and rule as ContinualRun.test_set)
            keep = sorted(random.Random(0).sample(range(len(samples)), n_eval))
            samples = [samples[i] for i in keep]
        batches = _prompt_batches(processor, samples, bs, cfg.evaluation.max_length, device, param_dtype,
                                  f"routing mass {task.name}")
        rec = routing_mass(model, adapter, batches, groups, policy=method.routing_policy("eval"), batch_hook=hook)
        layers, rows = rec.matrix()
        mass[task.name] = rows
        tokens[task.name] = max(rec.tokens.values(), default=0)

    agg = np.sum([np.asarray(m) for m in mass.values()], axis=0).tolist()
    result: dict[str, Any] = {
        "run_dir": str(rd.root),
        "after_task": k,
        "tasks": names[:k],
        "groups": groups,
        "group_tasks": [names[g] if 0 <= g < len(names) else f"group {g}" for g in groups],
        "layers": layers,
        "mass": mass,
        "share": {t: _normalise(m) for t, m in mass.items()},
        "tokens": tokens,
        "aggregate": {"mass": agg, "share": _normalise(agg)},
    }
    png = Path(output) if output is not None else rd.root / "plots" / f"experts_after_{k}.png"
    json_path = png.with_suffix(".json")
    result["png"], result["json"] = str(png), str(json_path)
    plot_expert_activation(result, png)
    atomic_write_json(json_path, result)
    return result


def _normalise(rows: Sequence[Sequence[float]]) -> list[list[float]]:
    out = []
    for row in rows:
        s = float(sum(row))
        out.append([float(v) / s if s > 0 else 0.0 for v in row])
    return out


def plot_expert_activation(result: Mapping[str, Any], path: str | Path, *, dpi: int = 110) -> Path:
    """Circle plot (layer × expert group, area ∝ the layer's share), one panel per evaluated task + aggregate."""
    panels = [(f"eval on {t}", result["share"][t]) for t in result["tasks"]]
    if len(panels) > 1:
        panels.append(("all evaluated tasks", result["aggregate"]["share"]))
    if not panels:
        raise DataError("no evaluated task to plot")
    layers, gnames = result["layers"], result["group_tasks"]
    width = max(3.0, 0.55 * len(gnames) + 1.6)
    height = max(3.0, 0.28 * len(layers) + 1.6)
    fig = Figure(figsize=(width * len(panels), height), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, share) in zip(axes, panels):
        arr = np.asarray(share, dtype=float).reshape(len(layers), len(gnames))  # [L, G]
        ys, xs = np.meshgrid(np.arange(len(layers)), np.arange(len(gnames)), indexing="ij")
        ax.scatter(xs.ravel(), ys.ravel(), s=arr.ravel() * 300.0, c=arr.ravel(), cmap="viridis", vmin=0, vmax=1,
                   edgecolors="black", linewidths=0.3)
        ax.set_xticks(range(len(gnames)), gnames, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), layers, fontsize=7)
        ax.set_xlim(-0.6, len(gnames) - 0.4)
        ax.set_ylim(-0.6, len(layers) - 0.4)
        ax.set_xlabel("expert group (task that trained it)")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("decoder layer")
    fig.suptitle(f"Expert activation after task {result['after_task']} ({result['tasks'][-1]})")
    return _save(fig, path, dpi)
