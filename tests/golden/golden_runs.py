"""Golden runs: byte-level fingerprints of every existing method on ``configs/smoke.yaml``.

Refactors of shared machinery must keep these bit-identical (the brief's "refactors keep results" rule). Record
them before a change and check them after::

    python tests/golden/golden_runs.py record  [--out tests/golden/golden_smoke.json] [--only NAME,...]
    python tests/golden/golden_runs.py check   [--golden tests/golden/golden_smoke.json] [--only NAME,...]

Each case is one ``dymoe run configs/smoke.yaml`` (one torch thread, a fresh run directory) with overrides; the
fingerprint is the sha256 of every ``adapter.safetensors`` and ``method_state.safetensors`` of the task
checkpoints, of ``matrix.json`` and of every predictions file. A numerical change that an issue asks for is
recorded anew with ``record`` and the commit says which cases changed and why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "smoke.yaml"
DEFAULT_GOLDEN = Path(__file__).with_name("golden_smoke.json")

# name -> --set overrides (on top of configs/smoke.yaml)
CASES: dict[str, list[str]] = {
    "lora": ["method.name=lora"],
    "moelora": ["method.name=moelora"],
    "ewc": ["method.name=ewc"],
    "lwf": ["method.name=lwf"],
    "inclora": ["method.name=inclora"],
    "olora": ["method.name=olora"],
    "incmoelora": ["method.name=incmoelora"],
    "dymoe": ["method.name=dymoe"],
    "incmoelora+replay": ["method.name=incmoelora", "replay.samples_per_task=8"],
    "dymoe+prune": ["method.name=dymoe", "method.prune_fraction=0.25"],
    "dymoe+task_router": ["method.name=dymoe", "method.task_router=true"],
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(run_dir: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the files that must not change."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(run_dir).as_posix()
        if p.name in ("adapter.safetensors", "method_state.safetensors", "matrix.json") or (
            p.suffix == ".jsonl" and "predictions" in rel
        ):
            out[rel] = _sha(p)
    return out


def run_case(name: str, workdir: Path) -> dict[str, str]:
    out = workdir / name.replace("+", "_")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DYMOE_GOLDEN": "1"}
    cmd = [sys.executable, "-c", "import torch, sys; torch.set_num_threads(1); from dymoe.cli.main import main; "
           "sys.exit(main(sys.argv[1:]))", "run", str(CONFIG), "--output", str(out), "--set", "trackers=[]"]
    for o in CASES[name]:
        cmd += ["--set", o]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"case {name} failed:\n{proc.stderr[-4000:]}")
    fp = fingerprint(out)
    print(f"{name}: {len(fp)} files, {time.time() - t0:.0f}s", file=sys.stderr)
    return fp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["record", "check"])
    ap.add_argument("--golden", "--out", dest="golden", default=str(DEFAULT_GOLDEN))
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--keep", default=None, help="keep the run directories here")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {list(CASES)}")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="dymoe-golden-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {n: run_case(n, work) for n in names}
    golden_path = Path(args.golden)
    if args.mode == "record":
        data = json.loads(golden_path.read_text()) if golden_path.is_file() else {}
        data.update(results)
        golden_path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(results)} cases into {golden_path}")
        return 0
    golden = json.loads(golden_path.read_text())
    bad = 0
    for n, fp in results.items():
        want = golden.get(n)
        if want is None:
            print(f"{n}: no golden record")
            bad += 1
            continue
        diff = sorted(k for k in set(want) | set(fp) if want.get(k) != fp.get(k))
        if diff:
            bad += 1
            print(f"{n}: DIFFERS in {len(diff)} files, e.g. {diff[:4]}")
        else:
            print(f"{n}: identical ({len(fp)} files)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
