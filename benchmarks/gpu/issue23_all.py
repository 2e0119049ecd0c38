"""Issue 23 in one GPU job: every measurement of the issue's goals on one GPU, side by side, into one JSON file.

    python benchmarks/gpu/issue23_all.py --out benchmarks/results/issue23_gpu.json

(about 7-8 minutes on one H100/H200: bf16, random weights, LLaVA-1.5-7B shapes). On a machine without CUDA it stops
with a clear message; ``--preset cpu --dry-run`` runs every phase at toy size on the CPU to check the plumbing
(about 2-3 minutes on 2 cores; the anchors need CUDA and are skipped).

Phases, each a fresh subprocess with its own time limit inside a whole-job budget (``--budget-s``, default 540 s, so
the job ends before a 10-minute device limit); the JSON is rewritten after each phase, so a phase that fails, times
out or is skipped leaves the others' results (and its own error) in the file. In order of priority:

1. ``correctness``: :class:`~dymoe.layers.moe_lora.MoELoRALinear` on CUDA (bf16 autocast over fp32 master weights,
   and fp32) against the CPU fp64 per-expert loop oracle: forward of the dense and the sparse path, gradients of the
   dense path; task-1 (16 trainable) and task-8 (112 frozen + 16 trainable) banks, top-16 cosine routing.
2. ``train_step``: ``benchmarks/bench_train_step.py --preset 7b`` (the runner's own step): frozen floor, PEFT LoRA
   r64, IncMoELoRA and LLaVA-DyMoE at tasks 1 and 8: ms/step, LM tokens/s, peak memory, ratios to the floor.
3. ``generate_batch16``: ``benchmarks/bench_generate.py --preset 7b``: greedy tokens/s of the base, dense and sparse
   after eight tasks (batch 16; ``--sparse-factor 0.125`` so every decoding step of the batch is sparse).
4. ``anchors``: ``../shared/bench/anchor_moelora.py`` (the stand-alone anchor script: frozen, PEFT r64, naive fused
   16 / 128, per-expert loop 16; ``--anchor-plan`` to change) on the whole 32-layer language model.
5. ``generate_batch1``: the same at batch 1 (latency; sparse by the default rule).
6. ``layer``: ``benchmarks/bench_layer.py --inference`` at 7B projection shapes, decode batches 1 and 16.

The goals (issue 23) are evaluated from these numbers into ``goals`` in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
ANCHOR_CANDIDATES = [ROOT.parent / "shared" / "bench" / "anchor_moelora.py", ROOT / "shared" / "bench" / "anchor_moelora.py"]
ANCHOR_PLAN = "frozen:0:1,peft:0:1,fused:16:1,fused:128:1,loop:16:1"
ANCHOR_LINE = re.compile(
    r"^(?P<kind>\w+)\s+ckpt=(?P<ckpt>\d) E=\s*(?P<E>\d+) layers=(?P<L>\d+) B=(?P<B>\d+) T=(?P<T>\d+):\s+"
    r"(?P<ms>[\d.]+) ms/step\s+(?P<tps>\d+) tok/s\s+trainable=\s*(?P<tr>[\d.]+)M\s+peakmem=\s*(?P<mem>[\d.]+)GiB"
)


def last_json(stdout: str) -> dict:
    """The last top-level (indented) JSON object a benchmark printed."""
    start = stdout.rfind("\n{\n")
    start = 0 if start < 0 and stdout.startswith("{") else start
    if start < 0:
        raise ValueError("no JSON summary in the output")
    return json.loads(stdout[start:])


START = time.time()
BUDGET_S = [540.0]  # --budget-s: the whole job's wall time; phases get what is left (the JSON is always written)


def run_phase(name: str, cmd: list[str], timeout: float, results: dict, parse) -> None:
    """Run one phase as a subprocess; store its parsed result (or its error and output tail) under ``name``."""
    t0 = time.time()
    left = BUDGET_S[0] - (t0 - START) - 10
    if left < 20:
        results[name] = {"skipped": f"out of the job's time budget ({BUDGET_S[0]:.0f} s, --budget-s)"}
        print(f"[issue23] {name}: skipped (time budget)", flush=True)
        return
    timeout = min(timeout, left)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(BENCH), os.environ.get("PYTHONPATH", "")])}
    print(f"[issue23] {name}: {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out = proc.stdout
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {(proc.stderr or out)[-3000:]}")
        results[name] = {"wall_s": round(time.time() - t0, 1), **parse(out)}
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or "")[-3000:]
        results[name] = {"error": f"timed out after {timeout:.0f} s", "stdout_tail": tail}
    except Exception as err:  # a failed phase must not lose the others
        results[name] = {"error": str(err)[-3000:]}
    print(f"[issue23] {name}: {time.time() - t0:.1f} s {'FAILED ' + results[name]['error'][:300] if 'error' in results[name] else 'ok'}",
          flush=True)


def parse_anchor(stdout: str) -> dict:
    rows = []
    for line in stdout.splitlines():
        m = ANCHOR_LINE.match(line.strip())
        if m:
            rows.append({"kind": m["kind"], "experts": int(m["E"]), "ckpt": int(m["ckpt"]), "layers": int(m["L"]),
                         "batch": int(m["B"]), "seq": int(m["T"]), "ms_per_step": float(m["ms"]),
                         "tokens_per_s": int(m["tps"]), "trainable_M": float(m["tr"]), "peak_mem_gib": float(m["mem"])})
        elif "FAILED" in line:
            rows.append({"failed": line.strip()[:500]})
    floor = next((r["ms_per_step"] for r in rows if r.get("kind") == "frozen"), None)
    if floor:
        for r in rows:
            if "ms_per_step" in r:
                r["over_frozen"] = round(r["ms_per_step"] / floor, 3)
    return {"rows": rows, "raw": stdout[-4000:]}


def correctness(args) -> dict:
    """Phase 1, in this process (small tensors): CUDA vs the CPU fp64 loop oracle."""
    import torch
    import torch.nn as nn

    from dymoe.layers.functional import moe_lora_delta_reference, route, router_scores
    from dymoe.layers.moe_lora import MoELoRALinear

    dev = torch.device(args.device)
    d_in, d_out, rank, tokens = (512, 1024, 4, 96) if args.dry_run else (4096, 4096, 4, 512)
    out = []
    for n_frozen, n_train in ((0, 16), (112, 16)):
        torch.manual_seed(0)
        layer = MoELoRALinear(nn.Linear(d_in, d_out, bias=False), alpha=128, bank_rank=64, top_k=16, dropout=0.0,
                              param_dtype=torch.float32)
        if n_frozen:
            layer.add_group(0, n_frozen, rank, trainable=False)
            with torch.no_grad():
                layer.frozen_B.normal_(std=0.02)
        layer.add_group(1, n_train, rank)
        with torch.no_grad():
            layer.lora_B.normal_(std=0.02)
        x = torch.randn(tokens, d_in)
        # the oracle: fp64 on the CPU, per-expert loop, naive routing
        ref_layer = layer.double()
        a, b, u = (t.detach() for t in ref_layer.bank())
        xd = x.double()
        w = route(router_scores(xd, u, "cosine", 1.0), 16, ref_layer.temperature)
        n = ref_layer.num_experts
        ref = ref_layer.base(xd) + moe_lora_delta_reference(
            xd, [a[i * rank:(i + 1) * rank] for i in range(n)], [b[:, i * rank:(i + 1) * rank] for i in range(n)],
            w.double(), ref_layer.scaling)
        xr = xd.clone().requires_grad_(True)
        ref_layer.train()
        ref_out = ref_layer(xr)  # the fused fp64 path's gradients equal the loop's (tests/layers); reference grads
        ref_out.pow(2).mean().backward()
        ref_gx, ref_gb = xr.grad.clone(), ref_layer.lora_B.grad.clone()
        ref_scale = ref.abs().max().item()
        for dtype_name in ("float32", "bfloat16"):
            gpu = MoELoRALinear(nn.Linear(d_in, d_out, bias=False), alpha=128, bank_rank=64, top_k=16, dropout=0.0,
                                param_dtype=torch.float32)
            gpu.load_structure(layer.structure())
            gpu.load_state_dict({k: v.float() for k, v in ref_layer.state_dict().items()}, strict=False)
            gpu = gpu.to(dev)
            if dtype_name == "bfloat16":
                gpu.base.to(torch.bfloat16)
            xg = x.to(dev, copy=True).requires_grad_(True)  # a fresh leaf per check (x.to("cpu") is x itself)
            ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype_name == "bfloat16")
            row = {"bank": f"{n_frozen} frozen + {n_train} trainable", "dtype": dtype_name, "shape": f"{d_in}x{d_out}",
                   "tokens": tokens}
            with ac:
                gpu.train()
                y = gpu(xg)
                y.float().pow(2).mean().backward()
                gpu.eval()
                with torch.no_grad():
                    gpu.sparse = "always"
                    ys = gpu(xg)
                    gpu.sparse = "never"
                    yd = gpu(xg)
            tol = 1e-3 if dtype_name == "float32" else 3e-2  # relative to the output's scale
            errs = {
                "train_forward": (y.double().cpu() - ref).abs().max().item() / ref_scale,
                "dense_eval": (yd.double().cpu() - ref).abs().max().item() / ref_scale,
                "sparse_eval": (ys.double().cpu() - ref).abs().max().item() / ref_scale,
                "grad_x": ((xg.grad.double().cpu() - ref_gx).abs().max() / ref_gx.abs().max()).item(),
                "grad_lora_B": ((gpu.lora_B.grad.double().cpu() - ref_gb).abs().max() / ref_gb.abs().max()).item(),
            }
            row.update({f"rel_err_{k}": float(f"{v:.3g}") for k, v in errs.items()})
            row["tolerance"] = tol
            row["ok"] = all(v <= tol for v in errs.values())
            out.append(row)
    return {"device": str(dev), "checks": out, "all_ok": all(r["ok"] for r in out)}


def goals(results: dict) -> dict:
    """The issue's goals, evaluated on what was measured (None where a phase is missing)."""
    g: dict = {}
    ts = results.get("train_step", {}).get("results", {})
    floor = ts.get("frozen", {})
    for t in ("t1", "t8"):
        r = ts.get(f"dymoe_{t}", {})
        if r and floor:
            g[f"dymoe_{t}_step_over_frozen"] = {"value": r.get("step_over_frozen"), "goal": "<= 1.15",
                                               "met": r.get("step_over_frozen", 9e9) <= 1.15}
            if "peak_mem_gib" in r and "peak_mem_gib" in floor:
                ratio = round(r["peak_mem_gib"] / floor["peak_mem_gib"], 3)
                g[f"dymoe_{t}_peak_mem_over_frozen"] = {"value": ratio, "goal": "<= 1.1", "met": ratio <= 1.1}
            g[f"dymoe_{t}_tokens_per_s"] = {"value": r.get("tokens_per_s"), "goal": ">= 10900",
                                           "met": r.get("tokens_per_s", 0) >= 10900}
        key = f"dymoe_over_incmoelora_{t}"
        if key in ts:
            g[key] = {"value": ts[key], "goal": "<= 1.02", "met": ts[key] <= 1.02}
    for name in ("generate_batch16", "generate_batch1"):
        gen = results.get(name, {}).get("results", {})
        for s in ("dense", "sparse"):
            if f"{s}_over_base" in gen:
                g[f"{name}_{s}_over_base"] = {"value": gen[f"{s}_over_base"], "goal": ">= 0.85",
                                             "met": gen[f"{s}_over_base"] >= 0.85}
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(BENCH / "results" / "issue23_gpu.json"))
    ap.add_argument("--preset", default="7b", choices=["7b", "cpu"])
    ap.add_argument("--dry-run", action="store_true", help="toy sizes, few iterations (the CPU plumbing check)")
    ap.add_argument("--device", default=None, help="default: cuda")
    ap.add_argument("--phases", default="correctness,train_step,generate,layer,anchors")
    ap.add_argument("--anchor", default=None, help="path of anchor_moelora.py (default: ../shared/bench/)")
    ap.add_argument("--anchor-plan", default=ANCHOR_PLAN)
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="wall-time budget of the whole job; phases that would start past it are skipped (default 9 min)")
    args = ap.parse_args()
    BUDGET_S[0] = args.budget_s if not args.dry_run else max(args.budget_s, 3600.0)

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cpu" and not args.dry_run:
        sys.exit("issue23_all.py measures on a CUDA GPU and none is visible here (torch.cuda.is_available() is False).\n"
                 "To check the plumbing on this CPU run: python benchmarks/gpu/issue23_all.py --preset cpu --dry-run "
                 "--out /tmp/issue23_dry.json")
    py = sys.executable
    dry = args.dry_run
    preset = args.preset
    results: dict = {
        "env": {
            "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
            "python": platform.python_version(), "torch": torch.__version__, "preset": preset, "dry_run": dry,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(),
        }
    }
    try:
        import peft
        import transformers

        results["env"].update(transformers=transformers.__version__, peft=peft.__version__)
    except ImportError as err:
        results["env"]["import_error"] = str(err)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        results["goals"] = goals(results)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(out_path)

    phases = args.phases.split(",")
    dev = ["--device", args.device]
    if "correctness" in phases:
        t0 = time.time()
        try:
            results["correctness"] = {**correctness(args), "wall_s": round(time.time() - t0, 1)}
        except Exception as err:
            results["correctness"] = {"error": repr(err)[-2000:]}
        print(f"[issue23] correctness: {time.time() - t0:.1f} s", flush=True)
        save()
    if "train_step" in phases:
        extra = ["--batch", "1", "--text-tokens", "8", "--iters", "1", "--warmup", "1"] if dry else ["--iters", "8"]
        run_phase("train_step", [py, str(BENCH / "bench_train_step.py"), "--preset", preset, *dev, *extra],
                  900 if dry else 270, results, last_json)
        save()
    if "generate" in phases:
        common = [py, str(BENCH / "bench_generate.py"), "--preset", preset, *dev, "--rounds", "1" if dry else "2"]
        toy = ["--new-tokens", "4", "--text-tokens", "8", "--iters", "1"] if dry else ["--iters", "3"]
        run_phase("generate_batch16", [*common, "--batch", "2" if dry else "16", "--sparse-factor", "0.125", *toy],
                  600 if dry else 180, results, last_json)
        save()
    if "anchors" in phases:
        anchor = Path(args.anchor) if args.anchor else next((p for p in ANCHOR_CANDIDATES if p.is_file()), None)
        if args.device != "cuda":
            results["anchors"] = {"skipped": "the anchor script needs CUDA (torch.cuda.synchronize)"}
        elif anchor is None or not anchor.is_file():
            results["anchors"] = {"skipped": f"anchor_moelora.py not found (looked in {[str(p) for p in ANCHOR_CANDIDATES]})"}
        else:
            os.environ["PLAN"] = args.anchor_plan
            run_phase("anchors", [py, str(anchor)], 240, results, parse_anchor)
        save()
    if "generate" in phases:
        run_phase("generate_batch1", [*common, "--batch", "1", *toy], 600 if dry else 120, results, last_json)
        save()
    if "layer" in phases:
        shapes = "512x512,512x1376" if dry else "4096x4096,4096x11008"
        for tokens in (1, 16):
            run_phase(f"layer_inference_{tokens}tok",
                      [py, str(BENCH / "bench_layer.py"), "--inference", *dev, "--tokens", str(tokens),
                       "--shapes", shapes, "--experts", "128", "--rounds", "2", *(["--iters", "5"] if dry else [])],
                      300 if dry else 45, results, last_json)
            save()
    results["env"]["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    print(json.dumps(results.get("goals", {}), indent=1))
    print(f"[issue23] wrote {out_path}")


if __name__ == "__main__":
    main()
