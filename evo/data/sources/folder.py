"""An image folder with one subfolder per class: root/<class>/**/<image>."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from evo.data.dataset import holdout_split
from evo.data.sources._images import IMAGE_EXTENSIONS, inside, load_images, natural_key, parse_size
from evo.data.sources.base import SOURCES, Split
from evo.errors import DataError


def _image_files(class_dir: Path) -> list[Path]:
    files = [
        p
        for p in class_dir.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not p.name.startswith(".")
        and (p.is_file() or p.is_symlink())
    ]
    return sorted(files, key=lambda p: natural_key(str(p.relative_to(class_dir))))


@SOURCES.register("folder")
def folder(
    path: str | os.PathLike,
    size: int | Sequence[int] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Classes are the subfolder names (natural order); files at the top level or with other
    extensions are ignored. Unreadable images are skipped and listed in `ImageSet.skipped` (on both
    halves). A file or class folder whose real path leaves `path` is refused. `size` (int or (h, w))
    fixes the image size, else the most common size is used.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    class_dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: natural_key(d.name),
    )
    if not class_dirs:
        raise DataError(f"image folder {root} has no class subfolders; expected {root}/<class>/<image>.png")
    entries = []
    for d in class_dirs:
        inside(root, d.name)
        entries += [(inside(root, f.relative_to(root)), d.name) for f in _image_files(d)]
    data = load_images(entries, [d.name for d in class_dirs], parse_size(size), f"image folder {root}")
    return holdout_split(data, test_fraction, seed)
