"""Heads that distillation objectives attach to a backbone's pooled feature, kept apart from the
backbone so that its state dict keeps the official key names."""
from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """SSKD's projection head: Linear(d, d) -> ReLU -> Linear(d, d) on the pooled feature."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.net(feature)


class WithProjection(nn.Module):
    """A classifier network and a projection head on its pooled feature: one forward returns
    (logits, projection). As one module it can be wrapped by DDP and trained as a unit."""

    def __init__(self, model: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.model.forward_features(x)
        return self.model.forward_head(feature), self.head(feature)
