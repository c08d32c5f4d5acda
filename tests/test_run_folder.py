"""A run folder has one writer, and a write that fails keeps what was there: a second process on a
folder in use is refused in one line naming the holder, a holder killed by SIGKILL blocks nothing, a
full disk during a save stops the run in one line with the previous checkpoint intact, from which
--resume goes on; --resume on a finished run says so."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TEST_MODEL, make_cifar_package, run_script
from test_reproduce import reproduce  # noqa: F401 (the fixture: the plan in this process)
from runtime.folder_lock import FolderLock
from util import UsageError

HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from runtime.folder_lock import FolderLock
lock = FolderLock({folder!r}, name={name!r})
lock.acquire()  # held while `lock` lives
print("held", flush=True)
time.sleep(120)
"""


def _holder(folder: Path, name: str = ".lock") -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), folder=str(folder), name=name)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_blocks_nothing(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(UsageError) as refused:
            FolderLock(tmp_path).acquire()
        message = str(refused.value)
        assert message.startswith(f"{tmp_path}: run folder in use by pid {holder.pid} on {socket.gethostname()} "
                                  f"since ")
        assert message.endswith("; wait for it to end (or stop it), or write elsewhere") and "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup of any kind runs
        holder.wait()
    with FolderLock(tmp_path) as lock:  # the kernel dropped the dead holder's lock
        assert lock.held
        assert json.loads(lock.path.read_text())["pid"] != holder.pid


def test_a_refused_lock_leaves_no_folder_it_made(tmp_path):
    lock = FolderLock(tmp_path / "a" / "b")
    lock.acquire()
    lock.release()
    assert not (tmp_path / "a").exists()  # made for a run that wrote nothing: removed with the lock


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run_folder")
    make_cifar_package(root / "CIFAR-FS", train_classes=4, per_class_train=4)
    return root


def _gen0(data: Path, model_path: Path) -> list[str]:
    return ["train_supervised_ssl.py", "--model", TEST_MODEL, "--dataset", "CIFAR-FS", "--data_root", str(data),
            "--image_size", "16", "--batch_size", "8", "--num_workers", "0", "--device", "cpu", "--amp", "off",
            "--epochs", "2", "--lr_decay_epochs", "1", "--no_final_eval", "--model_path", str(model_path)]


def test_a_full_disk_stops_the_run_in_one_line_and_resume_goes_on_from_the_last_good_checkpoint(data, tmp_path):
    command = _gen0(data, tmp_path)
    full = run_script("tests/enospc_at_save.py", "2", *command[:1], *command[1:])  # epoch 2's checkpoint
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1 and len(lines) == 1, full.stderr[-3000:]
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert lines[0] == (f"error: {folder / 'checkpoint.pth'}: could not be written (No space left on device); the "
                        f"previous checkpoint there is intact: free space, then run the same command with --resume")
    assert torch.load(folder / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name]
    resumed = run_script(*command, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {folder / 'checkpoint.pth'} after epoch 1" in resumed.stdout
    assert torch.load(folder / "checkpoint.pth", weights_only=True)["epoch"] == 2

    again = run_script(*command, "--resume")  # nothing left to train: said in one line
    assert again.returncode == 0, again.stderr[-3000:]
    assert (f"resume: {folder / 'checkpoint.pth'} already holds all 2 epochs (--epochs 2); nothing left to train"
            in again.stdout.splitlines())


def test_a_training_run_on_a_folder_in_use_is_refused_and_writes_nothing(data, tmp_path):
    command = _gen0(data, tmp_path)
    first = run_script(*command, "--epochs", "1", "--lr_decay_epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    def written() -> dict[Path, int]:  # the lock file aside, which the holder wrote
        return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != ".lock"}

    before = written()
    holder = _holder(folder)
    try:
        refused = run_script(*command, "--epochs", "1", "--lr_decay_epochs", "1", "--resume")
        since = json.loads((folder / ".lock").read_text())["since"]
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip() == (f"error: {folder}: run folder in use by pid {holder.pid} on "
                                      f"{socket.gethostname()} since {since} (-c); wait for it to end (or stop it), "
                                      f"or write elsewhere")
    assert written() == before


def test_a_plan_launched_twice_on_one_output_folder_is_refused(reproduce, data, tmp_path):  # noqa: F811
    holder = _holder(tmp_path, ".plan.lock")
    try:
        second = reproduce("--dataset", "CIFAR-FS", "--data_root", str(data), "--output", str(tmp_path),
                           "--seeds", "0", "--methods", "skd_gen0", "--device", "cpu", "--wandb_group", "g")
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2
    assert second.stderr.startswith(f"error: {tmp_path}: plan output folder in use by pid {holder.pid} on ")
    assert [p.name for p in tmp_path.iterdir()] == [".plan.lock"]  # no stage started
