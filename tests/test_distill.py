import math

import pytest
import torch

from distill import (cross_entropy_loss, four_rotations, gen0_loss, gen1_loss, kd_loss, rfs_distill_loss, rot90, rot180,
                     rot270, rotate, rotation_loss, twin_l2_loss)

X = torch.tensor([[0., 1., 2.], [3., 4., 5.], [6., 7., 8.]]).view(1, 1, 3, 3)


def test_rotations_on_a_known_tensor():
    assert rot90(X)[0, 0].tolist() == [[2, 5, 8], [1, 4, 7], [0, 3, 6]]  # 90 degrees counter-clockwise
    assert rot180(X)[0, 0].tolist() == [[8, 7, 6], [5, 4, 3], [2, 1, 0]]
    assert rot270(X)[0, 0].tolist() == [[6, 3, 0], [7, 4, 1], [8, 5, 2]]
    assert torch.equal(rotate(X, 0), X)
    assert torch.equal(rot90(rot270(X)), X)


def test_four_rotations_batch_and_labels():
    x = torch.randn(2, 3, 4, 4)
    batch, labels = four_rotations(x)
    assert batch.shape == (8, 3, 4, 4)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(batch[0:2], x)  # block 0 is x itself, then 90, 180, 270 (pinned by literals above)
    assert torch.equal(batch[2:4], rot90(x))
    assert torch.equal(batch[4:6], rot180(x))
    assert torch.equal(batch[6:8], rot270(x))
    known, known_labels = four_rotations(X)
    assert known_labels.tolist() == [0, 1, 2, 3]
    assert known[:, 0].tolist() == [[[0, 1, 2], [3, 4, 5], [6, 7, 8]], [[2, 5, 8], [1, 4, 7], [0, 3, 6]],
                                    [[8, 7, 6], [5, 4, 3], [2, 1, 0]], [[6, 3, 0], [7, 4, 1], [8, 5, 2]]]


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_gen0_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0])
    rot_logits = torch.tensor([[1.0, -1.0, 0.0, 0.5], [0.0, 2.0, -0.5, 0.0]])
    rot_labels = torch.tensor([0, 1])
    ce = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (1 + math.e))) / 2
    rot_targets = [[1, 0, 0, 0], [0, 1, 0, 0]]
    rot = sum(_bce(rot_logits[i, j].item(), rot_targets[i][j]) for i in range(2) for j in range(4)) / 8
    loss, ce_t, rot_t = gen0_loss(logits, rot_logits, targets, rot_labels, gamma=2.0)
    assert ce_t.item() == pytest.approx(ce, rel=1e-6)
    assert rot_t.item() == pytest.approx(rot, rel=1e-6)
    assert loss.item() == pytest.approx(ce + 2.0 * rot, rel=1e-6)


def _softmax(v: list[float], t: float) -> list[float]:
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def test_kd_loss_by_hand():
    s = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
    t = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    T = 2.0
    kl = 0.0
    for si, ti in zip(s, t):
        ps, pt = _softmax(si, T), _softmax(ti, T)
        kl += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    expected = kl * T * T / 2
    assert kd_loss(torch.tensor(s), torch.tensor(t), T).item() == pytest.approx(expected, rel=1e-6)


def _kl(student: list[float], teacher: list[float], t: float) -> float:
    """KL(softmax(teacher / t) || softmax(student / t)) by hand."""
    ps, pt = _softmax(student, t), _softmax(teacher, t)
    return sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))


def test_kd_loss_is_zero_for_identical_logits():
    z = torch.randn(4, 6)
    assert kd_loss(z, z.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_scales_by_t_squared_and_averages_over_the_batch(T):
    s, t = [1.0, 0.0, -1.0], [2.0, 0.0, 0.5]
    # One example: the summed KL times T^2, not divided by the class count.
    one = kd_loss(torch.tensor([s]), torch.tensor([t]), T).item()
    assert one == pytest.approx(_kl(s, t, T) * T * T, rel=1e-5)
    # The batch: the mean over examples, so repeating the batch changes nothing.
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    assert kd_loss(torch.cat([zs, zs]), torch.cat([zt, zt]), T).item() == pytest.approx(kd_loss(zs, zt, T).item(),
                                                                                        rel=1e-6)


def test_twin_l2_is_the_mean_norm_not_its_square():
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert twin_l2_loss(a, b).item() == pytest.approx((5.0 + 0.0) / 2)


def test_gen1_loss_combines_kd_and_l2_with_divisor():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s180 = torch.tensor([[4.0, 4.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 2.0], [1.0, 0.0]])  # not a mirror of s, so the KL's direction matters
    kd = (_kl([1.0, 0.0], [0.0, 2.0], 2.0) + _kl([0.0, 1.0], [1.0, 0.0], 2.0)) * 2.0**2 / 2
    l2 = 5.0 / 2
    loss, kd_t, l2_t = gen1_loss(s, s180, t, beta=0.1, temperature=2.0)
    assert kd_t.item() == pytest.approx(kd, rel=1e-6)
    assert loss.item() == pytest.approx(kd + 0.1 * l2, rel=1e-6)
    assert l2_t.item() == pytest.approx(l2)
    loss3, _, _ = gen1_loss(s, s180, t, beta=0.1, temperature=2.0, l2_divisor=3.0)
    assert loss3.item() == pytest.approx(kd + 0.1 * l2 / 3, rel=1e-6)


def _near_identical_logits(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """bf16 logits as a network under autocast hands them over: student ~ teacher (Gen-1 at step 0)."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(16, 64, generator=g) * 4
    teacher = student + 0.05 * torch.randn(16, 64, generator=g)
    rotated = student + 0.5 * torch.randn(16, 64, generator=g)
    rot_logits = torch.randn(16, 4, generator=g)
    return tuple(t.to(torch.bfloat16) for t in (student, teacher, rotated, rot_logits))


LOSSES = {
    "kd": lambda s, t, r, q, y, yr: kd_loss(s, t, 2.0),
    "twin_l2": lambda s, t, r, q, y, yr: twin_l2_loss(s, r),
    "rotation": lambda s, t, r, q, y, yr: rotation_loss(q, yr),
    "gen0": lambda s, t, r, q, y, yr: gen0_loss(s, q, y, yr, 2.0)[0],
    "gen1": lambda s, t, r, q, y, yr: gen1_loss(s, r, t, 0.1, 2.0)[0],
}


@pytest.mark.parametrize("name", LOSSES)
def test_losses_compute_in_float32_under_autocast(name):
    """The same logit values give the float32 loss whether they arrive as bf16 under autocast or as
    float32 without it: the loss arithmetic never drops to bf16 (3 significant digits)."""
    s, t, r, q = _near_identical_logits()
    y = torch.arange(16) % 64
    yr = torch.arange(16) % 4
    reference = LOSSES[name](s.float(), t.float(), r.float(), q.float(), y, yr)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = LOSSES[name](s, t, r, q, y, yr)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference, rtol=1e-6, atol=0)


def test_rfs_distill_loss_by_hand():
    s, t, y = [[1.0, 0.0, -1.0]], [[0.0, 2.0, 0.0]], [2]
    ce = -math.log(math.exp(-1.0) / sum(math.exp(v) for v in s[0]))
    T = 4.0
    p_t = [math.exp(v / T) / sum(math.exp(u / T) for u in t[0]) for v in t[0]]
    log_p_s = [v / T - math.log(sum(math.exp(u / T) for u in s[0])) for v in s[0]]
    kd = sum(p * (math.log(p) - lq) for p, lq in zip(p_t, log_p_s)) * T**2
    loss, ce_t, kd_t = rfs_distill_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 0.5, 0.5, T)
    assert ce_t.item() == pytest.approx(ce, rel=1e-6) and kd_t.item() == pytest.approx(kd, rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * ce + 0.5 * kd, rel=1e-5)
    assert cross_entropy_loss(torch.tensor(s), torch.tensor(y)).item() == pytest.approx(ce, rel=1e-6)
