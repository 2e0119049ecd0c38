"""Caption data for pretraining the demo base: fresh scenes of mini-CoIN's visual world, described in plain words.

This is the stand-in for LLaVA-1.5's *pretraining* captions (image → description), not for its instruction data:
every sample is ``USER: <image>\\nDescribe the image. ASSISTANT: <caption>`` (or one of a few other description
requests), and the captions describe what is drawn (colours, shapes, patterns, coarse positions, counts, the
letters of signs and book covers, the background) in several templates. None of the eight mini-CoIN task prompts,
instructions or answer formats (lettered options, "single word or phrase", boxes, "unanswerable") appear; a test
checks that.

Three kinds of images, drawn with :mod:`dymoe.data.minicoin.world` and the block font:

* ``scene``: 1-4 objects (any shape, colour, pattern) in a 2×2 grid, sometimes darkened or blurred;
* ``sign``: a sign board with 2-3 random letters, sometimes beside an object;
* ``cover``: a book cover with a colour band, a 3-letter title and two big initials.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from dymoe.data.minicoin.glyphs import draw_text, text_size
from dymoe.data.minicoin.world import (
    BACKGROUNDS,
    COLOURS,
    LANDSCAPE,
    PALETTE,
    PATTERNS,
    PLURALS,
    PORTRAIT,
    SHAPES,
    SQUARE,
    SceneObject,
    grid_boxes,
    pick,
    random_objects,
    render_scene,
)

__all__ = ["CAPTION_PROMPTS", "CaptionSample", "caption_samples", "describe_scene", "make_caption_sample"]

#: the user turn of a caption sample (generic description requests, never a task's question)
CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image.",
    "Describe the image briefly.",
    "Give a short description of the picture.",
)
BACKGROUND_NAMES: dict[tuple[int, int, int], str] = dict(zip(BACKGROUNDS, ("grey", "brown", "slate")))
NUMBERS = ("zero", "one", "two", "three", "four")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
COVER = (240, 235, 220)
KINDS = ("scene", "scene", "scene", "sign", "cover")  # drawn uniformly: 60% scenes, 20% signs, 20% covers


@dataclass
class CaptionSample:
    """One pretraining pair: an RGB ``image`` (64×64, 64×48 or 48×64), a description ``prompt`` and a ``caption``."""

    image: Image.Image
    prompt: str
    caption: str
    kind: str


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _cell(obj: SceneObject, size: tuple[int, int]) -> str:
    """Coarse position of an object by its centre: ``"top left"``, ..., or ``"middle"`` near the centre."""
    w, h = size
    cx, cy = (obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2
    if abs(cx - w / 2) < w / 8 and abs(cy - h / 2) < h / 8:
        return "middle"
    return f"{'top' if cy < h / 2 else 'bottom'} {'left' if cx < w / 2 else 'right'}"


def describe_scene(objs: list[SceneObject], size: tuple[int, int], background: str, style: int) -> str:
    """The caption of a scene of ``objs`` on a ``size = (w, h)`` image with a ``background`` colour name.

    ``style`` picks the template: 0 = one list with positions, 1 = one sentence per object (position, shape,
    colour, pattern), 2 = counts by shape and the colours present.
    """
    n = len(objs)
    noun = "object" if n == 1 else "objects"
    if style == 0:
        parts = [f"{_article(o.name)} {o.name} " + ("in the middle" if _cell(o, size) == "middle" else
                 f"at the {_cell(o, size)}") for o in objs]
        return f"{NUMBERS[n].capitalize()} {noun} on a {background} background: {', '.join(parts)}."
    if style == 1:
        sentences = [f"The {_cell(o, size)} {o.shape} is {o.colour}" + ("" if o.pattern == "plain" else
                     f" and {o.pattern}") + "." for o in objs]
        return f"A {background} picture with {NUMBERS[n]} {noun}. " + " ".join(sentences)
    if style == 2:
        counts: dict[str, int] = {}
        for o in objs:
            counts[o.shape] = counts.get(o.shape, 0) + 1
        groups = [f"{NUMBERS[c]} {PLURALS[s] if c > 1 else s}" for s, c in counts.items()]
        colours = sorted({o.colour for o in objs}, key=COLOURS.index)
        return (f"There {'is' if n == 1 else 'are'} {' and '.join(groups)} here. "
                f"Colours: {', '.join(colours)}. The background is {background}.")
    raise ValueError(f"caption style must be 0, 1 or 2, got {style!r}")


def _scene(rng: np.random.Generator) -> tuple[Image.Image, str]:
    size = (SQUARE, SQUARE, LANDSCAPE, PORTRAIT)[int(rng.integers(4))]
    n = int(rng.integers(1, 5))
    boxes = grid_boxes(rng, size, n, min_side=12, max_side=28)
    objs = random_objects(rng, boxes, distinct_kinds=False, patterns=PATTERNS)
    bg = pick(rng, BACKGROUNDS)
    img = render_scene(size, bg, objs)
    caption = describe_scene(objs, size, BACKGROUND_NAMES[bg], int(rng.integers(3)))
    effect = rng.random()
    if effect < 0.1:
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.3, 0.6)))
        caption += " The photo is dark."
    elif effect < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 2.0))))
        caption += " The photo is blurry."
    return img, caption


def _word(rng: np.random.Generator, n: int) -> str:
    return "".join(LETTERS[int(i)] for i in rng.integers(0, len(LETTERS), n))


def _sign(rng: np.random.Generator) -> tuple[Image.Image, str]:
    size = SQUARE if rng.random() < 0.6 else LANDSCAPE
    w, h = size
    word = _word(rng, int(rng.integers(2, 4)))
    board, ink = pick(rng, (("white", "black"), ("yellow", "black"), ("green", "white"), ("blue", "white"),
                            ("red", "white"), ("orange", "black")))
    tw, th = text_size(word, 3, 3)
    pw, ph = tw + 6, th + 6
    px, py = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
    objs = [SceneObject("square", board, (px, py, px + pw, py + ph))]
    extra = ""
    room = (py, h - py - ph)
    if max(room) >= 12 and rng.random() < 0.6:
        side = int(rng.integers(10, min(18, max(room)) + 1))
        y0 = int(rng.integers(0, py - side + 1)) if room[0] >= room[1] else int(rng.integers(py + ph, h - side + 1))
        x0 = int(rng.integers(0, w - side + 1))
        obj = SceneObject(pick(rng, SHAPES), pick(rng, [c for c in COLOURS if c != board]), (x0, y0, x0 + side, y0 + side))
        objs.append(obj)
        extra = f" {'Above' if y0 < py else 'Below'} the sign is {_article(obj.name)} {obj.name}."
    img = render_scene(size, pick(rng, BACKGROUNDS), objs)
    draw_text(img, word, (px + 3, py + 3), scale=3, colour=PALETTE[ink], gap=3)
    caption = pick(rng, (f"A {board} sign with {ink} letters. The letters are {' '.join(word)}, spelling {word}.",
                         f"The {board} sign reads {word}: {' '.join(word)}."))
    return img, caption + extra


def _cover(rng: np.random.Generator) -> tuple[Image.Image, str]:
    w, h = PORTRAIT
    band = pick(rng, COLOURS[:6])
    title, initials = _word(rng, 3), _word(rng, 2)
    arr = np.empty((h, w, 3), dtype=np.uint8)  # (H, W, 3)
    arr[:] = COVER
    arr[:14] = PALETTE[band]
    img = Image.fromarray(arr)
    tw, _ = text_size(title, 2, 2)
    draw_text(img, title, ((w - tw) // 2 + int(rng.integers(-2, 3)), 18), scale=2, colour=PALETTE["black"], gap=2)
    iw, _ = text_size(initials, 3, 3)
    draw_text(img, initials, ((w - iw) // 2 + int(rng.integers(-3, 4)), 38), scale=3, colour=(40, 40, 90), gap=3)
    caption = pick(rng, (
        f"A book cover with a {band} band at the top. The small letters say {title} and the big letters say "
        f"{initials}.",
        f"The cover of a book: a {band} stripe, the title {title} ({' '.join(title)}) and the initials "
        f"{' '.join(initials)}.",
    ))
    return img, caption


def make_caption_sample(rng: np.random.Generator) -> CaptionSample:
    """One random image of the mini world with its description (see the module docstring for the kinds)."""
    kind = pick(rng, KINDS)
    img, caption = {"scene": _scene, "sign": _sign, "cover": _cover}[kind](rng)
    return CaptionSample(img, pick(rng, CAPTION_PROMPTS), caption, kind)


def caption_samples(n: int, seed: int) -> list[CaptionSample]:
    """``n`` caption samples from an independent stream (seeded with ``(seed, 7919)``, unrelated to mini-CoIN's)."""
    rng = np.random.default_rng([seed, 7919])
    return [make_caption_sample(rng) for _ in range(n)]
