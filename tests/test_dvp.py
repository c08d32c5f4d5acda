"""DVP's pieces against hand computation on tiny tensors: the margin moves only the positive logit,
the momentum update and the queue order, the BatchNorm margins, the partial L2 and its stage weights;
ResNet-12's pre-activation maps; and both phases end to end through the scripts."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from distill.dvp import (KeyQueue, batchnorm_margin, feature_distillation_loss, feature_margins, grouped_forward,
                         margin_contrastive_logits, margin_contrastive_loss, momentum_update, partial_l2, stage_weights)
from models import WithConnectors, connector, create_model
from util import UsageError


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


def test_partial_l2_equals_the_three_cases_of_feature_overhaul_distillation():
    """The release's form: (s - m)^2 where s > m >= t; (s - t)^2 where s > t and m < t <= 0; (s - t)^2 where t > 0."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 3, 5, 5, generator=g)
    margin = torch.tensor([-0.2, -0.7, -1.5])
    m = margin.view(1, 3, 1, 1)
    expected = ((s - m).pow(2) * ((s > m) & (t <= m)) + (s - t).pow(2) * ((s > t) & (t > m) & (t <= 0))
                + (s - t).pow(2) * (t > 0)).sum()
    torch.testing.assert_close(partial_l2(s, t, margin), expected)


def test_preactivations_are_the_input_of_each_stages_last_activation():
    torch.manual_seed(0)
    model = create_model("resnet12_ssl", 5, "CIFAR-FS").eval()
    x = torch.randn(2, 3, 32, 32)
    maps, logits = model.forward_preactivations(x)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 32, 32), (2, 160, 16, 16), (2, 320, 8, 8), (2, 640, 4, 4)]
    assert torch.equal(logits, model(x))  # the same pass as the plain forward, bit for bit
    stages = model.forward_stages(x)
    for pre, out in zip(maps, stages):  # in eval mode a stage's output is max-pool(LeakyReLU(pre))
        assert torch.equal(F.max_pool2d(F.leaky_relu(pre, 0.1), 2), out)
    assert model.preactivation_batchnorms() == [model.layer1[0].bn3, model.layer2[0].bn3, model.layer3[0].bn3,
                                                model.layer4[0].bn3]
    margins = feature_margins(model.preactivation_batchnorms())
    # Fresh BatchNorm (weight 1, bias 0): E[x | x < 0] of a standard normal, -sqrt(2 / pi), in every channel.
    torch.testing.assert_close(margins[2], torch.full((320,), -math.sqrt(2 / math.pi)))


def test_connectors_map_student_stages_to_the_teachers_channels():
    torch.manual_seed(0)
    c = connector(160, 320)
    assert c[0].weight.shape == (320, 160, 1, 1) and c[0].bias is None
    # He-normal over the outputs, as the release
    assert abs(float(c[0].weight.detach().std()) - math.sqrt(2 / 320)) < 0.005
    assert torch.equal(c[1].weight, torch.ones(320)) and torch.equal(c[1].bias, torch.zeros(320))
    model = create_model("resnet12_ssl", 5, "CIFAR-FS")
    connectors = nn.ModuleList([connector(w, w) for w in (64, 160, 320, 640)])
    maps, logits = WithConnectors(model, connectors)(torch.randn(2, 3, 32, 32))
    assert [m.shape[1] for m in maps] == [64, 160, 320, 640] and logits.shape == (2, 5)


def test_grouped_forward_returns_rows_in_order_and_splits_batchnorm_statistics():
    torch.manual_seed(0)
    x = torch.randn(8, 3)
    linear = nn.Linear(3, 2)
    torch.testing.assert_close(grouped_forward(linear, x, 4), linear(x))  # no BatchNorm: the same rows, in order
    bn = nn.BatchNorm1d(3).train()
    torch.manual_seed(1)
    grouped = grouped_forward(bn, x, 2)
    torch.manual_seed(1)
    order = torch.randperm(8)  # the permutation grouped_forward drew
    halves = [bn(part) for part in x[order].chunk(2)]
    torch.testing.assert_close(grouped, torch.cat(halves)[torch.argsort(order)])
    assert not torch.allclose(grouped, bn(x))  # each group normalised by its own statistics
    torch.testing.assert_close(grouped_forward(bn, x, 1), bn(x))


def test_the_distillation_weight_is_off_for_the_first_epochs():
    from methods.dvp import DistillWeight

    weight = DistillWeight(1e-4, off_epochs=2)
    seen = []
    for epoch in (1, 2, 3, 4):
        weight.set_epoch(epoch)
        seen.append(weight())
    assert seen == [0.0, 0.0, 1e-4, 1e-4]


@pytest.mark.parametrize("changes, message", [
    ({"dvp_queue": 8}, "--dvp_queue 8: expected at least --batch_size (16)"),
    ({"dvp_key_groups": 9}, "--dvp_key_groups 9: expected at least 2 images per group, got 16"),
    ({"dvp_queue": 100_000}, None),  # more keys than training images, as the release's 65,536: allowed
    ({"dvp_key_groups": 8}, None),
])
def test_dvp_phase_1_flags(changes, message):
    import methods
    import train_supervised_ssl

    args = train_supervised_ssl.get_args_parser().parse_args(["--objective", "dvp", "--batch_size", "16"])
    vars(args).update(changes)
    prior = methods.get_method("dvp_prior")
    if message is None:
        prior.check_args(args)
    else:
        with pytest.raises(UsageError, match=re.escape(message)):
            prior.check_args(args)


@pytest.mark.parametrize("objective, teacher_objective, refused", [
    ("dvp", "dvp", False), ("dvp", "skd", True), ("skd", "dvp", True), ("rfs", "dvp", True), ("sskd", "skd", False),
    ("dvp", None, False),  # an official checkpoint records no arguments
])
def test_each_objective_needs_its_kind_of_teacher(objective, teacher_objective, refused):
    import methods
    import train_distillation

    argv = ["--path_t", "prior.pth", "--dataset", "synthetic", "--objective", objective]
    checkpoint = {"args": {"objective": teacher_objective} if teacher_objective else None}
    args = train_distillation.get_args_parser().parse_args(argv)
    method = methods.select_method(methods.DISTILL_SCRIPT, args)
    if refused:
        with pytest.raises(UsageError, match=f"--objective {objective} needs"):
            train_distillation.check_teacher_matches_run(args, method, checkpoint, 32)
    else:
        train_distillation.check_teacher_matches_run(args, method, checkpoint, 32)
    args = train_distillation.get_args_parser().parse_args([*argv, "--allow_teacher_mismatch"])
    train_distillation.check_teacher_matches_run(args, method, checkpoint, 32)


@pytest.mark.slow  # a minute or more on a 2-core CPU without AVX-512; CI runs it (`-m slow`)
def test_dvp_both_phases_end_to_end(cifar_root, tmp_path):
    """Phase 1 (one epoch, then a resumed second), phase 2 from its checkpoint (frozen teacher, CE only in its first
    epoch), and both checkpoints evaluated like any other."""
    from conftest import TEST_MODEL, run_script

    data = ["--dataset", "CIFAR-FS", "--data_root", str(cifar_root), "--batch_size", "16", "--num_workers", "0",
            "--device", "cpu", "--no_final_eval"]
    prior = ["train_supervised_ssl.py", "--objective", "dvp", "--dvp_queue", "32", "--dvp_momentum", "0.9", *data,
             "--model", TEST_MODEL, "--model_path", str(tmp_path / "prior")]  # phase 2 takes its architecture
    first = run_script(*prior, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    [folder] = (tmp_path / "prior").iterdir()
    assert folder.name.endswith("_dvp_margin_0.4_K_32_m_0.9_T_0.07_trial_1")
    one = torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True)
    official = set(create_model(TEST_MODEL, 6, "CIFAR-FS").state_dict())
    assert set(one["model"]) == official  # official keys only; the rest under dvp_prior
    assert {k.split(".")[0] for k in one["dvp_prior"]} == {"query_head", "key", "queue"}
    # The key encoder is checkpointed apart from the query encoder, which it lags (a momentum average of it).
    q, k = one["model"]["layer1.0.conv1.weight"], one["dvp_prior"]["key.model.layer1.0.conv1.weight"]
    assert q.shape == k.shape and not torch.equal(q, k)
    assert int(one["dvp_prior"]["queue.pointer"]) == (3 * 16) % 32  # 48 images: three steps of 16 keys enqueued
    # The classifier is not part of the contrastive task: still at its initial value after training.
    resumed = run_script(*prior, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    two = torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert torch.equal(two["model"]["classifier.weight"], one["model"]["classifier.weight"])
    assert not torch.equal(two["dvp_prior"]["queue.keys"], one["dvp_prior"]["queue.keys"])
    record = json.loads((folder / "log.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 2 and "train_instance_acc" in record and "train_acc" not in record  # no labels used

    student = run_script("train_distillation.py", "--objective", "dvp", "--path_t", str(folder / "checkpoint.pth"),
                         "--dvp_no_distill_epochs", "1", "--epochs", "2", *data, "--model_path", str(tmp_path / "dvp"))
    assert student.returncode == 0, student.stderr[-3000:]
    assert "teacher check: weights and BatchNorm statistics unchanged" in student.stdout
    [run] = (tmp_path / "dvp").iterdir()
    assert "_dvp_w_0.0001_after_1_" in run.name
    checkpoint = torch.load(run / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert set(checkpoint["model"]) == official
    assert set(checkpoint["dvp_connectors"]) == {f"{i}.{p}" for i in range(4) for p in (
        "0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked")}
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert epochs[0]["train_loss"] == pytest.approx(epochs[0]["train_ce"])  # epoch 1: cross-entropy only
    assert epochs[1]["train_loss"] == pytest.approx(epochs[1]["train_ce"] + 1e-4 * epochs[1]["train_distill"])
    for path in (folder / "checkpoint.pth", run / "checkpoint.pth"):
        evaluated = run_script("eval_fewshot.py", "--model_path", str(path), "--device", "cpu", "--n_test_runs", "2")
        assert evaluated.returncode == 0, evaluated.stderr[-2000:]
