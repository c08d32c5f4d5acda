"""Bad input, one table: every row runs a command as a user would and expects one line on stderr that
names the file or flag and what was expected, exit code 2 (1 for a diverging run), and nothing
written. The "Bad input" table of docs/reliability.md lists the same rows; a test keeps the two in step."""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import REPO, TEST_MODEL, make_cifar_package, run_script, write_pickle

TRAIN = ["train_supervised_ssl.py", "--num_workers", "0", "--device", "cpu", "--epochs", "1", "--batch_size", "16"]


@dataclass(frozen=True)
class Case:
    name: str  # the first cell of its row in docs/reliability.md
    command: Callable[[Path, Path], list[str]]  # (data root, scratch folder) -> argv
    message: str  # a regular expression the one stderr line must contain
    prepare: Callable[[Path, Path], None] = lambda root, tmp: None
    exit_code: int = 2


def cifar(root: Path, tmp: Path) -> list[str]:
    return ["--dataset", "CIFAR-FS", "--data_root", str(root)]


def train(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda root, tmp: [*TRAIN, *cifar(root, tmp), "--model_path", str(tmp / "save"), *extra]


def evaluate(*extra: str, checkpoint: str = "ckpt.pth") -> Callable[[Path, Path], list[str]]:
    return lambda root, tmp: ["eval_fewshot.py", "--model_path", str(tmp / checkpoint), *cifar(root, tmp),
                              "--device", "cpu", "--n_test_runs", "2", *extra]


def gen1(teacher: str) -> Callable[[Path, Path], list[str]]:
    return lambda root, tmp: ["train_distillation.py", "--path_t", str(tmp / teacher), *TRAIN[1:], *cifar(root, tmp),
                              "--model_path", str(tmp / "save")]


def split_file(root: Path) -> Path:
    return root / "CIFAR-FS" / "train.pickle"


def write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def replace_train(content: dict) -> Callable[[Path, Path], None]:
    return lambda root, tmp: write_pickle(split_file(root), content)


def tiered(prepare_npz: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    def prepare(root: Path, tmp: Path) -> None:
        folder = root / "tieredImageNet"
        folder.mkdir()
        write_pickle(folder / "train_labels.pkl", {"labels": [0, 1]})
        prepare_npz(folder / "train_images.npz")
    return prepare


def checkpoint(content: object) -> Callable[[Path, Path], None]:
    return lambda root, tmp: torch.save(content, tmp / "ckpt.pth")


def model_state(classes: int = 6) -> dict:
    from models import create_model

    return create_model("resnet12_ssl", classes, "CIFAR-FS", image_size=32).state_dict()


def truncated_checkpoint(root: Path, tmp: Path) -> None:
    torch.save({"model": model_state()}, tmp / "ckpt.pth")
    data = (tmp / "ckpt.pth").read_bytes()
    write(tmp / "ckpt.pth", data[: len(data) // 2])


def other_architecture(root: Path, tmp: Path) -> None:
    state = {k.replace("layer", "block"): v for k, v in model_state().items()}
    torch.save({"model": state}, tmp / "ckpt.pth")


def narrow_checkpoint(root: Path, tmp: Path) -> None:
    from models import create_model

    state = create_model(TEST_MODEL, 6, "CIFAR-FS", image_size=32).state_dict()
    torch.save({"model": state, "args": {"model": TEST_MODEL}}, tmp / "ckpt.pth")


def run_folder_without_checkpoint(root: Path, tmp: Path) -> None:
    (tmp / "run").mkdir()
    write(tmp / "run" / "args.json", b"{}")


DATA = np.zeros((4, 32, 32, 3), np.uint8)
RNG = np.random.RandomState(0)

CASES = [
    Case("missing data root", lambda root, tmp: [*TRAIN, "--dataset", "CIFAR-FS", "--data_root", str(tmp / "nowhere"),
                                                  "--model_path", str(tmp / "save")], r"--data_root folder not found"),
    Case("missing split file", train(), r"val\.pickle: file not found",
         lambda root, tmp: (root / "CIFAR-FS" / "val.pickle").unlink()),
    Case("truncated pickle", train(), r"train\.pickle: not a readable data pickle",
         lambda root, tmp: write(split_file(root), split_file(root).read_bytes()[:5000])),
    Case("empty pickle", train(), r"train\.pickle: not a readable data pickle \(EOFError",
         lambda root, tmp: write(split_file(root), b"")),
    Case("random bytes for a pickle", train(), r"train\.pickle: not a readable data pickle",
         lambda root, tmp: write(split_file(root), RNG.bytes(4096))),
    Case("truncated npz (tieredImageNet)", lambda root, tmp: [*TRAIN, "--dataset", "tieredImageNet", "--data_root",
                                                              str(root), "--model_path", str(tmp / "save")],
         r"train_images\.npz: not a readable npz",
         tiered(lambda p: (np.savez(p, images=np.zeros((2, 84, 84, 3), np.uint8)), write(p, p.read_bytes()[:300])))),
    Case("empty npz", lambda root, tmp: [*TRAIN, "--dataset", "tieredImageNet", "--data_root", str(root),
                                         "--model_path", str(tmp / "save")], r"train_images\.npz: not a readable npz",
         tiered(lambda p: write(p, b""))),
    Case("random bytes for an npz", lambda root, tmp: [*TRAIN, "--dataset", "tieredImageNet", "--data_root", str(root),
                                                       "--model_path", str(tmp / "save")],
         r"train_images\.npz: not a readable npz", tiered(lambda p: write(p, RNG.bytes(4096)))),
    Case("pickle with the wrong keys", train(),
         r"train\.pickle: expected a dict with keys \['data', 'labels'\], found \['images', 'labels'\]",
         replace_train({"images": DATA, "labels": [0, 1, 0, 1]})),
    Case("float images", train(), r"train\.pickle: expected uint8 images, got float32",
         replace_train({"data": DATA.astype(np.float32), "labels": [0, 1, 0, 1]})),
    Case("images without a colour axis", train(),
         r"train\.pickle: expected images of shape \(N, H, H, 3\), got \(4, 32, 32\)",
         replace_train({"data": DATA[..., 0], "labels": [0, 1, 0, 1]})),
    Case("more images than labels", train(), r"train\.pickle: 4 images but 3 labels",
         replace_train({"data": DATA, "labels": [0, 1, 0]})),
    Case("a class with fewer images than n_shots + n_queries", evaluate("--n_shots", "10"),
         r"episodes need n_shots \+ n_queries = 25", checkpoint({"model": model_state()})),
    Case("n_ways above the number of classes", evaluate("--n_ways", "7"), r"7-way episodes need 7",
         checkpoint({"model": model_state()})),
    Case("unknown dataset", lambda root, tmp: [*TRAIN, "--dataset", "imagenet21k"],
         r"argument --dataset: invalid choice: 'imagenet21k'"),
    Case("unknown model", lambda root, tmp: [*TRAIN, "--model", "resnet50"],
         r"argument --model: invalid choice: 'resnet50'"),
    Case("zero epochs", train("--epochs", "0"), r"--epochs: expected a positive integer, got 0"),
    Case("negative batch size", train("--batch_size", "-8"), r"--batch_size: expected a positive integer, got -8"),
    Case("zero episodes", evaluate("--n_test_runs", "0"), r"--n_test_runs: expected a positive integer, got 0",
         checkpoint({"model": model_state()})),
    Case("negative learning rate", train("--learning_rate", "-0.05"),
         r"--learning_rate: expected a positive number, got -0.05"),
    Case("malformed --lr_decay_epochs", train("--lr_decay_epochs", "60;80"),
         r"argument --lr_decay_epochs: expected comma-separated integers, got '60;80'"),
    Case("checkpoint that does not exist", evaluate(checkpoint="missing.pth"),
         r"--model_path .*missing\.pth: checkpoint not found"),
    Case("truncated checkpoint", evaluate(), r"ckpt\.pth: not a PyTorch checkpoint: a truncated or damaged zip",
         truncated_checkpoint),
    Case("checkpoint without weights", evaluate(),
         r"ckpt\.pth: has no classifier\.weight; expected a resnet12_ssl checkpoint",
         checkpoint({"epoch": 3})),
    Case("checkpoint of another architecture", evaluate(),
         r"ckpt\.pth: does not fit the model: missing: layer1\.0\.bn1\.bias, .*; unexpected: block1\.0\.bn1\.bias",
         other_architecture),
    Case("narrow checkpoint given the full-width --model", evaluate("--model", "resnet12_ssl"),
         rf"ckpt\.pth: holds a {TEST_MODEL} \(recorded in its args\), not the resnet12_ssl built for it: leave "
         rf"--model out to use the checkpoint's, or pass --model {TEST_MODEL}", narrow_checkpoint),
    Case("run folder without a checkpoint", evaluate(checkpoint="run"),
         r"--model_path .*/run: a folder without checkpoint\.pth \(a run folder's last-epoch checkpoint\); it holds "
         r"no \.pth file", run_folder_without_checkpoint),
    Case("Gen-1 teacher of another class count", gen1("ckpt.pth"),
         r"--path_t .*ckpt\.pth: the teacher has 9 classes, the training split .* has 6",
         checkpoint({"model": model_state(9)})),
    Case("missing Gen-1 teacher", gen1("missing.pth"), r"--path_t .*missing\.pth: checkpoint not found"),
    Case("DVP prior as a Gen-1 teacher", gen1("ckpt.pth"),
         r"--path_t .*ckpt\.pth: --objective skd needs a teacher trained with labels, not a DVP prior",
         checkpoint({"model": model_state(), "args": {"objective": "dvp"}})),
    Case("DVP queue smaller than a batch", train("--objective", "dvp", "--dvp_queue", "8"),
         r"--dvp_queue 8: expected at least --batch_size \(16\), the keys one step enqueues"),
    Case("output folder that cannot be written", lambda root, tmp: [*TRAIN, *cifar(root, tmp), "--model_path",
                                                                    str(tmp / "a_file" / "save")],
         r"--model_path .*a_file/save: .*a_file is a file, expected a folder",
         lambda root, tmp: write(tmp / "a_file", b"not a folder")),
    Case("--resume with nothing to resume", train("--resume"), r"--resume given but the run folder has no checkpoint"),
    Case("non-finite loss (lr 1e12)", train("--learning_rate", "1e12", "--epochs", "2", "--model", TEST_MODEL),
         r"non-finite loss \(\w+\) at epoch \d+, step \d+", exit_code=1),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line(case, tmp_path):
    root = make_cifar_package(tmp_path / "data" / "CIFAR-FS").parent
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    case.prepare(root, scratch)
    before = sorted(p for p in scratch.rglob("*"))
    done = run_script(*case.command(root, scratch))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == case.exit_code, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    assert re.search(case.message, lines[0]), lines[0]
    if case.exit_code == 2:  # refused before any work: nothing written
        assert sorted(p for p in scratch.rglob("*")) == before
    shutil.rmtree(tmp_path)


def test_docs_table_lists_every_case():
    page = (REPO / "docs" / "reliability.md").read_text()
    table = page.split("## Bad input\n", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == [c.name for c in CASES]


def test_a_missing_data_root_is_one_line_before_the_run_header(tmp_path):
    done = run_script("train_supervised_ssl.py", "--dataset", "CIFAR-FS", "--data_root", str(tmp_path / "missing"),
                      "--model_path", str(tmp_path / "out"))
    assert done.returncode == 2
    assert (done.stdout + done.stderr).strip().splitlines() == [
        f"error: {tmp_path / 'missing'}: --data_root folder not found"]
