"""WRN-28-10 with a rotation head (`wrn_28_10`): the release's Wide_ResNet (models/wresnet.py), three stages
of four pre-activation blocks (BN-ReLU-conv, dropout 0.3 between the two convolutions) of widths 160, 320,
640, then BN-ReLU and global pooling. Keys match the release's; its checkpoints lack only `rot_classifier`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import SSLNetwork


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, dropout: float, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True))

    def after_bn1(self, normalised: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The block from bn1's output on (forward_preactivations reads bn1's output as the map before it)."""
        out = self.dropout(self.conv1(F.relu(normalised)))
        return self.conv2(F.relu(self.bn2(out))) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_bn1(self.bn1(x), x)


class WideResNetSSL(SSLNetwork):
    def __init__(self, num_classes: int, depth: int = 28, widen: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a wide ResNet's depth is 6n + 4, got {depth}")
        per_stage, widths = (depth - 4) // 6, (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=True)
        in_planes = 16
        for stage, (planes, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            blocks = [WideBlock(in_planes if i == 0 else planes, planes, dropout, stride if i == 0 else 1)
                      for i in range(per_stage)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            in_planes = planes
        self.bn1 = nn.BatchNorm2d(widths[-1], momentum=0.9)  # the release's momentum
        # The release defines an init function but never applies it: PyTorch's defaults throughout.
        self.attach_heads(widths[-1], num_classes)

    @property
    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output; the last one through the final BN-ReLU, the map that is pooled."""
        maps = super().forward_stages(self.conv1(x))
        maps[-1] = F.relu(self.bn1(maps[-1]))
        return maps

    def forward_preactivations(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(each stage's map before the activation that follows it: the next stage's first bn1 output, and
        the final bn1's for the last; the class logits) in one pass, each BatchNorm applied once."""
        x = self.layer1(self.conv1(x))
        maps = []
        for stage in (self.layer2, self.layer3):
            maps.append(stage[0].bn1(x))
            x = stage[1:](stage[0].after_bn1(maps[-1], x))
        maps.append(self.bn1(x))
        return maps, self.forward_head(self.pool(F.relu(maps[-1])))

    def preactivation_batchnorms(self) -> list[nn.BatchNorm2d]:
        return [self.layer2[0].bn1, self.layer3[0].bn1, self.bn1]
