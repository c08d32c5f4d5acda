"""What a network must provide for every method, the evaluation and the tools: the Backbone protocol.
Methods, losses and tools are typed with it, not with a class, so that any registered network that
provides these members trains with every method (tests/test_models.py checks each registered one)."""
from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

NUM_ROTATIONS = 4


class SSLOutput(NamedTuple):
    """One forward pass's every output, for the objectives that read more than the logits."""

    stages: list[torch.Tensor]  # the feature map after each stage
    feature: torch.Tensor  # (B, feature_dim) pooled features
    logits: torch.Tensor  # (B, num_classes)
    rot_logits: torch.Tensor  # (B, 4), predicted from the class logits


@runtime_checkable
class Backbone(Protocol):
    """A classification network with SKD's rotation head, an nn.Module (SSLNetwork below gives the shared
    parts; methods wrap it for DDP and walk its modules). Its state dict is what checkpoints hold under
    "model"; `classifier` and `rot_classifier` are nn.Linear layers (the class count and chance accuracy
    are read from `classifier`). DropBlock, where the network has it, is found by walking its modules
    (models.dropblock), so it needs no member here."""

    num_classes: int
    feature_dim: int  # the size of forward_features' output, the embedding the evaluation classifies
    classifier: nn.Linear  # features -> class logits
    rot_classifier: nn.Linear  # class logits -> the 4 rotations' logits

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """nn.Module's call of forward: (B, 3, H, W) images -> (B, num_classes) logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, num_classes) logits."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> (B, feature_dim) pooled features."""

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        """Pooled features -> class logits (the classifier)."""

    def forward_rotation(self, logits: torch.Tensor) -> torch.Tensor:
        """Class logits -> (B, 4) rotation logits."""

    def forward_all(self, x: torch.Tensor) -> SSLOutput:
        """Every output of one pass: stage maps, pooled feature, logits, rotation logits."""

    def forward_preactivations(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(each stage's map before its last activation, the class logits) in one pass (DVP's features)."""

    def preactivation_batchnorms(self) -> list[nn.BatchNorm2d]:
        """The BatchNorm producing each of forward_preactivations' maps (DVP's per-channel margins)."""


def init_convolutions(network: nn.Module, nonlinearity: str) -> None:
    """The releases' initialisation of their ResNets and Conv-4: Kaiming-normal convolutions (fan-out),
    BatchNorms at the identity. Visits modules in registration order, so the draws match the releases'."""
    for m in network.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SSLNetwork(nn.Module):
    """What every network here shares: stages, global average pooling, the linear classifier and SKD's
    rotation head on the class logits, under the release's key names (`classifier`, `rot_classifier`).
    A subclass builds its stages, then calls `attach_heads`; it provides Backbone's pre-activation members."""

    num_classes: int
    feature_dim: int

    def attach_heads(self, feature_dim: int, num_classes: int) -> None:
        """The classifier and rotation head, with PyTorch's default initialisation as in the releases."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.feature_dim = num_classes, feature_dim
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.rot_classifier = nn.Linear(num_classes, NUM_ROTATIONS)

    @property
    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def pool(self, last_map: torch.Tensor) -> torch.Tensor:
        """The last stage's map -> (B, feature_dim) pooled features."""
        return self.avgpool(last_map).flatten(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_stages(x)[-1])

    def forward_head(self, feature: torch.Tensor) -> torch.Tensor:
        return self.classifier(feature)

    def forward_rotation(self, logits: torch.Tensor) -> torch.Tensor:
        # The paper predicts rotation "using only the output logits".
        return self.rot_classifier(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_all(self, x: torch.Tensor) -> SSLOutput:
        maps = self.forward_stages(x)
        feature = self.pool(maps[-1])
        logits = self.forward_head(feature)
        return SSLOutput(maps, feature, logits, self.forward_rotation(logits))
