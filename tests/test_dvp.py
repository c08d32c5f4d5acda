"""DVP's pieces against hand computation on tiny tensors: the margin moves only the positive logit,
the momentum update and the queue order, the BatchNorm margins, the partial L2 and its stage weights."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from distill.dvp import (KeyQueue, batchnorm_margin, feature_distillation_loss, margin_contrastive_logits,
                         margin_contrastive_loss, momentum_update, partial_l2, stage_weights)


def test_the_margin_changes_only_the_positive_logit():
    g = torch.Generator().manual_seed(0)
    q, k, queue = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g)
    with_margin = margin_contrastive_logits(q, k, queue, margin=0.4, temperature=0.07)
    without = margin_contrastive_logits(q, k, queue, margin=0.0, temperature=0.07)
    torch.testing.assert_close(with_margin[:, 1:], without[:, 1:])
    torch.testing.assert_close(with_margin[:, 0], without[:, 0] - 0.4 / 0.07)
    cos = F.cosine_similarity(q, k, dim=1)
    torch.testing.assert_close(with_margin[:, 0], (cos - 0.4) / 0.07)
    torch.testing.assert_close(with_margin[1, 3], F.cosine_similarity(q[1], queue[2], dim=0) / 0.07)


def test_margin_loss_is_the_cross_entropy_of_the_positive():
    g = torch.Generator().manual_seed(1)
    q, k, queue = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g), torch.randn(4, 3, generator=g)
    logits = margin_contrastive_logits(q, k, queue, 0.4, 0.07)
    expected = -(logits[:, 0] - torch.logsumexp(logits, 1)).mean()
    torch.testing.assert_close(margin_contrastive_loss(q, k, queue), expected)
    # A margin makes the positive harder: the loss grows with it.
    assert margin_contrastive_loss(q, k, queue, margin=0.4) > margin_contrastive_loss(q, k, queue, margin=0.0)


def test_momentum_update_moves_the_key_encoder_towards_the_query_encoder():
    query, key = nn.Linear(2, 2), nn.Linear(2, 2)
    before = {n: p.detach().clone() for n, p in key.named_parameters()}
    momentum_update(query, key, momentum=0.9)
    for name, p in key.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * dict(query.named_parameters())[name])


def test_the_queue_overwrites_its_oldest_keys_in_order():
    queue = KeyQueue(size=5, dim=2)
    keys = [torch.tensor([[math.cos(i), math.sin(i)]]) for i in range(7)]  # unit vectors: stored as they are
    queue.enqueue(torch.cat(keys[:3]))
    assert int(queue.pointer) == 3
    queue.enqueue(torch.cat(keys[3:7]))  # slots 3, 4, then around to 0, 1
    assert int(queue.pointer) == 2
    expected = torch.cat([keys[5], keys[6], keys[2], keys[3], keys[4]])
    torch.testing.assert_close(queue.keys, expected)
    assert "keys" in queue.state_dict() and "pointer" in queue.state_dict()  # checkpointed


def test_batchnorm_margin_is_the_mean_of_the_negative_part():
    weight, bias = torch.tensor([1.0, 2.0, -0.5, 0.1]), torch.tensor([0.0, 1.0, -0.3, 5.0])
    margin = batchnorm_margin(weight, bias)
    for c in range(3):  # truncated normal below 0, by scipy
        s, mu = abs(float(weight[c])), float(bias[c])
        expected = stats.truncnorm.mean(-math.inf, (0 - mu) / s, loc=mu, scale=s)
        assert math.isclose(float(margin[c]), expected, rel_tol=1e-5), c
    # P(x < 0) = Phi(-50) < 0.001: -3 |weight|
    assert math.isclose(float(margin[3]), -0.3, rel_tol=1e-6)
    assert (margin < 0).all()


def test_partial_l2_case_by_case():
    margin = torch.tensor([-1.0])
    # (student, teacher) pairs and their terms worked out by hand:
    cases = [(-2.0, -3.0, 0.0),   # teacher below its margin, student below it too: nothing
             (0.5, -3.0, 2.25),   # teacher below its margin, student above: (0.5 - (-1))^2
             (-0.8, -0.5, 0.0),   # margin < teacher <= 0, student below the teacher: nothing
             (0.1, -0.5, 0.36),   # margin < teacher <= 0, student above: (0.1 + 0.5)^2
             (-1.0, 2.0, 9.0),    # teacher positive: matched exactly from below
             (3.0, 2.0, 1.0)]     # and from above
    for s, t, expected in cases:
        got = partial_l2(torch.tensor([[[[s]]]]), torch.tensor([[[[t]]]]), margin)
        assert math.isclose(float(got), expected, rel_tol=1e-6, abs_tol=1e-9), (s, t)


def test_stage_weights_double_towards_the_last_stage_and_the_loss_is_per_image():
    assert stage_weights(4) == [0.125, 0.25, 0.5, 1.0]
    g = torch.Generator().manual_seed(2)
    student = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(4)]
    teacher = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(4)]
    margins = [torch.full((3,), -0.5) for _ in range(4)]
    expected = sum(w * partial_l2(s, t, m) for w, s, t, m in zip(stage_weights(4), student, teacher, margins)) / 2
    torch.testing.assert_close(feature_distillation_loss(student, teacher, margins), expected)
