"""Fixtures of the method packages' tests (cmoe, dmole, smoe_dsal): one empty dymoe cache per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def dymoe_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dymoe-cache")


@pytest.fixture()
def cache_env(dymoe_cache, monkeypatch):
    monkeypatch.setenv("DYMOE_CACHE", str(dymoe_cache))
    return dymoe_cache
