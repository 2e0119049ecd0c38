"""A 5×7 bitmap font for the "text" of mini-CoIN (signs, book covers).

Text is drawn as blocks of solid pixels (each font pixel becomes a ``scale × scale`` square), never anti-aliased, so
that a glyph drawn at ``scale=3`` on a 64-pixel image is still a readable 7-pixel-wide blob after the backbone
downscales the image to 32×32.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

GLYPH_W, GLYPH_H = 5, 7

# one string per row, "#" = ink; classic 5×7 dot-matrix shapes
_ROWS: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
}

#: letter -> bool array of shape (7, 5), True = ink
FONT: dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in rows], dtype=bool) for ch, rows in _ROWS.items()
}


def text_size(text: str, scale: int, gap: int) -> tuple[int, int]:
    """Pixel ``(width, height)`` of ``text`` drawn with :func:`draw_text`."""
    n = len(text)
    return n * GLYPH_W * scale + max(n - 1, 0) * gap, GLYPH_H * scale


def text_mask(text: str, scale: int, gap: int) -> np.ndarray:
    """Bool ink mask of shape ``(7*scale, width)`` for upper-case ``text`` (letters A-Z only)."""
    w, h = text_size(text, scale, gap)
    mask = np.zeros((h, w), dtype=bool)
    block = np.ones((scale, scale), dtype=bool)
    for i, ch in enumerate(text.upper()):
        if ch not in FONT:
            raise ValueError(f"no glyph for {ch!r}; the mini-CoIN font has A-Z only")
        x = i * (GLYPH_W * scale + gap)
        # (7, 5) → (7*scale, 5*scale): each font pixel becomes a solid block
        mask[:, x : x + GLYPH_W * scale] = np.kron(FONT[ch], block).astype(bool)
    return mask


def draw_text(
    img: Image.Image, text: str, xy: tuple[int, int], *, scale: int, colour: tuple[int, int, int], gap: int
) -> None:
    """Draw ``text`` in place on an RGB image with its top-left corner at ``xy`` (pixels)."""
    mask = text_mask(text, scale, gap)
    ink = Image.fromarray((mask * 255).astype(np.uint8))
    img.paste(Image.new("RGB", ink.size, colour), xy, ink)
