"""Conv-4 with a rotation head (`convnet4`): the release's ConvNet (models/convnet.py), four 3x3 conv-BN-ReLU
layers of 64 channels, max-pooled after the first three. Keys match the release's (`layer1.0.weight`, ...,
`classifier.weight`); its checkpoints lack only `rot_classifier`, which it never had."""
from __future__ import annotations

import torch
from torch import nn

from models.backbone import SSLNetwork, init_convolutions

CHANNELS = 64


class ConvNetSSL(SSLNetwork):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        for stage in range(1, 5):
            layers = [nn.Conv2d(3 if stage == 1 else CHANNELS, CHANNELS, kernel_size=3, padding=1),
                      nn.BatchNorm2d(CHANNELS), nn.ReLU()]
            self.add_module(f"layer{stage}", nn.Sequential(*layers, *([nn.MaxPool2d(2)] if stage < 4 else [])))
        init_convolutions(self, "relu")
        self.attach_heads(CHANNELS, num_classes)

    @property
    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_preactivations(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(each layer's BatchNorm output, before its ReLU; the class logits) in one pass."""
        maps = []
        for stage in self.stages:
            pre = stage[1](stage[0](x))
            maps.append(pre)
            x = stage[2:](pre)
        return maps, self.forward_head(self.pool(x))

    def preactivation_batchnorms(self) -> list[nn.BatchNorm2d]:
        return [stage[1] for stage in self.stages]
