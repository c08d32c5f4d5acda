"""scripts/reproduce.py --dry_run: the commands of each table carry exactly the published settings (read
back from the printed commands, checked against values written here from the papers and releases), in
dependency order."""
from __future__ import annotations

import json
import os
import runpy
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import models
from conftest import REPO

OUT = "runs_out"  # --output; a dry run writes nothing there

# The SKD paper and release (Gen-0) and its run script (Gen-1; tieredImageNet: FC100's, our choice).
GEN0 = {"CIFAR-FS": ("65", "60"), "FC100": ("65", "60"), "miniImageNet": ("65", "60"),
        "tieredImageNet": ("60", "30,40,50")}
GEN1 = {"CIFAR-FS": ("65", "60", ["0.1"]), "FC100": ("8", "3", ["0.2"]),
        "miniImageNet": ("8", "5", ["0.025", "0.05", "0.075"]), "tieredImageNet": ("8", "3", ["0.2"])}
# The RFS rows: an RFS author's per-dataset recipes (github.com/WangYueFt/rfs/issues/5); miniImageNet the release's
# defaults.
RFS = {"CIFAR-FS": ("90", "45,60,75"), "FC100": ("90", "45,60,75"), "miniImageNet": ("100", "60,80"),
       "tieredImageNet": ("60", "30,40,50")}
LETTER = {"CIFAR-FS": "D", "FC100": "D", "miniImageNet": "A", "tieredImageNet": "A"}
# Every training command, the release's DropBlock mask included: what produced the paper's numbers.
COMMON = {"--lr_decay_rate": "0.1", "--batch_size": "64", "--weight_decay": "0.0005", "--momentum": "0.9",
          "--no_final_eval": True, "--dropblock_mask": "release"}

ARGS = ["--data_root", "DATA", "--output", OUT, "--wandb_group", "g", "--dry_run"]


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def reproduce(monkeypatch, capsys):
    """Run scripts/reproduce.py as __main__ from the repository root, in this process: a fresh interpreter
    spends about 5 s importing torch, torchvision and scipy, here paid once for every test."""
    def run(*argv: str) -> Done:
        monkeypatch.chdir(REPO)
        monkeypatch.setattr(sys, "argv", ["scripts/reproduce.py", *argv])
        code = 0
        try:
            runpy.run_path(str(REPO / "scripts" / "reproduce.py"), run_name="__main__")
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return Done(code, out, err)
    return run


def commands(stdout: str) -> list[list[str]]:
    """The printed commands (comment lines skipped), each split as the shell would."""
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def flags(command: list[str]) -> dict[str, str | bool]:
    """--flag value pairs (bare flags: True), the last occurrence winning as in argparse."""
    out: dict[str, str | bool] = {}
    for i, token in enumerate(command):
        if token.startswith("--"):
            nxt = command[i + 1] if i + 1 < len(command) else None
            out[token] = nxt if nxt is not None and not nxt.startswith("--") else True
    return out


def script_runs(cmds: list[list[str]], script: str) -> list[tuple[int, dict]]:
    """(position, flags) of every command running `script`."""
    return [(i, flags(c)) for i, c in enumerate(cmds) if Path(c[1]).name == script]


def script_folder(command: list[str]) -> str:
    """The run-folder name a training command writes, as its script names it."""
    f = flags(command)
    letter = LETTER[f["--dataset"]]
    if f.get("--objective") == "rfs":
        return (f"S_resnet12_ssl_T_resnet12_ssl_{f['--dataset']}_rfs_r_{f['--ce_weight']}_a_{f['--kd_weight']}"
                f"_kd_T_{f['--kd_T']}_trans_{letter}_trial_{f['--trial']}")
    if "--path_t" in f:
        quirks = "_quirks" if f.get("--official_quirks") else ""
        return (f"S_resnet12_ssl_T_resnet12_ssl_{f['--dataset']}_kd_T_{f['--kd_T']}_beta_{f['--gamma']}"
                f"{quirks}_trans_{letter}_trial_{f['--trial']}")
    plain = "_plain" if f.get("--objective") == "rfs_simple" else ""
    return (f"resnet12_ssl_{f['--dataset']}_lr_{f['--learning_rate']}_decay_{f['--weight_decay']}"
            f"_trans_{letter}{plain}_trial_{f['--trial']}")


def assert_every_run_is_evaluated_after_training(cmds: list[list[str]], training: list[tuple[int, dict]],
                                                 evals: list[tuple[int, dict]], gen1_swept: bool) -> None:
    """Every run is evaluated after it is trained, on test 1- and 5-shot; a swept run (a Gen-1 run when the
    dataset sweeps beta) on val only (which decides: the test evaluation of its choice is not a command yet)."""
    evaluated = {}
    for pos, f in evals:
        evaluated.setdefault(f["--model_path"], []).append((pos, (f["--split"], f["--n_shots"])))
        folder = Path(f["--model_path"]).parent
        assert f["--output"] == str(folder / f"results_{f['--split']}_{f['--n_shots']}shot.json")
        assert (f["--n_test_runs"], f["--n_ways"], f["--n_queries"], f["--n_aug_support_samples"],
                f["--classifier"]) == ("600", "5", "15", "5", "LR")
    trained = [(pos, f, f"{OUT}/{script_folder(cmds[pos])}/checkpoint.pth") for pos, f in training]
    assert set(evaluated) == {ckpt for _, _, ckpt in trained}
    for pos, f, ckpt in trained:
        splits = ("val",) if gen1_swept and "--path_t" in f and f.get("--objective") == "skd" else ("test",)
        assert sorted(what for _, what in evaluated[ckpt]) == sorted((s, k) for s in splits for k in ("1", "5"))
        assert all(eval_pos > pos for eval_pos, _ in evaluated[ckpt])


@pytest.mark.parametrize("dataset", list(GEN0))
def test_dry_run_lists_the_published_settings(reproduce, dataset):
    result = reproduce("--dataset", dataset, *ARGS)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert all(c[0] == sys.executable for c in cmds)
    supervised = script_runs(cmds, "train_supervised_ssl.py")
    distilled = script_runs(cmds, "train_distillation.py")
    gen0 = [(pos, f) for pos, f in supervised if f["--objective"] == "skd"]
    rfs_simple = [(pos, f) for pos, f in supervised if f["--objective"] == "rfs_simple"]
    gen1 = [(pos, f) for pos, f in distilled if f["--objective"] == "skd"]
    rfs_distill = [(pos, f) for pos, f in distilled if f["--objective"] == "rfs"]
    evals = script_runs(cmds, "eval_fewshot.py")

    # RFS rows (the RFS recipe of each dataset): RFS-simple, then RFS-distill from it.
    rfs_epochs, rfs_decay = RFS[dataset]
    simple_checkpoints = {}
    for pos, f in rfs_simple:
        assert f == {"--objective": "rfs_simple", "--dataset": dataset, "--data_root": "DATA", "--epochs": rfs_epochs,
                     "--lr_decay_epochs": rfs_decay, "--learning_rate": "0.05", **COMMON, "--model_path": OUT,
                     "--seed": f["--seed"], "--trial": f["--seed"], "--wandb_group": "g"}
        simple_checkpoints[f["--seed"]] = (pos, f"{OUT}/{script_folder(cmds[pos])}/checkpoint.pth")
    assert sorted(simple_checkpoints) == ["0", "1", "2"]
    for pos, f in rfs_distill:
        teacher_pos, teacher = simple_checkpoints[f["--seed"]]
        assert teacher_pos < pos
        assert f == {"--objective": "rfs", "--dataset": dataset, "--data_root": "DATA", "--epochs": rfs_epochs,
                     "--lr_decay_epochs": rfs_decay, "--learning_rate": "0.05", **COMMON, "--ce_weight": "0.5",
                     "--kd_weight": "0.5", "--kd_T": "4.0", "--path_t": teacher, "--model_path": OUT,
                     "--seed": f["--seed"], "--trial": f["--seed"], "--wandb_group": "g"}
    assert len(rfs_distill) == 3

    epochs, decay = GEN0[dataset]
    assert [f["--seed"] for _, f in gen0] == ["0", "1", "2"]
    checkpoints = {}
    for pos, f in gen0:
        assert f == {"--objective": "skd", "--dataset": dataset, "--data_root": "DATA", "--epochs": epochs,
                     "--lr_decay_epochs": decay, "--learning_rate": "0.05", "--gamma": "2.0", **COMMON,
                     "--model_path": OUT, "--seed": f["--seed"], "--trial": f["--seed"], "--wandb_group": "g"}
        run = f"{OUT}/resnet12_ssl_{dataset}_lr_0.05_decay_0.0005_trans_{LETTER[dataset]}_trial_{f['--seed']}"
        checkpoints[f["--seed"]] = (pos, f"{run}/checkpoint.pth")

    epochs, decay, betas = GEN1[dataset]
    assert sorted((f["--seed"], f["--gamma"]) for _, f in gen1) == sorted((s, b) for s in "012" for b in betas)
    for pos, f in gen1:
        teacher_pos, teacher = checkpoints[f["--seed"]]
        assert f["--path_t"] == teacher and teacher_pos < pos  # its own seed's Gen-0, trained before it
        assert f == {"--objective": "skd", "--dataset": dataset, "--data_root": "DATA", "--epochs": epochs,
                     "--lr_decay_epochs": decay, "--learning_rate": "0.001", "--gamma": f["--gamma"], "--kd_T": "2.0",
                     **COMMON, "--official_quirks": True,
                     "--path_t": teacher, "--model_path": OUT, "--seed": f["--seed"], "--trial": f["--seed"],
                     "--wandb_group": "g"}

    assert_every_run_is_evaluated_after_training(cmds, supervised + distilled, evals,
                                                 gen1_swept=len(betas) > 1)

    assert result.stdout.count(f": {rfs_epochs} epochs x ") == 6 + 3 * (dataset == "tieredImageNet")  # RFS rows
    assert "github.com/WangYueFt/rfs/issues/5" in result.stdout or dataset == "miniImageNet"  # the recipe's source


def test_dry_run_counts_the_images_each_run_processes(reproduce):
    lines = [line for dataset in ("CIFAR-FS", "tieredImageNet")
             for line in reproduce("--dataset", dataset, *ARGS).stdout.splitlines()]
    assert "# skd_gen0 seed 0: 65 epochs x 38,400 images = 2,496,000 images, x4 rotations = 9,984,000 forwarded" \
        in lines
    assert "# skd_gen1 seed 0: 65 epochs x 38,400 images = 2,496,000 images" in lines
    # 448,695 tieredImageNet train images; the last incomplete batch of 64 is dropped.
    assert "# skd_gen0 seed 2: 60 epochs x 448,640 images = 26,918,400 images, x4 rotations = 107,673,600 forwarded" \
        in lines


def test_unknown_dataset_stops_with_one_line():
    # A fresh interpreter, as a user runs it: the exit status and the one line on stderr are the CLI's contract.
    result = subprocess.run([sys.executable, "scripts/reproduce.py", "--dataset", "Omniglot", *ARGS], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"}, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: --dataset Omniglot: no published settings; known: CIFAR-FS, FC100, miniImageNet, tieredImageNet, "
        "and folder (small-scale settings)"]


def test_passthrough_flags_override_every_training_command(reproduce):
    result = reproduce("--dataset", "CIFAR-FS", "--seeds", "0", "--methods", "skd_gen0,skd_gen1", *ARGS,
                       "--", "--epochs", "1")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    training = [c for c in cmds if Path(c[1]).name != "eval_fewshot.py"]
    assert len(training) == 2
    for command in training:
        assert command[-2:] == ["--epochs", "1"] and flags(command)["--epochs"] == "1"
    assert all("--epochs" not in c for c in cmds if Path(c[1]).name == "eval_fewshot.py")
    assert "# skd_gen0 seed 0: 1 epochs x 38,400 images = 38,400 images, x4 rotations = 153,600 forwarded" \
        in result.stdout.splitlines()


def test_a_flag_goes_only_to_the_scripts_that_accept_it(reproduce):
    result = reproduce("--dataset", "CIFAR-FS", "--seeds", "0", "--methods", "dvp_prior,dvp", *ARGS,
                       "--", "--dvp_margin", "0", "--epochs=2", "--dvp_weight", "0.5")
    assert result.returncode == 0, result.stderr
    training = [c for c in commands(result.stdout) if Path(c[1]).name != "eval_fewshot.py"]
    assert [Path(c[1]).name for c in training] == ["train_supervised_ssl.py", "train_distillation.py"]
    prior, student = training
    assert prior[-3:] == ["--dvp_margin", "0", "--epochs=2"] and "--dvp_weight" not in prior
    assert student[-3:] == ["--epochs=2", "--dvp_weight", "0.5"] and "--dvp_margin" not in student
    # The prior's run folder, and so the student's teacher, follow the margin it was given.
    assert "_dvp_margin_0.0_" in flags(student)["--path_t"]


@pytest.mark.parametrize("argv, message", [
    (["--data_root", "DATA"], "DATA: --data_root folder not found"),
    ([*ARGS, "--no_such_flag", "3"], "--no_such_flag 3: no training script of the plan accepts it "
                                     "(train_distillation.py, train_supervised_ssl.py)"),
    # Gen-1's flag with Gen-0 alone in the plan.
    ([*ARGS, "--methods", "skd_gen0", "--official_quirks"], "--official_quirks: no training script of the plan "
                                                            "accepts it (train_supervised_ssl.py)"),
    # Not taken for an abbreviation of --seeds: it passes through, and the plan refuses it.
    ([*ARGS, "--seed", "3"], "--seed 3: changes --seed, which the plan sets; use this script's --dataset, "
                             "--data_root, --seeds and --output"),
])
def test_refusals_take_one_line(reproduce, argv, message):
    result = reproduce("--dataset", "FC100", *argv)
    assert (result.returncode, result.stdout, result.stderr.splitlines()) == (2, "", [f"error: {message}"])


class _FakeStages:
    """Stands in for the training and evaluation subprocesses: records each command and writes what the real
    script would leave behind (a checkpoint holding all its epochs, or a results file)."""

    def __init__(self, monkeypatch, stop_after: int | None = None, sigterm: bool = False):
        self.commands: list[list[str]] = []
        self.stop_after = stop_after  # epochs the next training run reaches before it is "killed"
        self.sigterm = sigterm  # that kill is a SIGTERM to the whole job (SLURM's), the plan's process included
        self.environments: list[dict] = []  # each stage's environment (its pinned GPUs, its CPU share)
        monkeypatch.setattr(subprocess, "Popen", self.popen)

    def popen(self, command, *a, env=None, **k):
        self.environments.append(env or {})
        return _Ended(self.stage(command))

    def stage(self, command):
        import torch

        import train_distillation
        import train_supervised_ssl
        from published.profiles import dataset_profile

        self.commands.append(command)
        f = flags(command)
        if Path(command[1]).name == "eval_fewshot.py":
            Path(f["--output"]).write_text('{"results": [{"mean": %d}]}' % len(self.commands))
            return subprocess.CompletedProcess(command, 0)
        module = train_distillation if "distillation" in command[1] else train_supervised_ssl
        parsed = module.get_args_parser().parse_args(command[2:])
        if module is train_distillation:
            train_distillation.read_teacher(parsed)  # the architecture, from the teacher's checkpoint
        folder = Path(parsed.model_path) / module.run_name(parsed, dataset_profile(parsed.dataset, 8))
        folder.mkdir(parents=True, exist_ok=True)
        epochs, code = parsed.epochs, 0
        if self.stop_after is not None:
            epochs, code, self.stop_after = self.stop_after, 1, None
            if self.sigterm:  # the stage checkpoints and exits 143; the plan must outlive the signal
                os.kill(os.getpid(), signal.SIGTERM)
                code = 143
        architecture = models.architecture_of(vars(parsed))
        recorded = {"model": architecture, "dropblock_mask": parsed.dropblock_mask,
                    "official_quirks": getattr(parsed, "official_quirks", False)}
        torch.save({"epoch": epochs, "model": {}, "args": recorded}, folder / "checkpoint.pth")
        return subprocess.CompletedProcess(command, code)


class _Ended:
    """A stage process that has already ended, as the scheduler sees it."""

    def __init__(self, done: subprocess.CompletedProcess):
        self.returncode = done.returncode

    def poll(self) -> int:
        return self.returncode

    def wait(self) -> int:
        return self.returncode


def _tiny_folder(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "val", "test"):
        for c in range(2):
            (root / split / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (8, 8), (40 * c, 0, 0)).save(root / split / f"c{c}" / "0.png")
    return root


def test_a_second_invocation_skips_finished_runs_and_resumes_the_interrupted_one(reproduce, monkeypatch, tmp_path):
    data = _tiny_folder(tmp_path / "data")
    argv = ["--dataset", "folder", "--data_root", str(data), "--output", str(tmp_path / "out"), "--seeds", "0",
            "--wandb_group", "g"]
    stages = _FakeStages(monkeypatch, stop_after=3)  # RFS-simple is interrupted after epoch 3 of 10
    first = reproduce(*argv)
    assert first.returncode == 2 and "exited with code 1; finished runs are kept" in first.stderr
    # Only what needs RFS-simple waits (its evaluations, RFS-distill and its evaluations); SKD runs on.
    assert "(5 stage(s) that need it not run)" in first.stderr
    assert "--resume" not in stages.commands[0] and "rfs_simple" in stages.commands[0]
    assert all("rfs" not in " ".join(c) for c in stages.commands[1:]) and len(stages.commands) == 1 + 2 * 3

    stages.commands.clear()
    second = reproduce(*argv)
    assert second.returncode == 0, second.stderr
    trained = [c for c in stages.commands if Path(c[1]).name != "eval_fewshot.py"]
    assert [Path(c[1]).name for c in trained] == ["train_supervised_ssl.py", "train_distillation.py"]
    assert trained[0][-1] == "--resume" and "rfs_simple" in trained[0] and "--resume" not in trained[1]
    assert sum(Path(c[1]).name == "eval_fewshot.py" for c in stages.commands) == 4  # RFS rows x test 1, 5-shot

    stages.commands.clear()
    third = reproduce(*argv)  # everything is finished: the teachers are never trained again, nothing re-evaluated
    assert third.returncode == 0 and stages.commands == []
    assert third.stdout.count(": done (") == 4


def test_sigterm_to_the_job_stops_the_plan_after_its_stage_and_the_same_command_resumes(reproduce, monkeypatch,
                                                                                       tmp_path):
    data = _tiny_folder(tmp_path / "data")
    argv = ["--dataset", "folder", "--data_root", str(data), "--output", str(tmp_path / "out"), "--seeds", "0",
            "--wandb_group", "g", "--methods", "rfs_simple"]
    stages = _FakeStages(monkeypatch, stop_after=3, sigterm=True)
    first = reproduce(*argv)
    assert first.returncode == 143
    assert first.stderr.splitlines()[-1].startswith("stopped: SIGTERM during rfs_simple seed 0 "
                                                   "(train_supervised_ssl.py exited with code 143)")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the plan's handler is gone with the stage
    stages.commands.clear()
    second = reproduce(*argv)
    assert second.returncode == 0, second.stderr
    assert stages.commands[0][-1] == "--resume"


LIVE_STAGE = """
import os, signal, sys, time
template, target, pid_file = sys.argv[1:4]
stopped = []
signal.signal(signal.SIGTERM, lambda *a: stopped.append(1))
open(pid_file, "w").write(str(os.getpid()))
deadline = time.time() + 60
while not stopped and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.5)  # finishing its step, then writing its checkpoint
os.replace(template, target)
sys.exit(143 if stopped else 0)
"""


class _LiveStage(_FakeStages):
    """The training stage as a live process: it runs until SIGTERM, takes 0.5 s to finish its step and
    only then writes its checkpoint (what _FakeStages would write, held back until then) and exits 143."""

    def __init__(self, monkeypatch, tmp_path: Path):
        self.real_popen = subprocess.Popen
        super().__init__(monkeypatch, stop_after=3)
        self.pid_file = tmp_path / "stage.pid"
        self.checkpoint: Path | None = None
        self.process: subprocess.Popen | None = None

    def popen(self, command, *a, env=None, **k):
        self.stage(command)
        [self.checkpoint] = Path(flags(command)["--model_path"]).rglob("checkpoint.pth")
        template = self.checkpoint.with_name("held_back.pth")
        self.checkpoint.rename(template)
        self.process = self.real_popen([sys.executable, "-c", LIVE_STAGE, str(template), str(self.checkpoint),
                                        str(self.pid_file)])
        return self.process


def test_sigterm_waits_for_the_live_stage_to_checkpoint_then_the_same_command_resumes(reproduce, monkeypatch,
                                                                                    tmp_path):
    """SLURM's SIGTERM reaches the plan (this process) and its running stage, a real child process: the plan
    waits for that stage's exit, after its checkpoint is written, exits 143 itself, and the same command
    then resumes the stage."""
    data = _tiny_folder(tmp_path / "data")
    argv = ["--dataset", "folder", "--data_root", str(data), "--output", str(tmp_path / "out"), "--seeds", "0",
            "--wandb_group", "g", "--methods", "rfs_simple"]
    stages = _LiveStage(monkeypatch, tmp_path)

    def signal_the_job() -> None:
        deadline = time.time() + 60
        while not stages.pid_file.is_file() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        os.kill(int(stages.pid_file.read_text()), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_the_job, daemon=True).start()
    first = reproduce(*argv)
    assert stages.process.poll() == 143  # the plan returned after its stage had exited
    assert stages.checkpoint.is_file()  # ... and so after the stage's checkpoint was on disk
    assert first.returncode == 143
    assert first.stderr.splitlines()[-1].startswith("stopped: SIGTERM during rfs_simple seed 0 "
                                                   "(train_supervised_ssl.py exited with code 143)")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    stages = _FakeStages(monkeypatch)
    second = reproduce(*argv)
    assert second.returncode == 0, second.stderr
    assert stages.commands[0][-1] == "--resume"


def test_a_sweep_is_decided_on_val_and_only_its_winner_sees_test(reproduce, monkeypatch, tmp_path):
    data = tmp_path / "miniImageNet"
    data.mkdir()
    for split in ("train_phase_train", "val", "test"):  # what the plan checks for before training
        name = "miniImageNet_category_split_" + split + ".pickle"
        (data / name).touch()
    stages = _FakeStages(monkeypatch)  # each evaluation's mean is its position in the run: later = better
    done = reproduce("--dataset", "miniImageNet", "--data_root", str(tmp_path), "--output", str(tmp_path / "out"),
                     "--seeds", "0", "--methods", "skd_gen1", "--wandb_group", "g")
    assert done.returncode == 0, done.stderr
    evals = [flags(c) for c in stages.commands if Path(c[1]).name == "eval_fewshot.py"]
    assert [(f["--split"], f["--n_shots"]) for f in evals] == [("val", "1"), ("val", "5")] * 3 + [
        ("test", "1"), ("test", "5")]
    record = json.loads((tmp_path / "out" / "selections" / "skd_gen1_seed_0_gen1.json").read_text())
    assert [c["configuration"] for c in record["candidates"]] == [{"beta": b} for b in ("0.025", "0.05", "0.075")]
    winner = record["chosen"]["1"]
    assert record["chosen"]["5"] == record["teacher"] == winner and "beta_0.075" in winner
    assert all(f["--model_path"] == winner for f in evals[-2:])
    link = tmp_path / "out" / "selections" / "skd_gen1_seed_0_gen1" / "checkpoint.pth"
    assert link.resolve() == Path(winner).resolve()  # what a next generation would name as its --path_t
    trained = [c for c in stages.commands if Path(c[1]).name != "eval_fewshot.py"]
    assert len(trained) == 4  # the Gen-0 teacher (not evaluated: not asked for), then three betas


def test_nproc_per_node_launches_training_with_torchrun(reproduce):
    result = reproduce("--dataset", "CIFAR-FS", "--seeds", "0", "--methods", "skd_gen0,skd_gen1", "--nproc_per_node",
                       "4", *ARGS)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    training = [c for c in cmds if "torch.distributed.run" in c]
    assert len(training) == 2
    for command in training:
        assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
        assert Path(command[5]).name in ("train_supervised_ssl.py", "train_distillation.py")
        assert flags(command)["--batch_size"] == "64"  # the global batch, as published
    evaluations = [c for c in cmds if Path(c[1]).name == "eval_fewshot.py"]
    assert len(evaluations) == 4 and len(training) + len(evaluations) == len(cmds)


def test_sskd_is_a_method_of_the_plan_after_its_teacher(reproduce):
    result = reproduce("--dataset", "CIFAR-FS", "--seeds", "0", "--methods", "sskd", *ARGS)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    gen0 = [c for c in cmds if Path(c[1]).name == "train_supervised_ssl.py"]
    sskd = [c for c in cmds if flags(c).get("--objective") == "sskd"]
    assert len(gen0) == 1 and len(sskd) == 1 and cmds.index(gen0[0]) < cmds.index(sskd[0])
    f = flags(sskd[0])
    assert {k: f[k] for k in ("--sskd_ce", "--sskd_kd", "--sskd_tf", "--sskd_ss", "--sskd_ss_T", "--sskd_ss_ratio")} \
        == {"--sskd_ce": "0.1", "--sskd_kd": "0.9", "--sskd_tf": "2.7", "--sskd_ss": "10.0", "--sskd_ss_T": "0.5",
            "--sskd_ss_ratio": "0.75"}
    assert f["--path_t"].endswith("resnet12_ssl_CIFAR-FS_lr_0.05_decay_0.0005_trans_D_trial_0/checkpoint.pth")
    assert len([c for c in cmds if Path(c[1]).name == "eval_fewshot.py"]) == 2  # the teacher is not a row here
    default = reproduce("--dataset", "CIFAR-FS", "--seeds", "0", *ARGS)
    assert all(flags(c).get("--objective") != "sskd" for c in commands(default.stdout))  # the paper's rows only


def test_dvp_runs_its_prior_first_and_distils_from_it(reproduce):
    result = reproduce("--dataset", "miniImageNet", "--seeds", "0", "--methods", "dvp", *ARGS)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    prior = [c for c in cmds if Path(c[1]).name == "train_supervised_ssl.py"]
    student = [c for c in cmds if Path(c[1]).name == "train_distillation.py"]
    assert len(prior) == 1 and len(student) == 1 and cmds.index(prior[0]) < cmds.index(student[0])
    p, s = flags(prior[0]), flags(student[0])
    # Phase 1 with the DVP release's MoCo settings, phase 2 with its distillation weight and warm-up.
    assert {k: p[k] for k in ("--objective", "--dvp_margin", "--dvp_temperature", "--dvp_momentum", "--dvp_dim",
                              "--learning_rate", "--batch_size", "--weight_decay", "--epochs", "--lr_decay_epochs")} \
        == {"--objective": "dvp", "--dvp_margin": "0.4", "--dvp_temperature": "0.07", "--dvp_momentum": "0.999",
            "--dvp_dim": "128", "--learning_rate": "0.03", "--batch_size": "256", "--weight_decay": "0.0001",
            "--epochs": "200", "--lr_decay_epochs": "120,160"}
    assert int(p["--dvp_queue"]) < 38400  # fewer keys than training images
    assert (s["--objective"], s["--dvp_weight"], s["--dvp_no_distill_epochs"]) == ("dvp", "0.0001", "4")
    assert s["--path_t"].endswith("_dvp_margin_0.4_K_4096_m_0.999_T_0.07_trial_0/checkpoint.pth")
    assert "x2 views = " in result.stdout
    assert len([c for c in cmds if Path(c[1]).name == "eval_fewshot.py"]) == 2  # the prior is not a row here


def test_a_student_is_planned_with_its_teachers_architecture(reproduce):
    """`--model` goes to the Gen-0 script only; the Gen-1 script takes the teacher's architecture from its
    checkpoint, and the plan names the student's run folder (and so its evaluations) the same way."""
    result = reproduce("--dataset", "CIFAR-FS", "--seeds", "0", "--methods", "skd_gen1", *ARGS, "--",
                       "--model", "resnet12_ssl_narrow")
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    student = next(c for c in cmds if Path(c[1]).name == "train_distillation.py")
    assert "--model" not in student and "resnet12_ssl_narrow_CIFAR-FS_lr_0.05" in flags(student)["--path_t"]
    [evaluation] = [c for c in cmds if Path(c[1]).name == "eval_fewshot.py"][-1:]
    assert ("/S_resnet12_ssl_narrow_T_resnet12_ssl_narrow_CIFAR-FS_kd_T_2.0_beta_0.1_"
            in flags(evaluation)["--model_path"])


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,-1"], "--seeds 0,-1: expected non-negative integers"),
    (["--seeds", "1,1"], "--seeds 1,1: expected distinct seeds"),
    (["--gpus", "0"], "--gpus 0: needs CUDA and not --device cpu or cuda:N (device here: cpu)"),
])
def test_bad_seeds_and_gpus_are_refused_before_the_plan(reproduce, argv, message):
    result = reproduce("--dataset", "FC100", *ARGS, *argv)
    assert (result.returncode, result.stdout, result.stderr.splitlines()) == (2, "", [f"error: {message}"])


def test_device_cuda_without_a_gpu_is_refused_before_the_plan(reproduce, monkeypatch):
    import util

    monkeypatch.setattr(util, "cuda_usable", lambda: False)
    result = reproduce("--dataset", "FC100", *ARGS, "--device", "cuda")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: --device cuda: no usable GPU (")


def test_a_dry_run_without_its_data_root_says_so_in_one_line(reproduce):
    result = reproduce("--dataset", "FC100", *ARGS)  # DATA does not exist
    assert result.returncode == 0 and commands(result.stdout)
    assert result.stderr.splitlines() == ["note: DATA: --data_root folder not found; the plan below is printed "
                                          "without its data (the real run stops there)"]


def test_a_dry_run_over_an_empty_data_root_says_what_the_real_run_refuses(reproduce, tmp_path):
    result = reproduce("--dataset", "FC100", *ARGS, "--data_root", str(tmp_path))
    assert result.returncode == 0 and commands(result.stdout)
    [note] = result.stderr.splitlines()
    assert note.startswith(f"note: {tmp_path}") and "FC100" in note and note.endswith("(the real run stops there)")
    real = reproduce("--dataset", "FC100", *[a for a in ARGS if a != "--dry_run"], "--data_root", str(tmp_path))
    assert real.returncode == 2 and real.stderr.startswith(f"error: {note[len('note: '):note.index('; the plan')]}")


def test_stages_are_pinned_one_per_visible_gpu_with_a_log_each(reproduce, monkeypatch, tmp_path):
    import torch

    import util

    monkeypatch.setattr(util, "cuda_usable", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")  # this process's GPUs; a stage gets one of them
    data = _tiny_folder(tmp_path / "data")
    argv = ["--dataset", "folder", "--data_root", str(data), "--output", str(tmp_path / "out"), "--seeds", "0,1",
            "--wandb_group", "g", "--methods", "rfs_simple"]
    stages = _FakeStages(monkeypatch)
    result = reproduce(*argv)
    assert result.returncode == 0, result.stderr
    pinned = [env["CUDA_VISIBLE_DEVICES"] for env in stages.environments]
    assert len(pinned) == 6 and set(pinned) == {"4", "7"}  # 2 trainings + 4 evaluations, on both GPUs
    assert "plan: 6 of 6 stages finished, 0 running" in result.stdout
    for command in stages.commands:  # each stage's log, beside its run folder, begins with its command
        folder = Path(flags(command).get("--model_path", "")).parent if "eval_fewshot.py" in command[1] else None
        if folder is not None:
            logs = list(folder.parent.glob(f"{folder.name}.test_*shot.log"))
            assert len(logs) == 2 and all(log.read_text().startswith("$ ") for log in logs)

    stages.environments.clear()
    (tmp_path / "out").rename(tmp_path / "first")
    assert reproduce(*argv, "--gpus", "1").returncode == 0
    assert {env["CUDA_VISIBLE_DEVICES"] for env in stages.environments} == {"7"}


def test_the_plan_passes_the_release_behaviours_unless_intended(reproduce):
    release = reproduce("--dataset", "CIFAR-FS", "--seeds", "0", "--methods", "skd_gen0,skd_gen1,rfs_simple", *ARGS)
    intended = reproduce("--dataset", "CIFAR-FS", "--seeds", "0", "--methods", "skd_gen0,skd_gen1,rfs_simple",
                         "--intended", *ARGS)
    assert release.returncode == 0 and intended.returncode == 0, release.stderr + intended.stderr
    training = [[c for c in commands(r.stdout) if Path(c[1]).name != "eval_fewshot.py"] for r in (release, intended)]
    assert len(training[0]) == len(training[1]) == 3
    for command in training[0]:
        assert flags(command)["--dropblock_mask"] == "release"
        gen1 = Path(command[1]).name == "train_distillation.py" and flags(command)["--objective"] == "skd"
        assert ("--official_quirks" in command) == gen1
    assert sum("--official_quirks" in c for c in training[0]) == 1
    for command in training[1]:
        assert "--dropblock_mask" not in command and "--official_quirks" not in command
    assert "--dropblock_mask release on every ResNet-12 run; skd_gen1: --official_quirks" in release.stdout
    assert "the method as published (--intended)" in intended.stdout


def test_a_passthrough_flag_overrides_the_release_mask(reproduce):
    result = reproduce("--dataset", "CIFAR-FS", "--seeds", "0", "--methods", "skd_gen0", *ARGS,
                       "--", "--dropblock_mask", "full")
    assert result.returncode == 0, result.stderr
    (command,) = [c for c in commands(result.stdout) if Path(c[1]).name != "eval_fewshot.py"]
    assert flags(command)["--dropblock_mask"] == "full"


def test_a_found_run_trained_with_the_other_mask_is_refused_not_reused(reproduce, monkeypatch, tmp_path):
    import torch
    data = _tiny_folder(tmp_path / "data")
    argv = ["--dataset", "folder", "--data_root", str(data), "--output", str(tmp_path / "out"), "--seeds", "0",
            "--wandb_group", "g", "--methods", "skd_gen0"]
    stages = _FakeStages(monkeypatch)
    intended = reproduce(*argv, "--intended")  # the Gen-0 folder is the same with either mask
    assert intended.returncode == 0, intended.stderr
    (checkpoint,) = (tmp_path / "out").glob("*/checkpoint.pth")
    assert torch.load(checkpoint)["args"]["dropblock_mask"] is None
    stages.commands.clear()
    release = reproduce(*argv)
    assert release.returncode == 2 and stages.commands == []
    assert release.stderr.strip().endswith("trained with --dropblock_mask full, but this plan trains skd_gen0 seed 0 "
                                           "with release; give this plan another --output (or pass --intended)")
