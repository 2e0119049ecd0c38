"""Analysis tests that run the tiny backbone share one cache (tiny LLaVA, mini-CoIN small) and one tiny drift run
per session."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# `dymoe analyze drift` on the random tiny LLaVA: 8 samples / batch 4 = 2 steps of task 2, 2 test questions per task
TINY = [
    "benchmark.max_train_samples=8",
    "benchmark.max_eval_samples=2",
    "training.batch_size=4",
    "evaluation.batch_size=2",
    "evaluation.max_new_tokens=2",
]


@pytest.fixture(scope="session")
def analysis_cache(tmp_path_factory):
    """``DYMOE_CACHE`` for the whole session (set here, restored at the end)."""
    cache = tmp_path_factory.mktemp("dymoe-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("DYMOE_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="session")
def drift_run(analysis_cache, tmp_path_factory):
    """``(output dir, exit status, argv)`` of a tiny drift run: modes none and only_new, 2 evaluations."""
    from dymoe.cli.main import main

    out = tmp_path_factory.mktemp("drift") / "out"
    argv = ["analyze", "drift", str(ROOT / "configs" / "analysis" / "drift-smoke.yaml"), "--output", str(out),
            "--modes", "none,only_new", "--evals", "2"]
    for o in TINY:
        argv += ["--set", o]
    return out, main(argv), argv
