"""Fixtures of the method packages' tests (cmoe, dmole, smoe_dsal): one empty dymoe cache per session, and the
dymoe CLI in a subprocess (through ``killrun.py``, which can kill it at a chosen moment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
KILLRUN = Path(__file__).with_name("killrun.py")


@pytest.fixture(scope="session")
def dymoe_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dymoe-cache")


@pytest.fixture()
def cache_env(dymoe_cache, monkeypatch):
    monkeypatch.setenv("DYMOE_CACHE", str(dymoe_cache))
    return dymoe_cache


@pytest.fixture(scope="session")
def dymoe_cli(dymoe_cache):
    """``cli(out, settings, kill="") -> CompletedProcess``: ``dymoe run configs/smoke.yaml --output out --set s ...``
    (each of ``settings``) in a subprocess: one thread, offline, this session's cache; ``kill``: ``killrun.py``'s
    ``DYMOE_TEST_KILL`` (empty: runs to the end)."""

    def cli(out: Path, settings: list[str], kill: str = "") -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(KILLRUN), "run", str(SMOKE), "--output", str(out)]
        for s in settings:
            cmd += ["--set", s]
        env = dict(os.environ, DYMOE_CACHE=str(dymoe_cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", DYMOE_TEST_KILL=kill,
                   PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)

    return cli
