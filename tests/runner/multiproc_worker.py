"""Short continual runs of every method, for the one- vs two-process tests (``test_multiprocess.py``).

Run as one process (``python multiproc_worker.py OUT``) or through ``torchrun --nproc_per_node 2`` (gloo); with
``ACCELERATE_USE_DEEPSPEED=true`` in the environment the same runs go through DeepSpeed ZeRO-2. Every case is one
``dymoe run`` of ``configs/smoke.yaml`` with the overrides below: two tasks of 14 samples (16 with replay), global
batch 8 of micro-batches of 2, so every task has a partial last global batch (one micro-batch of a two-process
step is a zero-weight one).
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from dymoe.config import load_config
from dymoe.methods import METHODS
from dymoe.methods.incmoelora import IncMoELoRA
from dymoe.runner.continual import run

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
sys.path.insert(0, str(ROOT / "tests" / "methods"))
from planner_method import PlannerMethod  # noqa: E402  (the test method package: planning phase, locator)

COMMON = [
    "benchmark.order=[ScienceQA, ImageNet]",
    "benchmark.max_train_samples=14",
    "benchmark.max_eval_samples=2",
    "evaluation.max_new_tokens=2",
    "evaluation.batch_size=2",
    "training.batch_size=2",
    "training.global_batch_size=8",
    "training.warmup_ratio=0.0",
    "trackers=[]",
]


class ProjectedIncMoELoRA(IncMoELoRA):
    """IncMoELoRA plus a method-owned trainable projector (a registered module) with its own loss term."""

    name = "test-projector"

    def setup(self, model, adapter):
        super().setup(model, adapter)
        if "proj" not in self.owned_modules:
            d = model.get_input_embeddings().embedding_dim
            gen = torch.Generator().manual_seed(123)
            proj = torch.nn.Linear(d, 4)
            with torch.no_grad():
                proj.weight.copy_(torch.randn(4, d, generator=gen) * 0.1)
                proj.bias.zero_()
            self.register_module("proj", proj)

    def loss_terms(self, batch, outputs, step):
        emb = self.model.get_input_embeddings()(batch["input_ids"]).detach().mean(1)  # [B, d]
        return {"proj": 1e-2 * (self.owned_modules["proj"](emb) - 1.0).pow(2).mean()}


# registered methods that refuse several processes with a clear error (none at present)
SINGLE_PROCESS: set[str] = set()
# every registered method, plus the test methods (registered by main(), in the worker process only)
CASES: dict[str, list[str]] = {name: [f"method.name={name}"]
                               for name in [*METHODS.names(), ProjectedIncMoELoRA.name, PlannerMethod.name]
                               if name not in SINGLE_PROCESS}
# D-MoLE's experts default to the paper's dropout 0.05, whose masks depend on how samples are split over processes
CASES["dmole"] = ["method.name=dmole", "method.dropout=0.0"]
# SMoE-DSAL's identification counts are compared too (summed over processes): its main evaluation picks modules by
# ablation 3's router margins, which differ between modules by far more than the 1e-6 the two-process weights
# differ by; DSAL values of the tiny random backbone are all ≈ log V, modules apart by ~1e-6 (so a DSAL pick flips
# with the batch's padding). DSAL selection still runs on both processes, as the ``dsal`` variant.
CASES["smoe_dsal"] = ["method.name=smoe_dsal", "method.selection=router", "method.variants=[dsal]"]
CASES["incmoelora+replay"] = ["method.name=incmoelora", "replay.samples_per_task=2"]
CASES["dymoe+prune"] = ["method.name=dymoe", "method.prune_fraction=0.25"]
# CoIN's baselines train the real projector (an owned module at its own lr); ScienceQA's text-only samples make
# image-less micro-batches, where only the zero "projector_idle" term keeps it in DDP's reduction
CASES["lora+projector"] = ["method.name=lora", "method.projector_lr=1.0e-3"]


def checkpoint_tensors(run_dir: Path, k: int, task: str) -> dict[str, torch.Tensor]:
    """Adapter and method-state tensors of task ``k``'s checkpoint, keys prefixed ``adapter/`` and ``method/``."""
    ckpt = run_dir / "checkpoints" / f"task_{k}_{task}"
    out = {f"adapter/{n}": t for n, t in load_file(str(ckpt / "adapter.safetensors")).items()}
    if (ckpt / "method_state.safetensors").is_file():
        out.update({f"method/{n}": t for n, t in load_file(str(ckpt / "method_state.safetensors")).items()})
    return out


def max_abs_diff(a_dir: Path, b_dir: Path, k: int, task: str) -> float:
    """Largest absolute difference over every tensor of two runs' task-``k`` checkpoints (same keys and shapes)."""
    a, b = checkpoint_tensors(a_dir, k, task), checkpoint_tensors(b_dir, k, task)
    if a.keys() != b.keys():
        raise AssertionError(f"different tensors: {sorted(set(a) ^ set(b))[:4]}")
    worst = 0.0
    for key in a:
        if a[key].shape != b[key].shape:
            raise AssertionError(f"{key}: shapes {tuple(a[key].shape)} vs {tuple(b[key].shape)}")
        if a[key].numel():
            worst = max(worst, float((a[key].float() - b[key].float()).abs().max()))
    return worst


def step_rows(run_dir: Path) -> list[dict]:
    """The run's ``train_steps.jsonl`` rows."""
    return [json.loads(line) for line in (run_dir / "train_steps.jsonl").read_text().splitlines()]


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    for cls in (ProjectedIncMoELoRA, PlannerMethod):
        if cls.name not in METHODS.names():
            METHODS.add(cls.name, cls)
    out = Path(argv[0])
    names = argv[1].split(",") if len(argv) > 1 and argv[1] else list(CASES)
    for name in names:
        run_dir = out / name.replace("+", "_")
        run(load_config(SMOKE, [*COMMON, *CASES[name]]), run_dir)
        if os.environ.get("DYMOE_WORKER_MEMORY") and torch.cuda.is_available():
            # what a finished run leaves allocated (a leaked engine or optimizer state would stay)
            gc.collect()
            torch.cuda.empty_cache()
            rank = int(os.environ.get("RANK", "0"))
            (run_dir / "memory.json" if rank == 0 else run_dir / f"memory.rank{rank}.json").write_text(json.dumps({
                "peak_bytes": torch.cuda.max_memory_allocated(), "after_run_bytes": torch.cuda.memory_allocated()}))
            torch.cuda.reset_peak_memory_stats()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
