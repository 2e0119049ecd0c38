"""VizWiz-like: photos taken without seeing them (blurred, cropped, dark, noisy), some unanswerable.

A quarter of the questions are about a photo where the object is missing or that is nearly black; their answer is
"unanswerable". The other photos show one object, possibly blurred, darkened or partly out of frame.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from dymoe.data.minicoin.tasks.base import Sample, short_prompt
from dymoe.data.minicoin.world import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    PORTRAIT,
    SHAPES,
    SQUARE,
    SceneObject,
    pick,
    render_scene,
)

UNANSWERABLE = "unanswerable"
UNANSWERABLE_RATE = 0.25
QUESTIONS = {
    "colour": ("What color is this?", "Can you tell me what color this is?"),
    "shape": ("What is this?", "What shape is this?"),
}


def _darken(img: Image.Image, factor: float) -> Image.Image:
    return Image.fromarray((np.asarray(img, dtype=np.float32) * factor).astype(np.uint8))


def _add_noise(img: Image.Image, rng: np.random.Generator, std: float) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, std, size=(img.size[1], img.size[0], 3))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def make_sample(rng: np.random.Generator, split: str) -> Sample:
    """One large object (or none), a degradation, sensor noise, and a colour or shape question."""
    size = SQUARE if rng.random() < 0.5 else PORTRAIT
    w, h = size
    kind = pick(rng, tuple(QUESTIONS))
    question = pick(rng, QUESTIONS[kind])
    unanswerable = bool(rng.random() < UNANSWERABLE_RATE)
    degradation = (
        pick(rng, ("absent", "black")) if unanswerable else pick(rng, ("none", "blur", "dark", "crop"))
    )
    side = int(rng.integers(26, 41))
    if degradation == "crop":  # 35-45% of the object's width or height falls outside the frame
        cut = int(round(side * rng.uniform(0.35, 0.45)))
        edge = pick(rng, ("left", "right", "top", "bottom"))
        x0 = {"left": -cut, "right": w - side + cut}.get(edge, int(rng.integers(0, w - side + 1)))
        y0 = {"top": -cut, "bottom": h - side + cut}.get(edge, int(rng.integers(0, h - side + 1)))
    else:
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    patterns = PATTERNS if rng.random() < 0.2 else ("plain",)
    obj = SceneObject(
        pick(rng, SHAPES), pick(rng, COLOURS), (x0, y0, x0 + side, y0 + side), pick(rng, patterns)
    )
    objs = [] if degradation == "absent" else [obj]
    img = render_scene(size, pick(rng, BACKGROUNDS), objs)
    if degradation == "blur":
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 2.0))))
    elif degradation == "dark":
        img = _darken(img, float(rng.uniform(0.45, 0.7)))
    elif degradation == "black":
        img = _darken(img, float(rng.uniform(0.04, 0.08)))
    img = _add_noise(img, rng, 6.0)
    if unanswerable:
        answer = UNANSWERABLE
    else:
        answer = obj.colour if kind == "colour" else obj.shape
    return Sample(
        img,
        [(short_prompt(question), answer)],
        meta={"question": question, "objects": objs, "degradation": degradation},
    )
