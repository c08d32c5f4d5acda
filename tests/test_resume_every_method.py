"""Every method resumes to the bit: each script, run as a user runs it on ResNet-12 (conftest's
narrow TEST_MODEL; Gen-0 and Gen-1 also on Conv-4, and a Conv-4 RFS student of a ResNet-12 teacher), is
stopped by SIGTERM mid-epoch (tests/sigterm_at_step.py: during a given
optimizer step), resumed with --resume, and must end with the checkpoint of an uninterrupted run,
bit for bit: the network, the optimizer's momentum, the method's own modules (SSKD's heads, DVP's
momentum encoder, queue and connectors), the DropBlock counters.

Tiny data keeps it fast: 16 training images at 16 px, batch 8, so 2 steps an epoch and 2 epochs; the
signal lands in step 3 (epoch 2, step 1), after an epoch checkpoint, so the resumed run restores both
the finished epoch's state and the mid-epoch RNG streams and metric sums. Each uninterrupted run is
trained once per session and is also the teacher of the methods distilling from it."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import methods
from conftest import TEST_MODEL, make_cifar_package, run_script

STEPS_PER_EPOCH = 2  # 16 images, batch 8
SIGNAL_STEP = STEPS_PER_EPOCH + 1  # epoch 2, step 1 of 2
SSKD_HEAD_EPOCHS = 2  # the teacher-head phase: 2 epochs of 2 optimizer steps before the student's first step
# What differs between two runs of the same training besides the training itself: the arguments
# (--resume, --model_path), the W&B run id, and the run's recorded paths.
NOT_TRAINING = {"args", "wandb_id", "identity", "path_t"}

# Each case: the method, the flags beyond the common ones, and the uninterrupted run whose checkpoint is its teacher.
CASES = {
    "skd_gen0": ([], None),
    "rfs_simple": (["--plain"], None),
    "dvp_prior": (["--objective", "dvp", "--dvp_queue", "16"], None),
    "skd_gen1": ([], "skd_gen0"),
    "skd_gen1_quirks": (["--official_quirks"], "skd_gen0"),
    "rfs_distill": (["--objective", "rfs"], "rfs_simple"),
    "sskd": (["--objective", "sskd", "--sskd_head_epochs", str(SSKD_HEAD_EPOCHS)], "skd_gen0"),
    # distillation from epoch 2 on: the stopped epoch is one with the feature loss
    "dvp": (["--objective", "dvp", "--dvp_no_distill_epochs", "1"], "dvp_prior"),
    # Another network (no DropBlock), and a student of another architecture than its teacher.
    "skd_gen0_convnet4": (["--model", "convnet4"], None),
    "skd_gen1_convnet4": ([], "skd_gen0_convnet4"),
    "rfs_distill_to_convnet4": (["--objective", "rfs", "--model_s", "convnet4"], "rfs_simple"),
}


def _method(case: str) -> str:
    """The method a case trains: its name less the variant's suffix."""
    return re.sub(r"_(quirks|convnet4|to_convnet4)$", "", case)


def _command(case: str, runs: dict, model_path: Path) -> list[str]:
    flags, teacher = CASES[case]
    script = "train_distillation.py" if teacher else "train_supervised_ssl.py"
    network = ["--path_t", str(runs["checkpoints"][teacher])] if teacher else ["--model", TEST_MODEL]
    return [script, *network, *flags, "--dataset", "CIFAR-FS", "--data_root", str(runs["data"]),
            "--image_size", "16", "--batch_size", "8", "--num_workers", "0", "--device", "cpu", "--amp", "off",
            "--epochs", "2", "--lr_decay_epochs", "1", "--no_final_eval", "--log_interval", "1",
            "--model_path", str(model_path)]


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict:
    """The tiny data and a cache of each case's uninterrupted checkpoint, trained on first use."""
    root = tmp_path_factory.mktemp("resume")
    make_cifar_package(root / "data" / "CIFAR-FS", train_classes=4, per_class_train=4, eval_classes=5,
                       per_class_eval=4)
    return {"root": root, "data": root / "data", "checkpoints": {}}


def _straight(case: str, runs: dict) -> Path:
    if case not in runs["checkpoints"]:
        teacher = CASES[case][1]
        if teacher:
            _straight(teacher, runs)
        done = run_script("tests/sigterm_at_step.py", "0", *_command(case, runs, runs["root"] / "straight" / case))
        assert done.returncode == 0, done.stderr[-3000:]
        [folder] = (runs["root"] / "straight" / case).iterdir()
        runs["checkpoints"][case] = folder / "checkpoint.pth"
    return runs["checkpoints"][case]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(resumed, straight, where: str = "checkpoint") -> None:
    """Equal to the bit, recursively: tensors by torch.equal (and dtype), everything else by ==."""
    if isinstance(straight, dict):
        assert isinstance(resumed, dict) and set(resumed) == set(straight), where
        for key, value in straight.items():
            assert_same_training_state(resumed[key], value, f"{where}.{key}")
    elif isinstance(straight, (list, tuple)):
        assert type(resumed) is type(straight) and len(resumed) == len(straight), where
        for i, (a, b) in enumerate(zip(resumed, straight)):
            assert_same_training_state(a, b, f"{where}[{i}]")
    elif isinstance(straight, torch.Tensor):
        assert resumed.dtype == straight.dtype and torch.equal(resumed, straight), where
    else:
        assert resumed == straight, where


def _stop_and_resume(case: str, runs: dict, tmp_path: Path, signal_step: int, where: str | None) -> Path:
    """Stop `case` by SIGTERM in optimizer step `signal_step`, resume it; return the resumed checkpoint."""
    command = _command(case, runs, tmp_path)
    stopped = run_script("tests/sigterm_at_step.py", str(signal_step), *command)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    [message] = [line for line in stopped.stderr.splitlines() if line.startswith("stopped: ")]
    assert message.startswith("stopped: SIGTERM at ") and message.endswith("plus --resume"), message
    if where is not None:
        assert f"SIGTERM at {where};" in message
    [folder] = tmp_path.iterdir()
    if where is not None and "step" in where:
        assert "partial" in _load(folder / "checkpoint.pth")  # a mid-epoch checkpoint, not an epoch's
    resumed = run_script("tests/sigterm_at_step.py", "0", *command, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return folder / "checkpoint.pth"


@pytest.mark.parametrize("case", [c for c in CASES if c != "sskd"])
def test_sigterm_mid_epoch_then_resume_is_bit_identical(case, runs, tmp_path):
    straight = _load(_straight(case, runs))
    teacher = CASES[case][1]
    if teacher:  # the student under test distils from the teacher checkpoint, which is shared
        _straight(teacher, runs)
    resumed = _load(_stop_and_resume(case, runs, tmp_path, SIGNAL_STEP, f"epoch 2, step 1/{STEPS_PER_EPOCH}"))
    assert resumed["epoch"] == 2 and "partial" not in resumed
    assert resumed["args"]["objective"] == methods.get_method(_method(case)).objective
    assert_same_training_state({k: v for k, v in resumed.items() if k not in NOT_TRAINING},
                               {k: v for k, v in straight.items() if k not in NOT_TRAINING})


def test_sskd_student_phase_sigterm_then_resume_is_bit_identical(runs, tmp_path):
    """Stopped in the student's epoch 2, after the teacher head's 2 epochs: the resumed run restores the
    trained (frozen) teacher head from the checkpoint instead of training it again."""
    straight = _load(_straight("sskd", runs))
    head_steps = SSKD_HEAD_EPOCHS * STEPS_PER_EPOCH
    path = _stop_and_resume("sskd", runs, tmp_path, head_steps + SIGNAL_STEP, f"epoch 2, step 1/{STEPS_PER_EPOCH}")
    resumed = _load(path)
    assert_same_training_state({k: v for k, v in resumed.items() if k not in NOT_TRAINING},
                               {k: v for k, v in straight.items() if k not in NOT_TRAINING})


def test_sskd_teacher_head_phase_sigterm_then_resume_is_bit_identical(runs, tmp_path):
    """Stopped in the teacher head's epoch 2 (optimizer step 3 of its 4): the command exits as pre-empted
    with a checkpoint, and --resume finishes the head's training and the student's as an uninterrupted
    run does."""
    straight = _load(_straight("sskd", runs))
    path = _stop_and_resume("sskd", runs, tmp_path, SIGNAL_STEP,
                            f"epoch 2, step 1/{STEPS_PER_EPOCH} of the teacher_head phase")
    resumed = _load(path)
    # The head's epochs are logged once each, as its phase's, then the student's.
    log = [json.loads(line) for line in (path.parent / "log.jsonl").read_text().splitlines()]
    assert [(r.get("phase"), r.get("teacher_head_epoch", r.get("epoch"))) for r in log] == [
        *(("teacher_head", e) for e in range(1, SSKD_HEAD_EPOCHS + 1)), *((None, e) for e in (1, 2))]
    assert_same_training_state({k: v for k, v in resumed.items() if k not in NOT_TRAINING},
                               {k: v for k, v in straight.items() if k not in NOT_TRAINING})


def test_resume_refuses_a_teacher_whose_file_changed_at_the_same_path(runs, tmp_path):
    """--resume of a Gen-1 run stopped mid-epoch, with other bytes at the same --path_t: refused in one
    line naming both sha256s, before anything is trained or written."""
    import util

    teacher = _straight("skd_gen0", runs)
    copy = tmp_path / "teacher" / "checkpoint.pth"
    copy.parent.mkdir()
    shutil.copy(teacher, copy)
    runs_with_copy = {**runs, "checkpoints": {**runs["checkpoints"], "skd_gen0": copy}}
    command = _command("skd_gen1", runs_with_copy, tmp_path / "save")
    stopped = run_script("tests/sigterm_at_step.py", str(SIGNAL_STEP), *command)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    [folder] = (tmp_path / "save").iterdir()
    before = (folder / "checkpoint.pth").read_bytes()
    original = util.file_sha256(copy)
    changed = _load(copy)
    changed["model"]["classifier.bias"] = changed["model"]["classifier.bias"] + 1.0
    torch.save(changed, copy)
    refused = run_script(*command, "--resume")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: --resume: {folder / 'checkpoint.pth'} was trained with a teacher file of sha256 {original}, this "
        f"run has {util.file_sha256(copy)}; use a new --trial or the original setting"]
    assert (folder / "checkpoint.pth").read_bytes() == before
