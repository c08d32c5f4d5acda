"""Gen-0 and Gen-1 training runs end to end (tiny CIFAR-FS files, CPU), and the run plumbing."""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np

import pytest
import torch

import engine.args
import engine.checkpoint
import engine.loop
import engine.run
import util
from conftest import CPU_AMP, TEST_FEATURE_DIM, TEST_MODEL, make_cifar_package, run_script, write_pickle
from engine.config import DataConfig, LoopConfig, RunConfig, Schedule, TrainConfig, WandbConfig
from eval.validation import ValEvaluation
from distill import gen0_loss, gen1_loss, kd_loss, rfs_distill_loss, rot180
from models import create_model
from models.dropblock import add_dropblock_calls, dropblock_calls
from runtime.distributed import Distributed
from runtime.process import Process
import methods
from methods.base import assert_unchanged, clone_student, snapshot
from methods.rfs_distill import rfs_distill_step
from methods.rfs_simple import plain_step
from methods.skd_gen0 import gen0_step
from methods.skd_gen1 import gen1_step, official_eval_calls_per_epoch
from train_distillation import check_teacher_matches_run

FAST = ["--dataset", "CIFAR-FS", "--batch_size", "16", "--num_workers", "0", "--n_test_runs", "2",
        "--eval_batch_size", "128", "--device", "cpu"]
GEN0 = [*FAST, "--model", TEST_MODEL]  # Gen-1 runs take the teacher's architecture
GEN0_NAME = f"{TEST_MODEL}_CIFAR-FS_lr_0.05_decay_0.0005_trans_D_trial_1"
SKD_GEN1 = methods.get_method("skd_gen1")


def _checkpoint(folder: Path) -> dict:
    return torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def gen0_run(cifar_root, tmp_path_factory) -> Path:
    """A 2-epoch Gen-0 run with the end-of-training report; returns its run folder."""
    save = tmp_path_factory.mktemp("save")
    # --tf32 asks for TF32, which a CPU does not have: the run must say fp32 (test_gen0_run_folder_...).
    done = run_script("train_supervised_ssl.py", *GEN0, "--data_root", str(cifar_root), "--model_path", str(save),
                      "--epochs", "2", "--tf32")
    assert done.returncode == 0, done.stderr[-3000:]
    folder = save / GEN0_NAME
    assert f"checkpoint: {folder / 'checkpoint.pth'}" in done.stdout
    (save / "stdout.txt").write_text(done.stdout)
    return folder


def test_gen0_run_folder_checkpoint_log_and_report(gen0_run):
    checkpoint = _checkpoint(gen0_run)
    assert checkpoint["epoch"] == 2
    assert {"epoch", "model", "optimizer", "args", "dropblock_calls", "normalization", "image_size"} <= set(checkpoint)
    assert len(checkpoint["model"]) == 100 and checkpoint["model"]["classifier.weight"].shape == (6, TEST_FEATURE_DIM)
    assert checkpoint["dropblock_calls"] == [6, 6]  # 3 training steps per epoch, 2 epochs
    records = [json.loads(line) for line in (gen0_run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"lr", "train_loss", "train_ce", "train_rot", "train_acc", "images_per_s"} <= set(r)
        assert r["train_loss"] == pytest.approx(r["train_ce"] + 2.0 * r["train_rot"], rel=1e-5)
    assert json.loads((gen0_run / "args.json").read_text())["epochs"] == 2
    results = json.loads((gen0_run / "results.json").read_text())["results"]
    assert {(r["split"], r["n_shots"], r["embedding"]) for r in results} == {
        (split, shots, emb) for split in ("val", "test") for shots in (1, 5) for emb in ("feature", "logit")}
    # 2 episodes x 75 queries: every mean is a multiple of 1/150, and the report says what it embedded in
    assert all(r["n_episodes"] == 2 and abs(r["mean"] * 1.5 - round(r["mean"] * 1.5)) < 1e-9 for r in results)
    assert {r["precision"] for r in results} == {"fp32"}
    report = json.loads((gen0_run / "results.json").read_text())
    assert report["checkpoint_choice"] == "last epoch" and report["epoch"] == 2 and report["dataset"] == "CIFAR-FS"
    # The device line once, and results.json records the device and the precision that ran (no TF32 on a CPU).
    assert (gen0_run.parent / "stdout.txt").read_text().count("device: cpu (--device cpu), torch ") == 1
    assert report["device"].startswith("cpu (--device cpu)") and report["precision"] == "fp32"


@pytest.mark.slow  # a minute or more on a 2-core CPU without AVX-512; CI runs it (`-m slow`)
def test_gen0_resume_reproduces_an_uninterrupted_run(gen0_run, cifar_root, tmp_path):
    common = [*GEN0, "--data_root", str(cifar_root), "--model_path", str(tmp_path), "--no_final_eval"]
    first = run_script("train_supervised_ssl.py", *common, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_script("train_supervised_ssl.py", *common, "--epochs", "2")
    assert again.returncode == 2 and "pass --resume" in again.stderr
    resized = run_script("train_supervised_ssl.py", *common, "--epochs", "2", "--resume", "--image_size", "36")
    assert resized.returncode == 2 and "was trained with image size 32, this run has 36" in resized.stderr
    resumed = run_script("train_supervised_ssl.py", *common, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    straight, split = _checkpoint(gen0_run), _checkpoint(tmp_path / GEN0_NAME)
    assert split["epoch"] == 2 and split["dropblock_calls"] == straight["dropblock_calls"]
    for key, value in straight["model"].items():
        torch.testing.assert_close(split["model"][key], value, rtol=0, atol=0, msg=key)
    lines = (tmp_path / GEN0_NAME / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


@pytest.mark.slow  # a minute or more on a 2-core CPU without AVX-512; CI runs it (`-m slow`)
def test_gen0_one_epoch_on_synthetic_reloads_and_resumes(tmp_path):
    """The first run's data and size: built-in data, no files, at the quickstart's 16x16. Its checkpoint
    loads into a fresh model and --resume continues it."""
    common = ["--dataset", "synthetic", "--batch_size", "64", "--num_workers", "0", "--device", "cpu", "--amp", CPU_AMP,
              "--no_final_eval", "--image_size", "16", "--model_path", str(tmp_path), "--model", TEST_MODEL]
    first = run_script("train_supervised_ssl.py", *common, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / f"{TEST_MODEL}_synthetic_lr_0.05_decay_0.0005_trans_D_trial_1"
    model = create_model(TEST_MODEL, 10, "synthetic")
    checkpoint = engine.checkpoint.load_model_weights(model, folder / "checkpoint.pth")
    assert checkpoint["epoch"] == 1 and checkpoint["dropblock_calls"] == [6, 6]  # 400 images, batch 64
    resumed = run_script("train_supervised_ssl.py", *common, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _checkpoint(folder)["epoch"] == 2 and _checkpoint(folder)["dropblock_calls"] == [12, 12]
    assert [json.loads(line)["epoch"] for line in (folder / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_bad_data_root_is_one_line_exit_2_and_writes_nothing(tmp_path):
    done = run_script("train_supervised_ssl.py", "--dataset", "CIFAR-FS", "--data_root", str(tmp_path / "nope"),
                      "--model_path", str(tmp_path / "save"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: --data_root folder not found"]
    assert not (tmp_path / "save").exists()


def test_too_few_eval_images_fail_before_training(tmp_path):
    make_cifar_package(tmp_path / "CIFAR-FS", per_class_eval=12)  # 5-shot + 15 queries need 20
    done = run_script("train_supervised_ssl.py", *FAST, "--data_root", str(tmp_path), "--model_path",
                      str(tmp_path / "save"))
    assert done.returncode == 2 and "episodes need n_shots + n_queries = 20" in done.stderr
    assert not (tmp_path / "save").exists()


def test_gen1_from_gen0(gen0_run, cifar_root, tmp_path):
    teacher_path = gen0_run / "checkpoint.pth"
    done = run_script("train_distillation.py", *FAST, "--data_root", str(cifar_root), "--model_path", str(tmp_path),
                      "--path_t", str(teacher_path), "--epochs", "1", "--tags", "cifarfs,gen1,may30",
                      "--model_s", TEST_MODEL, "--model_t", TEST_MODEL, "--lr_decay_epochs", "60",
                      "--gamma", "0.1", "--n_aug_support_samples", "5", "--n_ways", "5", "--n_shots", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "teacher check: weights and BatchNorm statistics unchanged" in done.stdout
    folder = tmp_path / f"S_{TEST_MODEL}_T_{TEST_MODEL}_CIFAR-FS_kd_T_2.0_beta_0.1_trans_D_trial_1"
    checkpoint = _checkpoint(folder)
    assert checkpoint["path_t"] == str(teacher_path) and checkpoint["args"]["learning_rate"] == 0.001
    record = json.loads((folder / "log.jsonl").read_text())
    assert record["train_loss"] == pytest.approx(record["train_kd"] + 0.1 * record["train_l2"], rel=1e-5)
    results = json.loads((folder / "results.json").read_text())["results"]
    assert {(r["split"], r["n_shots"], r["embedding"]) for r in results} == {
        (split, shots, emb) for split in ("val", "test") for shots in (1, 5) for emb in ("feature", "logit")}
    # The student's ramp starts at 0 (the teacher's checkpoint says 6): 48 images, batch 16 -> 3 steps.
    assert _checkpoint(gen0_run)["dropblock_calls"] == [6, 6] and checkpoint["dropblock_calls"] == [3, 3]
    teacher = _checkpoint(gen0_run)["model"]
    weights = [k for k in teacher if k.endswith(("weight", "bias"))]
    moved = max((checkpoint["model"][k] - teacher[k]).abs().max().item() for k in weights)
    assert 0 < moved < 0.05  # trained, starting from the teacher's weights (lr 0.001, 3 steps)

    # --resume refuses another teacher file, naming it, and keeps everything as it was
    resume = [*FAST, "--data_root", str(cifar_root), "--model_path", str(tmp_path), "--epochs", "2", "--resume",
              "--no_final_eval", "--official_ramp"]
    other = tmp_path / "other_teacher.pth"
    torch.save({**_checkpoint(gen0_run), "epoch": 3}, other)
    refused = run_script("train_distillation.py", *resume, "--path_t", str(other))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        f"error: --resume: {folder / 'checkpoint.pth'} was trained with --path_t {teacher_path.resolve()}")
    assert _checkpoint(folder)["epoch"] == 1
    resumed = run_script("train_distillation.py", *resume, "--path_t", str(teacher_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the counter is restored (3), epoch 2 adds 3 steps and, with --official_ramp, the released code's
    # per-epoch test evaluation: 2 forwards x 2 episodes
    assert _checkpoint(folder)["dropblock_calls"] == [3 + 3 + 4, 3 + 3 + 4]
    assert json.loads((folder / "args.json").read_text())["epochs"] == 1  # the original arguments are kept
    assert json.loads((folder / "args.resume_after_epoch_1.json").read_text())["epochs"] == 2
    assert [json.loads(line)["epoch"] for line in (folder / "log.jsonl").read_text().splitlines()] == [1, 2]


def test_gen1_refuses_a_teacher_of_other_classes(gen0_run, tmp_path):
    make_cifar_package(tmp_path / "CIFAR-FS", train_classes=7)
    done = run_script("train_distillation.py", *FAST, "--data_root", str(tmp_path), "--model_path",
                      str(tmp_path / "save"), "--path_t", str(gen0_run / "checkpoint.pth"))
    assert done.returncode == 2
    assert "the teacher has 6 classes, the training split" in done.stderr and "has 7" in done.stderr


# ----------------------------------------------------------------------------- Gen-1 step, in process

class _BatchSizes:
    def __init__(self, model):
        self.sizes = []
        model.register_forward_pre_hook(lambda m, inputs: self.sizes.append(inputs[0].shape[0]))


@pytest.mark.parametrize("quirks", [False, True])
def test_gen1_step_forwards_2b_or_4b_and_computes_the_spec_loss(quirks):
    torch.manual_seed(0)
    teacher = create_model("resnet12_ssl", 5, image_size=32).eval().requires_grad_(False)
    student = create_model("resnet12_ssl", 5, image_size=32).eval()
    sizes = _BatchSizes(student)
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    result = gen1_step(student, teacher, beta=0.5, temperature=2.0, official_quirks=quirks)(x, y)
    assert sizes.sizes == [12 if quirks else 6]
    with torch.no_grad():  # eval mode: per-image outputs do not depend on the rest of the batch
        expected, _, _ = gen1_loss(student(x), student(rot180(x)), teacher(x), 0.5, 2.0, 3.0 if quirks else 1.0)
    torch.testing.assert_close(result.loss.detach(), expected, rtol=1e-4, atol=1e-5)
    assert result.images == 3


def test_teacher_change_is_detected():
    model = create_model("resnet12_ssl", 5, image_size=32)
    before = snapshot(model)
    assert_unchanged(model, before, "teacher")
    model.train()(torch.randn(2, 3, 32, 32))  # a training-mode forward moves the BatchNorm statistics
    with pytest.raises(RuntimeError, match="teacher changed during training: layer1.0.bn1.running_mean"):
        assert_unchanged(model, before, "teacher")


# ----------------------------------------------------------------------------- run plumbing

def _config(tmp_path, *, epochs: int = 2, resume: bool = False, wandb: str = "disabled") -> TrainConfig:
    return TrainConfig(schedule=Schedule(epochs, 0.1, lr_decay_epochs=(1,)), data=DataConfig("synthetic"),
                       loop=LoopConfig(log_interval=1),
                       run=RunConfig(str(tmp_path), resume=resume, wandb=WandbConfig(wandb, tags=("t",))))


def _process(amp: str = "off") -> Process:
    """This process on the CPU, as runtime.process.start sets it up outside torchrun, without starting anything."""
    return Process(Distributed(), torch.device("cpu"), amp, "cpu")


def test_non_finite_loss_stops_the_run_loudly(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = _config(tmp_path)
    state = engine.run.prepare_run(config=config, process=_process(), name="run", model=model, optimizer=optimizer,
                                   job_type="test", identity={})
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2), torch.zeros(4)),
                                         batch_size=2, generator=torch.Generator())

    def step(x, y):
        return engine.loop.StepResult(model(x).sum() * float("nan"), {"ce": torch.tensor(float("nan"))}, None, len(x))

    with pytest.raises(util.NonFiniteLossError, match="non-finite loss \\(nan\\) at epoch 1, step 1; metrics: ce=nan"):
        engine.loop.fit(state=state, make_step=lambda: step, loader=loader, schedule=config.schedule,
                        loop=config.loop, device=torch.device("cpu"))
    assert not state.checkpoint_path.exists()  # nothing was saved from the broken epoch
    with pytest.raises(SystemExit) as exit_info:
        util.run_cli(lambda: engine.loop.fit(state=state, make_step=lambda: step, loader=loader,
                                             schedule=config.schedule, loop=config.loop, device=torch.device("cpu")))
    assert exit_info.value.code == 1


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_says_so_in_one_line(tmp_path, monkeypatch):
    """The kernel's own ENOSPC: the save's file is pointed at /dev/full halfway through writing."""
    path = tmp_path / "checkpoint.pth"
    engine.checkpoint.save_checkpoint({"epoch": 1}, path)
    real_save = torch.save

    def save_onto_a_full_disk(obj, f):
        f.write(b"half a checkp")
        os.dup2(os.open("/dev/full", os.O_WRONLY), f.fileno())
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_onto_a_full_disk)
    with pytest.raises(util.WriteFailed) as failed:
        engine.checkpoint.save_checkpoint({"epoch": 2, "weights": torch.zeros(1 << 16)}, path)
    monkeypatch.undo()
    assert str(failed.value) == (f"{path}: could not be written (No space left on device); the previous checkpoint "
                                 f"there is intact: free space, then run the same command with --resume")
    assert engine.checkpoint.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_wandb_failure_never_stops_training(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")  # optional: the scripts run without it

    def refuse(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", refuse)
    logger = engine.run.training_logger(tmp_path, _config(tmp_path, wandb="online"), _process(), "run", "gen0")
    assert logger.wandb_run is None
    logger.log({"epoch": 1, "train_loss": 0.5})
    logger.summary({"x": 1.0})
    logger.finish()
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"epoch": 1, "train_loss": 0.5}


class _RecordingRun:
    """A stand-in of a W&B run: records the calls the logger makes."""

    def __init__(self, **init) -> None:
        self.init, self.id, self.defined, self.logged, self.summary = init, "r1", [], [], {}

    def define_metric(self, name, **kwargs):
        self.defined.append((name, kwargs))

    def log(self, metrics):
        self.logged.append(metrics)

    def finish(self, exit_code=0):
        pass


def test_wandb_plots_every_metric_against_the_epoch_and_summarises_accuracies_by_max_and_losses_by_min(
        tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    runs = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(_RecordingRun(**kw)) or runs[-1])
    config = replace(_config(tmp_path, wandb="offline"), flags={"dataset": "CIFAR-FS", "seed": 3, "model": "convnet4",
                                                                "generation": 2})
    logger = engine.run.training_logger(tmp_path, config, _process(), "S_run_trial_3", "skd_gen1")
    (run,) = runs
    assert set(run.init["tags"]) == {"t", "dataset:CIFAR-FS", "method:skd_gen1", "model:convnet4", "seed:3",
                                     "generation:2"}
    assert run.init["name"] == "skd_gen1-gen2 S_run_trial_3" and "command" in run.init["config"]
    logger.log({"phase": "teacher_head", "teacher_head_epoch": 1, "teacher_head_train_loss": 2.0})
    logger.log({"epoch": 1, "lr": 0.1, "train_loss": 3.0, "train_acc": 10.0, "val_acc": 40.0})
    logger.log({"epoch": 2, "lr": 0.1, "train_loss": 2.0, "train_acc": 20.0, "val_acc": 45.0})
    assert run.defined == [("teacher_head_epoch", {}),
                           ("teacher_head_train_loss", {"step_metric": "teacher_head_epoch", "summary": "min"}),
                           ("epoch", {}), ("lr", {"step_metric": "epoch", "summary": "last"}),
                           ("train_loss", {"step_metric": "epoch", "summary": "min"}),
                           ("train_acc", {"step_metric": "epoch", "summary": "max"}),
                           ("val_acc", {"step_metric": "epoch", "summary": "max"})]
    assert len(run.logged) == 3  # each record once, its own epoch the x-axis


class _ArtifactRun(_RecordingRun):
    """The stand-in, with W&B's artifact calls."""

    def __init__(self, **init) -> None:
        super().__init__(**init)
        self.artifacts, self.used = [], []

    def log_artifact(self, artifact, aliases=None):
        self.artifacts.append((artifact, aliases))
        return artifact

    def use_artifact(self, reference, type):
        self.used.append((reference, type))


def _run_with_checkpoints(tmp_path, config, name: str, identity: dict):
    model = torch.nn.Linear(2, 2)
    state = engine.run.prepare_run(config=config, process=_process(), name=name, model=model,
                                   optimizer=torch.optim.SGD(model.parameters(), lr=0.1), job_type="test",
                                   identity=identity)
    for path in (state.checkpoint_path, state.best_path):
        torch.save({"model": model.state_dict(), "epoch": 2}, path)
    state.best_val_acc = 61.5
    return state


def test_checkpoints_become_model_artifacts_that_a_students_run_declares_as_its_input(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    runs = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(_ArtifactRun(**kw)) or runs[-1])
    flags = {"dataset": "synthetic", "seed": 0, "epochs": 2, "model": "convnet4", "objective": "skd"}
    config = replace(_config(tmp_path, wandb="offline"), flags=flags)
    config = replace(config, run=replace(config.run, wandb=replace(config.run.wandb, artifacts="all")))
    teacher = _run_with_checkpoints(tmp_path, config, "teacher_run", {})
    engine.run.log_checkpoints(teacher, config, _process())
    engine.run.release_run_folder(teacher)
    (best, best_aliases), (final, final_aliases) = [(a, aliases) for a, aliases in runs[0].artifacts
                                                    if a.type == "model"]
    assert (best_aliases, final_aliases) == (["best"], ["final"])  # W&B adds `latest` to the newest
    assert final.type == "model" and final.name == "model-teacher_run"
    assert final.metadata["best_val_acc"] == 61.5 and final.metadata["architecture"] == "convnet4"
    assert final.metadata["method"] == "skd_gen0" and final.metadata["file"] == "checkpoint.pth"
    assert list(final.manifest.entries) == ["checkpoint.pth"] and list(best.manifest.entries) == ["best.pth"]
    assert json.loads((teacher.folder / "wandb_artifact.json").read_text()) == {
        "best.pth": "model-teacher_run:best", "checkpoint.pth": "model-teacher_run:final"}
    # A student of it (here through a link, as a study's selection names its teacher) declares it as its input.
    link = tmp_path / "selected.pth"
    link.symlink_to(teacher.checkpoint_path)
    _run_with_checkpoints(tmp_path, replace(config, flags={**flags, "path_t": str(link)}), "student_run",
                          {"path_t": str(link)})
    assert runs[1].used == [("model-teacher_run:final", "model")]
    code = [a for a, _ in runs[1].artifacts if a.type == "code"]  # the code the run ran, saved with it
    assert len(code) == 1
    assert {"train_distillation.py", "engine/run.py", "models/resnet.py"} <= set(code[0].manifest.entries)
    assert not any(name.startswith((".venv", "venv")) for name in code[0].manifest.entries)
    none = replace(config, run=replace(config.run, wandb=replace(config.run.wandb, artifacts="none")))
    quiet = _run_with_checkpoints(tmp_path, none, "quiet_run", {})
    engine.run.log_checkpoints(quiet, none, _process())
    assert [a.type for a, _ in runs[2].artifacts] == ["code"] and not (quiet.folder / "wandb_artifact.json").exists()


def test_a_checkpoint_is_logged_as_an_artifact_offline_for_wandb_sync(tmp_path, capsys):
    pytest.importorskip("wandb")
    config = replace(_config(tmp_path, wandb="offline"), flags={"dataset": "synthetic", "seed": 0, "epochs": 2})
    state = _run_with_checkpoints(tmp_path, config, "offline_run", {})
    engine.run.log_checkpoints(state, config, _process())
    state.logger.finish()
    assert json.loads((state.folder / "wandb_artifact.json").read_text()) == {
        "best.pth": "model-offline_run:best", "checkpoint.pth": "model-offline_run:final"}
    # Offline W&B cannot resolve an artifact: a student's run records its teacher's in its config, silently.
    student = engine.run.training_logger(tmp_path, config, _process(), "student", "skd_gen1")
    student.use_model("model-offline_run:final", "teacher")
    assert student.wandb_run.config["teacher_artifact"] == "model-offline_run:final"
    student.finish()
    assert "W&B" not in capsys.readouterr().err


def test_wandb_offline_run_is_written(tmp_path):
    logger = engine.run.training_logger(tmp_path, _config(tmp_path, wandb="offline"), _process(), "run", "gen0")
    assert logger.wandb_run is not None and logger.wandb_id
    logger.log({"epoch": 1, "train_loss": 0.5})
    logger.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(logger.wandb_id)
    # --resume passes the checkpoint's id: W&B itself continues that run (`wandb sync` joins the two parts).
    again = engine.run.training_logger(tmp_path, _config(tmp_path, wandb="offline"), _process(), "run", "gen0",
                                       logger.wandb_id)
    again.log({"epoch": 2, "train_loss": 0.4})
    again.finish()
    assert again.wandb_id == logger.wandb_id
    # Each part's folder is named by the run's id (and, started within the same second, a counter after it).
    assert all(f"-{logger.wandb_id}" in p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [
        {"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4}]


def test_learning_rate_schedules():
    step = Schedule(epochs=65, learning_rate=0.05, lr_decay_epochs=(60,))
    assert [step.learning_rate_at(e) for e in (1, 60, 61, 65)] == pytest.approx([0.05, 0.05, 0.005, 0.005])
    cosine = Schedule(epochs=10, learning_rate=0.1, cosine=True)
    assert cosine.learning_rate_at(10) == pytest.approx(0.1 * 0.1**3)
    assert cosine.learning_rate_at(5) == pytest.approx((0.1 + 1e-4) / 2)
    tiered = Schedule(epochs=60, learning_rate=0.05, lr_decay_epochs=(30, 40, 50))
    assert [tiered.learning_rate_at(e) for e in (30, 31, 41, 51)] == pytest.approx(
        [0.05, 0.005, 0.0005, 0.00005])


def test_device_and_amp_flags():
    assert util.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(util.UsageError, match="--device: expected cpu, cuda or cuda:N"):
        util.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(util.UsageError, match="--device cuda: no usable GPU"):
            util.resolve_device("cuda")
        with pytest.raises(util.UsageError, match="--amp fp16: needs a CUDA device"):
            util.autocast(torch.device("cpu"), "fp16")
    with util.autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with util.autocast(torch.device("cpu"), "off"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_gen1_student_equals_the_teacher_at_step_0():
    torch.manual_seed(0)
    teacher = create_model("resnet12_ssl", 5, "CIFAR-FS").eval().requires_grad_(False)
    for module, calls in zip([m for m in teacher.modules() if hasattr(m, "num_calls")], (7, 9)):
        module.num_calls = calls  # a teacher's ramp state must not leak into the student
    student = clone_student(teacher)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in student.state_dict().items())
    assert [m.num_calls for m in student.modules() if hasattr(m, "num_calls")] == [0, 0]
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        student.eval()
        torch.testing.assert_close(student(x), teacher(x), rtol=0, atol=0)
        assert kd_loss(student(x), teacher(x), 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_gen1_teacher_of_another_dataset_or_size_is_refused_unless_allowed():
    checkpoint = {"args": {"dataset": "FC100"}, "image_size": 32}
    args = argparse.Namespace(path_t="t.pth", dataset="CIFAR-FS", allow_teacher_mismatch=False)
    with pytest.raises(util.UsageError, match="--dataset CIFAR-FS: the teacher t.pth was trained on FC100; give "
                                              "--dataset FC100"):
        check_teacher_matches_run(args, SKD_GEN1, checkpoint, 32)
    args.dataset = "FC100"
    with pytest.raises(util.UsageError, match="--image_size 84: the teacher t.pth was trained on 32 px images; give "
                                              "--image_size 32"):
        check_teacher_matches_run(args, SKD_GEN1, checkpoint, 84)
    check_teacher_matches_run(args, SKD_GEN1, checkpoint, 32)
    check_teacher_matches_run(args, SKD_GEN1, {"model": {}}, 84)  # official checkpoints record neither
    args.allow_teacher_mismatch = True
    check_teacher_matches_run(args, SKD_GEN1, checkpoint, 84)


def test_official_ramp_counts_the_released_per_epoch_evaluation():
    assert official_eval_calls_per_epoch(600, 1) == 1200  # support + query forward per episode
    model = create_model("resnet12_ssl", 5, "CIFAR-FS")
    add_dropblock_calls(model, 1200)
    assert dropblock_calls(model) == [1200, 1200]


@pytest.mark.slow  # a minute or more on a 2-core CPU without AVX-512; CI runs it (`-m slow`)
def test_cosine_and_trainval_in_a_real_run(tmp_path):
    root = make_cifar_package(tmp_path / "CIFAR-FS")
    train, val = (pickle.load(open(root / f"{s}.pickle", "rb")) for s in ("train", "val"))
    write_pickle(root / "trainval.pickle", {"data": np.concatenate([train["data"], val["data"]]),
                                            "labels": list(train["labels"]) + list(val["labels"])})
    done = run_script("train_supervised_ssl.py", *GEN0, "--data_root", str(tmp_path), "--model_path",
                      str(tmp_path / "save"), "--epochs", "2", "--cosine", "--use_trainval", "--no_final_eval")
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "save" / f"{TEST_MODEL}_CIFAR-FS_lr_0.05_decay_0.0005_trans_D_cosine_trial_1_trainval"
    checkpoint = _checkpoint(folder)
    # trainval: 6 x 8 train + 5 x 20 val images = 148, 9 batches of 16 per epoch (train alone: 3)
    assert (checkpoint["dropblock_calls"] == [18, 18]
            and checkpoint["model"]["classifier.weight"].shape == (11, TEST_FEATURE_DIM))
    lrs = [json.loads(line)["lr"] for line in (folder / "log.jsonl").read_text().splitlines()]
    eta_min = 0.05 * 0.1**3
    assert lrs == pytest.approx([eta_min + (0.05 - eta_min) * (1 + math.cos(math.pi * e / 2)) / 2 for e in (1, 2)])
    assert lrs[1] == pytest.approx(eta_min)


def test_a_rerun_after_a_crash_before_the_first_checkpoint_logs_each_epoch_once(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "log.jsonl").write_text('{"epoch": 1, "train_loss": 9.0}\n{"epoch": 2, "tr')  # crashed mid-line
    model = torch.nn.Linear(2, 2)
    state = engine.run.prepare_run(config=_config(tmp_path), process=_process(), name="run", model=model,
                                   optimizer=torch.optim.SGD(model.parameters(), lr=0.1), job_type="test", identity={})
    assert not (folder / "log.jsonl").exists()
    state.logger.log({"epoch": 1, "train_loss": 1.0})
    engine.checkpoint.save_checkpoint({"epoch": 1, "model": model.state_dict(),
                                       "optimizer": state.optimizer.state_dict(), "identity": {}},
                                      folder / "checkpoint.pth")
    state.logger.log({"epoch": 2, "train_loss": 0.5})  # logged, then the process died before epoch 2's checkpoint
    engine.run.release_run_folder(state)  # as the process's end does
    engine.run.prepare_run(config=_config(tmp_path, resume=True), process=_process(), name="run", model=model,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1), job_type="test", identity={})
    assert [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()] == [
        {"epoch": 1, "train_loss": 1.0}]


def test_gen0_step_rotates_the_batch_and_computes_the_spec_loss():
    torch.manual_seed(0)
    model = create_model("resnet12_ssl", 5, "CIFAR-FS").eval()
    seen = []
    model.layer1.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].clone()))
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 4])
    result = gen0_step(model, gamma=2.0)(x, y)
    assert len(seen) == 1 and torch.equal(seen[0], torch.cat([x, x.transpose(2, 3).flip(2), x.flip(2).flip(3),
                                                              x.flip(2).transpose(2, 3)]))
    with torch.no_grad():
        out = model.forward_all(seen[0])
        expected, _, _ = gen0_loss(out.logits, out.rot_logits, y.repeat(4), torch.arange(4).repeat_interleave(3), 2.0)
    torch.testing.assert_close(result.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert int(result.correct) == int((out.logits[:3].argmax(1) == y).sum())


# ----------------------------------------------------------------------------- model selection on val (--eval_freq)

@pytest.mark.slow  # a minute or more on a 2-core CPU without AVX-512; CI runs it (`-m slow`)
def test_eval_freq_trains_bit_identically_and_never_opens_the_test_split(gen0_run, tmp_path):
    """Per-epoch val evaluation leaves training as it was (gen0_run trained the same 2 epochs without
    it), and a run that does not report never reads the test file."""
    make_cifar_package(tmp_path / "CIFAR-FS")  # the files of cifar_root
    (tmp_path / "CIFAR-FS" / "test.pickle").unlink()
    done = run_script("train_supervised_ssl.py", *GEN0, "--data_root", str(tmp_path), "--model_path",
                      str(tmp_path / "save"), "--epochs", "2", "--eval_freq", "1", "--val_episodes", "3",
                      "--no_final_eval")
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "save" / GEN0_NAME
    with_val, without = _checkpoint(folder), _checkpoint(gen0_run)
    assert with_val["dropblock_calls"] == without["dropblock_calls"] == [6, 6]  # eval forwards do not ramp
    for key, value in without["model"].items():
        torch.testing.assert_close(with_val["model"][key], value, rtol=0, atol=0, msg=key)
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (gen0_run / "log.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in records] == [r["train_loss"] for r in reference]
    for r in records:
        assert r["val_acc"] == pytest.approx((r["val_1shot_acc"] + r["val_5shot_acc"]) / 2)
        assert r["val_1shot_ci95"] >= 0 and r["val_5shot_ci95"] >= 0
    accuracies = [r["val_acc"] for r in records]
    best = torch.load(folder / "best.pth", map_location="cpu", weights_only=True)
    assert best["val_acc"] == max(accuracies) and best["epoch"] == accuracies.index(max(accuracies)) + 1
    assert set(best) == set(with_val) | {"val_acc"}  # the checkpoint format, plus its val accuracy
    assert not (folder / "results.json").exists()


@pytest.mark.slow  # a minute or more on a 2-core CPU without AVX-512; CI runs it (`-m slow`)
def test_best_checkpoint_is_selected_on_val_reported_and_kept_across_resume(cifar_root, tmp_path, monkeypatch):
    import sys

    import train_supervised_ssl

    scripted, seen = iter([30.0, 50.0, 40.0, 45.0]), []  # val_acc of epochs 1-3, then 4 after --resume

    def validation(self, model, device):
        assert not model.training
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        acc = next(scripted)
        return {"val_1shot_acc": acc, "val_1shot_ci95": 1.0, "val_5shot_acc": acc, "val_5shot_ci95": 1.0,
                "val_acc": acc}

    reported = []

    def report(model, *args, **kwargs):
        reported.append({k: v.clone() for k, v in model.state_dict().items()})
        return final_report(model, *args, **kwargs)

    final_report = engine.run.final_report
    monkeypatch.setattr(ValEvaluation, "__call__", validation)
    monkeypatch.setattr(engine.run, "final_report", report)
    common = [*GEN0, "--data_root", str(cifar_root), "--model_path", str(tmp_path), "--eval_freq", "1"]
    monkeypatch.setattr(sys, "argv",
                        ["train_supervised_ssl.py", *common, "--epochs", "3", "--final_checkpoint", "best"])
    train_supervised_ssl.main()
    folder = tmp_path / GEN0_NAME

    def assert_best_is_epoch_2():
        best = torch.load(folder / "best.pth", map_location="cpu", weights_only=True)
        assert best["epoch"] == 2 and best["val_acc"] == 50.0
        for key, value in seen[1].items():
            torch.testing.assert_close(best["model"][key], value, rtol=0, atol=0, msg=key)

    assert_best_is_epoch_2()
    last = _checkpoint(folder)
    assert last["epoch"] == 3 and last["dropblock_calls"] == [9, 9]  # train mode came back after each evaluation
    assert not torch.equal(last["model"]["classifier.weight"], seen[1]["classifier.weight"])
    results = json.loads((folder / "results.json").read_text())
    assert results["checkpoint_choice"] == "best val (epoch 2)" and results["epoch"] == 2
    assert results["checkpoint"] == str(folder / "best.pth")
    assert len(reported) == 1 and all(torch.equal(reported[0][k], v) for k, v in seen[1].items())

    # --resume knows the best so far: epoch 4's 45 does not beat epoch 2's 50
    monkeypatch.setattr(sys, "argv", ["train_supervised_ssl.py", *common, "--epochs", "4", "--resume",
                                      "--no_final_eval"])
    train_supervised_ssl.main()
    assert_best_is_epoch_2()
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["val_acc"]) for r in records] == [(1, 30.0), (2, 50.0), (3, 40.0), (4, 45.0)]


def test_final_checkpoint_best_needs_eval_freq(tmp_path):
    import train_supervised_ssl

    parse = lambda argv: train_supervised_ssl.get_args_parser().parse_args(  # noqa: E731
        ["--dataset", "synthetic", *argv])
    with pytest.raises(util.UsageError, match="--final_checkpoint best: needs --eval_freq"):
        engine.args.training_config(parse(["--device", "cpu", "--final_checkpoint", "best"]))
    with pytest.raises(util.UsageError, match="--eval_freq: expected 0 \\(off\\) or a number of epochs, got -1"):
        engine.args.training_config(parse(["--device", "cpu", "--eval_freq", "-1"]))
    assert parse([]).final_checkpoint == "last" and parse([]).eval_freq == 0  # the paper's protocol by default


def test_rfs_steps_see_plain_images_only():
    torch.manual_seed(0)
    teacher = create_model("resnet12_ssl", 5, "CIFAR-FS").eval().requires_grad_(False)
    student = create_model("resnet12_ssl", 5, "CIFAR-FS").eval()
    seen = []
    student.layer1.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].shape[0]))
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 4])
    plain = plain_step(student)(x, y)
    distilled = rfs_distill_step(student, teacher, 0.5, 0.5, 4.0)(x, y)
    assert seen == [3, 3]  # no rotated copies
    with torch.no_grad():
        torch.testing.assert_close(plain.loss, torch.nn.functional.cross_entropy(student(x), y), rtol=1e-5, atol=1e-6)
        expected, _, _ = rfs_distill_loss(student(x), teacher(x), y, 0.5, 0.5, 4.0)
    torch.testing.assert_close(distilled.loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert set(distilled.metrics) == {"ce", "kd"} and set(plain.metrics) == {"ce"}


def test_grad_scaler_state_is_checkpointed_and_restored_by_resume(tmp_path):
    """fp16's loss scale continues across --resume instead of re-warming from 65536 (the scaler's
    bookkeeping is device-independent, so this runs on CPU; the fp16 steps themselves need CUDA)."""
    model = torch.nn.Linear(2, 2)
    config = _config(tmp_path, epochs=1)
    state = engine.run.prepare_run(config=config, process=_process("fp16"), name="run", model=model, job_type="test",
                                   identity={}, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert state.scaler.is_enabled() and state.scaler.get_scale() == 65536.0
    state.scaler.scale(torch.ones(()))
    state.scaler.update(new_scale=512.0)  # as after a few overflowing fp16 steps
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2), torch.zeros(4)),
                                         batch_size=2, generator=torch.Generator())

    def step(x, y):
        return engine.loop.StepResult(model(x).pow(2).mean(), {}, None, len(x))

    # fp16 autocast needs CUDA: the loop runs with amp off; the scaler made for fp16 stays on, as it would there
    engine.loop.fit(state=state, make_step=lambda: step, loader=loader, schedule=config.schedule, loop=config.loop,
                    device=torch.device("cpu"))
    assert _checkpoint(tmp_path / "run")["scaler"]["scale"] == 512.0
    engine.run.release_run_folder(state)  # the run stops here (the script's finish_training gives the lock back)
    model = torch.nn.Linear(2, 2)
    resumed = engine.run.prepare_run(config=_config(tmp_path, epochs=2, resume=True), process=_process("fp16"),
                                     name="run", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                     job_type="test", identity={})
    assert resumed.start_epoch == 2 and resumed.scaler.get_scale() == 512.0
    # fp32 and bf16 runs keep an empty scaler state: nothing to restore.
    fresh = engine.run.prepare_run(config=_config(tmp_path / "b"), process=_process(), name="run", model=model,
                                   job_type="test", identity={}, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert fresh.scaler.state_dict() == {}


def test_wandb_online_failure_falls_back_to_offline_in_one_line(tmp_path, monkeypatch, capsys):
    wandb = pytest.importorskip("wandb")  # optional: the scripts run without it

    real_init = wandb.init

    def no_network(**kwargs):
        if kwargs["mode"] == "online":
            raise ConnectionError("api.wandb.ai unreachable")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", no_network)
    logger = engine.run.training_logger(tmp_path, _config(tmp_path, wandb="online"), _process(), "run", "gen0")
    assert logger.wandb_run is not None and logger.wandb_run.settings.mode == "offline"
    logger.finish()
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"W&B: online failed (ConnectionError: api.wandb.ai unreachable); fell back to offline in "
                    f"{tmp_path / 'wandb'}; upload later with: wandb sync {tmp_path / 'wandb'}/offline-run-*")


def test_wandb_failing_mid_run_costs_one_line_and_no_epoch(tmp_path, capsys):
    logger = engine.run.training_logger(tmp_path, _config(tmp_path, wandb="offline"), _process(), "run", "gen0")
    run_id, calls = logger.wandb_id, []

    def broken(metrics):
        calls.append(metrics)
        raise ConnectionResetError("service died")

    logger.wandb_run.log = broken
    for epoch in (1, 2, 3):
        logger.log({"epoch": epoch})
    logger.finish()
    assert len(calls) == 1  # no retries after the first failure
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("W&B: stopped logging after an error (ConnectionResetError: service died)")
    assert [json.loads(x)["epoch"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert logger.wandb_id == run_id  # still recorded in checkpoints, so --resume continues the same W&B run


def test_the_student_takes_the_teachers_architecture():
    import train_distillation

    parse = lambda *argv: train_distillation.get_args_parser().parse_args(  # noqa: E731
        ["--path_t", "t.pth", "--dataset", "synthetic", *argv])
    args = parse()
    train_distillation.resolve_architectures(args, TEST_MODEL)  # what the teacher's checkpoint records
    assert args.model_t == args.model_s == TEST_MODEL
    args = parse("--model_t", "resnet12_ssl")  # given: the flag wins over the checkpoint
    train_distillation.resolve_architectures(args, TEST_MODEL)
    assert args.model_t == args.model_s == "resnet12_ssl"
    other = parse("--model_s", "convnet4")
    train_distillation.resolve_architectures(other, TEST_MODEL)
    with pytest.raises(util.UsageError, match=f"^--model_s convnet4: the SKD Gen-1 student is a copy of the teacher, "
                                              f"so it must be the teacher's architecture, {TEST_MODEL}; --objective "
                                              f"rfs or sskd trains a fresh student of another architecture$"):
        train_distillation.check_student_architecture(other, methods.get_method("skd_gen1"))
    for fresh in ("rfs_distill", "sskd"):  # a fresh student of any architecture: accepted
        train_distillation.check_student_architecture(other, methods.get_method(fresh))


def test_a_short_gen0_run_learns(tmp_path):
    """Two epochs of Gen-0 on the built-in synthetic data (400 images of 10 classes, 16 px, batch 32) must
    learn. Epoch 1's train_acc is prequential: each image is classified before the network has trained
    on it, so it measures generalisation to unseen images of the training classes. Chance is 10%, and at
    chance the accuracy over epoch 1's 384 images has a standard deviation of 1.5 points: 20% is more than
    6 deviations above it (this run reaches about 29%, and 48% in epoch 2, when a network that does not
    learn stays at 10%)."""
    done = run_script("tests/sigterm_at_step.py", "0", "train_supervised_ssl.py", "--dataset", "synthetic",
                      "--model", TEST_MODEL, "--image_size", "16", "--batch_size", "32", "--num_workers", "0",
                      "--device", "cpu", "--amp", "off", "--epochs", "2", "--lr_decay_epochs", "10", "--no_final_eval",
                      "--model_path", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    [folder] = tmp_path.iterdir()
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert records[0]["train_acc"] >= 20.0
    assert records[1]["train_acc"] >= records[0]["train_acc"] + 10.0
    assert records[1]["train_ce"] < records[0]["train_ce"]


class _Artifact:
    """A stand-in of a W&B artifact as wandb.Api().artifact() returns it: its files, digest and manifest check."""

    downloads = 0

    def __init__(self, files: dict[str, bytes], digest: str = "d1", corrupt: bool = False) -> None:
        self.files, self.digest, self.corrupt = files, digest, corrupt
        self.qualified_name = "lab/skd/model-teacher_run:v3"

    def download(self, root: str) -> str:
        _Artifact.downloads += 1
        for name, content in self.files.items():
            (Path(root) / name).write_bytes(content if not self.corrupt else content[:-1])
        return root

    def verify(self, root: str) -> None:
        for name, content in self.files.items():
            if (Path(root) / name).read_bytes() != content:
                raise ValueError(f"digest mismatch for {name}")


def test_an_artifact_reference_is_fetched_once_verified_and_refused_when_it_does_not_match(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from engine.trained import checkpoint_file
    import util
    from runtime.logger import recorded_artifact

    monkeypatch.setenv("SKD_ARTIFACT_CACHE", str(tmp_path / "cache"))
    artifact = _Artifact({"checkpoint.pth": b"weights"})
    asked = []

    class Api:
        def artifact(self, name, type):
            asked.append((name, type))
            return artifact

    monkeypatch.setattr(wandb, "Api", Api)
    _Artifact.downloads = 0
    first = checkpoint_file("lab/skd/model-teacher_run:best", "--path_t")
    again = checkpoint_file("lab/skd/model-teacher_run:best", "--path_t")
    assert first == again == tmp_path / "cache" / "d1" / "checkpoint.pth" and first.read_bytes() == b"weights"
    assert _Artifact.downloads == 1 and asked == [("lab/skd/model-teacher_run:best", "model")] * 2
    assert recorded_artifact(first) == "lab/skd/model-teacher_run:v3"  # a student's run declares it as its input
    artifact = _Artifact({"checkpoint.pth": b"weights"}, digest="d2", corrupt=True)
    with pytest.raises(util.UsageError, match=r"^--model_path lab/skd/model-x:latest: the download does not match "
                                              r"the artifact's manifest \(digest mismatch"):
        checkpoint_file("lab/skd/model-x:latest")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["d1"]  # nothing half-written kept

    def refuse(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(Api, "artifact", refuse)
    with pytest.raises(util.UsageError, match="W&B cannot give this artifact \\(no network\\); `wandb login`"):
        checkpoint_file("model-y:latest", "--path_t")


def test_a_resumed_run_continues_its_wandb_run_on_the_same_epoch_axis_without_repeating_an_epoch(
        tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    runs = []

    def init(**kwargs):
        runs.append(_RecordingRun(**kwargs))
        runs[-1].id = kwargs.get("id") or f"run{len(runs)}"
        return runs[-1]

    monkeypatch.setattr(wandb, "init", init)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2), torch.zeros(4).long()),
                                         batch_size=2, generator=torch.Generator())

    def train(epochs: int, resume: bool) -> None:
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 2)
        config = _config(tmp_path, epochs=epochs, resume=resume, wandb="offline")
        state = engine.run.prepare_run(config=config, process=_process(), name="run", model=model, job_type="test",
                                       optimizer=torch.optim.SGD(model.parameters(), lr=0.1), identity={})

        def step(x, y):
            return engine.loop.StepResult(torch.nn.functional.cross_entropy(model(x), y), {}, None, len(x))

        try:
            engine.loop.fit(state=state, make_step=lambda: step, loader=loader, schedule=config.schedule,
                            loop=config.loop, device=torch.device("cpu"))
        finally:
            state.logger.finish()
            engine.run.release_run_folder(state)

    train(2, resume=False)
    train(4, resume=True)  # the same run, given more epochs
    first, resumed = runs
    assert resumed.init["id"] == first.id and resumed.init["resume"] == "allow"
    assert [r["epoch"] for r in first.logged + resumed.logged] == [1, 2, 3, 4]
    assert ("epoch", {}) in resumed.defined and ("train_loss", {"step_metric": "epoch", "summary": "min"}) \
        in resumed.defined  # the axis and summaries are declared again for the continued run
