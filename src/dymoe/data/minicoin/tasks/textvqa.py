"""TextVQA-like: read the word on a sign in the scene.

Words have 2-3 letters drawn with the block font at scale 3. Each test row carries 10 annotator answers: 6-10 are
the word, the rest are annotator noise (a misreading, a truncation, "unanswerable"), as in TextVQA.
"""

from __future__ import annotations

import numpy as np

from dymoe.data.minicoin.glyphs import draw_text, text_size
from dymoe.data.minicoin.tasks.base import Sample, short_prompt
from dymoe.data.minicoin.world import (
    BACKGROUNDS,
    LANDSCAPE,
    PALETTE,
    SQUARE,
    SceneObject,
    pick,
    render_scene,
)

#: the words on signs (lower case as TextVQA answers are); "red" on a blue sign makes colour and text compete
WORDS: tuple[str, ...] = (
    "bus", "cat", "dog", "sun", "top", "bar", "hot", "oak", "sea", "box",
    "zoo", "cab", "map", "jam", "fun", "red", "pet", "go", "up", "ok",
)  # fmt: skip
SCALE, GAP, MARGIN = 3, 3, 3
#: sign colour -> ink colour
SIGNS = {"white": "black", "yellow": "black", "green": "white", "blue": "white"}
QUESTIONS = ("What does the sign say?", "What is written on the sign?", "What word is on the {sign} sign?")
NUM_ANSWERS = 10


def annotator_answers(rng: np.random.Generator, word: str) -> list[str]:
    """10 answers: 6-10 copies of ``word`` and noisy ones, shuffled; ``word`` is always the majority."""
    n_right = int(rng.integers(6, NUM_ANSWERS + 1))
    noise = [
        pick(rng, [w for w in WORDS if w != word]),
        word[:-1] if len(word) > 2 else word + "s",
        "unanswerable",
    ]
    answers = [word] * n_right + [pick(rng, noise) for _ in range(NUM_ANSWERS - n_right)]
    return [answers[int(i)] for i in rng.permutation(NUM_ANSWERS)]


def make_sample(rng: np.random.Generator, split: str) -> Sample:
    """A sign with a word, sometimes beside an object, on a 64×64 or 64×48 image."""
    size = SQUARE if rng.random() < 0.6 else LANDSCAPE
    w, h = size
    word = pick(rng, WORDS)
    sign = pick(rng, tuple(SIGNS))
    tw, th = text_size(word, SCALE, GAP)
    pw, ph = tw + 2 * MARGIN, th + 2 * MARGIN
    px, py = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
    objs = [SceneObject("square", sign, (px, py, px + pw, py + ph))]  # the sign board
    # a small object in the free strip above or below the sign, when there is room
    strips = [(0, py), (py + ph, h)]
    y_lo, y_hi = max(strips, key=lambda s: s[1] - s[0])
    if y_hi - y_lo >= 12 and rng.random() < 0.7:
        side = int(rng.integers(10, min(18, y_hi - y_lo) + 1))
        x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(y_lo, y_hi - side + 1))
        colour = pick(rng, [c for c in PALETTE if c != sign])
        objs.append(
            SceneObject(
                pick(rng, ("circle", "triangle", "diamond", "cross")), colour, (x0, y0, x0 + side, y0 + side)
            )
        )
    img = render_scene(size, pick(rng, BACKGROUNDS), objs)
    draw_text(
        img, word.upper(), (px + MARGIN, py + MARGIN), scale=SCALE, colour=PALETTE[SIGNS[sign]], gap=GAP
    )
    question = pick(rng, QUESTIONS).format(sign=sign)
    answers = annotator_answers(rng, word)
    return Sample(
        img,
        [(short_prompt(question), word)],
        truth={"answers": answers},
        meta={"question": question, "objects": objs, "word": word, "text_xy": (px + MARGIN, py + MARGIN)},
    )
