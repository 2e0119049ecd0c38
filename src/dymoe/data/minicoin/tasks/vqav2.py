"""VQAv2-like: colours, counts and yes/no about a scene of 1-4 plain objects.

About one training row in five has a second question about the same image, as LLaVA's VQAv2 conversations do.
"""

from __future__ import annotations

import numpy as np

from dymoe.data.minicoin.tasks.base import Sample, short_prompt
from dymoe.data.minicoin.world import (
    BACKGROUNDS,
    COLOURS,
    LANDSCAPE,
    PLURALS,
    SHAPES,
    SQUARE,
    SceneObject,
    grid_boxes,
    pick,
    random_objects,
    render_scene,
)

MULTI_TURN_RATE = 0.2


def _question(rng: np.random.Generator, objs: list[SceneObject]) -> tuple[str, str]:
    """One (question, answer) about ``objs``; the kind is drawn first so colours, counts and yes/no stay balanced."""
    shapes = [o.shape for o in objs]
    kind = pick(rng, ("color", "count", "yesno"))
    unique = [o for o in objs if shapes.count(o.shape) == 1]
    if kind == "color" and unique:
        o = pick(rng, unique)
        return f"What color is the {o.shape}?", o.colour
    if kind in ("color", "count"):
        sub = pick(rng, ("all", "shape", "colour"))
        if sub == "all":
            return "How many objects are there?", str(len(objs))
        if sub == "shape":
            s = pick(rng, shapes)
            return f"How many {PLURALS[s]} are there?", str(shapes.count(s))
        c = pick(rng, [o.colour for o in objs])
        return f"How many {c} objects are there?", str(sum(o.colour == c for o in objs))
    want_yes = bool(rng.random() < 0.5)
    if rng.random() < 0.5:
        kinds = {(o.colour, o.shape) for o in objs}
        if want_yes:
            o = pick(rng, objs)
            c, s = o.colour, o.shape
        else:
            c, s = pick(rng, [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in kinds])
        return f"Is there a {c} {s}?", "yes" if (c, s) in kinds else "no"
    if unique:
        o = pick(rng, unique)
        c = o.colour if want_yes else pick(rng, [c for c in COLOURS if c != o.colour])
        return f"Is the {o.shape} {c}?", "yes" if c == o.colour else "no"
    s = pick(rng, SHAPES)
    return f"Are there any {PLURALS[s]}?", "yes" if s in shapes else "no"


def make_sample(rng: np.random.Generator, split: str) -> Sample:
    """A 64×64 or 64×48 scene of 1-4 objects (shapes may repeat) and one or two questions."""
    size = SQUARE if rng.random() < 0.7 else LANDSCAPE
    n = int(rng.integers(1, 5))
    objs = random_objects(rng, grid_boxes(rng, size, n, min_side=12, max_side=26), distinct_kinds=False)
    img = render_scene(size, pick(rng, BACKGROUNDS), objs)
    q, a = _question(rng, objs)
    turns = [(short_prompt(q), a)]
    if split == "train" and rng.random() < MULTI_TURN_RATE:
        q2, a2 = _question(rng, objs)
        if q2 != q:
            turns.append((short_prompt(q2), a2))
    return Sample(img, turns, meta={"question": q, "objects": objs})
