"""Shared by the `folder` and `csv` sources: safe path resolution and tolerant image decoding."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from evo.data.dataset import ImageSet, check_size
from evo.errors import DataError

log = logging.getLogger("evo.data")

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# 8192 x 8192: above nearly every camera's output (48-50 MP phones, 61 MP full frame; larger JPEGs are read
# at a reduced scale), yet ~200 MB as uint8 RGB, so the few images the server decodes at once fit a small
# machine; and below Pillow's bomb warning (89 MP), so whatever it would warn about, evo refuses in one line.
MAX_PIXELS = 8192 * 8192
TOO_LARGE = f"over evo's {MAX_PIXELS / 1e6:.0f} MP limit"  # how `load_images` lists such a skipped file


class ImageTooLarge(DataError):
    """An image whose header claims more than MAX_PIXELS (decoding it could take gigabytes)."""


def natural_key(name: str) -> list[int | str]:
    """Sort "2" before "10" and "img2" before "img10"."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def inside(root: Path, path: str | Path) -> Path:
    """`path` (relative to `root`, or absolute) resolved; refused if it escapes `root` (.., symlinks)."""
    full = Path(path) if Path(path).is_absolute() else root / path
    resolved = full.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DataError(
            f"{path} resolves to {resolved}, outside the declared root {root}; move the file under the root or declare a wider root"
        )
    return resolved


def parse_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """None, an int (square) or (height, width)."""
    return None if size is None else check_size(size)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB; transparency is composited over white, 16-bit gray is scaled down."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    return img.convert("RGB")


def _open(file: Path | BinaryIO, where: str) -> Image.Image:
    """Image.open without decoding a pixel; a JPEG over MAX_PIXELS is read at 1/2..1/8 scale (`draft`, free),
    anything else over it is a DataError: its size is a header's claim, decoding it could take gigabytes."""
    fix = f"evo reads at most {MAX_PIXELS / 1e6:.0f} MP; downscale it (e.g. to 4096 pixels a side) and retry"
    # Pillow warns from 89 MP; evo refuses from MAX_PIXELS with its own one-line error, so the warning (two
    # lines on stderr) adds nothing. Added per call (idempotent: an equal filter is moved, not repeated), since
    # a `catch_warnings` block around an import would undo a module-level one; `catch_warnings` here would
    # swap the process-wide filters under other threads.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        img = Image.open(file)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{where}: {str(e).rstrip('.')}; {fix}") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        step = 2 ** math.ceil(math.log2(math.sqrt(w * h / MAX_PIXELS)))
        img.draft(None, (max(1, w // step), max(1, h // step)))  # a no-op but for JPEG
    if img.width * img.height > MAX_PIXELS:
        img.close()
        raise ImageTooLarge(f"{where} is {w}x{h} pixels ({w * h / 1e6:.0f} MP); {fix}")
    return img


def decode(file: Path | BinaryIO, size: tuple[int, int] | None, where: str | None = None) -> np.ndarray:
    """uint8 (H, W, 3) from a path or an open binary file (`where` names it in errors); resized to `size`
    (height, width) when given. Raises one of _UNREADABLE (a DataError over MAX_PIXELS)."""
    with _open(file, where or str(file)) as img:
        img.load()
        rgb = _to_rgb(img)
    if size is not None and (rgb.height, rgb.width) != size:
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def load_images(
    entries: Sequence[tuple[Path, str]], classes: Sequence[str], size: tuple[int, int] | None, origin: str
) -> ImageSet:
    """Decode (path, class) pairs; unreadable files are logged and listed in `skipped`, and so are
    repeats (a file listed twice, or byte-identical pixels under the same label; under two labels
    either one is a DataError).

    Without `size`, images are resized to the most common (height, width) (ties: the larger).
    Classes left with no readable image are dropped, with a warning.
    """
    if not entries:
        raise DataError(f"{origin} lists no image files; add images (extensions: {sorted(IMAGE_EXTENSIONS)})")
    arrays, names, skipped = [], [], []
    listed: dict[Path, str] = {}
    seen: dict[bytes, tuple[Path, str]] = {}
    for path, label in entries:
        if path in listed:  # the same file twice: harmless under one label, ambiguous under two
            if listed[path] != label:
                raise DataError(f"{origin}: {path} is listed under two labels, {listed[path]!r} and {label!r}; "
                                "keep one")
            skipped.append(f"{path} (listed twice)")
            continue
        listed[path] = label
        try:
            arr = decode(path, size)
        except ImageTooLarge as e:
            log.warning("skipping %s", e)
            skipped.append(f"{path} ({TOO_LARGE})")
            continue
        except _UNREADABLE as e:
            log.warning("skipping unreadable image %s: %s", path, e)
            skipped.append(str(path))
            continue
        key = hashlib.blake2b(arr.tobytes() + str(arr.shape).encode(), digest_size=16).digest()
        if key in seen:  # byte-identical pixels: one copy only, so it cannot sit on both sides of a split
            other, other_label = seen[key]
            if other_label != label:
                raise DataError(f"{origin}: {path} ({label!r}) and {other} ({other_label!r}) are the same image "
                                "with different labels; fix one label or drop one file")
            skipped.append(f"{path} (same image as {other})")
            continue
        seen[key] = (path, label)
        arrays.append(arr)
        names.append(label)
    if not arrays:
        raise DataError(
            f"{origin}: none of its {len(entries)} image files could be read (first: {skipped[0]})"
        )
    if size is None:
        counts = Counter(a.shape[:2] for a in arrays)
        size = max(counts, key=lambda hw: (counts[hw], hw[0] * hw[1], hw))
        arrays = [a if a.shape[:2] == size else _resize(a, size) for a in arrays]
    kept = [c for c in classes if c in set(names)]
    for c in classes:
        if c not in kept:
            log.warning("%s: class %r has no readable image and is dropped", origin, c)
    index = {c: i for i, c in enumerate(kept)}
    labels = np.array([index[n] for n in names], dtype=np.int64)
    return ImageSet(np.stack(arrays), labels, kept, skipped)


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.Resampling.BILINEAR))
