"""What a cosine router can see in the demo base: are mini-CoIN's tasks separable at the routed layers? (issue 17)

    python benchmarks/minicoin_router_input.py [--base DIR] [--samples 40] [--out benchmarks/results/router_input.json]

The experts of LLaVA-DyMoE / IncMoELoRA route every token by ``cos(x, u_e) / T`` where ``x`` is the token's input
to the wrapped projection. A router can only prefer a task's own group if that task's tokens point elsewhere than
the other tasks' tokens. This script pushes each task's evaluation prompts through the base (no adapter; prompts
as generation sees them, the inputs :func:`dymoe.analysis.experts.expert_activation_view` routes) and records,
at the inputs of every decoder layer's ``q_proj`` (= k/v), ``o_proj``, ``gate_proj`` (= up) and ``down_proj``:

- ``anisotropy``: ``|mean of the unit token vectors|`` over all tasks (1 = every token points the same way;
  ``≈ 1/√N`` for isotropic tokens). A cosine against any router row is dominated by this common direction.
- ``task_mean_cos``: the mean, over task pairs, of the cosine between the tasks' mean unit vectors.
- ``task_gap``: the mean over task pairs of ``|m_a - m_b|`` (``m`` = a task's mean unit vector): the largest
  difference in *mean* cosine score a single unit router row can make between two tasks' tokens (the row along
  ``m_a - m_b``). Divided by the temperature it is the logit gap the best possible row gives; compare
  ``random_row_spread``, the std over tokens of the cosine with a random row (~``1/√d``).
- ``probe``: accuracy of a linear (multinomial logistic) probe from the unit token vector to its task, trained on
  the tokens of half of each task's prompts and tested on the other half's; separately for all tokens, the image
  tokens and the text tokens (chance = 1/8).

Writes JSON (one entry per module) and prints a Markdown summary per module kind.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

KINDS = ("q_proj", "o_proj", "gate_proj", "down_proj")


def collect(base: str, samples_per_task: int, batch_size: int = 20) -> tuple[dict, list[str]]:
    """Unit token vectors per module: ``{module: {"x": [N, d] fp32, "task": [N], "sample": [N], "image": [N]}}``."""
    import torch

    from dymoe.config import load_config
    from dymoe.data.collate import build_generation_batch
    from dymoe.data.formats import load_test
    from dymoe.demo.plan import CONFIG_DIR, demo_overrides
    from dymoe.models.llava import image_token_id, load_backbone
    from dymoe.runner.continual import resolve_benchmark
    from dymoe.runner.resources import resolve_backbone_path

    cfg = load_config(CONFIG_DIR / "minicoin.yaml", demo_overrides("lora") + ([f"backbone.path={base}"] if base else []))
    bench = resolve_benchmark(cfg)
    model, processor = load_backbone(resolve_backbone_path(cfg.backbone.path), dtype="float32")
    model.eval()
    img_id = image_token_id(model)
    store: dict[str, dict[str, list]] = {}
    current: dict = {}

    def hook_for(name: str):
        def hook(module, args):
            x = args[0].detach().float()  # [B, T, d]
            keep = current["mask"]  # [B, T] bool
            u = torch.nn.functional.normalize(x[keep], dim=-1)  # [n, d]
            s = store.setdefault(name, {"x": [], "task": [], "sample": [], "image": []})
            s["x"].append(u)
            s["task"].append(torch.full((u.shape[0],), current["task"]))
            s["sample"].append(current["sample"][keep])
            s["image"].append(current["image"][keep])
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in model.named_modules()
               if n.rsplit(".", 1)[-1] in KINDS and "language_model" in n]
    names = [t.name for t in bench.tasks]
    try:
        with torch.no_grad():
            for ti, task in enumerate(bench.tasks):
                test = load_test(task, instruction_type=bench.instruction_type, seed=0)[:samples_per_task]
                for k in range(0, len(test), batch_size):
                    batch = build_generation_batch(processor, test[k:k + batch_size], max_length=cfg.evaluation.max_length)
                    ids = batch["input_ids"]
                    current.update(task=ti, mask=batch["attention_mask"].bool(), image=ids == img_id,
                                   sample=(torch.arange(ids.shape[0]) + k)[:, None].expand_as(ids))
                    model(**batch)
    finally:
        for h in handles:
            h.remove()
    out = {n: {k: torch.cat(v) for k, v in s.items()} for n, s in store.items()}
    return out, names


def probe_accuracy(x, y, train, n_classes: int, steps: int = 300) -> float:
    """Multinomial logistic regression ``x -> y`` fit on ``train`` rows (Adam, full batch), accuracy on the rest."""
    import torch

    g = torch.Generator().manual_seed(0)
    w = (torch.randn(x.shape[1], n_classes, generator=g) * 0.01).requires_grad_()
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    xs = x * (x.shape[1] ** 0.5)  # unit vectors rescaled to unit-variance coordinates
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs[train] @ w + b, y[train])
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (xs[~train] @ w + b).argmax(-1)
    return round(float((pred == y[~train]).float().mean()), 3)


def measure(rec: dict, n_tasks: int, samples_per_task: int) -> dict:
    import torch

    x, y, img = rec["x"], rec["task"], rec["image"]
    train = rec["sample"] < samples_per_task // 2
    means = torch.stack([x[y == t].mean(0) for t in range(n_tasks)])  # [T, d]
    unit = torch.nn.functional.normalize(means, dim=-1)
    cos = unit @ unit.T
    iu = torch.triu_indices(n_tasks, n_tasks, 1)
    gaps = torch.cdist(means, means)[iu[0], iu[1]]
    g = torch.Generator().manual_seed(0)
    rows = torch.nn.functional.normalize(torch.randn(16, x.shape[1], generator=g), dim=-1)
    res = {
        "d": x.shape[1], "tokens": int(x.shape[0]),
        "anisotropy": round(float(x.mean(0).norm()), 3),
        "task_mean_cos": round(float(cos[iu[0], iu[1]].mean()), 3),
        "task_gap": round(float(gaps.mean()), 3), "task_gap_min": round(float(gaps.min()), 3),
        "random_row_spread": round(float((x @ rows.T).std(0).mean()), 3),
        "probe": {},
    }
    for part, sel in (("all", torch.ones_like(img)), ("image", img), ("text", ~img)):
        if sel.sum() > 0 and len(set(y[sel].tolist())) == n_tasks:
            res["probe"][part] = probe_accuracy(x[sel], y[sel], train[sel], n_tasks)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=None, help="backbone folder (default: the demo config's demo:base)")
    ap.add_argument("--samples", type=int, default=40, help="evaluation prompts per task")
    ap.add_argument("--out", default="benchmarks/results/router_input.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("DYMOE_BENCH_THREADS", "1")))
    start = time.perf_counter()
    recs, tasks = collect(args.base, args.samples)
    result = {"tasks": tasks, "samples_per_task": args.samples, "base": args.base or "demo:base", "modules": {}}
    for name, rec in recs.items():
        result["modules"][name] = measure(rec, len(tasks), args.samples)
        print(name, json.dumps(result["modules"][name]), flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n| module | d | anisotropy | task-mean cos | task gap (min) | random-row spread | probe all / image / text |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, r in result["modules"].items():
        short = name.split("layers.")[-1]
        p = r["probe"]
        print(f"| {short} | {r['d']} | {r['anisotropy']:.3f} | {r['task_mean_cos']:.3f} | {r['task_gap']:.3f} "
              f"({r['task_gap_min']:.3f}) | {r['random_row_spread']:.3f} | "
              f"{p.get('all', float('nan')):.2f} / {p.get('image', float('nan')):.2f} / {p.get('text', float('nan')):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
