"""Greedy generation throughput: the frozen base vs the model after 8 tasks (128 folded experts, top-16).

Same LLaVA shapes as ``bench_train_step.py`` (``--preset 7b`` on a GPU, ``--preset cpu`` reduced), a batch of
prompts with an image each, ``--new-tokens`` greedy tokens with the KV cache. Prints JSON with new tokens/s for each
setup and the ratio adapter ÷ base.
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


def attach_eight_tasks(model) -> None:
    adapter = inject(model, AdapterConfig(dropout=0.0))
    for k in range(8):
        adapter.add_group(k)
        with torch.no_grad():
            for m in adapter.modules.values():
                m.lora_B.normal_(std=1e-3)
        adapter.fold()
    model.to(next(model.parameters()).device)


def time_generate(model, batch, new_tokens: int, iters: int, warmup: int) -> float:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    times = []
    for it in range(warmup + iters):
        if inputs["input_ids"].is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           use_cache=True, pad_token_id=0)
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
    args = ap.parse_args()
    device = torch.device(args.device)
    preset = args.preset or ("7b" if device.type == "cuda" else "cpu")
    bs = args.batch or (16 if preset == "7b" else 4)
    iters = args.iters or (5 if device.type == "cuda" else 2)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = build_model(preset, device, dtype).eval()
    batch = make_batch(model, bs, args.text_tokens, device, dtype)
    base_s = time_generate(model, batch, args.new_tokens, iters, warmup=1)
    attach_eight_tasks(model)
    model.eval()
    ada_s = time_generate(model, batch, args.new_tokens, iters, warmup=1)
    res = {
        "base_new_tokens_per_s": round(bs * args.new_tokens / base_s, 1),
        "dymoe_8_tasks_new_tokens_per_s": round(bs * args.new_tokens / ada_s, 1),
        "ratio": round(base_s / ada_s, 3),
    }
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "torch": torch.__version__, "preset": preset, "batch": bs,
           "prompt_tokens": batch["input_ids"].shape[1], "new_tokens": args.new_tokens, "dtype": str(dtype)}
    print(json.dumps({"env": env, "results": res}, indent=1))


if __name__ == "__main__":
    main()
