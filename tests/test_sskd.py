"""SSKD: selective transfer, similarity transfer and the whole loss against hand computation on tiny
tensors, and the objective end to end in train_distillation.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import kd_loss
from distill.sskd import (SSKDWeights, selective_kd, selective_rows, similarity_head_loss, similarity_logits,
                          sskd_loss, true_class_rank)


def test_true_class_rank_counts_classes_scored_above_the_true_one():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [0.5, 0.1, 0.9]])
    assert true_class_rank(logits, torch.tensor([0, 0, 1])).tolist() == [0, 2, 2]


def test_selective_transfer_keeps_correct_rows_and_the_best_ranked_wrong_ones():
    # True class ranks per row: 0, 2, 1, 0, 3, 1 (rows 0 and 3 correct; wrong rows 1, 2, 4, 5).
    logits = torch.tensor([[9., 1, 2, 3], [1, 9, 8, 0], [2, 9, 1, 0], [1, 2, 9, 3], [0, 3, 2, 1], [5, 1, 0, 6]])
    targets = torch.tensor([0, 0, 0, 2, 0, 0])
    assert true_class_rank(logits, targets).tolist() == [0, 2, 1, 0, 3, 1]
    assert selective_rows(logits, targets, 1.0).tolist() == [0, 1, 2, 3, 4, 5]
    # 4 wrong rows x 0.75 = 3 kept: ranks 1, 1, 2 (rows 2, 5, 1); the rank-3 row 4 goes.
    assert selective_rows(logits, targets, 0.75).tolist() == [0, 1, 2, 3, 5]
    # x 0.5 = 2: the two rank-1 rows.
    assert selective_rows(logits, targets, 0.5).tolist() == [0, 2, 3, 5]
    assert selective_rows(logits, targets, 0.0).tolist() == [0, 3]


def _rows_by_sorting(teacher_logits: torch.Tensor, targets: torch.Tensor, ratio: float) -> torch.Tensor:
    """Selective transfer as first written (and as the release): index the wrong rows, sort them."""
    rank = true_class_rank(teacher_logits, targets)
    correct, wrong = (rank == 0).nonzero().flatten(), (rank > 0).nonzero().flatten()
    order = torch.sort(rank[wrong], stable=True).indices[:int(len(wrong) * ratio)]
    return torch.sort(torch.cat([correct, wrong[order]])).values


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.75, 1.0])
def test_selective_kd_as_a_mask_equals_kd_on_the_selected_rows(seed, ratio):
    """The step computes selective transfer as a mask (no data-dependent shapes, so no host wait); it
    keeps the rows, ties included, that indexing and sorting keep, and gives their KD."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randint(0, 4, (24, 5), generator=g).float()  # small integers: many tied ranks
    student = torch.randn(24, 5, generator=g)
    targets = torch.randint(0, 5, (24,), generator=g)
    rows = _rows_by_sorting(teacher, targets, ratio)
    assert torch.equal(selective_rows(teacher, targets, ratio), rows)
    expected = kd_loss(student[rows], teacher[rows], 4.0) if len(rows) else torch.tensor(0.0)
    torch.testing.assert_close(selective_kd(student, teacher, targets, 4.0, ratio), expected)


def test_similarity_rows_are_rotated_images_against_the_plain_batch():
    plain = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    rotated = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    sim = similarity_logits(rotated, plain)
    assert sim.shape == (6, 2)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(sim, torch.tensor([[1.0, 0.0], [r, r], [0.0, -1.0],
                                                  [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    # The head's task: rotated row i (rotation-major) must pick plain image i % B.
    expected = F.cross_entropy(sim, torch.tensor([0, 1, 0, 1, 0, 1]))
    torch.testing.assert_close(similarity_head_loss(torch.cat([plain, rotated]), 2), expected)


def _kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, mean over rows, written out."""
    p_t = torch.softmax(t / temperature, 1)
    return (p_t * (p_t.log() - torch.log_softmax(s / temperature, 1))).sum(1).mean() * temperature**2


def test_sskd_loss_equals_the_hand_computation():
    g = torch.Generator().manual_seed(0)
    b, k, d = 3, 4, 5
    s_logits, t_logits = torch.randn(4 * b, k, generator=g), torch.randn(4 * b, k, generator=g)
    s_proj, t_proj = torch.randn(4 * b, d, generator=g), torch.randn(4 * b, d, generator=g)
    y = torch.tensor([0, 2, 1])
    w = SSKDWeights()
    loss, parts = sskd_loss(s_logits, t_logits, s_proj, t_proj, y, w)

    ce = F.cross_entropy(s_logits[:b], y)
    kd = _kl(s_logits[:b], t_logits[:b], 4.0)
    tf_rows = selective_rows(t_logits[b:], y.repeat(3), 1.0)
    assert len(tf_rows) == 3 * b  # ratio 1.0: every rotated row
    tf = _kl(s_logits[b:], t_logits[b:], 4.0)
    s_sim = F.cosine_similarity(s_proj[b:, None], s_proj[None, :b], dim=2)
    t_sim = F.cosine_similarity(t_proj[b:, None], t_proj[None, :b], dim=2)
    ss_rows = selective_rows(t_sim, torch.arange(b).repeat(3), 0.75)
    ss = _kl(s_sim[ss_rows], t_sim[ss_rows], 0.5)
    for name, value in {"ce": ce, "kd": kd, "tf": tf, "ss": ss}.items():
        torch.testing.assert_close(parts[name], value, msg=name)
    torch.testing.assert_close(loss, 0.1 * ce + 0.9 * kd + 2.7 * tf + 10.0 * ss)


def test_sskd_loss_is_zero_transfer_when_student_equals_teacher():
    g = torch.Generator().manual_seed(1)
    logits, proj = torch.randn(8, 3, generator=g), torch.randn(8, 6, generator=g)
    _, parts = sskd_loss(logits, logits.clone(), proj, proj.clone(), torch.tensor([0, 1]))
    for name in ("kd", "tf", "ss"):
        assert abs(float(parts[name])) < 1e-6, name


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_sskd_loss_computes_in_float32(dtype):
    g = torch.Generator().manual_seed(2)
    args = [torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g), torch.randn(8, 6, generator=g),
            torch.randn(8, 6, generator=g)]
    y = torch.tensor([0, 1])
    low = [a.to(dtype) for a in args]
    expected, _ = sskd_loss(*[a.float() for a in low], y)
    with torch.autocast("cpu", dtype=dtype):
        got, _ = sskd_loss(*low, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # a minute or more on a 2-core CPU without AVX-512; CI runs it (`-m slow`)
def test_sskd_objective_end_to_end(cifar_root, tmp_path):
    """A teacher checkpoint, one SSKD epoch (the teacher head trained first), a resumed second epoch
    (the head restored, not retrained), and the student evaluated like any checkpoint."""
    from conftest import TEST_MODEL, run_script
    from models import create_model

    torch.manual_seed(0)
    # An official-style checkpoint (weights only) records no architecture: --model_t names it.
    torch.save({"model": create_model(TEST_MODEL, 6, "CIFAR-FS").state_dict()}, tmp_path / "teacher.pth")
    common = ["train_distillation.py", "--objective", "sskd", "--path_t", str(tmp_path / "teacher.pth"),
              "--model_t", TEST_MODEL,
              "--dataset", "CIFAR-FS", "--data_root", str(cifar_root), "--batch_size", "16", "--num_workers", "0",
              "--device", "cpu", "--sskd_head_epochs", "2", "--no_final_eval", "--model_path", str(tmp_path / "save")]
    first = run_script(*common, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    # The teacher head's epochs, a phase of the training loop, print their own lines before the student's.
    assert [line.split()[1] for line in first.stdout.splitlines() if line.startswith("phase=teacher_head")] == \
        ["teacher_head_epoch=1", "teacher_head_epoch=2"]
    assert "teacher check: weights and BatchNorm statistics unchanged" in first.stdout
    [folder] = (tmp_path / "save").iterdir()
    assert folder.name.startswith(f"S_{TEST_MODEL}_T_{TEST_MODEL}_CIFAR-FS_sskd_ce_0.1_kd_0.9_tf_2.7_ss_10.0")
    one = torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert set(one["model"]) == set(create_model(TEST_MODEL, 6, "CIFAR-FS").state_dict())  # official keys only
    assert set(one["sskd_heads"]) == {f"{who}.net.{i}.{p}" for who in ("student", "teacher") for i in (0, 2)
                                      for p in ("weight", "bias")}
    resumed = run_script(*common, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "phase=teacher_head" not in resumed.stdout  # restored from the checkpoint
    two = torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True)
    for key, value in one["sskd_heads"].items():
        same = torch.equal(two["sskd_heads"][key], value)
        assert same if key.startswith("teacher") else not same, key  # the teacher head frozen, the student's trained
    records = [line for line in (folder / "log.jsonl").read_text().splitlines() if '"phase"' not in line]
    assert len(records) == 2 and all(f'"train_{k}"' in r for r in records for k in ("ce", "kd", "tf", "ss"))
    evaluated = run_script("eval_fewshot.py", "--model_path", str(folder / "checkpoint.pth"), "--device", "cpu",
                           "--n_test_runs", "2")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]


def _teacher_head_phase(head_epochs: int):
    """SSKD built in-process on built-in data (a random teacher): its teacher-head phase."""
    import engine.data
    import methods
    import train_distillation
    from conftest import TEST_MODEL
    from dataset import load_split
    from dataset.transforms import choose_normalization
    from models import create_model

    args = train_distillation.get_args_parser().parse_args(
        ["--objective", "sskd", "--dataset", "synthetic", "--image_size", "16", "--batch_size", "8", "--num_workers",
         "0", "--path_t", "teacher.pth", "--model_t", TEST_MODEL, "--model_s", TEST_MODEL, "--sskd_head_epochs",
         str(head_epochs), "--sskd_head_lr", "0.05"])
    train = load_split("synthetic", None, "train", 16)
    data = engine.data.TrainingData(train, None, choose_normalization("auto", "synthetic", train.images))
    teacher = create_model(TEST_MODEL, train.num_classes, "synthetic", image_size=16).requires_grad_(False).eval()
    run = methods.get_method("sskd").from_args(args, device=torch.device("cpu"), data=data, teacher=teacher)
    [phase] = run.pre_phases(None, None)
    return phase


@pytest.mark.parametrize("head_epochs, lrs", [
    (1, [0.05]),  # the milestones 0.5 and 0.75 are not reached before its only epoch
    (5, [0.05, 0.05, 0.05, 0.005, 0.0005]),  # 2.5 reached after epoch 3, 3.75 after epoch 4
    (60, [0.05] * 30 + [0.005] * 15 + [0.0005] * 15),  # the release's MultiStepLR at 30 and 45
])
def test_the_teacher_heads_lr_decays_only_after_its_milestones_are_reached(head_epochs, lrs):
    phase = _teacher_head_phase(head_epochs)
    assert [phase.learning_rate_at(e) for e in range(1, head_epochs + 1)] == pytest.approx(lrs)


def test_step_decay_with_whole_epoch_milestones_is_the_releases_multisteplr():
    """What every method's own schedule (--lr_decay_epochs) computes: lr x rate after each milestone epoch."""
    from engine.config import step_decay

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[45, 60, 75], gamma=0.1)
    for epoch in range(1, 91):  # stepped after each epoch, as the releases do
        assert step_decay(0.05, 0.1, (45, 60, 75), epoch) == pytest.approx(optimizer.param_groups[0]["lr"]), epoch
        optimizer.step()
        scheduler.step()
