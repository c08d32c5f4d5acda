"""What a network must provide for every method, the evaluation and the tools: the Backbone protocol.
Methods, losses and tools are typed with it, not with a class, so that any registered network that
provides these members trains with every method (tests/test_models.py checks each registered one)."""
from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn


class SSLOutput(NamedTuple):
    """One forward pass's every output, for the objectives that read more than the logits."""

    stages: list[torch.Tensor]  # the feature map after each stage
    feature: torch.Tensor  # (B, feature_dim) pooled features
    logits: torch.Tensor  # (B, num_classes)
    rot_logits: torch.Tensor  # (B, 4), predicted from the class logits


@runtime_checkable
class Backbone(Protocol):
    """A classification network with SKD's rotation head. Its state dict is what checkpoints hold under
    "model"; `classifier` and `rot_classifier` are nn.Linear layers (the class count and chance accuracy
    are read from `classifier`). DropBlock, where the network has it, is found by walking its modules
    (models.dropblock), so it needs no member here."""

    num_classes: int
    feature_dim: int  # the size of forward_features' output, the embedding the evaluation classifies
    classifier: nn.Linear  # features -> class logits
    rot_classifier: nn.Linear  # class logits -> the 4 rotations' logits

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
