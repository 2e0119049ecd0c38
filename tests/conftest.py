"""Shared test setup: offline, deterministic, small thread count."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

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


@pytest.fixture(scope="session")
def inclora_smoke_run(tmp_path_factory):
    """``(run_dir, metrics, cache)`` of one two-task IncLoRA smoke run (ScienceQA, TextVQA; 32 training and 8 test
    samples each) with its own cache; shared by the cost / protocol / export tests. Do not modify it."""
    from dymoe.config import load_config
    from dymoe.runner.continual import run

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("DYMOE_CACHE")
    os.environ["DYMOE_CACHE"] = str(cache)
    try:
        out = tmp_path_factory.mktemp("runs") / "inclora"
        overrides = ["benchmark.order=[ScienceQA, TextVQA]", "benchmark.max_train_samples=32",
                     "benchmark.max_eval_samples=8", "training.batch_size=8", "trackers=[]", "method.name=inclora"]
        metrics = run(load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml", overrides), out)
    finally:
        if old is None:
            os.environ.pop("DYMOE_CACHE", None)
        else:
            os.environ["DYMOE_CACHE"] = old
    return out, metrics, cache


# --- a copy of tests/fixtures/coin (the exact CoIN layout) with tiny images generated for every ``image`` field ---

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "coin"


def make_image(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    """Write a solid-colour image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture
def coin_root(tmp_path: Path) -> Path:
    """A writable CoIN tree: JSON from the fixtures, images generated (8×4 for grounding, 6×10 elsewhere)."""
    root = tmp_path / "coin"
    shutil.copytree(FIXTURE, root)
    for json_path in sorted((root / "Instructions_Original").rglob("*.json")):
        for k, row in enumerate(json.loads(json_path.read_text())):
            if "image" in row:
                img = root / "cl_dataset" / row["image"]
                if not img.exists():
                    size = (8, 4) if "COCO2014" in row["image"] else (6, 10)
                    make_image(img, size, (40 * k % 256, 100, 200))
    return root
