"""Analysis tests that run the tiny backbone share one cache (tiny LLaVA, mini-CoIN small) per session."""

import pytest


@pytest.fixture(scope="session")
def analysis_cache(tmp_path_factory):
    """``DYMOE_CACHE`` for the whole session (set here, restored at the end)."""
    cache = tmp_path_factory.mktemp("dymoe-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("DYMOE_CACHE", str(cache))
    yield cache
    mp.undo()
