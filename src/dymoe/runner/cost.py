"""What a method costs, per task: training time and throughput, memory, parameters, and inference overhead.

The runner records one :func:`task_cost` dict per task (kept in the task's checkpoint metadata with the training
log, in ``metrics.json`` under ``cost`` and as a table + plot in ``report.md``):

- ``train_seconds``, ``optimizer_steps``, ``samples``, ``tokens`` (answer tokens the LM loss averages over, summed
  over the task's global batches; a task resumed from a step checkpoint counts from its resume point),
  ``samples_per_s``, ``tokens_per_s``;
- ``peak_memory_bytes`` with ``peak_memory_kind``: ``cuda_max_allocated`` (this task's peak of
  ``torch.cuda.max_memory_allocated``) or ``cpu_max_rss`` (the process's peak resident set so far, from
  ``getrusage``: on CPU there is no per-task peak);
- ``params_added`` (adapter parameters after the task minus before it), ``params_trainable`` (what the optimizer
  trained), ``total_adapter_params``, ``model_bytes`` (the backbone's parameters and buffers);
- inference on a fixed probe batch (the first test questions of the first task): ``flops_per_token_base`` and
  ``flops_per_token_adapted`` (FLOPs of one greedy decode step per sequence, from
  ``torch.utils.flop_counter.FlopCounterMode``: the FLOPs of ``generate`` with 2 new tokens minus those with 1,
  divided by the batch), ``flops_overhead`` (adapted / base − 1), and the measured generation throughput
  ``gen_tokens_per_s_base`` / ``gen_tokens_per_s_adapted`` (``min_new_tokens = max_new_tokens``, so both make the
  same number of tokens). "Base" is the frozen backbone with every wrapped module bypassed
  (:func:`adapter_bypassed`); "adapted" runs the method's evaluation routing, as evaluation does.

FLOPs are what ``FlopCounterMode`` counts: matrix products and convolutions (2 per multiply-add), not element-wise
work; dymoe's fused layer computes every expert of the bank (the gates zero the unused ones), so the count is its
real cost, not an ideal top-K one.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

PROBE_QUESTIONS = 4

# cost fields shown in report.md's table: (key, header, format)
TABLE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("train_seconds", "train s", "{:.1f}"),
    ("optimizer_steps", "steps", "{:d}"),
    ("samples", "samples", "{:d}"),
    ("tokens", "tokens", "{:,}"),
    ("samples_per_s", "samples/s", "{:.2f}"),
    ("tokens_per_s", "tokens/s", "{:.1f}"),
    ("peak_memory_bytes", "peak MiB", "mib"),
    ("params_added", "params added", "{:,}"),
    ("params_trainable", "trainable", "{:,}"),
    ("total_adapter_params", "adapter total", "{:,}"),
    ("flops_per_token_adapted", "GFLOP/token", "gflop"),
    ("flops_overhead", "FLOP overhead", "{:+.2%}"),
    ("gen_tokens_per_s_adapted", "gen tok/s", "{:.1f}"),
    ("gen_tokens_per_s_base", "gen tok/s (base)", "{:.1f}"),
)


def format_cost(key_format: str, value: Any) -> str:
    """A table cell for one cost value (``n/a`` when missing)."""
    if value is None:
        return "n/a"
    if key_format == "mib":
        return f"{value / 2**20:,.0f}"
    if key_format == "gflop":
        return f"{value / 1e9:.4g}"
    try:
        return key_format.format(value)
    except (ValueError, TypeError):
        return str(value)


@contextmanager
def adapter_bypassed(adapter) -> Iterator[None]:
    """Every wrapped module computes its frozen base linear only (the adapter's experts are skipped)."""
    modules = list(adapter.modules.values())
    for m in modules:
        m.forward = m.base.forward  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for m in modules:
            del m.forward


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` as ``FlopCounterMode`` counts them (matmuls / convs, 2 per MAC)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def peak_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, kind)``: the CUDA allocator's peak since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_max_rss"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model`` (adapter included)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _generate(model, batch: dict, new_tokens: int, pad_id: int) -> torch.Tensor:
    return model.generate(**batch, do_sample=False, use_cache=True, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, pad_token_id=pad_id, temperature=None, top_p=None, top_k=None)


def inference_cost(model, processor, adapter, samples: Sequence, *, max_length: int, new_tokens: int,
                   batch_hook=None) -> dict[str, Any]:
    """FLOPs per generated token and generation throughput, adapted vs base, on the probe ``samples``.

    Returns the ``flops_*`` and ``gen_tokens_per_s_*`` fields of the module docstring (``probe_questions`` and
    ``probe_new_tokens`` too). ``batch_hook(batch)`` sets the method's evaluation routing for the batch.
    """
    from dymoe.data.collate import build_generation_batch
    from dymoe.models.families import tokenizer_of

    tokenizer = tokenizer_of(processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch = build_generation_batch(processor, list(samples), max_length=max_length)
    batch = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in batch.items()}
    n = int(batch["input_ids"].shape[0])
    new_tokens = max(int(new_tokens), 2)
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {"probe_questions": n, "probe_new_tokens": new_tokens}
    try:
        with torch.no_grad():
            for name, bypass in (("base", True), ("adapted", False)):
                ctx = adapter_bypassed(adapter) if bypass else _nothing()
                with ctx:
                    if batch_hook is not None and not bypass:
                        batch_hook(batch)
                    one = count_flops(_generate, model, batch, 1, pad_id)
                    two = count_flops(_generate, model, batch, 2, pad_id)
                    out[f"flops_per_token_{name}"] = (two - one) // n
                    t0 = time.perf_counter()
                    _generate(model, batch, new_tokens, pad_id)
                    out[f"gen_tokens_per_s_{name}"] = n * new_tokens / max(time.perf_counter() - t0, 1e-9)
    finally:
        model.train(was_training)
    base = out.get("flops_per_token_base")
    out["flops_overhead"] = out["flops_per_token_adapted"] / base - 1 if base else None
    return out


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def task_cost(result, *, params_before: int, params_after: int, trainable: int, peak: tuple[int, str],
              model_size: int, inference: dict[str, Any] | None) -> dict[str, Any]:
    """One task's cost record (see the module docstring) from the trainer's result and the runner's counts."""
    seconds = float(result.seconds)
    tokens = int(getattr(result, "tokens", 0))
    return {
        "train_seconds": round(seconds, 3),
        "optimizer_steps": int(result.steps),
        "samples": int(result.samples),
        "tokens": tokens,
        "samples_per_s": round(result.samples / seconds, 3) if seconds > 0 else None,
        "tokens_per_s": round(tokens / seconds, 3) if seconds > 0 else None,
        "peak_memory_bytes": peak[0],
        "peak_memory_kind": peak[1],
        "params_added": params_after - params_before,
        "params_trainable": trainable,
        "total_adapter_params": params_after,
        "model_bytes": model_size,
        **(inference or {}),
    }


def cost_table(costs: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines of the per-task cost table (rows: tasks; columns: :data:`TABLE_FIELDS`) and a total row."""
    head = "| task | " + " | ".join(h for _, h, _ in TABLE_FIELDS) + " |"
    lines = [head, "|---|" + "---:|" * len(TABLE_FIELDS)]
    for task, c in costs.items():
        lines.append(f"| {task} | " + " | ".join(format_cost(f, c.get(k)) for k, _, f in TABLE_FIELDS) + " |")
    totals = {k: sum(c.get(k) or 0 for c in costs.values()) for k in ("train_seconds", "optimizer_steps",
                                                                      "samples", "tokens", "params_added")}
    cells = [format_cost(f, totals[k]) if k in totals else "" for k, _, f in TABLE_FIELDS]
    lines.append("| **total** | " + " | ".join(cells) + " |")
    return lines


def plot_cost(costs: dict[str, dict[str, Any]], path, *, title: str | None = None, dpi: int = 100):
    """Two panels per task: adapter parameters (added, trainable, total) and training seconds; PNG at ``path``."""
    from matplotlib.figure import Figure

    from dymoe.io import atomic_writer

    tasks = list(costs)
    x = list(range(len(tasks)))
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    w = 0.27
    for off, key, label in ((-w, "params_added", "added"), (0.0, "params_trainable", "trainable"),
                            (w, "total_adapter_params", "adapter total")):
        ax1.bar([i + off for i in x], [costs[t].get(key) or 0 for t in tasks], width=w, label=label)
    ax1.set_title("adapter parameters per task")
    ax1.set_xticks(x, tasks, rotation=30, ha="right", fontsize=8)
    ax1.legend(fontsize=7)
    ax2.bar(x, [costs[t].get("train_seconds") or 0 for t in tasks], color="tab:gray")
    ax2.set_title("training time per task (s)")
    ax2.set_xticks(x, tasks, rotation=30, ha="right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(bottom=0.28, wspace=0.3)
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path
