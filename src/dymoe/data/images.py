"""Image paths and pixels: root-confined path resolution, RGB decoding and LLaVA's pad-to-square."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

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


def load_image(path: Path, *, where: str | None = None) -> Image.Image:
    """Open and fully decode an image as RGB; a missing or undecodable file raises :class:`DataError`."""
    prefix = f"{where}: " if where else ""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{prefix}image {path} does not exist") from None
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
