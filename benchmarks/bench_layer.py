"""Forward+backward of one wrapped projection: dymoe's fused layer vs the per-expert loop vs PEFT LoRA.

Setups, at LLaMA-7B projection shapes (4096→4096 attention, 4096→11008 MLP):
- ``frozen``: the frozen ``nn.Linear`` alone (the floor);
- ``peft_lora``: PEFT LoRA with the same total rank as the expert bank (E × r);
- ``fused``: :class:`dymoe.layers.MoELoRALinear`; 16 experts = one trainable group (task 1); 128 experts =
  112 frozen + 16 trainable (task 8);
- ``loop``: the per-expert loop of CoIN / MCITlib / Prism (``for i in range(E)``: two small GEMMs per expert), same
  routing, same frozen/trainable split.

Run: ``python benchmarks/bench_layer.py [--device cuda] [--tokens N] [--dtype bfloat16]``; prints one JSON object.

``--inference`` times the forward alone in eval mode without gradients (greedy decoding's regime: ``--tokens`` is the
batch of one decoding step) after all tasks are folded: ``frozen``, ``dense`` (the fused layer, ``sparse="never"``)
and ``sparse`` (only each token's top-K experts, ``sparse="always"``), interleaved over ``--rounds`` (order reversed
every other round), median over rounds::

    python benchmarks/bench_layer.py --inference --tokens 4 --shapes 512x512,512x1376 --experts 128 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch
import torch.nn as nn

from dymoe.layers.functional import route, router_scores
from dymoe.layers.moe_lora import MoELoRALinear


class LoopMoELoRA(nn.Module):
    """CoIN-style MoE-LoRA: a ModuleList of experts and a Python loop (the reference the fused layer replaces)."""

    def __init__(self, base: nn.Linear, n_frozen: int, n_train: int, rank: int, top_k: int, temperature: float):
        super().__init__()
        self.base, self.top_k, self.temperature = base, top_k, temperature
        n = n_frozen + n_train
        self.A = nn.ModuleList(nn.Linear(base.in_features, rank, bias=False) for _ in range(n))
        self.B = nn.ModuleList(nn.Linear(rank, base.out_features, bias=False) for _ in range(n))
        self.router = nn.Parameter(torch.randn(n, base.in_features) * 0.02)
        for i in range(n_frozen):
            self.A[i].requires_grad_(False)
            self.B[i].requires_grad_(False)
        self.scaling = 2.0

    def forward(self, x):
        w = route(router_scores(x, self.router, "cosine"), self.top_k, self.temperature).to(x.dtype)
        out = self.base(x)
        for i in range(len(self.A)):
            out = out + self.B[i](self.A[i](x)) * w[:, i : i + 1] * self.scaling
        return out


def build(setup: str, d_in: int, d_out: int, n_experts: int, rank: int, top_k: int, device, dtype):
    base = nn.Linear(d_in, d_out, bias=False, device=device, dtype=dtype)
    base.weight.requires_grad_(False)
    n_train = min(16, n_experts)
    if setup == "frozen":
        return base
    if setup in ("dense", "sparse"):
        # inference after all tasks: the whole bank folded, one layer per path
        layer = MoELoRALinear(base, alpha=128, bank_rank=64, top_k=top_k, router="cosine", dropout=0.0,
                              sparse="never" if setup == "dense" else "always")
        layer.add_group(0, n_experts, rank, trainable=False)
        with torch.no_grad():
            layer.frozen_B.normal_(std=0.01)
        return layer.to(device=device, dtype=dtype).eval()
    if setup == "fused":
        layer = MoELoRALinear(base, alpha=128, bank_rank=64, top_k=top_k, router="cosine", dropout=0.0)
        if n_experts > n_train:
            layer.add_group(0, n_experts - n_train, rank, trainable=False)
        layer.add_group(1, n_train, rank)
        with torch.no_grad():
            layer.lora_B.normal_(std=0.01)
        return layer.to(device=device, dtype=dtype)
    if setup == "loop":
        return LoopMoELoRA(base, n_experts - n_train, n_train, rank, top_k, 0.01).to(device=device, dtype=dtype)
    if setup == "peft_lora":
        from peft import LoraConfig, get_peft_model

        holder = nn.Sequential()
        holder.add_module("proj", base)
        model = get_peft_model(holder, LoraConfig(r=n_experts * rank, lora_alpha=2 * n_experts * rank,
                                                  target_modules=["proj"], lora_dropout=0.0))
        return model.to(device=device, dtype=dtype)
    raise ValueError(setup)


def time_step(module, x, iters: int, warmup: int) -> float:
    """Median milliseconds of forward + backward (loss = mean of squares, grads into x and the trainables)."""
    params = [p for p in module.parameters() if p.requires_grad]
    times = []
    for it in range(warmup + iters):
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = module(x)
        loss = out.float().pow(2).mean()
        grads = torch.autograd.grad(loss, [x, *params])
        del grads
        if x.is_cuda:
            torch.cuda.synchronize()
        if it >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_forward(module, x, iters: int, warmup: int) -> float:
    """Median milliseconds of a forward without gradients (inference)."""
    times = []
    with torch.no_grad():
        for it in range(warmup + iters):
            if x.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            module(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if it >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def inference_rows(args, device, dtype, tokens: int, iters: int) -> list[dict]:
    """``--inference``: frozen vs dense vs sparse forward, interleaved rounds, one row per shape × experts."""
    rows = []
    for shape in args.shapes.split(","):
        d_in, d_out = map(int, shape.split("x"))
        x = torch.randn(tokens, d_in, device=device, dtype=dtype)
        for n_exp in args.experts:
            setups = args.setups.split(",")
            modules = {s: build(s, d_in, d_out, n_exp, 4, 16, device, dtype) for s in setups}
            if "dense" in modules and "sparse" in modules:
                with torch.no_grad():  # the same bank in both: compare the paths, not two random draws
                    modules["sparse"].load_state_dict(modules["dense"].state_dict())
                    torch.testing.assert_close(modules["sparse"](x), modules["dense"](x), atol=1e-2, rtol=1e-2)
            per: dict[str, list[float]] = {s: [] for s in setups}
            for r in range(args.rounds):
                for s in setups if r % 2 == 0 else setups[::-1]:
                    per[s].append(time_forward(modules[s], x, iters, warmup=3))
            row = {"shape": shape, "experts": n_exp, "rank": 4, "top_k": 16, "tokens": tokens}
            for s in setups:
                row[f"{s}_ms"] = round(statistics.median(per[s]), 4)
                row[f"{s}_rounds_ms"] = [round(v, 4) for v in per[s]]
            if "dense_ms" in row and "sparse_ms" in row:
                row["dense_over_sparse"] = round(row["dense_ms"] / row["sparse_ms"], 3)
            if "frozen_ms" in row:
                for s in ("dense", "sparse"):
                    if f"{s}_ms" in row:
                        row[f"{s}_over_frozen"] = round(row[f"{s}_ms"] / row["frozen_ms"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per step; default 5120 (8×640) on CUDA, 256 on CPU")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--experts", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--shapes", default="4096x4096,4096x11008")
    ap.add_argument("--setups", default=None, help="default frozen,peft_lora,fused,loop (--inference: frozen,dense,sparse)")
    ap.add_argument("--inference", action="store_true", help="forward only, no gradients, folded bank: dense vs sparse")
    ap.add_argument("--rounds", type=int, default=2, help="--inference: interleaved rounds")
    args = ap.parse_args()
    args.setups = args.setups or ("frozen,dense,sparse" if args.inference else "frozen,peft_lora,fused,loop")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    tokens = args.tokens or ((16 if args.inference else 5120) if device.type == "cuda" else (4 if args.inference else 256))
    iters = args.iters or ((50 if args.inference else 20) if device.type == "cuda" else (20 if args.inference else 5))
    torch.manual_seed(0)
    results = []
    if args.inference:
        results = inference_rows(args, device, dtype, tokens, iters)
    for shape in [] if args.inference else args.shapes.split(","):
        d_in, d_out = map(int, shape.split("x"))
        x = torch.randn(tokens, d_in, device=device, dtype=dtype, requires_grad=True)
        for n_exp in args.experts:
            row = {"shape": shape, "experts": n_exp, "rank": 4, "top_k": 16}
            for setup in args.setups.split(","):
                try:
                    module = build(setup, d_in, d_out, n_exp, 4, 16, device, dtype)
                except ImportError as err:
                    row[f"{setup}_ms"] = f"unavailable ({err})"
                    continue
                row[f"{setup}_ms"] = round(time_step(module, x, iters, warmup=3), 3)
                del module
            f = row.get("frozen_ms")
            for setup in ("peft_lora", "fused", "loop"):
                if isinstance(row.get(f"{setup}_ms"), float) and isinstance(f, float):
                    row[f"{setup}_over_frozen"] = round(row[f"{setup}_ms"] / f, 3)
            if isinstance(row.get("loop_ms"), float) and isinstance(row.get("fused_ms"), float):
                row["loop_over_fused"] = round(row["loop_ms"] / row["fused_ms"], 2)
            results.append(row)
            print(json.dumps(row), flush=True)
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": str(dtype),
        "tokens": tokens,
        "iters": iters,
        "mode": "inference (forward, no grad, folded bank)" if args.inference else "training (forward + backward)",
    }
    print(json.dumps({"env": env, "results": results}, indent=1))
    assert all(math.isfinite(v) for r in results for k, v in r.items() if k.endswith("_ms") and isinstance(v, float))


if __name__ == "__main__":
    main()
