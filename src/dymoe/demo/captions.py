"""Caption data for pretraining the demo base: fresh scenes of mini-CoIN's visual world, described in plain words.

This is the stand-in for LLaVA-1.5's *pretraining* captions (image → description), not for its instruction data:
every sample is ``USER: <image>\\nDescribe the image. ASSISTANT: <caption>`` (or one of a few other description
requests), and the captions describe what is drawn (colours, shapes, patterns, coarse positions, counts, the
letters of signs and book covers, the background) in several templates. None of the eight mini-CoIN task prompts,
instructions or answer formats (lettered options, "single word or phrase", boxes, "unanswerable") appear; a test
checks that.

Half of the samples (``FOCUS_RATE``) ask instead for a *focused* description: of one object ("Describe the
triangle."), of one part of the picture ("Describe the top left of the picture."), of the number of objects, of the
writing on a sign or a cover. The answer is a full sentence in the same caption style. This is what makes the base
read its prompt at all (a model pretrained only on "Describe the image." learns to ignore the text), the role
Vicuna's language pretraining plays for LLaVA; none of it is a task's question or answer format.

A sixth of the samples (``TEXT_RATE``) have no image: short sentences about words, numbers, names and yes/no facts
(``text`` kind). They stand in for what the language model of a real LLaVA knows before any visual training: an
answer word the base never produced ("yes", "7", "0.38", "zoo", "Travel", "unanswerable") has an untrained output
row, and no adapter fine-tuning of the projections (LoRA or experts) fixes that in a few dozen steps. The lexicon
(:data:`LEXICON`, :data:`NAMES`, :data:`BOOK_KINDS`) is a general one that contains mini-CoIN's answer words among
others; no sample pairs an image with a task's question.

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
#: probability that a sample asks for a focused description instead of the whole picture
FOCUS_RATE = 0.5
#: probability that a sample is text only (the ``text`` kind)
TEXT_RATE = 1 / 6
#: short English words (mini-CoIN's sign words among them)
LEXICON: tuple[str, ...] = (
    "bus", "cat", "dog", "sun", "top", "bar", "hot", "oak", "sea", "box", "zoo", "cab", "map", "jam", "fun", "red",
    "pet", "go", "up", "ok", "art", "bag", "bed", "big", "car", "cup", "day", "egg", "fox", "hat", "ice", "jar",
    "key", "log", "man", "net", "owl", "pen", "rat", "sky", "tea", "van", "war", "web", "yes", "zen", "no", "on",
    "in", "at", "it", "we", "me", "by", "so", "to", "an", "of", "or", "if", "is", "be", "do", "he",
)  # fmt: skip
#: people's names (mini-CoIN's authors among them)
NAMES: tuple[str, ...] = (
    "Ada Kent", "Ben Lowe", "Cal Moss", "Dan Nash", "Eve Park", "Fay Rowe", "Gil Sato", "Hal Tate", "Ivy Ueda",
    "Jon Vale", "Kim West", "Liv Yoon", "Max Bell", "Ned Cole", "Ola Diaz", "Pia Ford", "Ray Gray", "Sue Hill",
)  # fmt: skip
#: kinds of books (mini-CoIN's genres among them)
BOOK_KINDS: tuple[str, ...] = ("Travel", "History", "Romance", "Cookbooks", "Sports", "Science", "Poetry", "Music",
                               "Comics", "Law", "Health", "Children")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
CELLS = ("top left", "top right", "bottom left", "bottom right")


@dataclass
class CaptionSample:
    """One pretraining pair: an RGB ``image`` (64×64, 64×48 or 48×64; None for the ``text`` kind), a description
    ``prompt`` and a ``caption``."""

    image: Image.Image | None
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


def _focus_scene(objs: list[SceneObject], size: tuple[int, int]) -> list[tuple[str, str]]:
    """Focused (request, description) pairs of a scene: each shape drawn once, each quadrant, the count."""
    pairs = []
    shapes = [o.shape for o in objs]
    for o in objs:
        if shapes.count(o.shape) == 1:
            where = "in the middle" if _cell(o, size) == "middle" else f"at the {_cell(o, size)}"
            look = o.colour if o.pattern == "plain" else f"{o.colour} and {o.pattern}"
            pairs.append((f"Describe the {o.shape}.", f"The {o.shape} is {look}, {where}."))
    for cell in CELLS:
        here = [o for o in objs if _cell(o, size) == cell]
        pairs.append((f"Describe the {cell} of the picture.",
                      f"At the {cell} there is {_article(here[0].name)} {here[0].name}." if here
                      else f"There is nothing at the {cell}."))
    n = len(objs)
    pairs.append(("Describe how many things are in the picture.",
                  f"There {'is' if n == 1 else 'are'} {NUMBERS[n]} {'object' if n == 1 else 'objects'}."))
    return pairs


def _scene(rng: np.random.Generator) -> tuple[Image.Image, str, list[tuple[str, str]]]:
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
    return img, caption, _focus_scene(objs, size)


def _word(rng: np.random.Generator, n: int) -> str:
    return "".join(LETTERS[int(i)] for i in rng.integers(0, len(LETTERS), n))


def _sign(rng: np.random.Generator) -> tuple[Image.Image, str, list[tuple[str, str]]]:
    size = SQUARE if rng.random() < 0.6 else LANDSCAPE
    w, h = size
    known = rng.random() < 0.5  # half the signs show a word of the lexicon, half random letters
    word = pick(rng, LEXICON).upper() if known else _word(rng, int(rng.integers(2, 4)))
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
    if known:
        caption += f" It is the word {word.lower()}."
    focus = [("Describe the writing in the picture.", f"The sign reads {word}, spelled {' '.join(word)}."),
             ("Describe the sign.", f"The sign is {board} with {ink} letters.")]
    if known:
        focus.append(("Describe the word on the sign.", f"The word is {word.lower()}."))
    return img, caption + extra, focus


def _cover(rng: np.random.Generator) -> tuple[Image.Image, str, list[tuple[str, str]]]:
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
    focus = [("Describe the writing in the picture.",
              f"The small letters say {title} and the big letters say {' '.join(initials)}."),
             ("Describe the top of the cover.", f"There is {_article(band)} {band} band at the top.")]
    return img, caption, focus


def make_text_sample(rng: np.random.Generator) -> tuple[str, str]:
    """One text-only (request, sentence) pair of the ``text`` kind: spelling, numbers, decimals and lists of them,
    names, book kinds, yes/no facts about colours and shapes, the word "unanswerable"."""
    kind = int(rng.integers(8))
    if kind == 0:
        w = pick(rng, LEXICON)
        return f"Say the word spelled {' '.join(w.upper())}.", f"The word is {w}."
    if kind == 1:
        w = pick(rng, LEXICON)
        return f"Spell the word {w}.", f"{w} is spelled {' '.join(w.upper())}."
    if kind == 2:
        n = int(rng.integers(11))
        return f"Write {NUMBER_WORDS[n]} in digits.", f"{NUMBER_WORDS[n].capitalize()} is {n}."
    if kind == 3:
        if rng.random() < 0.5:
            n = int(rng.integers(101))
            return f"Write {n} hundredths as a decimal.", f"{n} hundredths is {n / 100:.2f}."
        values = rng.integers(0, 101, int(rng.integers(2, 4)))  # 2-3 numbers: never a 4-number box
        return ("Write " + ", ".join(f"{v} hundredths" for v in values) + " as a list.",
                "[" + ", ".join(f"{v / 100:.2f}" for v in values) + "]")
    if kind == 4:
        return "Name an author.", f"{pick(rng, NAMES)} is an author."
    if kind == 5:
        return "Name a kind of book.", f"{pick(rng, BOOK_KINDS)} is a kind of book."
    if kind == 6:
        if rng.random() < 0.5:
            c = pick(rng, COLOURS)
            yes = rng.random() < 0.5
            thing = c if yes else pick(rng, SHAPES)
            return f"Say whether {thing} is a colour.", (f"yes, {thing} is a colour." if yes else
                                                        f"no, {thing} is a shape, not a colour.")
        yes = rng.random() < 0.5
        thing = pick(rng, SHAPES) if yes else pick(rng, COLOURS)
        return f"Say whether {thing} is a shape.", (f"Yes. {thing.capitalize()} is a shape." if yes else
                                                   f"No. {thing.capitalize()} is a colour, not a shape.")
    return "Describe a question that nobody can answer.", "Such a question is unanswerable."


def make_caption_sample(rng: np.random.Generator) -> CaptionSample:
    """One random image of the mini world with its description, whole or focused (see the module docstring)."""
    if rng.random() < TEXT_RATE:
        prompt, text = make_text_sample(rng)
        return CaptionSample(None, prompt, text, "text")
    kind = pick(rng, KINDS)
    img, caption, focus = {"scene": _scene, "sign": _sign, "cover": _cover}[kind](rng)
    if rng.random() < FOCUS_RATE:
        prompt, text = focus[int(rng.integers(len(focus)))]
        return CaptionSample(img, prompt, text, kind)
    return CaptionSample(img, pick(rng, CAPTION_PROMPTS), caption, kind)


def caption_samples(n: int, seed: int) -> list[CaptionSample]:
    """``n`` caption samples from an independent stream (seeded with ``(seed, 7919)``, unrelated to mini-CoIN's)."""
    rng = np.random.default_rng([seed, 7919])
    return [make_caption_sample(rng) for _ in range(n)]
