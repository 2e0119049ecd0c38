"""Grounding-like (RefCOCO in CoIN): output the box of the object a short phrase describes.

Boxes follow CoIN's RefCOCO convention: the image is padded to a ``max(w, h)`` square (centred, offset
``(w - h) / 2``) and coordinates are divided by the square side, printed with 2 decimals as ``"[x1, y1, x2, y2]"``.
Half the images are not square, so the padding convention matters.

Boxes are learnable at this scale (CoIN's RefCOCO boxes are not, for a 7B model either: 1-9 % in CoIN): the objects
stand one per cell of a 2×2 grid, each a square nearly filling its cell (side 2 to 2 + :data:`SIDE_SPREAD` px
short of the cell's shorter side, centred within ±:data:`JITTER` px), so a model that finds the described object's
cell and knows the image's aspect ratio can place a box with IoU > 0.5 (``tests/data/test_minicoin.py`` checks
this with the scorer); the exact coordinates still vary with the object's size and jitter. (Generator v2 drew
boxes of 18-30 px anywhere in their cells: a 7B model finds 1-9 % of CoIN's RefCOCO boxes, the demo's base none.)
The prompt is ``"<phrase>\n<instruction>"`` like
every other task (LLaVA's own RefCOCO rows put the phrase after a colon instead), so the instruction rewrite of
:mod:`dymoe.data.templates` applies to it too.
"""

from __future__ import annotations

import numpy as np

from dymoe.data.minicoin.tasks.base import GROUNDING_INSTRUCTION, Sample
from dymoe.data.minicoin.world import (
    BACKGROUNDS,
    LANDSCAPE,
    PATTERNS,
    PORTRAIT,
    SQUARE,
    Box,
    SceneObject,
    above,
    left_of,
    pick,
    random_objects,
    render_scene,
)


def normalise_box(box: Box, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Pixel box ``(x1, y1, x2, y2)`` of a ``size = (w, h)`` image → coordinates in the padded unit square.

    Same arithmetic as CoIN's ``change_bbox`` (eval_grounding.py): the shorter side is centred in the square.
    """
    w, h = size
    side = max(w, h)
    dx, dy = (side - w) / 2, (side - h) / 2
    x1, y1, x2, y2 = box
    return ((x1 + dx) / side, (y1 + dy) / side, (x2 + dx) / side, (y2 + dy) / side)


def format_box(coords: tuple[float, float, float, float]) -> str:
    """``"[0.12, 0.34, 0.56, 0.78]"``: the answer string of RefCOCO rows in LLaVA/CoIN data."""
    return "[" + ", ".join(f"{v:.2f}" for v in coords) + "]"


JITTER = 3  # px: how far an object's centre may sit from its cell's centre
SIDE_SPREAD = 4  # px: how much shorter than the largest side an object may be


def cell_boxes(rng: np.random.Generator, size: tuple[int, int], n: int) -> list[Box]:
    """Boxes of ``n`` (1-4) square objects, one per random cell of the 2×2 grid, each nearly filling its cell."""
    w, h = size
    cw, ch = w // 2, h // 2
    side_max = min(cw, ch) - 2
    boxes = []
    for i in rng.permutation(4)[:n]:
        col, row = int(i) % 2, int(i) // 2
        side = int(rng.integers(side_max - SIDE_SPREAD, side_max + 1))
        x0 = col * cw + (cw - side) // 2 + int(rng.integers(-JITTER, JITTER + 1))
        y0 = row * ch + (ch - side) // 2 + int(rng.integers(-JITTER, JITTER + 1))
        x0 = int(np.clip(x0, col * cw, (col + 1) * cw - side))  # stay inside the cell: boxes never overlap
        y0 = int(np.clip(y0, row * ch, (row + 1) * ch - side))
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def _expressions(target: SceneObject, objs: list[SceneObject]) -> list[str]:
    """Every phrase that picks out ``target`` and no other object."""
    others = [o for o in objs if o is not target]
    out = [f"the {target.colour} {target.shape}"]
    if all(o.shape != target.shape for o in others):
        out.append(f"the {target.shape}")
    if all(o.colour != target.colour for o in others):
        out.append(f"the {target.colour} object")
    if all(left_of(target, o) for o in others):
        out.append(f"the {target.shape} on the left")
    if all(left_of(o, target) for o in others):
        out.append(f"the {target.shape} on the right")
    if all(above(target, o) for o in others):
        out.append(f"the top {target.shape}")
    if all(above(o, target) for o in others):
        out.append(f"the bottom {target.shape}")
    return out


def make_sample(rng: np.random.Generator, split: str) -> Sample:
    """2-3 objects with distinct (colour, shape), one per grid cell, on a square, landscape or portrait image; one
    is described."""
    size = (SQUARE, SQUARE, LANDSCAPE, PORTRAIT)[int(rng.integers(4))]
    n = int(rng.integers(2, 4))
    objs = random_objects(rng, cell_boxes(rng, size, n), patterns=PATTERNS)
    img = render_scene(size, pick(rng, BACKGROUNDS), objs)
    target = pick(rng, objs)
    phrase = pick(rng, _expressions(target, objs))
    answer = format_box(normalise_box(target.box, size))
    prompt = f"{phrase}\n{GROUNDING_INSTRUCTION}"
    return Sample(
        img,
        [(prompt, answer)],
        truth={"answer_bbox": answer, "size": [size[0], size[1]]},
        meta={"question": phrase, "objects": objs, "target": target},
    )
