"""Embedding images with a frozen network, in large batches on the chosen device."""
from __future__ import annotations

import torch
from torch import nn

from dataset.transforms import Normalization, normalize_batch
from util import autocast


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, norm: Normalization, device: torch.device, batch_size: int,
          amp: str = "off") -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, 3) images -> (pooled features, 640-d for ResNet-12; logits), both float32 on `device`; the
    network runs under `amp` autocast (off, bf16, fp16).

    One forward pass gives both, so evaluating with features and with logits costs one embedding.
    """
    model.eval()
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        x = normalize_batch(images[start:start + batch_size].to(device, non_blocking=True), norm)
        x = x.contiguous(memory_format=torch.channels_last)  # matches util.to_device; faster convolutions
        with autocast(device, amp):
            feature = model.forward_features(x)
            logit = model.forward_head(feature)
        features.append(feature.float())
        logits.append(logit.float())
    return torch.cat(features), torch.cat(logits)
