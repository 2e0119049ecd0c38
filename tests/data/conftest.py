"""A copy of ``tests/fixtures/coin`` (the exact CoIN layout) with tiny images generated for every ``image`` field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "coin"


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
