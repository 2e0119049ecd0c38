"""How well does DyMoE's task router identify the task (issue 14, dymoe.md §12.1)? No training needed.

The router's prototypes and the features it compares them with come from the *frozen* backbone (the vision tower
and projector's image features, the language model's input embeddings), so its accuracy does not depend on what
the adapter learned: it is a property of the data and the base model. This probe computes exactly what a run with
``method.task_router=true`` computes after its last task, without training or generating:

* each task's prototype from the same training batches a run uses (the trainer's ``iter_batches`` over the task's
  training set, ``method.task_router_batches`` of them);
* each test set's prompts collated as evaluation collates them (``build_generation_batch``: the chat template, no
  answer) and routed with ``method.group_mask(batch, "eval")``;
* the per-task accuracy the run writes into ``metrics.json`` (``method_eval.after_task_<T>.task_router``).

A full run's number is the reference (``tests``-free check): ``--compare RUN_DIR`` prints the run's accuracy beside
the probe's. Every feature form (``image_text``, ``text``) and training seed asked for is measured.

    python benchmarks/task_router_probe.py [--config configs/demo/minicoin.yaml] [--seeds 0,1,2] \
        [--features image_text,text] [--set KEY=VALUE ...] [--output benchmarks/results/task-router-probe.json]

Prints a Markdown table per feature form and writes the JSON. One torch thread (OMP_NUM_THREADS=1 on a shared
machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from dymoe.config import load_config
from dymoe.data.collate import build_generation_batch
from dymoe.methods.base import TaskInfo
from dymoe.runner.continual import ContinualRun

ROOT = Path(__file__).resolve().parents[1]


def router_accuracy(cfg, workdir: Path) -> dict:
    """The task router's ``metrics.json`` entry after the last task of ``cfg``'s sequence (no training)."""
    run = ContinualRun(cfg, workdir)
    run.setup()
    method, trainer = run.method, run.trainer
    with torch.no_grad():
        for k, task in enumerate(run.tasks):
            trainer.samples = list(run.train_set(task))  # what trainer.train() sets before a task
            method.update_prototype(TaskInfo(index=k, name=task.name, num_tasks=len(run.tasks)), trainer)
        bs = cfg.evaluation.batch_size
        for j, task in enumerate(run.tasks):
            method.begin_evaluation(j, task.name)
            samples = run.test_set(task)
            for start in range(0, len(samples), bs):
                batch = build_generation_batch(run.processor, samples[start:start + bs],
                                               max_length=cfg.evaluation.max_length)
                batch = {k: v.to(run.acc.device) for k, v in batch.items()}
                method.group_mask(batch, "eval")
    return method.evaluation_metrics()["task_router"]


def table(rows: dict[int, dict]) -> str:
    tasks = list(next(iter(rows.values()))["accuracy"])
    lines = ["| seed | " + " | ".join(tasks) + " | mean |", "|---:|" + "---:|" * (len(tasks) + 1)]
    for seed, r in rows.items():
        lines.append(f"| {seed} | " + " | ".join(f"{r['accuracy'][t]:.2f}" for t in tasks) + f" | {r['mean']:.2f} |")
    return "\n".join(lines)


def confusion(r: dict) -> str:
    """Rows: the test set; columns: the predicted task (counts)."""
    tasks = list(r["predicted"])
    lines = ["| test set \\ predicted | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(str(c) for c in r["predicted"][t]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo" / "minicoin.yaml"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--features", default="image_text,text")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--compare", action="append", default=[], metavar="RUN_DIR",
                    help="a finished run with the task router: its metrics.json accuracy beside the probe's")
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    config = Path(args.config).resolve()
    result: dict = {"config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config), "overrides": args.overrides, "machine": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "features": {}}
    t0 = time.perf_counter()
    for features in args.features.split(","):
        rows = {}
        for seed in seeds:
            cfg = load_config(args.config, ["method.name=dymoe", "method.task_router=true",
                                            f"method.task_router_features={features}", f"training.seed={seed}",
                                            "trackers=[]", *args.overrides])
            with tempfile.TemporaryDirectory() as tmp:
                rows[seed] = router_accuracy(cfg, Path(tmp) / "run")
        result["features"][features] = {str(s): r for s, r in rows.items()}
        print(f"\n### task_router_features={features}\n\n{table(rows)}\n\nseed {seeds[0]}, test set × predicted "
              f"task:\n\n{confusion(rows[seeds[0]])}")
    for run_dir in args.compare:
        m = json.loads((Path(run_dir) / "metrics.json").read_text())
        ev = m.get("method_eval") or {}
        last = ev[max(ev, key=lambda k: int(k.rsplit("_", 1)[1]))]["task_router"]
        feats = load_config(Path(run_dir) / "config.yaml").method.get("task_router_features", "image_text")
        probe = result["features"].get(feats, {}).get(str(m.get("seed")))
        same = probe is not None and probe["predicted"] == last["predicted"]
        print(f"\n{run_dir} ({feats}, seed {m.get('seed')}): run {last['accuracy']} mean {last['mean']}; "
              f"probe {'identical counts' if same else 'DIFFERS: ' + str(probe and probe['accuracy'])}")
        result.setdefault("compare", {})[str(run_dir)] = {"run": last, "identical": same}
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{result['wall_seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
