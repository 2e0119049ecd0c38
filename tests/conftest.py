"""Shared test setup: offline, deterministic, small thread count."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- tiny offline backbones (dymoe.models.tiny), built once per session --------------------------------------


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A tiny random LLaVA folder (preset "test": 16 image tokens, Llama 64 x 2, vocab 512); do not modify it."""
    from dymoe.models.tiny import make_tiny_llava

    return make_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava", preset="test", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_lm_dir(tmp_path_factory):
    """A tiny random text-only Llama causal LM folder; do not modify it."""
    from dymoe.models.tiny import make_tiny_causal_lm

    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "llama", arch="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory):
    """A tiny random text-only Qwen2 causal LM folder; do not modify it."""
    from dymoe.models.tiny import make_tiny_causal_lm

    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "qwen2", arch="qwen2", seed=0)
