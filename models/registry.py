"""Models registered by name and built with `create_model`."""
from __future__ import annotations

from typing import Callable

from torch import nn

from models.resnet12 import ResNet12SSL

_MODELS: dict[str, Callable[..., nn.Module]] = {}

# Side of the square input images of each dataset the official code knows; other datasets
# (image folders, synthetic data) pass `image_size` explicitly.
DATASET_IMAGE_SIZE = {
    "CIFAR-FS": 32,
    "FC100": 32,
    "toy": 32,
    "synthetic": 32,
    "miniImageNet": 84,
    "tieredImageNet": 84,
}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    return sorted(_MODELS)


def dropblock_size_for(image_size: int) -> int:
    """DropBlock size 2 for CIFAR-sized (32x32) inputs, 5 for ImageNet-sized (84x84) ones."""
    return 5 if image_size >= 64 else 2


def create_model(name: str, num_classes: int, dataset: str | None = None, image_size: int | None = None) -> nn.Module:
    """Build a registered model for `dataset` (or explicit `image_size`) with `num_classes` outputs."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    if image_size is None:
        if dataset not in DATASET_IMAGE_SIZE:
            raise ValueError(f"unknown image size for dataset {dataset!r}; pass image_size")
        image_size = DATASET_IMAGE_SIZE[dataset]
    return _MODELS[name](num_classes=num_classes, image_size=image_size)


@register_model("resnet12_ssl")
def resnet12_ssl(num_classes: int, image_size: int, drop_rate: float = 0.1) -> ResNet12SSL:
    return ResNet12SSL(num_classes, drop_rate=drop_rate, dropblock_size=dropblock_size_for(image_size))
