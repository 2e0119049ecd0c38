"""Before/after timing of a refactor: one benchmark script run against two source trees, interleaved.

On a shared machine the load drifts during a measurement, so the two trees alternate in A B B A order (``--rounds``
pairs), each run in a fresh process with ``PYTHONPATH`` pointing at its tree's ``src``. Every timing the benchmark
prints (``*_ms`` keys of ``bench_layer.py`` rows, ``ms_per_step`` of ``bench_train_step.py`` setups) is collected
per round; the result is the median (and the minimum, the least disturbed run) per tree and the ratios after ÷
before, with every run's number so the noise is visible.

    python benchmarks/ab_compare.py --before /tmp/base/src --after src --rounds 3 \\
        -- benchmarks/bench_layer.py --setups frozen,fused

Prints one JSON object (and writes it to ``--out`` if given).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def last_json(stdout: str) -> dict:
    """The last top-level JSON object a benchmark printed (its summary)."""
    start = stdout.rfind("\n{\n")
    start = 0 if start < 0 and stdout.startswith("{") else start
    if start < 0:
        raise ValueError("the benchmark printed no JSON summary")
    return json.loads(stdout[start:])


def timings(summary: dict) -> dict[str, float]:
    """``{label: ms}`` from a bench_layer (``results`` list) or bench_train_step (``results`` dict) summary."""
    res = summary["results"]
    out: dict[str, float] = {}
    if isinstance(res, list):
        for row in res:
            label = f"{row['shape']}/{row['experts']}"
            for k, v in row.items():
                if k.endswith("_ms") and isinstance(v, (int, float)):
                    out[f"{label}/{k}"] = float(v)
    else:
        for setup, row in res.items():
            if isinstance(row, dict) and isinstance(row.get("ms_per_step"), (int, float)):
                out[f"{setup}/ms_per_step"] = float(row["ms_per_step"])
    return out


def run(src: str, cmd: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    proc = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with PYTHONPATH={src}:\n{proc.stderr[-3000:]}")
    return timings(last_json(proc.stdout))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="src folder of the tree before the change")
    ap.add_argument("--after", required=True, help="src folder of the tree after the change")
    ap.add_argument("--rounds", type=int, default=3, help="A B B A pairs: each tree runs 2 x rounds times")
    ap.add_argument("--out", default=None)
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- benchmark script and its arguments")
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give the benchmark command after --")
    per: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    order = []
    for r in range(args.rounds):
        order += ["before", "after", "after", "before"] if r % 2 == 0 else ["after", "before", "before", "after"]
    t0 = time.time()
    for which in order:
        for k, v in run(getattr(args, which), cmd).items():
            per[which].setdefault(k, []).append(v)
        print(f"{which} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    rows = {}
    for k in per["before"]:
        b, a = per["before"][k], per["after"].get(k, [])
        if not a:
            continue
        rows[k] = {
            "before_ms": round(statistics.median(b), 2),
            "after_ms": round(statistics.median(a), 2),
            "ratio": round(statistics.median(a) / statistics.median(b), 3),
            "ratio_of_min": round(min(a) / min(b), 3),
            "before_runs": b,
            "after_runs": a,
        }
    out = {"command": cmd, "order": order, "load_average": os.getloadavg(), "results": rows}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
