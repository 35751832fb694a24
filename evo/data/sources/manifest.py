"""A CSV manifest of `path,label` rows; relative paths are resolved against a declared root."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from evo.data.dataset import holdout_split
from evo.data.sources._images import inside, load_images, natural_key, parse_size
from evo.data.sources.base import SOURCES, Split
from evo.errors import DataError

_HEADER_PATH = {"path", "file", "filename", "image", "filepath"}
_HEADER_LABEL = {"label", "class", "category", "target"}


def read_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line number, file, label) rows; an optional header row (e.g. `path,label`) is skipped."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), 1) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read manifest {path}: {e}") from None
    if rows and len(rows[0][1]) == 2:
        head = [c.strip().lower() for c in rows[0][1]]
        if head[0] in _HEADER_PATH and head[1] in _HEADER_LABEL:
            rows = rows[1:]
    out = []
    for n, row in rows:
        cells = [c.strip() for c in row]
        if len(cells) != 2 or not all(cells):
            raise DataError(f"{path}:{n}: expected a 'path,label' row with both fields set; got {row!r}")
        out.append((n, cells[0], cells[1]))
    return out


@SOURCES.register("csv")
def csv_manifest(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    size: int | Sequence[int] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Labels are class names (any string; "0".."9" are names too). `root` defaults to the CSV's
    folder; paths leaving it (.., absolute elsewhere, symlinks) are refused. `classes`, when given,
    fixes the class order and makes any other label an error; otherwise classes are the labels in
    natural order. Missing or corrupt images are skipped and listed in `ImageSet.skipped`.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    if not base.is_dir():
        raise DataError(f"manifest root {base} does not exist or is not a folder")
    rows = read_rows(path)
    if not rows:
        raise DataError(f"manifest {path} has no rows; expected 'path,label' lines")
    if classes is not None:
        classes = [str(c) for c in classes]
        for n, _, label in rows:
            if label not in classes:
                raise DataError(f"{path}:{n}: unknown label {label!r}; declared classes: {classes}")
    else:
        classes = sorted({label for _, _, label in rows}, key=natural_key)
    entries = [(inside(base, file), label) for _, file, label in rows]
    data = load_images(entries, classes, parse_size(size), f"manifest {path}")
    return holdout_split(data, test_fraction, seed)
