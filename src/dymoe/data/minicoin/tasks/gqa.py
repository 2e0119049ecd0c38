"""GQA-like: spatial relations (left of, above, ...) and colour comparisons between 2-3 objects.

Objects have distinct shapes, so "the circle" always names one object; relation questions are asked only about
pairs in different grid cells, where the relation is unambiguous.
"""

from __future__ import annotations

import numpy as np

from dymoe.data.minicoin.tasks.base import Sample, short_prompt
from dymoe.data.minicoin.world import (
    BACKGROUNDS,
    LANDSCAPE,
    RELATIONS,
    SQUARE,
    SceneObject,
    grid_boxes,
    left_of,
    pick,
    random_objects,
    render_scene,
)

OPPOSITE = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


TWO_OBJECT_RATE = 0.75  # most scenes have 2 objects: relational questions stay learnable at 1M params


def _related_pairs(objs: list[SceneObject]) -> list[tuple[SceneObject, str, SceneObject]]:
    """Every (a, phrase, b) such that "a is <phrase> b" holds."""
    return [(a, p, b) for a in objs for b in objs if a is not b for p, rel in RELATIONS.items() if rel(a, b)]


def _question(rng: np.random.Generator, objs: list[SceneObject]) -> tuple[str, str]:
    pairs = _related_pairs(objs)
    kind = pick(rng, ("relation_yesno", "left_right", "which_shape", "which_color", "same_color"))
    if kind == "relation_yesno":
        a, phrase, b = pick(rng, pairs)
        if rng.random() < 0.5:  # ask the opposite relation of the same pair → "no"
            phrase = OPPOSITE[phrase]
        return f"Is the {a.shape} {phrase} the {b.shape}?", "yes" if RELATIONS[phrase](a, b) else "no"
    horizontal = [(a, b) for a in objs for b in objs if left_of(a, b)]
    if kind == "left_right" and horizontal:
        a, b = pick(rng, horizontal)
        if rng.random() < 0.5:
            a, b = b, a
        answer = "left" if left_of(a, b) else "right"
        return f"Is the {a.shape} to the left or to the right of the {b.shape}?", answer
    # questions about "the object <phrase> the X" need exactly one such object
    unique = [(a, p, b) for a, p, b in pairs if sum(RELATIONS[p](o, b) for o in objs if o is not b) == 1]
    if kind in ("which_shape", "which_color") and unique:
        a, phrase, b = pick(rng, unique)
        if kind == "which_shape":
            return f"What shape is the object {phrase} the {b.colour} {b.shape}?", a.shape
        return f"What color is the object {phrase} the {b.shape}?", a.colour
    i, j = (int(k) for k in rng.permutation(len(objs))[:2])
    a, b = objs[i], objs[j]
    return f"Do the {a.shape} and the {b.shape} have the same color?", "yes" if a.colour == b.colour else "no"


def make_sample(rng: np.random.Generator, split: str) -> Sample:
    """A 64×64 or 64×48 scene of 2 (75 %) or 3 objects with distinct shapes and one relation question."""
    size = SQUARE if rng.random() < 0.7 else LANDSCAPE
    n = 2 if rng.random() < TWO_OBJECT_RATE else 3
    objs = random_objects(rng, grid_boxes(rng, size, n, min_side=12, max_side=26), distinct_shapes=True)
    if n >= 2 and rng.random() < 0.3:  # make "same color" questions answerable with "yes" often enough
        objs[1] = SceneObject(objs[1].shape, objs[0].colour, objs[1].box)
    img = render_scene(size, pick(rng, BACKGROUNDS), objs)
    q, a = _question(rng, objs)
    return Sample(img, [(short_prompt(q), a)], meta={"question": q, "objects": objs})
