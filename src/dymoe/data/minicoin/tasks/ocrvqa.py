"""OCR-VQA-like: book covers with a genre colour band, a title and the author's initials.

A cover (48×64, portrait) has a band whose colour codes the genre, a 3-letter title (scale-2 glyphs) and the
author's initials in big glyphs (scale 3); each author has unique initials. Yes/no answers are capitalised
("Yes"/"No") as in OCR-VQA, unlike VQAv2's "yes"/"no".
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from dymoe.data.minicoin.glyphs import draw_text, text_size
from dymoe.data.minicoin.tasks.base import Sample, short_prompt
from dymoe.data.minicoin.world import PALETTE, PORTRAIT, pick

#: genre -> band colour
GENRES: dict[str, str] = {
    "Travel": "blue",
    "History": "orange",
    "Romance": "red",
    "Cookbooks": "yellow",
    "Sports": "green",
    "Science": "purple",
}
AUTHORS: tuple[str, ...] = (
    "Ada Kent", "Ben Lowe", "Cal Moss", "Dan Nash", "Eve Park", "Fay Rowe",
    "Gil Sato", "Hal Tate", "Ivy Ueda", "Jon Vale", "Kim West", "Liv Yoon",
)  # fmt: skip
TITLES: tuple[str, ...] = ("Sun", "Sea", "Oak", "Fox", "Owl", "Sky", "Ice", "Jar", "Art", "War", "Zen", "Map")
COVER = (240, 235, 220)
BAND_H = 14


def _question(rng: np.random.Generator, genre: str, author: str, title: str) -> tuple[str, str]:
    kind = pick(rng, ("author", "title", "genre", "type", "is_a", "related"))
    if kind == "author":
        return "Who wrote this book?", author
    if kind == "title":
        return "What is the title of this book?", title
    if kind == "genre":
        return "What is the genre of this book?", genre
    if kind == "type":
        return "What type of book is this?", genre
    asked = genre if rng.random() < 0.5 else pick(rng, [g for g in GENRES if g != genre])
    q = f"Is this a {asked} book?" if kind == "is_a" else f"Is this book related to {asked}?"
    return q, "Yes" if asked == genre else "No"


def make_sample(rng: np.random.Generator, split: str) -> Sample:
    """One book cover and one question about its author, title or genre."""
    genre, author, title = pick(rng, tuple(GENRES)), pick(rng, AUTHORS), pick(rng, TITLES)
    w, h = PORTRAIT
    img = np.empty((h, w, 3), dtype=np.uint8)  # (H, W, 3)
    img[:] = COVER
    img[:BAND_H] = PALETTE[GENRES[genre]]
    cover = Image.fromarray(img)
    tw, _ = text_size(title, 2, 2)
    draw_text(
        cover,
        title.upper(),
        ((w - tw) // 2 + int(rng.integers(-2, 3)), 18),
        scale=2,
        colour=PALETTE["black"],
        gap=2,
    )
    initials = "".join(part[0] for part in author.split())
    iw, _ = text_size(initials, 3, 3)
    draw_text(
        cover, initials, ((w - iw) // 2 + int(rng.integers(-3, 4)), 38), scale=3, colour=(40, 40, 90), gap=3
    )
    q, a = _question(rng, genre, author, title)
    return Sample(
        cover, [(short_prompt(q), a)], meta={"question": q, "genre": genre, "author": author, "title": title}
    )
