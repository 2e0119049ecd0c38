"""Plots: valid PNGs of the requested pixel size, heatmap colours that match the cell values, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from dymoe.analysis.plots import plot_accuracy_matrix, plot_radar, plot_task_curves
from dymoe.errors import DataError

TASKS = ["ScienceQA", "TextVQA", "ImageNet"]
MATRIX = [[80.0], [52.5, 61.0], [10.0, 35.0, 95.0]]


def _png(path) -> Image.Image:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.convert("RGB")


def _count_colour(img: Image.Image, rgb: tuple[int, int, int], tol: int = 2) -> int:
    arr = np.asarray(img).astype(int)  # [H, W, 3]
    return int((np.abs(arr - np.array(rgb)).max(axis=-1) <= tol).sum())


def _viridis(value: float) -> tuple[int, int, int]:
    r, g, b, _ = colormaps["viridis"](value / 100.0)
    return round(r * 255), round(g * 255), round(b * 255)


def test_accuracy_matrix_png_size_and_cell_colours(tmp_path):
    out = plot_accuracy_matrix(TASKS, MATRIX, tmp_path / "plots" / "matrix.png", figsize=(6, 5), dpi=50)
    assert out == tmp_path / "plots" / "matrix.png"
    img = _png(out)
    assert img.size == (300, 250)
    # each filled cell is a block of its viridis colour (a few hundred pixels); the colour bar alone has ~10
    for value in (80.0, 52.5, 61.0, 10.0, 35.0, 95.0):
        assert _count_colour(img, _viridis(value)) > 200, value
    assert _count_colour(img, _viridis(20.0)) < 60  # not a cell value: only the colour-bar strip
    assert not list(tmp_path.joinpath("plots").glob(".*.tmp"))  # no temp file left behind


def test_accuracy_matrix_of_a_partial_run_and_default_size(tmp_path):
    img = _png(plot_accuracy_matrix(TASKS, MATRIX[:2], tmp_path / "m.png"))
    # default size: (max(4.5, 0.95*3 + 2.5), max(3.5, 0.7*2 + 2.0)) inches at 100 dpi
    assert img.size == (535, 350)
    assert _count_colour(img, _viridis(10.0)) < 60  # the third row is not drawn


def test_task_curves_png(tmp_path):
    img = _png(plot_task_curves(TASKS, MATRIX, tmp_path / "curves.png", figsize=(7, 4), dpi=60))
    assert img.size == (420, 240)
    # the lines use the C0..C2 cycle colours (ScienceQA blue, TextVQA orange, ImageNet green marker)
    for hexcol in ("#1f77b4", "#ff7f0e", "#2ca02c"):
        rgb = tuple(int(hexcol[k: k + 2], 16) for k in (1, 3, 5))
        assert _count_colour(img, rgb, tol=8) > 20, hexcol


def test_radar_png(tmp_path):
    results = {"LoRA": {"ScienceQA": 52.6, "TextVQA": 48.1, "ImageNet": 39.3},
               "DyMoE": {"TextVQA": 50.0, "ScienceQA": 75.0, "ImageNet": 60.0}}
    img = _png(plot_radar(results, tmp_path / "radar.png", figsize=(5, 5), dpi=40))
    assert img.size == (200, 200)
    one = _png(plot_radar({"LoRA": results["LoRA"]}, tmp_path / "one.png", figsize=(5, 5), dpi=40))
    assert np.asarray(one).tolist() != np.asarray(img).tolist()


def test_bad_input(tmp_path):
    with pytest.raises(DataError, match="row 1 has 1 cells"):
        plot_accuracy_matrix(TASKS, [[1.0], [2.0]], tmp_path / "x.png")
    with pytest.raises(DataError, match="3 rows but only 2 task names"):
        plot_task_curves(TASKS[:2], MATRIX, tmp_path / "x.png")
    with pytest.raises(DataError, match="no task names"):
        plot_task_curves([], [], tmp_path / "x.png")
    with pytest.raises(DataError, match="'B' has missing tasks \\['t2'\\]"):
        plot_radar({"A": {"t1": 1.0, "t2": 2.0}, "B": {"t1": 3.0}}, tmp_path / "x.png")
    with pytest.raises(DataError, match="percentage"):
        plot_radar({"A": {"t1": 101.0}}, tmp_path / "x.png")
    with pytest.raises(DataError, match="no methods"):
        plot_radar({}, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())  # nothing written on bad input
