"""The release's ResNets with a rotation head (`models/resnet_ssl.py` of the SKD release): ResNet-12
(`resnet12_ssl`, the paper's), ResNet-18 and -24 (more blocks per stage) and SE-ResNet-12 (a squeeze-and-
excitation layer in each block).

Module names match the official checkpoints (`layer1.0.conv1.weight`, ..., `classifier.weight`,
`rot_classifier.weight`) so state dicts move both ways with strict=True.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import SSLNetwork, init_convolutions
from models.dropblock import DropBlock

WIDTHS = (64, 160, 320, 640)


def conv3x3(in_planes: int, out_planes: int) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)


class SqueezeExcitation(nn.Module):
    """Channel weights from the pooled map (the release's SELayer: its `fc` keys, reduction 4)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class BasicBlock(nn.Module):
    """Three 3x3 conv-BN layers (squeeze-excitation after the third with `use_se`) and a shortcut, then
    regularisation. A stage's first block halves the map (2x2 max-pool) and has a 1x1 conv-BN shortcut; the
    blocks after it (ResNet-18, -24) keep the size, with the identity as shortcut."""

    def __init__(self, inplanes: int, planes: int, drop_rate: float, dropblock_size: int | None, *,
                 first: bool = True, use_se: bool = False) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv3x3(planes, planes)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu = nn.LeakyReLU(0.1)
        self.downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=1, bias=False),
            nn.BatchNorm2d(planes),
        ) if first else None
        if use_se:  # after the shortcut, in the release's key order
            self.se = SqueezeExcitation(planes)
        self.use_se = use_se
        self.maxpool = nn.MaxPool2d(2) if first else nn.Identity()
        self.drop_rate = drop_rate
        # Stages 1-2 use plain dropout, stages 3-4 DropBlock (dropblock_size given).
        self.dropblock = DropBlock(dropblock_size, drop_rate) if dropblock_size else None

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the block's last activation: bn3(conv3(...)) (squeezed and excited) plus the shortcut,
        before the max-pool."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.use_se:
            out = self.se(out)
        return out + (self.downsample(x) if self.downsample is not None else x)

    def finish(self, pre_activation: torch.Tensor) -> torch.Tensor:
        """Activation, max-pool (a stage's first block), then dropout or DropBlock."""
        out = self.maxpool(self.relu(pre_activation))
        if self.dropblock is not None:
            return self.dropblock(out)
        return F.dropout(out, p=self.drop_rate, training=self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.pre_activation(x))


class ResNetSSL(SSLNetwork):
    """The release's ResNet: four stages of `blocks` BasicBlocks (1 each: ResNet-12), widths 64-160-320-640,
    plain dropout in stages 1-2 and DropBlock in the last block of stages 3-4 (dropout in their other blocks,
    as the release builds them), then the classifier and the rotation head on the class logits."""

    def __init__(self, num_classes: int, drop_rate: float = 0.1, dropblock_size: int = 5,
                 widths: tuple[int, int, int, int] = WIDTHS, blocks: tuple[int, int, int, int] = (1, 1, 1, 1),
                 use_se: bool = False) -> None:
        super().__init__()
        if use_se and max(blocks) > 1:
            # The release passes use_se positionally into the drop_block slot of such a stage's first block.
            raise ValueError("SE blocks are built for one block per stage (seresnet12) only")
        inplanes = 3
        for stage, (planes, count) in enumerate(zip(widths, blocks), start=1):
            stage_blocks = []
            for i in range(count):
                last = i == count - 1
                stage_blocks.append(BasicBlock(inplanes if i == 0 else planes, planes, drop_rate,
                                               dropblock_size if stage >= 3 and last else None, first=i == 0,
                                               use_se=use_se))
            self.add_module(f"layer{stage}", nn.Sequential(*stage_blocks))
            inplanes = planes
        init_convolutions(self, "leaky_relu")
        # After the convolutions' init: the linears (the SE layers' too) keep PyTorch's default, as in the release.
        self.attach_heads(widths[-1], num_classes)

    @property
    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_preactivations(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(each stage's pre-activation map, the class logits) in one pass: the map is the input of the
        stage's last activation (its last block's bn3 output plus the shortcut, before the activation
        and the max-pool), what DVP's feature distillation compares."""
        maps = []
        for stage in self.stages:
            for block in stage:
                pre = block.pre_activation(x)
                x = block.finish(pre)
            maps.append(pre)
        return maps, self.forward_head(self.pool(x))

    def preactivation_batchnorms(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm before each stage's last activation (the last block's bn3), whose statistics
        give DVP's per-channel margins."""
        return [stage[-1].bn3 for stage in self.stages]
