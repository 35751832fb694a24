"""Images as the corrections engine takes them: arrays or files in, validated uint8 RGB out, plus a
content hash and a lossless PNG copy for the log (so a correction can be recomputed on a new version)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evo.active.errors import CorrectionError
from evo.data.sources._images import _UNREADABLE, IMAGE_EXTENSIONS, decode, natural_key
from evo.errors import DataError

MAX_LABEL = 200


def as_image(image: Any) -> np.ndarray:
    """uint8 (H, W, 3) from a path or an array (H, W), (H, W, 1|3|4); anything else is a CorrectionError."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise CorrectionError(f"image {path} does not exist or is not a file; pass an image file or array")
        try:
            return decode(path, None, f"image {path}")
        except DataError as e:  # readable, but refused (too many pixels)
            raise CorrectionError(str(e)) from None
        except _UNREADABLE as e:
            raise CorrectionError(f"image {path} is unreadable or corrupt ({e}); pass a valid PNG/JPEG file") from None
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise CorrectionError(f"image must be a file path or a uint8 array (H, W, 3); got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise CorrectionError(f"image must be uint8 (0..255); got dtype {image.dtype}; "
                              "convert with np.clip(x, 0, 255).astype(np.uint8)")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise CorrectionError(f"image must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def image_items(images: Any) -> list[Any] | np.ndarray:
    """The items of a batch array (N, H, W) or (N, H, W, C), a path, or a list of arrays/paths, still
    undecoded: a caller that decodes them one at a time (`as_image`) holds one decoded image, not a
    folder of photos, in memory."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4) or len(images) == 0:
            raise CorrectionError(f"images must be a non-empty (N, H, W) or (N, H, W, C) array; got {images.shape}")
        return images
    if isinstance(images, (str, os.PathLike)):
        return [images]
    try:
        items = list(images)
    except TypeError:
        raise CorrectionError(f"images must be a path, a uint8 batch array or a list of them; got "
                              f"{type(images).__name__}") from None
    if not items:
        raise CorrectionError("no images given; pass at least one image")
    return items


def image_files(paths: list[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found (recursively, natural order) under folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted((f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                           and not f.name.startswith(".") and f.is_file()),
                          key=lambda f: natural_key(str(f.relative_to(p))))
        elif p.is_file():
            out.append(p)
        else:
            raise CorrectionError(f"{p} is neither an image file nor a folder")
    return out


def sha256(image: np.ndarray) -> str:
    """Content hash of the pixels (shape included), independent of the file format they came in."""
    h = hashlib.sha256(f"{image.shape[0]}x{image.shape[1]}x{image.shape[2]}:".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def to_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def from_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def check_label(label: Any) -> str:
    """A class name: a non-empty string of at most MAX_LABEL characters without control characters."""
    if not isinstance(label, str):
        raise CorrectionError(f"label must be a string (a class name); got {type(label).__name__}")
    if not label.strip():
        raise CorrectionError("label is empty; pass a class name, e.g. --label Sandal")
    if len(label) > MAX_LABEL:
        raise CorrectionError(f"label is {len(label)} characters long; at most {MAX_LABEL} are allowed")
    bad = [c for c in label if ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029"]
    if bad:
        raise CorrectionError(f"label {label!r} contains control characters ({bad[0]!r}); use printable text")
    return label
