"""The one visual world shared by every mini-CoIN task: palette, shapes, patterns, placement and rendering.

A colour word means the same pixels in every task and a "triangle" is the same polygon everywhere, so the tasks
compete for the same visual features and answer words, as CoIN's tasks do. Everything is sized for a backbone that
sees 32×32 images: 8 clearly distinct colours, 5 big solid shapes, at most 4 objects, 8-pixel pattern periods.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

#: colour word -> RGB; chosen to stay distinct after downscaling, darkening and blur
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 215, 30),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
PLURALS: dict[str, str] = {s: s + ("es" if s.endswith("ss") else "s") for s in SHAPES}
PATTERNS: tuple[str, ...] = ("plain", "striped", "spotted")
#: muted backgrounds, none of them close to a palette colour
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((128, 128, 128), (150, 138, 118), (108, 122, 134))
#: (width, height) of the images: square, landscape and portrait
SQUARE, LANDSCAPE, PORTRAIT = (64, 64), (64, 48), (48, 64)

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive (RefCOCO's x + w)


@dataclass(frozen=True)
class SceneObject:
    """One object: a shape filled with a colour and a pattern, touching all four sides of ``box``."""

    shape: str
    colour: str
    box: Box
    pattern: str = "plain"

    @property
    def name(self) -> str:
        """Class name, e.g. ``"red circle"`` or ``"striped red circle"`` (the plain pattern is not named)."""
        base = f"{self.colour} {self.shape}"
        return base if self.pattern == "plain" else f"{self.pattern} {base}"


def contrast_of(colour: str) -> tuple[int, int, int]:
    """RGB of the stripes/spots drawn on an object of ``colour`` (white on dark colours, black otherwise)."""
    return PALETTE["white"] if colour in ("black", "blue", "purple") else PALETTE["black"]


def shape_mask(shape: str, box: Box, size: tuple[int, int]) -> Image.Image:
    """An ``L`` image of ``size`` with 255 where ``shape`` covers; its tight bounding box is exactly ``box``."""
    x0, y0, x1, y1 = box
    xe, ye = x1 - 1, y1 - 1  # PIL coordinates are inclusive
    cx, cy = (x0 + xe) / 2, (y0 + ye) / 2
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((x0, y0, xe, ye), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, xe, ye), fill=255)
    elif shape == "triangle":
        draw.polygon([(x0, ye), (cx, y0), (xe, ye)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (xe, cy), (cx, ye), (x0, cy)], fill=255)
    elif shape == "cross":
        w, h = x1 - x0, y1 - y0
        # bars one third of the box thick
        draw.rectangle((x0, y0 + h // 3, xe, y0 + h - h // 3 - 1), fill=255)
        draw.rectangle((x0 + w // 3, y0, x0 + w - w // 3 - 1, ye), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return mask


def pattern_fill(colour: str, pattern: str, origin: tuple[int, int], size: tuple[int, int]) -> Image.Image:
    """RGB image of ``size`` filled with ``colour`` and ``pattern`` (period 8 px, anchored at ``origin``)."""
    w, h = size
    rgb = np.empty((h, w, 3), dtype=np.uint8)  # (H, W, 3)
    rgb[:] = PALETTE[colour]
    ys = (np.arange(h) - origin[1]) % 8
    xs = (np.arange(w) - origin[0]) % 8
    if pattern == "striped":
        ink = np.broadcast_to((ys >= 5)[:, None], (h, w))  # 3-px stripes, 5-px colour: colour stays dominant
    elif pattern == "spotted":
        ink = ((ys >= 2) & (ys < 6))[:, None] & ((xs >= 2) & (xs < 6))[None, :]  # 4×4 spots
    elif pattern == "plain":
        ink = np.zeros((h, w), dtype=bool)
    else:
        raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    rgb[ink] = contrast_of(colour)
    return Image.fromarray(rgb)


def draw_object(img: Image.Image, obj: SceneObject) -> None:
    """Draw ``obj`` in place on an RGB image (parts outside the image are clipped)."""
    mask = shape_mask(obj.shape, obj.box, img.size)
    img.paste(pattern_fill(obj.colour, obj.pattern, obj.box[:2], img.size), (0, 0), mask)


def render_scene(
    size: tuple[int, int], background: tuple[int, int, int], objects: list[SceneObject]
) -> Image.Image:
    """A new RGB image of ``size`` with ``objects`` drawn in order on a flat ``background``."""
    img = Image.new("RGB", size, background)
    for obj in objects:
        draw_object(img, obj)
    return img


def pick(rng: np.random.Generator, items):
    """One element of the sequence ``items``, uniformly."""
    return items[int(rng.integers(len(items)))]


def sample_without(rng: np.random.Generator, items, k: int, exclude=()) -> list:
    """``k`` distinct elements of ``items`` not in ``exclude``, in random order."""
    pool = [x for x in items if x not in exclude]
    return [pool[i] for i in rng.permutation(len(pool))[:k]]


def grid_boxes(
    rng: np.random.Generator, size: tuple[int, int], n: int, *, min_side: int = 14, max_side: int = 28
) -> list[Box]:
    """Boxes of ``n`` objects (n <= 4), one per cell of a 2×2 grid, so that boxes never overlap.

    Two objects in different grid columns are strictly left/right of each other (their x-ranges are disjoint), and
    likewise for rows; relation questions rely on this.
    """
    if not 1 <= n <= 4:
        raise ValueError(f"grid_boxes places 1-4 objects, got {n}")
    w, h = size
    cw, ch = w // 2, h // 2
    cells = [(c, r) for r in range(2) for c in range(2)]
    boxes = []
    for i in rng.permutation(4)[:n]:
        col, row = cells[int(i)]
        limit = min(max_side, cw - 2, ch - 2)
        bw = int(rng.integers(min_side, limit + 1))
        bh = int(np.clip(round(bw * rng.uniform(0.8, 1.25)), min_side, limit))
        x0 = col * cw + int(rng.integers(0, cw - bw + 1))
        y0 = row * ch + int(rng.integers(0, ch - bh + 1))
        boxes.append((x0, y0, x0 + bw, y0 + bh))
    return boxes


def random_objects(
    rng: np.random.Generator,
    boxes: list[Box],
    *,
    distinct_shapes: bool = False,
    distinct_kinds: bool = True,
    patterns: tuple[str, ...] = ("plain",),
) -> list[SceneObject]:
    """Objects in ``boxes`` with random shape/colour/pattern.

    ``distinct_shapes``: no two objects share a shape; ``distinct_kinds``: no two share (colour, shape).
    """
    shapes = sample_without(rng, SHAPES, len(boxes)) if distinct_shapes else None
    objs: list[SceneObject] = []
    for i, box in enumerate(boxes):
        while True:
            shape = shapes[i] if shapes else pick(rng, SHAPES)
            colour = pick(rng, COLOURS)
            if not distinct_kinds or all((o.shape, o.colour) != (shape, colour) for o in objs):
                break
        objs.append(SceneObject(shape, colour, box, pick(rng, patterns)))
    return objs


def left_of(a: SceneObject, b: SceneObject) -> bool:
    """``a`` lies entirely left of ``b``."""
    return a.box[2] <= b.box[0]


def above(a: SceneObject, b: SceneObject) -> bool:
    """``a`` lies entirely above ``b``."""
    return a.box[3] <= b.box[1]


#: relation phrase -> predicate(a, b) meaning "a <phrase> b"
RELATIONS = {
    "to the left of": left_of,
    "to the right of": lambda a, b: left_of(b, a),
    "above": above,
    "below": lambda a, b: above(b, a),
}
