"""BatchNorm over the global batch of a torchrun job, on GPUs (NCCL) and the CPU (gloo) alike. In
training mode each rank's per-channel sums, sums of squares and counts are added over the ranks
with an all-reduce whose backward all-reduces the gradients, so the forward and the backward are
those of one BatchNorm over all ranks' images; eval mode is plain BatchNorm. Nothing is read back
to the host (the count is a fill from the shape), unlike PyTorch's SyncBatchNorm, which reads the
gathered counts on the host in every forward and refuses CPU tensors. runtime.distributed passes in
its all-reduce helper, the one every collective of the project goes through. Statistics compute in
float32 whatever the input's precision."""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

SumOverRanks = Callable[[torch.Tensor], torch.Tensor]


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks; its gradient is the sum of the ranks' gradients (each
    rank's loss depends on every rank's contribution)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sum_over_ranks: SumOverRanks) -> torch.Tensor:
        ctx.sum_over_ranks = sum_over_ranks
        return sum_over_ranks(tensor.clone())  # the helper may sum in place

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.sum_over_ranks(grad.clone()), None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d with the same parameters, buffers and state-dict keys, whose training-mode
    statistics are those of the global batch, summed over the ranks by `sum_over_ranks`."""

    sum_over_ranks: SumOverRanks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        xf = x.float()
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)),
                           xf.new_full((1,), float(x.numel() // x.shape[1]))])
        total = _SumOverRanks.apply(local, self.sum_over_ranks)
        c = self.num_features
        count = total[2 * c]
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            unbiased = var * count / (count - 1).clamp_min(1)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        shape = (1, c, 1, 1)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_to_global_batchnorm(module: nn.Module, sum_over_ranks: SumOverRanks) -> nn.Module:
    """`module` with every BatchNorm2d replaced by a GlobalBatchNorm2d holding the same tensors and
    summing its statistics over the ranks with `sum_over_ranks`."""
    if type(module) is nn.BatchNorm2d:
        reference = next(module.buffers())
        converted = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats, device=reference.device)
        converted.load_state_dict(module.state_dict())
        if module.affine:  # the very Parameter objects, so an optimizer built before keeps working
            converted.weight, converted.bias = module.weight, module.bias
        converted.train(module.training)
        converted.sum_over_ranks = sum_over_ranks
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_to_global_batchnorm(child, sum_over_ranks))
    return module
