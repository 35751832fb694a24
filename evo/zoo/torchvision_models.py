"""torchvision classifiers (random init, or a user-supplied weights file) imported into ArchGraphs."""

from __future__ import annotations

import os

import torch
import torchvision

from evo.errors import ConfigError
from evo.graph.archgraph import ArchGraph
from evo.graph.trace import from_module
from evo.zoo.efficientnet_lite import imagenet_classes
from evo.zoo.registry import load_into, load_state_dict_file, register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _torchvision(name: str, pretrained: bool, input_size: int, num_classes: int | None,
                 weights: str | os.PathLike | None, seed: int) -> ArchGraph:
    if pretrained and weights is None:
        raise ConfigError(f"{name}: evo does not download weights; pass weights=PATH to a torchvision "
                          f"state dict file (.pth, loaded with weights_only=True)")
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None, num_classes=1000 if weights else (num_classes or 1000))
    classes = None
    if weights is not None:
        load_into(net, load_state_dict_file(weights), str(weights))
        classes = imagenet_classes()
        if num_classes not in (None, 1000):  # keep the pretrained features, start a fresh seeded head
            _replace_last_linear(net, num_classes)
            classes = None
    graph = from_module(net.eval(), (3, input_size, input_size), name=name, classes=classes)
    graph.meta["preprocess"] = {"input_size": input_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return graph


def _replace_last_linear(net: torch.nn.Module, num_classes: int) -> None:
    path, last = [(n, m) for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    parent = net.get_submodule(path.rpartition(".")[0]) if "." in path else net
    setattr(parent, path.rpartition(".")[2], torch.nn.Linear(last.in_features, num_classes))


for _name in ("resnet18", "mobilenet_v2", "mobilenet_v3_small"):

    def _factory(pretrained: bool = False, input_size: int = 224, num_classes: int | None = None,
                 weights: str | None = None, seed: int = 0, _name: str = _name, **_: object) -> ArchGraph:
        return _torchvision(_name, pretrained, input_size, num_classes, weights, seed)

    _factory.__doc__ = f"torchvision {_name} (random init unless weights=PATH)."
    register_model(_name, default_input=224)(_factory)
