"""Random small CNNs built from a recipe, for property-based tests of growth operators."""

from __future__ import annotations

import torch
from torch import nn

ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "hardswish": nn.Hardswish}
BLOCKS = ("conv", "res", "cat", "se", "dw", "pool")


class _Res(nn.Module):
    def __init__(self, c: int, act: type) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), act())

    def forward(self, x):
        return x + self.body(x)


class _Cat(nn.Module):
    def __init__(self, c: int, act: type) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c // 2 + 1, 1)
        self.b = nn.Sequential(nn.Conv2d(c, c // 2 + 2, 3, padding=1), act())
        self.bn = nn.BatchNorm2d(2 * (c // 2) + 3)

    def forward(self, x):
        return self.bn(torch.cat([self.a(x), self.b(x)], 1))


class _SE(nn.Module):
    def __init__(self, c: int, act: type) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, max(2, c // 4), 1)
        self.act = act()
        self.fc2 = nn.Conv2d(max(2, c // 4), c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class _DW(nn.Module):
    def __init__(self, c: int, act: type) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c), act())

    def forward(self, x):
        return self.body(x)


def _out_channels(kind: str, c: int, width: int) -> int:
    return {"conv": width, "cat": 2 * (c // 2) + 3}.get(kind, c)


class RandomNet(nn.Module):
    """A CNN from (block kind, width, activation) triples, with an optional MLP before the classifier."""

    def __init__(self, recipe: list[tuple[str, int, str]], mlp: bool, classes: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()]
        c = 6
        for kind, width, act_name in recipe:
            act = ACTS[act_name]
            if kind == "conv":
                layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), act()]
            elif kind == "pool":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers.append({"res": _Res, "cat": _Cat, "se": _SE, "dw": _DW}[kind](c, act))
            c = _out_channels(kind, c, width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(nn.Linear(c, 8), nn.ReLU()) if mlp else nn.Identity()
        self.classifier = nn.Linear(8 if mlp else c, classes)

    def forward(self, x):
        return self.classifier(self.mlp(torch.flatten(self.pool(self.features(x)), 1)))
