"""A small CNN for fast tests that still has every structure growth must handle: residual add, concat, MLP head."""

from __future__ import annotations

import torch
from torch import nn

from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.graph.trace import from_module
from evo.zoo.registry import register_model


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = _cbr(3, w)
        self.res_a = _cbr(w, w)
        self.res_b = nn.Sequential(nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w))
        self.relu = nn.ReLU(inplace=True)
        self.down = _cbr(w, 2 * w, stride=2)
        self.left = nn.Conv2d(2 * w, w, 1)
        self.right = nn.Conv2d(2 * w, w, 3, padding=1)
        self.mix_bn = nn.BatchNorm2d(2 * w)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(2 * w, 4 * w)
        self.fc_relu = nn.ReLU()
        self.drop = nn.Dropout(0.1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(x + self.res_b(self.res_a(x)))
        x = self.down(x)
        x = self.relu(self.mix_bn(torch.cat([self.left(x), self.right(x)], 1)))
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(self.drop(self.fc_relu(self.fc1(x))))


@register_model("small_cnn", default_input=32)
def small_cnn(pretrained: bool = False, input_size: int = 32, num_classes: int = 10, seed: int = 0, width: int = 16,
              **_: object) -> ArchGraph:
    """Small residual+concat CNN (random init, seeded) for fast tests and examples; `width` channels at full
    resolution (a narrow one runs out of capacity: the setting where growth pays)."""
    if pretrained:
        raise ConfigError("small_cnn has no pretrained weights (it is random init, seeded); load it with "
                          "pretrained=False, or pick a zoo model that ships weights (efficientnet_lite0)")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"small_cnn option width must be a positive integer (channels); got {width!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"small_cnn option seed must be an integer >= 0 (it seeds the initial weights); got {seed!r}")
    torch.manual_seed(seed)
    return from_module(SmallCNN(num_classes, width), (3, input_size, input_size), name="small_cnn")
