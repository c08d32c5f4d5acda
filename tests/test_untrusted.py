"""Untrusted files: checkpoints and data pickles are read without executing code, and corrupted
files (fuzzed with hypothesis) only ever raise the CLI's clean errors."""
from __future__ import annotations

import argparse
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.checkpoint
from conftest import run_script, write_pickle
from dataset import load_split
from dataset.errors import DataError
from dataset.readers import read_data_pickle, read_tiered_split
from util import CheckpointError, UsageError


class Payload:
    """What a malicious file carries: unpickling it would create `target` (a harmless stand-in for
    running any command)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_a_checkpoint_carrying_a_payload_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "created_by_the_payload"
    torch.save({"epoch": 1, "model": {"w": torch.ones(2)}, "extra": Payload(target)}, tmp_path / "evil.pth")
    # torch 2.5 names the global "builtins.getattr", later releases "getattr".
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused: it holds Python objects \((builtins\.)?getattr\) "
                                              r"that loading would have to execute"):
        engine.checkpoint.load_checkpoint(tmp_path / "evil.pth")
    done = run_script("eval_fewshot.py", "--model_path", str(tmp_path / "evil.pth"), "--dataset", "synthetic",
                      "--device", "cpu")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not target.exists()


@pytest.mark.parametrize("content, reason", [
    (b"", "not a PyTorch checkpoint: empty file"),
    (bytes(np.random.RandomState(0).randint(0, 256, 4096, dtype=np.uint8)).replace(b"\x80", b"\x00", 1),
     "not a PyTorch checkpoint: neither a zip archive nor a pickle"),
    (b"<!DOCTYPE html>\n<html>Not Found</html>\n", "not a PyTorch checkpoint: text, not a zip archive or a pickle"),
    ("truncated", "not a PyTorch checkpoint: a truncated or damaged zip archive"),
    (b"\x80\x02" + bytes(range(156, 256)), "not a readable PyTorch checkpoint \\(a damaged pickle"),
])
def test_a_file_that_is_not_a_checkpoint_says_so_and_is_not_called_a_payload(tmp_path, content, reason):
    path = tmp_path / "download.pth"
    if content == "truncated":
        torch.save({"epoch": 1, "model": {"w": torch.ones(64)}}, path)
        content = path.read_bytes()[:-200]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"download\\.pth: {reason}") as error:
        engine.checkpoint.load_checkpoint(path)
    assert "refused" not in str(error.value) and "\n" not in str(error.value)


def test_a_data_pickle_carrying_a_payload_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "created_by_the_payload"
    write_pickle(tmp_path / "train.pickle", {"data": Payload(target), "labels": [0]})
    with pytest.raises(DataError, match=r"train\.pickle: not a readable data pickle \(UnpicklingError: refused: it "
                                        r"names (__builtin__|builtins)\.getattr"):
        read_data_pickle(tmp_path / "train.pickle")
    assert not target.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_official_formats_still_load(tmp_path, protocol):
    """Data pickles (Python 2 era protocol 2 with numpy arrays and int64 labels, and newer protocols)
    and the official `*_last.pth` checkpoints, which hold the run's argparse.Namespace."""
    data = np.random.RandomState(0).randint(0, 255, (4, 8, 8, 3)).astype(np.uint8)
    with (tmp_path / "train.pickle").open("wb") as f:
        pickle.dump({"data": data, "labels": [np.int64(3), 3, 5, 5]}, f, protocol=protocol)
    images = read_data_pickle(tmp_path / "train.pickle")
    assert np.array_equal(images.images, data) and images.num_classes == 2
    torch.save({"opt": argparse.Namespace(model="resnet12", n_gpu=1), "model": {"w": torch.ones(2)}},
               tmp_path / "resnet12_last.pth")
    checkpoint = engine.checkpoint.load_checkpoint(tmp_path / "resnet12_last.pth")
    assert checkpoint["opt"].model == "resnet12" and torch.equal(checkpoint["model"]["w"], torch.ones(2))


def _corrupt(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    """`data` with bytes overwritten at (position, value) pairs, then maybe truncated by the first."""
    out = bytearray(data)
    for position, value in cuts:
        out[position % len(out)] = value
    return bytes(out)


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CORRUPTION = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)


def _valid_pickle() -> bytes:
    data = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    return pickle.dumps({"data": data, "labels": [0, 1]}, protocol=2)


def _valid_checkpoint(tmp_path: Path) -> bytes:
    torch.save({"epoch": 1, "model": {"classifier.weight": torch.ones(2, 3)}, "args": {"dataset": "CIFAR-FS"}},
               tmp_path / "seed.pth")
    return (tmp_path / "seed.pth").read_bytes()


def _assert_well_formed(images) -> None:
    """What a reader may return: uint8 images (N, H, W, 3), one label each."""
    assert images.images.dtype == np.uint8 and images.images.ndim == 4 and images.images.shape[3] == 3
    assert len(images.labels) == len(images.images)


@FUZZ
@given(cuts=CORRUPTION, keep=st.floats(0, 1))
def test_fuzzed_data_pickles_raise_only_data_errors(tmp_path, cuts, keep):
    """A corrupted pickle is refused with a DataError or read as well-formed images (and the file
    unchanged by the corruption as the original); anything else fails the test."""
    valid = _valid_pickle()
    corrupted = _corrupt(valid, cuts)[: max(0, int(len(valid) * keep))]
    path = tmp_path / "train.pickle"
    path.write_bytes(corrupted)
    try:
        images = read_data_pickle(path)
    except DataError:
        return
    _assert_well_formed(images)
    if corrupted == valid:
        assert images.images.tobytes() == pickle.loads(valid)["data"].tobytes()


@FUZZ
@given(cuts=CORRUPTION, keep=st.floats(0, 1))
def test_fuzzed_npz_files_raise_only_data_errors(tmp_path, cuts, keep):
    np.savez(tmp_path / "seed.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    valid = (tmp_path / "seed.npz").read_bytes()
    (tmp_path / "train_images.npz").write_bytes(_corrupt(valid, cuts)[: max(0, int(len(valid) * keep))])
    write_pickle(tmp_path / "train_labels.pkl", {"labels": [0, 1]})
    try:
        images = read_tiered_split(tmp_path, "train")
    except DataError:
        return
    _assert_well_formed(images)


@FUZZ
@given(cuts=CORRUPTION, keep=st.floats(0, 1))
def test_fuzzed_checkpoints_raise_only_checkpoint_errors(tmp_path, cuts, keep):
    valid = _valid_checkpoint(tmp_path)
    path = tmp_path / "ckpt.pth"
    path.write_bytes(_corrupt(valid, cuts)[: max(0, int(len(valid) * keep))])
    corrupted = path.read_bytes()
    try:
        checkpoint = engine.checkpoint.load_checkpoint(path)
    except CheckpointError:
        return
    assert isinstance(checkpoint, dict)  # what the loader accepts is a checkpoint's mapping
    if corrupted == valid:
        assert checkpoint["epoch"] == 1 and torch.equal(checkpoint["model"]["classifier.weight"], torch.ones(2, 3))
    # The seed holds one weight of the network's ~100: no corruption of it makes a model, only the clean error
    # (a CheckpointError, or a DataError on a bad class count).
    with pytest.raises(UsageError):
        engine.checkpoint.model_from_checkpoint("resnet12_ssl", path, checkpoint, "CIFAR-FS", 32)


@FUZZ
@given(content=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=10))
def test_well_formed_pickles_of_the_wrong_shape_raise_only_data_errors(tmp_path, content):
    write_pickle(tmp_path / "CIFAR-FS" / "train.pickle", content)
    try:
        images = load_split("CIFAR-FS", tmp_path, "train")
    except DataError:
        return
    _assert_well_formed(images)


def test_zip_errors_are_data_errors(tmp_path):
    """np.load reads an npz as a zip: a zip without the 'images' entry is named as such."""
    with zipfile.ZipFile(tmp_path / "train_images.npz", "w") as z:
        z.writestr("other.npy", b"")
    write_pickle(tmp_path / "train_labels.pkl", {"labels": [0, 1]})
    with pytest.raises(DataError, match=r"train_images\.npz: expected an npz with key 'images', found \['other'\]"):
        read_tiered_split(tmp_path, "train")
