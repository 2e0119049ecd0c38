"""Image paths and pixels: root-confined path resolution, RGB decoding and LLaVA's pad-to-square."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from dymoe.errors import DataError


def resolve_image(root: Path, rel: str, *, where: str) -> Path:
    """Join an ``image`` field to its image root, refusing paths that escape the root.

    The check is lexical (``..`` components and absolute paths, POSIX or Windows style, are refused), so
    symlinks that the user placed *inside* the root (``cl_dataset/COCO2014 -> /data/coco``) keep working.
    Existence is not checked here. ``where`` (e.g. ``"train.json row 17"``) goes into the error message.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"{where}: expected a non-empty string 'image', got {rel!r}")
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise DataError(f"{where}: image path {rel!r} is absolute; it must be relative to the image root {root}")
    norm = os.path.normpath(rel.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise DataError(f"{where}: image path {rel!r} escapes the image root {root}")
    return Path(root) / norm


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB of any Pillow image, keeping the tonal range of high-bit-depth modes.

    ``convert("RGB")`` clips 16/32-bit grey values to 255 (a 16-bit PNG turns white). Instead:

    * ``I;16`` (16-bit grey PNG/TIFF, any byte order): ``round(v / 257)``, i.e. 0..65535 → 0..255;
    * ``I`` (32-bit integers) and ``F`` (floats): the range the values fit decides: [0, 1] (floats only) is scaled
      by 255, [0, 255] is kept, [0, 65535] is divided by 257, anything else (negative values, larger ones) is
      stretched linearly from its minimum to its maximum;
    * every other mode (1, L, P, LA, RGBA, CMYK, YCbCr, 48-bit RGB read as RGB, ...) uses ``convert("RGB")``, as
      LLaVA does (an alpha channel is dropped).
    """
    mode = img.mode
    if not (mode.startswith("I") or mode == "F"):
        return img.convert("RGB")
    a = np.asarray(img, dtype=np.float64)  # [H, W]
    if mode.startswith("I;16"):
        grey = a / 257.0
    else:
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if mode == "F" and lo >= 0 and hi <= 1:
            grey = a * 255.0
        elif lo >= 0 and hi <= 255:
            grey = a
        elif lo >= 0 and hi <= 65535:
            grey = a / 257.0
        else:
            grey = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(grey8).convert("RGB")


def load_image(path: Path, *, where: str | None = None) -> Image.Image:
    """Open and fully decode an image as RGB (:func:`to_rgb`: 16-bit and float images keep their range); a
    missing or undecodable file, or a directory, raises :class:`DataError`."""
    prefix = f"{where}: " if where else ""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{prefix}image {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{prefix}image {path} is a directory, expected an image file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{prefix}image {path} does not decode: {err}") from None


def expand2square(img: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Pad an image to a square, centred, with ``background_color`` (LLaVA ``image_aspect_ratio="pad"``).

    ``background_color`` is the image processor's mean × 255 (``tuple(int(x * 255) for x in image_mean)``).
    A ``w × h`` image with ``w > h`` is pasted at ``(0, (w - h) // 2)`` on a ``w × w`` canvas (and symmetrically).
    """
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), background_color)
    result.paste(img, ((side - width) // 2, (side - height) // 2))
    return result


def background_from_mean(image_mean: list[float] | tuple[float, ...]) -> tuple[int, ...]:
    """LLaVA's pad colour: ``tuple(int(x * 255) for x in image_mean)``."""
    return tuple(int(x * 255) for x in image_mean)
