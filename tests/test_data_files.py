"""Image-folder and CSV-manifest sources, on real PNG/JPEG/GIF files of mixed modes and sizes."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

from evo.data import load_source
from evo.errors import ConfigError, DataError


def save(path, mode: str, size=(12, 10), value=100, fmt=None) -> None:
    """A real image file; `size` is (width, height) as Pillow has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        img = Image.new("P", size, 0)
        img.putpalette([value, 0, 0] + [0, 0, 0] * 255)
    elif mode == "RGBA":
        img = Image.new("RGBA", size, (value, value, value, 255))
        img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: composited over white
    elif mode == "L":
        img = Image.new("L", size, value)
    else:
        img = Image.new("RGB", size, (value, 0, 255 - value))
    img.save(path, format=fmt)


def truncated_png(path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.fixture
def tree(tmp_path):
    """root/cat: 5 images in L, RGB, RGBA, P, JPEG; root/dog: 5 RGB of two sizes; two broken files."""
    root = tmp_path / "imgs"
    for i, mode in enumerate(["L", "RGB", "RGBA", "P", "RGB"]):
        ext = "jpg" if i == 4 else "png"
        save(root / "cat" / f"c{i}.{ext}", mode, value=50 + i)
    for i in range(5):
        save(root / "dog" / f"d{i}.png", "RGB", size=(12, 10) if i < 3 else (30, 20), value=200 + i)  # distinct: exact copies are read once
    (root / "dog" / "garbage.png").write_bytes(b"\x89PNG not really")
    truncated_png(root / "cat" / "broken.png")
    (root / "dog" / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_folder_mixed_modes_sizes_and_skips(tree, caplog):
    with caplog.at_level(logging.WARNING, logger="evo.data"):
        train, test = load_source(tree, test_fraction=0.2, seed=0)
    assert train.classes == ["cat", "dog"]
    assert len(train) + len(test) == 10 and test.class_counts() == {"cat": 1, "dog": 1}
    assert train.image_size == (10, 12)  # the most common (height, width)
    assert train.images.dtype == np.uint8 and train.images.shape[-1] == 3
    assert sorted(os.path.basename(p) for p in train.skipped) == ["broken.png", "garbage.png"]
    assert "garbage.png" in caplog.text and "broken.png" in caplog.text


def test_folder_mode_conversion_values(tree):
    train, test = load_source(tree, test_fraction=0.0)
    cats = train.select_classes(["cat"]).images
    by_red = {int(img[5, 5, 0]): img for img in cats}
    gray = by_red[50]
    assert tuple(gray[5, 5]) == (50, 50, 50)  # L → equal channels
    rgba = by_red[52]
    assert tuple(rgba[0, 0]) == (255, 255, 255) and tuple(rgba[5, 5]) == (52, 52, 52)
    pal = by_red[53]
    assert tuple(pal[5, 5]) == (53, 0, 0)  # palette index 0 → its colour
    assert len(test) == 0


def test_folder_explicit_size(tree):
    train, test = load_source("folder", path=tree, size=(16, 8))
    assert train.image_size == (16, 8) and test.image_size == (16, 8)
    with pytest.raises(ConfigError, match="size"):
        load_source(tree, size=(0, 3))


def test_folder_seeded_split(tree):
    a = load_source(tree, seed=1)[1]
    b = load_source(tree, seed=1)[1]
    assert np.array_equal(a.images, b.images)
    different = [not np.array_equal(load_source(tree, seed=s)[1].images, a.images) for s in range(2, 8)]
    assert any(different)


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_source(tmp_path / "empty")
    (tmp_path / "noimgs" / "cat").mkdir(parents=True)
    (tmp_path / "noimgs" / "cat" / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="no image files"):
        load_source(tmp_path / "noimgs")
    bad = tmp_path / "allbad" / "cat" / "x.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="could be read"):
        load_source(tmp_path / "allbad")


def test_folder_refuses_symlink_escape(tree, tmp_path):
    outside = tmp_path / "secret.png"
    save(outside, "RGB")
    (tree / "cat" / "link.png").symlink_to(outside)
    with pytest.raises(DataError, match="outside the declared root"):
        load_source(tree)
    (tree / "cat" / "link.png").unlink()
    (tree / "bird").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(DataError, match="outside the declared root"):
        load_source(tree)


def write_csv(path, rows, header=True):
    lines = (["path,label"] if header else []) + [f"{p},{lbl}" for p, lbl in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("header", [True, False])
def test_csv_manifest(tree, header):
    rows = [(f"cat/c{i}.{'jpg' if i == 4 else 'png'}", "cat") for i in range(5)]
    rows += [(f"dog/d{i}.png", "dog") for i in range(5)] + [
        ("dog/garbage.png", "dog"),
        ("dog/missing.png", "dog"),
    ]
    manifest = tree / "list.csv"
    write_csv(manifest, rows, header)
    train, test = load_source(manifest, test_fraction=0.4, seed=0)
    assert train.classes == ["cat", "dog"] and len(train) + len(test) == 10
    assert test.class_counts() == {"cat": 2, "dog": 2}
    assert sorted(os.path.basename(p) for p in train.skipped) == ["garbage.png", "missing.png"]


def test_csv_root_numeric_labels_and_absolute_inside(tree, tmp_path):
    manifest = tmp_path / "elsewhere" / "m.csv"
    manifest.parent.mkdir()
    rows = [(f"dog/d{i}.png", str(10 if i % 2 else 2)) for i in range(5)] + [
        (str(tree / "cat" / "c0.png"), "2")
    ]
    write_csv(manifest, rows)
    train, test = load_source("csv", path=manifest, root=tree, test_fraction=0.0)
    assert train.classes == ["2", "10"] and train.class_counts() == {"2": 4, "10": 2}


@pytest.mark.parametrize("bad_path", ["../secret.png", "cat/../../secret.png", "ABS"])
def test_csv_refuses_paths_outside_root(tree, tmp_path, bad_path):
    save(tmp_path / "secret.png", "RGB")
    bad_path = str(tmp_path / "secret.png") if bad_path == "ABS" else bad_path
    write_csv(tree / "m.csv", [("cat/c0.png", "cat"), (bad_path, "cat")])
    with pytest.raises(DataError, match="outside the declared root"):
        load_source(tree / "m.csv")


def test_csv_label_and_format_errors(tree):
    m = tree / "m.csv"
    write_csv(m, [("cat/c0.png", "cat"), ("dog/d0.png", "bird")])
    with pytest.raises(DataError, match=r"m.csv:3: unknown label 'bird'"):
        load_source(m, classes=["cat", "dog"])
    m.write_text("cat/c0.png,cat,extra\n")
    with pytest.raises(DataError, match="m.csv:1: expected a 'path,label' row"):
        load_source(m)
    m.write_text("cat/c0.png,\n")
    with pytest.raises(DataError, match="both fields"):
        load_source(m)
    m.write_text("path,label\n\n")
    with pytest.raises(DataError, match="no rows"):
        load_source(m)
    m.write_text("")
    with pytest.raises(DataError, match="no rows"):
        load_source(m)
    m.write_bytes(b"\xff\xfe\x00bad,\x80cat\n")
    with pytest.raises(DataError, match="cannot read manifest"):
        load_source(m)
