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


class ProjectedFeatures(nn.Module):
    """A backbone's pooled feature through a projection head, and nothing else (no class logits):
    the query (or key) encoder of momentum contrast."""

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.model.forward_features(x))


def connector(in_channels: int, out_channels: int) -> nn.Sequential:
    """DVP's connector from a student stage to the teacher's: 1x1 conv (He-normal over its outputs)
    then BatchNorm (weight 1, bias 0), as in the DVP release."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # N(0, 2 / (1 * 1 * out))
    bn = nn.BatchNorm2d(out_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


class WithConnectors(nn.Module):
    """A network whose stage pre-activations pass through one connector each: one forward returns
    (connected maps, class logits). As one module it can be wrapped by DDP and trained as a unit."""

    def __init__(self, model: nn.Module, connectors: nn.ModuleList) -> None:
        super().__init__()
        self.model = model
        self.connectors = connectors

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        maps, logits = self.model.forward_preactivations(x)
        return [c(m) for c, m in zip(self.connectors, maps, strict=True)], logits
