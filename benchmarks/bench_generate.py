"""Greedy generation throughput: the frozen base vs the model after 8 tasks (128 folded experts, top-16).

Same LLaVA shapes as ``bench_train_step.py`` (``--preset 7b`` on a GPU, ``--preset cpu`` reduced), a batch of
prompts with an image each, ``--new-tokens`` greedy tokens with the KV cache. Three setups on one model, interleaved
over ``--rounds`` (A B C C B A ...; the median over rounds, so load drift on a shared machine hits all alike):

- ``base``: the frozen base (the expert layers bypassed: ``RoutingContext.bypass``);
- ``dense``: after 8 tasks, every expert of the bank computed for every token (``adapter.sparse = never``);
- ``sparse``: after 8 tasks, the default ``auto`` (each decoding step computes only each token's top-K experts;
  the prompt's prefill stays dense).

Checks that dense and sparse generate the same tokens. Prints JSON with new tokens/s for each setup and the ratios
to the base.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from bench_train_step import PRESETS, build_model, make_batch
from dymoe.injection import AdapterConfig, inject
from dymoe.layers import moe_lora


def attach_eight_tasks(model):
    adapter = inject(model, AdapterConfig(dropout=0.0))
    for k in range(8):
        adapter.add_group(k)
        with torch.no_grad():
            for m in adapter.modules.values():
                m.lora_B.normal_(std=1e-3)
        adapter.fold()
    model.to(next(model.parameters()).device)
    return adapter


def generate(model, inputs: dict, new_tokens: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              use_cache=True, pad_token_id=0)


def set_mode(adapter, mode: str) -> None:
    """``base`` (bypass the experts), ``dense`` or ``sparse`` (the layers' ``auto``)."""
    adapter.context.bypass = mode == "base"
    for m in adapter.modules.values():
        m.sparse = "never" if mode == "dense" else "auto"


def time_generate(model, batch, new_tokens: int, iters: int, warmup: int) -> float:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    times = []
    for it in range(warmup + iters):
        if inputs["input_ids"].is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        generate(model, inputs, new_tokens)
        if inputs["input_ids"].is_cuda:
            torch.cuda.synchronize()
        if it >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--text-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (order reversed every other round)")
    ap.add_argument("--sparse-factor", type=float, default=None,
                    help="override dymoe.layers.moe_lora.SPARSE_AUTO_FACTOR (auto goes sparse when N*K*factor <= E; "
                         "e.g. 0.125 makes every decoding step of a batch <= 64 sparse at top-16 of 128)")
    args = ap.parse_args()
    device = torch.device(args.device)
    preset = args.preset or ("7b" if device.type == "cuda" else "cpu")
    bs = args.batch or (16 if preset == "7b" else 4)
    iters = args.iters or (5 if device.type == "cuda" else 2)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_model(preset, device, dtype).eval()
    batch = make_batch(model, bs, args.text_tokens, device, dtype)
    if args.sparse_factor is not None:
        moe_lora.SPARSE_AUTO_FACTOR = args.sparse_factor
    adapter = attach_eight_tasks(model)
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    tokens = {}
    for mode in ("dense", "sparse"):
        set_mode(adapter, mode)
        tokens[mode] = generate(model, inputs, args.new_tokens)
    setups = ["base", "dense", "sparse"]
    per: dict[str, list[float]] = {s: [] for s in setups}
    for r in range(args.rounds):
        for mode in setups if r % 2 == 0 else setups[::-1]:
            set_mode(adapter, mode)
            per[mode].append(time_generate(model, batch, args.new_tokens, iters, warmup=1))
    sec = {s: statistics.median(v) for s, v in per.items()}
    res = {f"{s}_new_tokens_per_s": round(bs * args.new_tokens / sec[s], 1) for s in setups}
    res.update({
        "dense_over_base": round(sec["base"] / sec["dense"], 3),
        "sparse_over_base": round(sec["base"] / sec["sparse"], 3),
        "sparse_speedup_over_dense": round(sec["dense"] / sec["sparse"], 3),
        "same_tokens_dense_sparse": bool(torch.equal(tokens["dense"], tokens["sparse"])),
        "rounds_s": {s: [round(v, 4) for v in per[s]] for s in setups},
    })
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "torch": torch.__version__, "preset": preset, "batch": bs,
           "prompt_tokens": batch["input_ids"].shape[1], "new_tokens": args.new_tokens, "dtype": str(dtype), "rounds": args.rounds,
           "sparse_auto_factor": moe_lora.SPARSE_AUTO_FACTOR}
    print(json.dumps({"env": env, "results": res}, indent=1))


if __name__ == "__main__":
    main()
