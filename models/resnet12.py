"""ResNet-12 with a rotation head (`resnet12_ssl`), as in the paper and the official release.

Module names match the official checkpoints (`layer1.0.conv1.weight`, ...,
`classifier.weight`, `rot_classifier.weight`) so state dicts move both ways with strict=True.
"""
from __future__ import annotations



import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import SSLOutput
from models.dropblock import DropBlock

WIDTHS = (64, 160, 320, 640)
NUM_ROTATIONS = 4


def conv3x3(in_planes: int, out_planes: int) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Three 3x3 conv-BN layers with a 1x1 conv-BN shortcut, then 2x2 max-pool and regularisation."""

    def __init__(self, inplanes: int, planes: int, drop_rate: float, dropblock_size: int | None) -> None:
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
        )
        self.maxpool = nn.MaxPool2d(2)
        self.drop_rate = drop_rate
        # Stages 1-2 use plain dropout, stages 3-4 DropBlock (dropblock_size given).
        self.dropblock = DropBlock(dropblock_size, drop_rate) if dropblock_size else None

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the block's last activation: bn3(conv3(...)) plus the shortcut, full resolution."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + self.downsample(x)

    def finish(self, pre_activation: torch.Tensor) -> torch.Tensor:
        """Activation, 2x2 max-pool, then dropout or DropBlock."""
        out = self.maxpool(self.relu(pre_activation))
        if self.dropblock is not None:
            return self.dropblock(out)
        return F.dropout(out, p=self.drop_rate, training=self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.pre_activation(x))


class ResNet12SSL(nn.Module):
    """ResNet-12 backbone, linear classifier, and a rotation head on the class logits."""

    def __init__(self, num_classes: int, drop_rate: float = 0.1, dropblock_size: int = 5,
                 widths: tuple[int, int, int, int] = WIDTHS) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.feature_dim = widths[-1]
        inplanes = 3
        for stage, planes in enumerate(widths, start=1):
            block = BasicBlock(inplanes, planes, drop_rate, dropblock_size if stage >= 3 else None)
            self.add_module(f"layer{stage}", nn.Sequential(block))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Linears keep PyTorch's default init, as in the official model.
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.rot_classifier = nn.Linear(num_classes, NUM_ROTATIONS)

    @property
    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

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
        return maps, self.forward_head(self.avgpool(x).flatten(1))

    def preactivation_batchnorms(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm before each stage's last activation (the last block's bn3), whose statistics
        give DVP's per-channel margins."""
        return [stage[-1].bn3 for stage in self.stages]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, feature_dim) pooled features (640 for ResNet-12)."""
        return self.avgpool(self.forward_stages(x)[-1]).flatten(1)

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        return self.classifier(feature)

    def forward_rotation(self, logits: torch.Tensor) -> torch.Tensor:
        # The paper predicts rotation "using only the output logits".
        return self.rot_classifier(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_all(self, x: torch.Tensor) -> SSLOutput:
        maps = self.forward_stages(x)
        feature = self.avgpool(maps[-1]).flatten(1)
        logits = self.forward_head(feature)
        return SSLOutput(maps, feature, logits, self.forward_rotation(logits))
