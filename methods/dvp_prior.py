"""DVP phase 1 (Zhao and Wen, 2020): a prior trained without labels by momentum contrast (a query
encoder, its momentum copy as key encoder, a queue of earlier keys as negatives) with DVP's margin
on the positive pair (distill/dvp.py). Its query encoder is the teacher and the starting point of
DVP phase 2 (methods/dvp.py)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
import copy

import torch
from torch import nn

import runtime.distributed
import engine.loop
import util
from dataset.transforms import TwoViews, contrastive_transform
from distill.dvp import KeyQueue, grouped_forward, margin_contrastive_logits, margin_contrastive_loss, momentum_update
from methods.base import Gen0Method
from methods.registry import register_method
from published.dvp import DVP_PRIOR_CARD
from models import Backbone, ProjectedFeatures
from models.dropblock import dropblock_calls, set_dropblock_calls


@dataclass(frozen=True)
class DVPPriorValues:
    dvp_dim: int
    dvp_head: str
    dvp_queue: int
    dvp_momentum: float
    dvp_temperature: float
    dvp_margin: float
    dvp_key_groups: int


class MomentumContrast(nn.Module):
    """What phase 1 trains besides the network: the query's projection head, the key encoder (a
    momentum copy of network + head, never trained by gradients) and the queue of negatives.
    Checkpointed under "dvp_prior", so "model" keeps the official ResNet-12 keys."""

    def __init__(self, model: Backbone, values: DVPPriorValues, seed: int) -> None:
        super().__init__()
        dim = model.feature_dim
        # The pooled features of ResNet-12 (after LeakyReLU and max-pool) share a large positive common part,
        # which a linear head turns into one direction shared by every embedding; BatchNorm removes it first.
        linear = nn.Linear(dim, values.dvp_dim)
        self.query_head = linear if values.dvp_head == "linear" else nn.Sequential(nn.BatchNorm1d(dim), linear)
        self.key = copy.deepcopy(ProjectedFeatures(model, self.query_head)).requires_grad_(False)
        self.queue = KeyQueue(values.dvp_queue, values.dvp_dim, torch.Generator().manual_seed(seed))


@register_method
class DVPPrior(Gen0Method):
    card = DVP_PRIOR_CARD
    Values = DVPPriorValues
    kind = "a DVP prior"
    objective_help = "DVP phase 1, a momentum-contrast prior trained without labels (Zhao and Wen, 2020)"
    uses_labels = False
    device_augment_refusal = "DVP's two-view augmentation runs on loader workers only"

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("--objective dvp (defaults: the DVP release's MoCo command; scripts/reproduce.py "
                                      "also sets its schedule: lr 0.03, weight decay 1e-4, batch 256, 200 epochs)")
        g.add_argument("--dvp_dim", type=int, default=128, help="dimension of the contrastive embedding")
        g.add_argument("--dvp_head", default="bn_linear", choices=["bn_linear", "linear"],
                       help="projection head on the pooled feature: bn_linear, BatchNorm then Linear (ours: with the "
                            "release's linear head ResNet-12 collapses, every embedding the same; see docs/methods.md) "
                            "or linear (MoCo v1, the release's command)")
        g.add_argument("--dvp_queue", type=int, default=4096,
                       help="negative keys K, a small share of the training images, so that an image's own earlier key "
                            "is rarely among its negatives (the release's 65,536 exceed CIFAR-FS's and miniImageNet's "
                            "38,400)")
        g.add_argument("--dvp_momentum", type=float, default=0.999, help="momentum m of the key encoder")
        g.add_argument("--dvp_temperature", type=float, default=0.07, help="softmax temperature")
        g.add_argument("--dvp_margin", type=float, default=0.4, help="margin subtracted from the positive cosine")
        g.add_argument("--dvp_key_groups", type=int, default=2,
                       help="keys are forwarded shuffled in this many groups, so that BatchNorm statistics cannot tell "
                            "which key matches a query (MoCo's shuffle BN across GPUs; 1: off)")

    @classmethod
    def check_args(cls, args: argparse.Namespace) -> None:
        util.check_positive(vars(args), "dvp_dim", "dvp_queue", "dvp_key_groups")
        if not 0 <= args.dvp_momentum < 1:
            raise util.UsageError(f"--dvp_momentum: expected a number in [0, 1), got {args.dvp_momentum}")
        if not args.dvp_temperature > 0:
            raise util.UsageError(f"--dvp_temperature: expected a positive number, got {args.dvp_temperature}")
        # A queue of more keys than training images (the release's 65,536 on its ~50,000) is allowed: every
        # query then meets earlier keys of its own image among its negatives (docs/methods.md, DVP).
        if args.dvp_queue < args.batch_size:
            raise util.UsageError(f"--dvp_queue {args.dvp_queue}: expected at least --batch_size ({args.batch_size}), "
                                  f"the keys one step enqueues")
        per_rank = runtime.distributed.per_rank_batch_size(args.batch_size)
        if per_rank < 2 * args.dvp_key_groups:  # BatchNorm in train mode needs 2 images per group
            raise util.UsageError(f"--dvp_key_groups {args.dvp_key_groups}: expected at least 2 images per group, "
                                  f"got {per_rank} images per step and rank")

    @classmethod
    def run_name_part(cls, args: argparse.Namespace) -> str:
        return f"_dvp_margin_{args.dvp_margin}_K_{args.dvp_queue}_m_{args.dvp_momentum}_T_{args.dvp_temperature}"

    def create_extra_modules(self) -> None:
        self.prior = MomentumContrast(self.model, self.values, self.setting.seed).to(self.device)
        runtime.distributed.broadcast_module(self.prior)  # the key encoder starts as rank 0's query encoder, as DDP's
        self.extra_modules["dvp_prior"] = self.prior

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.prior.query_head.parameters())

    def train_transform(self) -> TwoViews:
        return TwoViews(contrastive_transform(self.data.image_size, self.data.norm))

    def make_step(self, state: engine.loop.TrainState, loader) -> engine.loop.Step:
        return dvp_prior_step(self.model, self.prior, self.values)


def dvp_prior_step(model: Backbone, prior: MomentumContrast, values: DVPPriorValues) -> engine.loop.Step:
    """Each image comes as two views (B, 2, 3, H, W); the labels are never read."""
    query = ProjectedFeatures(model, prior.query_head)
    # The classifier and the rotation head are not part of the contrastive task.
    forward = runtime.distributed.wrap(query, unused=("model.classifier", "model.rot_classifier"))

    def step(images: torch.Tensor, targets: torch.Tensor) -> engine.loop.StepResult:
        q = forward(images[:, 0])
        with torch.no_grad():
            momentum_update(query, prior.key, values.dvp_momentum)  # after the previous step's update, as MoCo
            # The key encoder drops as much as the query encoder at this point of the DropBlock ramp (its own
            # counters are not checkpointed and would count each key group).
            set_dropblock_calls(prior.key, dropblock_calls(model))
            k = grouped_forward(prior.key, images[:, 1], values.dvp_key_groups)
        negatives = prior.queue.keys.clone()
        loss = margin_contrastive_loss(q, k, negatives, values.dvp_margin, values.dvp_temperature)
        with torch.no_grad():  # how often the positive (margin included) beats every negative
            logits = margin_contrastive_logits(q, k, negatives, values.dvp_margin, values.dvp_temperature)
            found = (logits.argmax(1) == 0).float().mean() * 100
        prior.queue.enqueue(runtime.distributed.all_gather_tensor(k))  # every rank's keys: one queue on all ranks
        return engine.loop.StepResult(loss, {"instance_acc": found}, None, len(images))

    return step
