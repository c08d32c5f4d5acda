"""Models registered by name and built with `create_model`.

MODELS' contract: an entry is a builder `(num_classes, dropblock_size) -> nn.Module` whose network is a
models.backbone.Backbone (features, logits, the rotation head, the parts methods read), checked for every
entry by tests/test_models.py."""
from __future__ import annotations

from typing import Callable

from torch import nn

from published.profiles import dataset_profile
from models.convnet import ConvNetSSL
from models.resnet import WIDTHS, ResNetSSL
from models.wrn import WideResNetSSL
from util import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def list_models() -> list[str]:
    """The registered architectures, sorted (--model's choices)."""
    return sorted(MODELS.names())


DEFAULT_MODEL = "resnet12_ssl"  # the paper's network, and what a checkpoint that records none (official) holds


def architecture_of(train_args: dict) -> str:
    """The architecture a run trained, from its recorded arguments (a Gen-1 run's --model_s, a Gen-0
    run's --model); ResNet-12 where they record none (official checkpoints)."""
    return train_args.get("model_s") or train_args.get("model") or DEFAULT_MODEL


def create_model(name: str, num_classes: int, dataset: str | None = None, image_size: int | None = None) -> nn.Module:
    """Build a registered model for `dataset` with `num_classes` outputs. The dataset's profile fixes
    the architecture's dataset-dependent choices (DropBlock size); `image_size` matters only
    without a named dataset (a `folder` of images of that size)."""
    if dataset is None or dataset == "folder":
        if image_size is None:
            raise ValueError("create_model: pass a dataset name or the image size of a folder dataset")
        profile = dataset_profile("folder", image_size)
    else:
        profile = dataset_profile(dataset)
    return MODELS.get(name)(num_classes=num_classes, dropblock_size=profile.dropblock_size)


# The release's networks by the release's names (its models/__init__.py and models/resnet_ssl.py), each with SKD's
# rotation head; the dataset's profile gives the ResNets' DropBlock size (5 at 84 px, 2 at 32 px), as the
# release's create_model does.
@MODELS.register("resnet12_ssl")
def resnet12_ssl(num_classes: int, dropblock_size: int, drop_rate: float = 0.1) -> ResNetSSL:
    return ResNetSSL(num_classes, drop_rate=drop_rate, dropblock_size=dropblock_size)


@MODELS.register("resnet12_ssl_narrow")
def resnet12_ssl_narrow(num_classes: int, dropblock_size: int, drop_rate: float = 0.1) -> ResNetSSL:
    """ResNet-12 at a quarter of each stage's width (16, 40, 80, 160; about 1/16 of the compute): the
    same blocks, heads and checkpoint keys, for tests and smoke runs that are not about the network.
    Not the paper's model."""
    return ResNetSSL(num_classes, drop_rate=drop_rate, dropblock_size=dropblock_size,
                     widths=tuple(w // 4 for w in WIDTHS))


@MODELS.register("resnet18")
def resnet18(num_classes: int, dropblock_size: int, drop_rate: float = 0.1) -> ResNetSSL:
    """The release's ResNet-18: 1, 1, 2, 2 blocks per stage."""
    return ResNetSSL(num_classes, drop_rate=drop_rate, dropblock_size=dropblock_size, blocks=(1, 1, 2, 2))


@MODELS.register("resnet24")
def resnet24(num_classes: int, dropblock_size: int, drop_rate: float = 0.1) -> ResNetSSL:
    """The release's ResNet-24: 2 blocks per stage."""
    return ResNetSSL(num_classes, drop_rate=drop_rate, dropblock_size=dropblock_size, blocks=(2, 2, 2, 2))


@MODELS.register("seresnet12")
def seresnet12(num_classes: int, dropblock_size: int, drop_rate: float = 0.1) -> ResNetSSL:
    """ResNet-12 with squeeze-and-excitation in each block."""
    return ResNetSSL(num_classes, drop_rate=drop_rate, dropblock_size=dropblock_size, use_se=True)


@MODELS.register("convnet4")
def convnet4(num_classes: int, dropblock_size: int) -> ConvNetSSL:
    """Conv-4 (64 channels; LibFewShot's Conv64F): no DropBlock, so `dropblock_size` is unused."""
    return ConvNetSSL(num_classes)


@MODELS.register("wrn_28_10")
def wrn_28_10(num_classes: int, dropblock_size: int) -> WideResNetSSL:
    """WRN-28-10 (dropout 0.3, as the release's): no DropBlock, so `dropblock_size` is unused."""
    return WideResNetSSL(num_classes)
