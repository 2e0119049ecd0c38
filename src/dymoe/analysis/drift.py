"""The routing-drift analysis (dymoe.md §11, the paper's Fig. 1): which tokens should reach the new experts?

A controlled two-task experiment. Task 1 (ScienceQA by default) is learned once; then, for each masking condition,
task 2 (TextVQA) is learned by LLaVA-DyMoE with ``method.token_mask_mode`` set to that condition:

- ``none``: every token may route to the new group (the IncMoELoRA baseline);
- ``only_new``: only *new* tokens (clearly closer to the new router) may reach the new group;
- ``mask_old``: *old* tokens are kept off the new group (new and ambiguous tokens allowed);
- ``only_ambiguous``: only *ambiguous* tokens may reach the new group;
- ``tag``: DyMoE's Token Assignment Guidance (two-sided, as the method options say).

Tokens are typed per wrapped module and forward by :func:`dymoe.methods.dymoe.functional.tag_decision` (τ from the method
options, 0.2) on the raw routing scores; DyMoE's :class:`~dymoe.methods.dymoe.stats.TokenTypeStats` counts them.
At ``evals`` evenly spaced optimizer steps of task 2 (through the trainer's ``on_step`` callback) both tasks are
evaluated: **forgetting** = task-1 accuracy after task 1 − task-1 accuracy now, **gain** = task-2 accuracy now −
task-2 accuracy at the start of task 2 (the new group starts with ``B = 0``, so that is the task-1 model's). The
token-type fractions are counted over the training forwards since the previous evaluation, per decoder layer.

Only the masking changes between conditions: RSR and the load-balancing loss are **off** (``rsr_exc = rsr_spe = 0``,
``aux_type = none``) unless the run config's ``method`` section (with ``name: dymoe``) sets them, because Fig. 1
isolates the effect of masking. Every condition starts from the same task-1 checkpoint with the same seed, so the
new experts start identical and the conditions differ only by the mask.

Output layout (``DIR``)::

    task1/            a run directory holding the shared task-1 checkpoint and start.json (accuracies at step 0)
    mode_<m>/         config.yaml, env.json, drift_mode.json (this condition's numbers; reused on a rerun) and
                      checkpoints after both tasks: a run directory that ``dymoe analyze experts`` reads
    drift.json        all numbers (see :func:`run_drift`)
    drift.png         forgetting and gain per condition across checkpoints, token-type fractions
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from dymoe.analysis.plots import _save
from dymoe.config import RunConfig
from dymoe.errors import ConfigError, DataError
from dymoe.io import atomic_write_json
from dymoe.methods.dymoe.functional import ANALYSIS_MODES
from dymoe.methods.dymoe.stats import TOKEN_TYPES

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODES",
    "DEFAULT_TASKS",
    "checkpoint_steps",
    "drift_method_config",
    "layer_fractions",
    "layer_index",
    "plot_drift",
    "run_drift",
]

DEFAULT_MODES = ("none", "only_new", "mask_old", "only_ambiguous", "tag")
DEFAULT_TASKS = ("ScienceQA", "TextVQA")
#: method options that Fig. 1 keeps off unless the run config sets them (it isolates the masking)
ISOLATING_DEFAULTS: dict[str, Any] = {"rsr_exc": 0.0, "rsr_spe": 0.0, "aux_type": "none"}
MODE_LABELS = {
    "none": "baseline (no mask)",
    "only_new": "retain only new",
    "mask_old": "mask old",
    "only_ambiguous": "retain only ambiguous",
    "tag": "TAG (DyMoE)",
}
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


# ---------------------------------------------------------------------------- pure helpers
def checkpoint_steps(total: int, n: int) -> list[int]:
    """``n`` evenly spaced optimizer steps in ``1..total`` ending at ``total`` (fewer if ``total < n``).

    Step ``i`` (1-based) is ``ceil(i · total / n)``; e.g. ``total=10, n=4`` → ``[3, 5, 8, 10]``.
    """
    if n < 1:
        raise ConfigError(f"--evals must be >= 1, got {n}")
    if total < 1:
        return []
    return sorted({math.ceil(i * total / n) for i in range(1, n + 1)})


def layer_index(module_name: str) -> int | None:
    """Decoder-layer index of a wrapped module (``...layers.<i>....``), or None if the name has none."""
    m = _LAYER_RE.search(module_name)
    return int(m.group(1)) if m else None


def layer_fractions(counts: Mapping[str, Sequence[int] | torch.Tensor]) -> dict[str, dict[str, float]]:
    """Token-type fractions per decoder layer from per-module counts.

    Args:
        counts: ``{module name: [n_new, n_old, n_ambiguous]}`` (``TOKEN_TYPES`` order), e.g. DyMoE's
            ``token_stats.total`` or a difference of two snapshots of it.

    Returns:
        ``{"<layer>": {"new": f, "old": f, "ambiguous": f, "tokens": n}, ..., "all": {...}}``: the counts of every
        module of a layer summed, then normalised (each layer's fractions sum to 1; a layer with no tokens gets
        zeros). Modules without a layer index go to ``"other"``; ``"all"`` sums every module. Layers in order.
    """
    sums: dict[str, np.ndarray] = {}
    total = np.zeros(len(TOKEN_TYPES), dtype=np.int64)
    for name, c in counts.items():
        arr = np.asarray(c.tolist() if isinstance(c, torch.Tensor) else list(c), dtype=np.int64)
        if arr.shape != (len(TOKEN_TYPES),):
            raise DataError(f"token counts of module {name!r} must have {len(TOKEN_TYPES)} entries, got {arr.shape}")
        idx = layer_index(name)
        key = str(idx) if idx is not None else "other"
        sums[key] = sums.get(key, np.zeros_like(total)) + arr
        total += arr
    ordered = sorted(sums, key=lambda k: (k == "other", int(k) if k.isdigit() else 0))

    def frac(arr: np.ndarray) -> dict[str, float]:
        n = int(arr.sum())
        out = {t: (float(v) / n if n else 0.0) for t, v in zip(TOKEN_TYPES, arr.tolist())}
        return {**out, "tokens": n}

    return {**{k: frac(sums[k]) for k in ordered}, "all": frac(total)}


def drift_method_config(method_cfg: Mapping[str, Any], mode: str, tau: float | None = None) -> dict[str, Any]:
    """The ``method`` section of one condition: DyMoE with ``token_mask_mode = mode``.

    RSR and load balancing default to off (:data:`ISOLATING_DEFAULTS`); options of the run config's ``method``
    section are kept when it names ``dymoe`` (another method's options are ignored). ``tag`` forces ``tag: true``.
    """
    if mode not in ANALYSIS_MODES:
        raise ConfigError(f"drift mode must be one of {list(ANALYSIS_MODES)}, got {mode!r}")
    own = {k: v for k, v in method_cfg.items() if k != "name"} if method_cfg.get("name") == "dymoe" else {}
    out: dict[str, Any] = {"name": "dymoe", **ISOLATING_DEFAULTS, **own, "token_mask_mode": mode}
    if mode == "tag":
        out["tag"] = True
    if tau is not None:
        out["tau"] = float(tau)
    return out


def _condition_config(cfg: RunConfig, tasks: Sequence[str], mode: str) -> RunConfig:
    return dataclasses.replace(
        cfg,
        method=drift_method_config(cfg.method, mode),
        benchmark=dataclasses.replace(cfg.benchmark, order=list(tasks)),
        trackers=[],
    )


# ---------------------------------------------------------------------------- evaluation
def _accuracy(run: Any, task: Any, desc: str) -> float:
    """Accuracy (percent) of ``run``'s current model on ``task``'s test subset, with eval routing."""
    from dymoe.eval.generate import generate_predictions
    from dymoe.eval.scorers import SCORERS, load_annotations
    from dymoe.runner.routing import EvalRouting

    ev, ctx = run.cfg.evaluation, run.adapter.context
    saved = (ctx.policy, ctx.group_mask, ctx.recording)
    samples = run.test_set(task)
    try:
        # the runner's evaluation routing (routing policy, group mask and the method's per-batch routing)
        with torch.no_grad(), EvalRouting(run.method, ctx) as hook:
            hook.begin(task_index=run.names.index(task.name), task=task.name, eval_set=task.eval_sets[0].name)
            preds = generate_predictions(
                run.model, run.processor, samples, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens,
                accelerator=run.acc, max_length=ev.max_length, desc=desc, batch_hook=hook,
            )
    finally:
        ctx.policy, ctx.group_mask, ctx.recording = saved
    scorer = run.scorer_name(task)
    result = SCORERS.get(scorer)(preds, [s.reference for s in samples], load_annotations(scorer, task.annotations))
    return round(float(result.accuracy), 4)


def _task1_stage(cfg: RunConfig, out: Path, tasks: Sequence[str]) -> dict:
    """Train task 1 once (cached in ``out``) and evaluate both tasks at the start of task 2."""
    from dymoe.methods.base import TaskInfo
    from dymoe.runner.continual import ContinualRun

    start_file = out / "start.json"
    run = ContinualRun(_condition_config(cfg, tasks, "none"), out)
    run.setup()
    task1, task2 = run.tasks
    if run.dir.completed_tasks(run.names) >= 1:
        if start_file.is_file():
            return json.loads(start_file.read_text())
        run._load_checkpoint(1)
    else:
        run.train_task(0, task1, TaskInfo(index=0, name=task1.name, num_tasks=2))
    start = {
        "task1_after_task1": _accuracy(run, task1, f"eval {task1.name} after task 1"),
        "task2_at_start": _accuracy(run, task2, f"eval {task2.name} at start"),
    }
    if run.main:
        atomic_write_json(start_file, start)
    return start


def _condition_stage(cfg: RunConfig, out: Path, task1_dir: Path, tasks: Sequence[str], mode: str, evals: int,
                     start: dict) -> dict:
    """Train task 2 under ``mode`` from the task-1 checkpoint, evaluating at :func:`checkpoint_steps`."""
    from accelerate.utils import set_seed

    from dymoe.injection.state import load_adapter_into, load_method_state, save_adapter
    from dymoe.methods.base import TaskInfo
    from dymoe.runner.continual import ContinualRun
    from dymoe.runner.rundir import RunDir

    ccfg = _condition_config(cfg, tasks, mode)
    run = ContinualRun(ccfg, out)
    run.setup()
    task1, task2 = run.tasks
    ckpt = RunDir(task1_dir).checkpoint(1, task1.name)
    load_adapter_into(run.adapter, ckpt)
    run.method.load_state_dict(load_method_state(ckpt))
    run.model.to(run.acc.device)
    if not hasattr(run.method, "token_stats"):
        raise ConfigError(f"the drift analysis needs the dymoe method, got {run.method.name!r}")
    run.method.track_token_types = True

    info = TaskInfo(index=1, name=task2.name, num_tasks=2)
    samples = list(run.train_set(task2))
    info.train_samples = samples
    seed = ccfg.training.seed * 1000 + 1
    set_seed(seed)  # the same new-group initialisation in every condition (as the runner does)
    run.method.before_task(info)
    record: dict[str, list] = {k: [] for k in ("steps", "acc_task1", "acc_task2", "forgetting", "gain",
                                                "token_fractions")}
    previous: dict[str, torch.Tensor] = {}

    def on_step(step: int, total: int) -> None:
        if step not in checkpoint_steps(total, evals):
            return
        nonlocal previous
        now = {n: c.detach().cpu().clone() for n, c in run.method.token_stats.total.items()}
        interval = {n: c - previous.get(n, torch.zeros_like(c)) for n, c in now.items()}
        previous = now
        a1 = _accuracy(run, task1, f"[{mode}] eval {task1.name} @ step {step}/{total}")
        a2 = _accuracy(run, task2, f"[{mode}] eval {task2.name} @ step {step}/{total}")
        record["steps"].append(step)
        record["acc_task1"].append(a1)
        record["acc_task2"].append(a2)
        record["forgetting"].append(round(start["task1_after_task1"] - a1, 4))
        record["gain"].append(round(a2 - start["task2_at_start"], 4))
        record["token_fractions"].append(layer_fractions(interval))
        if run.main:
            print(f"[{mode}] step {step}/{total}: {task1.name}={a1:.2f} {task2.name}={a2:.2f}", file=sys.stderr)

    result = run.trainer.train(info, samples, seed=seed, on_step=on_step)
    overall = layer_fractions({n: c.detach().cpu() for n, c in run.method.token_stats.total.items()})
    run.method.after_task(info, run.trainer)
    if run.main:
        # a complete two-task run directory: `dymoe analyze experts mode_<m>` shows where each condition routes
        shutil.copytree(ckpt, run.dir.checkpoint(1, task1.name), dirs_exist_ok=True)
        save_adapter(run.adapter, run.dir.checkpoint(2, task2.name),
                     metadata={"task": task2.name, "task_index": 2, "method": run.method.describe(),
                               "drift_mode": mode},
                     method_state=run.method.state_dict())
    return {
        **record,
        "total_steps": result.steps,
        "token_fractions_overall": overall,
        "method": ccfg.method,
        "final_loss": result.final_loss,
    }


def run_drift(
    cfg: RunConfig,
    output: str | Path,
    *,
    modes: Sequence[str] = DEFAULT_MODES,
    tasks: Sequence[str] = DEFAULT_TASKS,
    evals: int = 4,
    plot: bool = True,
) -> dict:
    """Run the drift analysis (see the module docstring); writes ``drift.json`` (and ``drift.png``), returns it.

    Args:
        cfg: a run config (backbone, adapter, benchmark caps, training, evaluation); its ``method`` section gives
            DyMoE options when it names ``dymoe`` (τ, ``tag_two_sided``, ...), see :func:`drift_method_config`.
        output: the analysis directory (task 1 is cached in ``output/task1``; a finished condition in
            ``output/mode_<m>/drift_mode.json`` is reused).
        modes: masking conditions, each in ``ANALYSIS_MODES``.
        tasks: ``(task 1, task 2)`` benchmark task names.
        evals: evaluations during task 2 (evenly spaced optimizer steps, the last one at the end).
        plot: also write ``drift.png``.

    Returns:
        ``{"tasks": [t1, t2], "tau", "modes", "evals", "isolating_defaults", "start": {"task1_after_task1",
        "task2_at_start"}, "results": {mode: {"steps", "acc_task1", "acc_task2", "forgetting", "gain",
        "token_fractions": [per checkpoint: layer_fractions(...) over the steps since the previous one],
        "token_fractions_overall", "total_steps", "method", "final_loss"}}}``. Accuracies are percent.
    """
    out = Path(output)
    modes = list(dict.fromkeys(modes))
    tasks = list(tasks)
    if not modes:
        raise ConfigError("--modes: give at least one masking mode")
    for m in modes:
        if m not in ANALYSIS_MODES:
            raise ConfigError(f"--modes: unknown mode {m!r}; known: {list(ANALYSIS_MODES)}")
    if len(tasks) != 2 or tasks[0] == tasks[1]:
        raise ConfigError(f"--tasks must name two different tasks, got {tasks}")
    if evals < 1:
        raise ConfigError(f"--evals must be >= 1, got {evals}")
    tau = float(drift_method_config(cfg.method, modes[0]).get("tau", 0.2))

    start = _task1_stage(cfg, out / "task1", tasks)
    results: dict[str, dict] = {}
    for mode in modes:
        mode_dir = out / f"mode_{mode}"
        cached = mode_dir / "drift_mode.json"
        want = {"evals": evals, "method": _condition_config(cfg, tasks, mode).method}
        if cached.is_file():
            data = json.loads(cached.read_text())
            if data.get("key") == want:
                results[mode] = data["result"]
                continue
        results[mode] = _condition_stage(cfg, mode_dir, out / "task1", tasks, mode, evals, start)
        atomic_write_json(cached, {"key": want, "result": results[mode]})

    drift = {
        "tasks": tasks,
        "tau": tau,
        "modes": modes,
        "evals": evals,
        "isolating_defaults": ISOLATING_DEFAULTS,
        "start": start,
        "results": results,
    }
    atomic_write_json(out / "drift.json", drift)
    if plot:
        plot_drift(drift, out / "drift.png")
    return drift


# ---------------------------------------------------------------------------- figure
def plot_drift(drift: Mapping[str, Any], path: str | Path, *, dpi: int = 110) -> Path:
    """Fig. 1-like figure from :func:`run_drift`'s dict; returns the PNG path.

    Panels: (a) forgetting of task 1 and (b) gain on task 2 per condition across task-2 checkpoints (step 0 = 0);
    (c) token-type fractions over all of task 2 per condition (stacked bars, all layers);
    (d) per-layer token-type fractions of the first condition (the baseline when ``none`` is run).
    """
    results = drift.get("results") or {}
    if not results:
        raise DataError("drift results are empty: nothing to plot")
    t1, t2 = drift["tasks"]
    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    colors = {"new": "#2a9d8f", "old": "#e76f51", "ambiguous": "#e9c46a"}
    for ax, key, title in ((axes[0, 0], "forgetting", f"forgetting on {t1} (pp, ↓ better)"),
                           (axes[0, 1], "gain", f"gain on {t2} (pp, ↑ better)")):
        for mode, res in results.items():
            ax.plot([0, *res["steps"]], [0.0, *res[key]], marker="o", label=MODE_LABELS.get(mode, mode))
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel(f"optimizer step of task 2 ({t2})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)

    ax = axes[1, 0]
    names = list(results)
    bottom = np.zeros(len(names))
    for t in TOKEN_TYPES:
        vals = np.array([results[m]["token_fractions_overall"]["all"][t] for m in names])
        ax.bar(range(len(names)), vals, bottom=bottom, color=colors[t], label=t)
        bottom += vals
    ax.set_xticks(range(len(names)), [MODE_LABELS.get(m, m) for m in names], rotation=20, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(f"token types over task 2 (τ = {drift.get('tau', 0.2):g}, all layers)")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    first = names[0]
    per_layer = {k: v for k, v in results[first]["token_fractions_overall"].items() if k != "all"}
    layers = list(per_layer)
    bottom = np.zeros(len(layers))
    for t in TOKEN_TYPES:
        vals = np.array([per_layer[k][t] for k in layers])
        ax.bar(range(len(layers)), vals, bottom=bottom, color=colors[t], label=t)
        bottom += vals
    ax.set_xticks(range(len(layers)), layers, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("decoder layer")
    ax.set_title(f"token types per layer: {MODE_LABELS.get(first, first)}")
    fig.suptitle(f"Routing drift: {t1} → {t2}")
    return _save(fig, path, dpi)
