"""Image path confinement, decoding and LLaVA's pad-to-square."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dymoe.data.images import background_from_mean, expand2square, load_image, resolve_image
from dymoe.errors import DataError


@pytest.mark.parametrize("rel", ["COCO/a.jpg", "./COCO/a.jpg", "COCO/../GQA/b.jpg", "a b/c.png"])
def test_resolve_inside_root(rel):
    root = Path("/data/cl_dataset")
    path = resolve_image(root, rel, where="train.json row 3")
    assert str(path).startswith(str(root) + "/")


@pytest.mark.parametrize("rel", ["../secret.jpg", "COCO/../../x.jpg", "/etc/passwd", "C:\\x.png", "..", ""])
def test_resolve_escaping_paths(rel):
    with pytest.raises(DataError, match="train.json row 17"):
        resolve_image(Path("/data/cl_dataset"), rel, where="train.json row 17")


def test_symlink_inside_root_is_followed(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (2, 2)).save(outside / "x.png")
    root = tmp_path / "root"
    root.mkdir()
    (root / "COCO").symlink_to(outside)
    assert load_image(resolve_image(root, "COCO/x.png", where="w")).size == (2, 2)


def test_load_image_rgb_and_errors(tmp_path):
    Image.new("L", (3, 2), 7).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.mode == "RGB" and img.size == (3, 2)
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="row 4: image .*bad.jpg does not decode"):
        load_image(tmp_path / "bad.jpg", where="row 4")
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")


def test_expand2square_matches_llava_layout():
    mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP
    bg = background_from_mean(mean)
    assert bg == (122, 116, 104)
    wide = Image.new("RGB", (6, 3), (255, 0, 0))
    sq = np.asarray(expand2square(wide, bg))
    assert sq.shape == (6, 6, 3)
    # pasted at (0, (6 - 3) // 2) = row 1: rows 1..3 red, rows 0, 4, 5 background
    assert (sq[1:4] == (255, 0, 0)).all()
    assert (sq[[0, 4, 5]] == bg).all()
    tall = Image.new("RGB", (1, 4), (0, 255, 0))
    sq = np.asarray(expand2square(tall, bg))
    assert sq.shape == (4, 4, 3) and (sq[:, 1] == (0, 255, 0)).all() and (sq[:, [0, 2, 3]] == bg).all()
    square = Image.new("RGB", (3, 3))
    assert expand2square(square, bg) is square


@pytest.mark.parametrize(
    "array, expected",
    [
        # 16-bit grey (Pillow mode I;16): 0..65535 → 0..255, not clipped to white
        (np.array([[0, 257, 32768, 65535]], dtype=np.uint16), [0, 1, 128, 255]),
        # 32-bit integers (mode I) holding 16-bit data, holding 8-bit data, and anything else (stretched)
        (np.array([[0, 1000, 65535, 32768]], dtype=np.int32), [0, 4, 255, 128]),
        (np.array([[0, 10, 200, 255]], dtype=np.int32), [0, 10, 200, 255]),
        (np.array([[-100, 0, 100, 0]], dtype=np.int32), [0, 127, 255, 127]),  # 100 * 255 / 200 = 127.4999...
        # floats (mode F) in [0, 1] and in [0, 255]
        (np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32), [0, 64, 128, 255]),
        (np.array([[0.0, 2.0, 100.0, 255.0]], dtype=np.float32), [0, 2, 100, 255]),
    ],
    ids=["I;16", "I 16-bit", "I 8-bit", "I signed", "F unit", "F 8-bit"],
)
def test_high_bit_depth_images_keep_their_range(tmp_path, array, expected):
    img = Image.fromarray(array)
    assert img.mode in ("I;16", "I", "F")
    path = tmp_path / "x.tiff"
    img.save(path)  # TIFF keeps every one of these modes
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (1, 4, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb[0, :, 0].tolist() == expected
    # what convert("RGB") did before: everything above 255 became white
    if array.max() > 255:
        assert (np.asarray(img.convert("RGB"))[0, :, 0] == 255).sum() > (rgb[0, :, 0] == 255).sum()
