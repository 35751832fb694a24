"""Preprocess: exact normalisation numbers, antialiased resize, JSON round trip, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evo.data import Preprocess
from evo.data.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_uint8
from evo.errors import ConfigError, DataError


def const(value: int, n: int = 2, h: int = 10, w: int = 10) -> np.ndarray:
    return np.full((n, h, w, 3), value, np.uint8)


def test_lite0_maps_0_255_to_minus1_plus1():
    p = Preprocess.lite0(input_size=16)
    out = p(np.concatenate([const(0, 1), const(255, 1)]))
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.allclose(out[0], torch.full_like(out[0], -1.0)) and torch.allclose(
        out[1], torch.ones_like(out[1])
    )


def test_imagenet_numbers():
    out = Preprocess.imagenet(input_size=10)(const(128))
    for c in range(3):
        expected = (128 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert abs(out[:, c].mean().item() - expected) < 1e-5 and out[:, c].std().item() < 1e-5
    rgb = np.zeros((1, 4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: channel order is kept
    out = Preprocess(4, (0, 0, 0), (1, 1, 1))(rgb)
    assert out[0, 0].min() == 1.0 and out[0, 1:].abs().max() == 0.0


def test_resize_is_antialiased():
    stripes = np.where(np.isin(np.arange(28) % 4, (1, 2)), 255, 0).astype(np.uint8)
    img = np.broadcast_to(stripes[None, None, :, None], (1, 28, 28, 3))
    out = Preprocess(7, (0, 0, 0), (1, 1, 1))(img)
    # antialiasing averages each 4x4 block to 0.5; plain bilinear samples the bright pair only (1.0)
    assert out.shape == (1, 3, 7, 7) and (out - 0.5).abs().max() < 0.05
    up = Preprocess(56, (0, 0, 0), (1, 1, 1))(const(77, 1, 8, 13))  # non-square input is stretched
    assert up.shape == (1, 3, 56, 56) and torch.allclose(up, torch.full_like(up, 77 / 255))


def test_grayscale_model_and_gray_input():
    img = np.zeros((1, 3, 3, 3), np.uint8)
    img[..., 1] = 255
    gray = Preprocess(3, (0.0,), (1.0,), channels=1)(img)
    assert gray.shape == (1, 1, 3, 3) and torch.allclose(gray, torch.full_like(gray, 0.587))
    one = Preprocess(3, (0, 0, 0), (1, 1, 1))(np.full((1, 3, 3, 1), 255, np.uint8))
    assert one.shape == (1, 3, 3, 3) and one.min() == 1.0


def test_round_trip_is_json_safe():
    for p in [Preprocess.lite0(224), Preprocess.imagenet(160), Preprocess(32, [0.2], [0.3], channels=1)]:
        d = json.loads(json.dumps(p.to_dict()))
        assert Preprocess.from_dict(d) == p and isinstance(Preprocess.from_dict(d).mean, tuple)
    assert Preprocess(8, [0.5, 0.5, 0.5], [1, 1, 1]) == Preprocess(8, (0.5,) * 3, (1.0,) * 3)


@pytest.mark.parametrize(
    "d, key",
    [
        ({"mean": [0.5] * 3, "std": [0.5] * 3}, "input_size"),
        ({"input_size": 8, "std": [0.5] * 3}, "mean"),
        ({"input_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "size": 3}, "size"),
        ({"input_size": 0, "mean": [0.5] * 3, "std": [0.5] * 3}, "input_size"),
        ({"input_size": 8.0, "mean": [0.5] * 3, "std": [0.5] * 3}, "input_size"),
        ({"input_size": 8, "mean": [0.5] * 2, "std": [0.5] * 3}, "mean"),
        ({"input_size": 8, "mean": "abc", "std": [0.5] * 3}, "mean"),
        ({"input_size": 8, "mean": [0.5] * 3, "std": [0.5, 0.0, 0.5]}, "std"),
        ({"input_size": 8, "mean": [0.5] * 3, "std": [0.5, float("nan"), 0.5]}, "std"),
        ({"input_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "channels": 4}, "channels"),
    ],
)
def test_from_dict_names_the_bad_key(d, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        Preprocess.from_dict(d)


def test_bad_images_raise_data_error():
    p = Preprocess.lite0(8)
    with pytest.raises(DataError, match="uint8"):
        p(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(DataError, match="channels"):
        p(np.zeros((1, 4, 4, 2), np.uint8))


def test_resize_uint8_keeps_constants_and_shape():
    out = resize_uint8(const(201, 3, 8, 8), (28, 20))
    assert out.shape == (3, 28, 20, 3) and out.dtype == np.uint8 and (out == 201).all()


@pytest.mark.parametrize("src", [(40, 52), (9, 9), (16, 16)])
def test_matches_float_reference_within_one_grey_level(src):
    """Against the textbook path: float resize of 0..1 images, then (x - mean) / std."""
    img = np.random.default_rng(1).integers(0, 256, (3, *src, 3), dtype=np.uint8)
    p = Preprocess.imagenet(input_size=16)
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255
    ref = torch.nn.functional.interpolate(
        x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False
    )
    ref = (ref - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    grey = 1 / 255 / min(IMAGENET_STD)  # one uint8 step, in normalised units
    err = (p(img) - ref).abs()
    assert err.max().item() <= grey + 1e-5 and err.mean().item() < grey / 3  # rounding alone averages 1/4
