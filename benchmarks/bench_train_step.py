"""Training-step throughput of a LLaVA-shaped model: frozen floor, PEFT LoRA, IncMoELoRA and DyMoE at tasks 1 and 8.

The step is the runner's (``dymoe.runner.trainer.forward_loss`` + backward + AdamW over the adapter), on random
weights. ``--preset 7b`` builds LLaVA-1.5-7B shapes (CLIP ViT-L/14-336 → 576 image tokens, 32 × 4096 Llama with
11008 MLP) for a GPU; ``--preset cpu`` a reduced LLaVA for this machine. Task 8 = 7 folded groups (112 frozen
experts) + 16 trainable per module, TAG and RSR active for DyMoE.

    python benchmarks/bench_train_step.py --preset 7b --batch 8 --text-tokens 64   # one H100
    python benchmarks/bench_train_step.py --preset cpu                              # CPU, reduced

Prints one JSON object: per setup ms/step, tokens/s (language-model tokens), samples/s, peak memory, and the
ratios to the frozen floor and DyMoE ÷ IncMoELoRA.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import time

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from dymoe.injection import AdapterConfig, inject
from dymoe.methods import build_method
from dymoe.methods.base import StepInfo, TaskInfo
from dymoe.runner.trainer import forward_loss

PRESETS = {
    # LLaVA-1.5-7B: CLIP ViT-L/14-336 + Vicuna-7B shapes
    "7b": dict(
        text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768),
    ),
    # a reduced model for CPU runs: same structure, 1/8 width, 4 layers, 144 image tokens
    "cpu": dict(
        text=dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=8, vocab_size=32064, max_position_embeddings=4096),
        vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                    image_size=168, patch_size=14, projection_dim=256),
    ),
}
IMAGE_TOKEN = 32000


def build_model(preset: str, device, dtype) -> LlavaForConditionalGeneration:
    p = PRESETS[preset]
    n_img = (p["vision"]["image_size"] // p["vision"]["patch_size"]) ** 2
    cfg = LlavaConfig(
        text_config={"model_type": "llama", **p["text"], "pad_token_id": 0},
        vision_config={"model_type": "clip_vision_model", **p["vision"]},
        image_token_index=IMAGE_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=n_img, projector_hidden_act="gelu",
    )
    cfg.text_config._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(old)
    model.n_image_tokens = n_img
    return model


def make_batch(model, batch: int, text_tokens: int, device, dtype) -> dict:
    n_img = model.n_image_tokens
    size = model.config.vision_config.image_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 31999, (batch, 1 + n_img + text_tokens), generator=g)
    ids[:, 1 : 1 + n_img] = IMAGE_TOKEN
    labels = ids.clone()
    labels[:, : 1 + n_img + text_tokens // 2] = -100  # the answer is the second half of the text
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": labels.to(device),
        "pixel_values": torch.randn(batch, 3, size, size, generator=g).to(device=device, dtype=dtype),
    }


def prepare(setup: str, model, adapter_cfg: AdapterConfig):
    """Freeze, attach the setup's adapter; returns (trainable params, step fn)."""
    for p in model.parameters():
        p.requires_grad_(False)
    if setup == "frozen":
        # the floor: the language model's full activation backward, no weight gradient (like the adapters, which
        # backpropagate through the language model only; the vision tower stays forward-only)
        def lm_inputs_require_grad(module, args, kwargs):
            emb = kwargs.get("inputs_embeds")
            if emb is not None and not emb.requires_grad:
                kwargs["inputs_embeds"] = emb.detach().requires_grad_(True)
            return args, kwargs

        model.model.language_model.register_forward_pre_hook(lm_inputs_require_grad, with_kwargs=True)

        def step(batch):
            return model(**batch).loss

        return [], step
    if setup == "peft_lora":
        from peft import LoraConfig, get_peft_model

        rank = adapter_cfg.experts_per_group * adapter_cfg.expert_rank
        peft_model = get_peft_model(model, LoraConfig(
            r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"))

        def step(batch):
            return peft_model(**batch).loss

        return [p for p in peft_model.parameters() if p.requires_grad], step
    method_name, task = setup.rsplit("_t", 1)
    task = int(task)
    method = build_method({"name": method_name})
    adapter = inject(model, method.configure_adapter(adapter_cfg))
    method.setup(model, adapter)
    for k in range(task):
        info = TaskInfo(index=k, name=f"task{k}", num_tasks=8, total_steps=100)
        method.before_task(info)
        if k < task - 1:
            with torch.no_grad():
                for m in adapter.modules.values():
                    m.lora_B.normal_(std=1e-3)
            adapter.fold()  # older tasks: folded and frozen (skip method.after_task's data passes)
    # RSR is on in the second half of a task: time a step in that half
    info_step = StepInfo(step=80, total_steps=100)

    def step(batch):
        loss, _, _ = forward_loss(model, adapter, method, batch, info_step)
        return loss

    return adapter.trainable_parameters(), step


def time_setup(setup: str, args, device, dtype) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_model(args.preset, device, dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    adapter_cfg = AdapterConfig(dropout=0.0)
    params, step = prepare(setup, model, adapter_cfg)
    opt = torch.optim.AdamW(params, lr=1e-5) if params else None
    batch = make_batch(model, args.batch, args.text_tokens, device, dtype)
    times = []
    for it in range(args.warmup + args.iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = step(batch)
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if it >= args.warmup:
            times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    lm_tokens = batch["input_ids"].numel()
    out = {
        "setup": setup,
        "ms_per_step": round(ms, 2),
        "tokens_per_s": round(lm_tokens / (ms / 1e3), 1),
        "samples_per_s": round(args.batch / (ms / 1e3), 2),
        "trainable_params": sum(p.numel() for p in params),
    }
    if device.type == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        out["max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    del model, opt, batch
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS), help="default: 7b on CUDA, cpu otherwise")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="default 8 (7b) / 2 (cpu)")
    ap.add_argument("--text-tokens", type=int, default=64, help="text tokens per sample besides the image tokens")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--setups", default="frozen,peft_lora,incmoelora_t1,dymoe_t1,incmoelora_t8,dymoe_t8")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the setup list this many times, reversing its order every other round, and report "
                         "the median over rounds (the first setup of a process runs slower: ratios need >= 2)")
    args = ap.parse_args()
    device = torch.device(args.device)
    args.preset = args.preset or ("7b" if device.type == "cuda" else "cpu")
    args.batch = args.batch or (8 if args.preset == "7b" else 2)
    args.iters = args.iters or (10 if device.type == "cuda" else 3)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    results: dict = {}
    order = args.setups.split(",")
    per_round: dict[str, list[float]] = {s: [] for s in order}
    for r in range(args.rounds):
        for setup in order if r % 2 == 0 else order[::-1]:
            res = time_setup(setup, args, device, dtype)
            per_round[setup].append(res["ms_per_step"])
            print(json.dumps({"round": r, **res}), flush=True)
            results[setup] = res
    for setup, values in per_round.items():
        ms = statistics.median(values)
        results[setup].update(ms_per_step=round(ms, 2), rounds_ms=values,
                              tokens_per_s=round(results[setup]["tokens_per_s"] * results[setup]["ms_per_step"] / ms, 1),
                              samples_per_s=round(args.batch / (ms / 1e3), 2))
    floor = results.get("frozen", {}).get("ms_per_step")
    if floor:
        for r in results.values():
            r["step_over_frozen"] = round(r["ms_per_step"] / floor, 3)
    for t in ("t1", "t8"):
        if f"dymoe_{t}" in results and f"incmoelora_{t}" in results:
            results[f"dymoe_over_incmoelora_{t}"] = round(
                results[f"dymoe_{t}"]["ms_per_step"] / results[f"incmoelora_{t}"]["ms_per_step"], 3)
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "preset": args.preset,
        "batch": args.batch, "text_tokens": args.text_tokens, "iters": args.iters, "rounds": args.rounds,
        "dtype": str(dtype),
        "gradient_checkpointing": True,
    }
    print(json.dumps({"env": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
