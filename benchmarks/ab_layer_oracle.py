"""The training step with today's expert layers vs the frozen pre-issue-15 layers, in one process, interleaved.

On a shared machine two processes never see the same load; here both variants live in one model: every wrapped
module exists twice, today's :class:`~dymoe.layers.moe_lora.MoELoRALinear` and the frozen copy of the layer before
issue 15 (``tests/layers/frozen_v1.py``), holding the *same* parameter objects, and the step alternates between them
(the modules are swapped in place before each step, order reversed every other round). The step is the runner's
(``forward_loss`` + backward, no optimizer) on ``bench_train_step.py``'s model, at task 8 (112 folded + 16 trainable
experts per module) for IncMoELoRA and LLaVA-DyMoE (TAG, RSR and the load-balancing loss active).

    python benchmarks/ab_layer_oracle.py [--preset cpu] [--steps 20] [--methods incmoelora,dymoe]

Prints one JSON object: per method the median ms per step of each variant, the ratio new ÷ old and every step's
time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from bench_train_step import build_model, make_batch
from dymoe.injection import AdapterConfig, inject
from dymoe.methods import build_method
from dymoe.methods.base import StepInfo, TaskInfo
from dymoe.runner.trainer import forward_loss

ORACLE = Path(__file__).resolve().parents[1] / "tests" / "layers" / "frozen_v1.py"


def load_oracle():
    spec = importlib.util.spec_from_file_location("dymoe_frozen_v1", ORACLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dymoe_frozen_v1"] = module
    spec.loader.exec_module(module)
    return module


def twin(v1, layer):
    """A frozen-v1 layer sharing ``layer``'s base, context and parameter objects."""
    old = v1.MoELoRALinear(layer.base, alpha=layer.alpha, bank_rank=layer.bank_rank, top_k=layer.top_k,
                           router=layer.router_mode, temperature=layer.temperature, cos_scale=layer.cos_scale,
                           dropout=0.0, init=layer.init, context=layer.context)
    old.load_structure(layer.structure())
    for name, p in layer.named_tensors():
        if name.endswith("router") and p.shape[1] != old.in_features:  # router "none" (issue 12): keep v1's rows
            continue
        setattr(old, name, p)
    return old


def setup(method_name: str, preset: str, device, dtype):
    model = build_model(preset, device, dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    method = build_method({"name": method_name})
    adapter = inject(model, method.configure_adapter(AdapterConfig(dropout=0.0)))
    method.setup(model, adapter)
    for k in range(8):
        method.before_task(TaskInfo(index=k, name=f"task{k}", num_tasks=8, total_steps=100))
        if k < 7:
            with torch.no_grad():
                for m in adapter.modules.values():
                    m.lora_B.normal_(std=1e-3)
            adapter.fold()
    return model, adapter, method


def timed_step(model, adapter, method, batch, info, layers: dict) -> float:
    """Swap ``layers`` into the model, run one step (forward_loss + backward); returns milliseconds."""
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    adapter.modules = layers
    t0 = time.perf_counter()
    loss, _, _ = forward_loss(model, adapter, method, batch, info)
    loss.backward()
    elapsed = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return elapsed * 1e3


def measure(method_name: str, args, v1) -> dict:
    torch.manual_seed(0)
    device, dtype = torch.device("cpu"), torch.float32
    model, adapter, method = setup(method_name, args.preset, device, dtype)
    variants = {"new": dict(adapter.modules), "old": {n: twin(v1, m) for n, m in adapter.modules.items()}}
    if hasattr(method, "_names"):  # DyMoE's observer finds modules by identity: know both twins
        method._names.update({id(m): n for n, m in variants["old"].items()})
    batch = make_batch(model, args.batch, args.text_tokens, device, dtype)
    info = StepInfo(step=80, total_steps=100)  # RSR ramping, as bench_train_step times it
    for which in ("new", "old", "new", "old"):  # warm-up
        timed_step(model, adapter, method, batch, info, variants[which])
    times: dict[str, list[float]] = {"new": [], "old": []}
    for r in range(args.steps):
        for which in ("new", "old") if r % 2 == 0 else ("old", "new"):
            times[which].append(round(timed_step(model, adapter, method, batch, info, variants[which]), 1))
    new, old = statistics.median(times["new"]), statistics.median(times["old"])
    return {"new_ms": round(new, 1), "old_ms": round(old, 1), "ratio": round(new / old, 4),
            "new_steps_ms": times["new"], "old_steps_ms": times["old"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="steps per variant (after 2 warm-up steps each)")
    ap.add_argument("--methods", default="incmoelora,dymoe")
    args = ap.parse_args()
    v1 = load_oracle()
    results = {}
    for method_name in args.methods.split(","):
        results[method_name] = measure(method_name, args, v1)
        print(json.dumps({method_name: results[method_name]}), flush=True)
    env = {"device": platform.processor() or "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
           "preset": args.preset, "batch": args.batch, "steps": args.steps}
    print(json.dumps({"env": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
