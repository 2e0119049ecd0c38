"""ImageNet-like: name the fine-grained class of the single object ("striped red triangle").

120 classes = 3 patterns × 8 colours × 5 shapes; class names reuse the colour and shape words of the other tasks.
"""

from __future__ import annotations

import numpy as np

from dymoe.data.minicoin.tasks.base import Sample, short_prompt
from dymoe.data.minicoin.world import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    SHAPES,
    SQUARE,
    SceneObject,
    pick,
    render_scene,
)

QUESTION = "What is the object in the image?"
#: every class name, in a fixed order
CLASSES: tuple[str, ...] = tuple(
    SceneObject(s, c, (0, 0, 1, 1), p).name for p in PATTERNS for c in COLOURS for s in SHAPES
)


def make_sample(rng: np.random.Generator, split: str) -> Sample:
    """One object, 26-44 px, anywhere on a 64×64 background."""
    side = int(rng.integers(26, 45))
    h = int(np.clip(round(side * rng.uniform(0.85, 1.15)), 26, 48))
    x0, y0 = int(rng.integers(0, 64 - side + 1)), int(rng.integers(0, 64 - h + 1))
    obj = SceneObject(pick(rng, SHAPES), pick(rng, COLOURS), (x0, y0, x0 + side, y0 + h), pick(rng, PATTERNS))
    img = render_scene(SQUARE, pick(rng, BACKGROUNDS), [obj])
    return Sample(img, [(short_prompt(QUESTION), obj.name)], meta={"question": QUESTION, "objects": [obj]})
