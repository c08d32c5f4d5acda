"""Shared fixtures: tiny datasets written in the official file formats."""
from __future__ import annotations

import atexit
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(REPO))
import util  # noqa: E402
from dataset.prepare import omniglot_cache_path  # noqa: E402

# The precision CPU end-to-end tests train in: bf16 where the CPU computes it natively (--amp auto, as
# the quickstart runs), otherwise fp32.
CPU_AMP = util.resolve_amp("auto", torch.device("cpu"))
# The network of end-to-end tests that are not about the network: ResNet-12 at a quarter width (same blocks,
# heads and checkpoint keys, ~1/11 of the time a step). The parity and checkpoint-format tests, and the
# 2-ranks-equal-1-process comparison (whose max-pool near-ties a narrow network makes too frequent for its
# tolerance), keep the paper's resnet12_ssl.
TEST_MODEL = "resnet12_ssl_narrow"
TEST_FEATURE_DIM = 160
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `cuda` skip cleanly on machines without a GPU (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is false)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def fake_images(rng: np.random.RandomState, labels: np.ndarray, size: int) -> np.ndarray:
    """Class-dependent colour plus noise, uint8 (N, size, size, 3): learnable, and cheap to make."""
    base = (labels[:, None] * np.array([37, 91, 53]) % 256).astype(np.float32)
    images = base[:, None, None, :] + rng.normal(0, 30, (len(labels), size, size, 3))
    return np.clip(images, 0, 255).astype(np.uint8)


def write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)  # the official files were written by Python 2


def labelled(rng: np.random.RandomState, first_label: int, n_classes: int, per_class: int) -> np.ndarray:
    """Sparse labels (as in the official files), shuffled so file order is not class order."""
    labels = np.repeat(np.arange(first_label, first_label + n_classes) * 3, per_class)
    return labels[rng.permutation(len(labels))]


def make_cifar_package(folder: Path, train_classes: int = 6, per_class_train: int = 8, eval_classes: int = 5,
                       per_class_eval: int = 20, seed: int = 0) -> Path:
    """`folder/{train,val,test}.pickle` with {'data': uint8 (N, 32, 32, 3), 'labels': list}."""
    rng = np.random.RandomState(seed)
    splits = {"train": (0, train_classes, per_class_train), "val": (100, eval_classes, per_class_eval),
              "test": (200, eval_classes, per_class_eval)}
    for split, (first, k, n) in splits.items():
        labels = labelled(rng, first, k, n)
        write_pickle(folder / f"{split}.pickle", {"data": fake_images(rng, labels, 32), "labels": list(labels)})
    return folder


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """An official-layout data root: DIR/CIFAR-FS/*.pickle."""
    root = tmp_path_factory.mktemp("data")
    make_cifar_package(root / "CIFAR-FS")
    return root


class ScriptServer:
    """The client of tests/script_server.py: each command runs in a forked copy of an interpreter that
    has imported torch once, instead of a new interpreter importing it again (~3 s a command)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen([sys.executable, str(REPO / "tests" / "script_server.py")], cwd=REPO,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self.process

    def _reply(self, server: subprocess.Popen, timeout: float | None) -> dict | None:
        ready, _, _ = select.select([server.stdout], [], [], timeout)
        if not ready:
            return None
        line = server.stdout.readline()
        if not line:
            raise RuntimeError("tests/script_server.py exited")
        return json.loads(line)

    def run(self, args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
        server = self.start()
        with tempfile.TemporaryDirectory() as scratch:
            out, err = Path(scratch) / "stdout", Path(scratch) / "stderr"
            request = {"argv": args, "cwd": str(REPO), "env": env, "stdout": str(out), "stderr": str(err)}
            server.stdin.write(json.dumps(request) + "\n")
            server.stdin.flush()
            pid = self._reply(server, 60)["pid"]
            reply = self._reply(server, timeout)
            if reply is None:  # as subprocess.run(timeout=...): kill it (and its loader workers), then raise
                os.killpg(pid, signal.SIGKILL)
                self._reply(server, None)
                raise subprocess.TimeoutExpired([sys.executable, *args], timeout, out.read_text(), err.read_text())
            return subprocess.CompletedProcess([sys.executable, *args], reply["returncode"], out.read_text(),
                                               err.read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)
            self.process.stdout.close()


SCRIPT_SERVER = ScriptServer()
atexit.register(SCRIPT_SERVER.stop)


def run_script(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run one of the top-level scripts as a user would: its own process, argv, environment and exit
    code. Scripts (`*.py`) run in a fork of tests/script_server.py where the OS can fork; anything else
    (`-m module`) in a new interpreter."""
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    if args and args[0].endswith(".py") and hasattr(os, "fork"):
        return SCRIPT_SERVER.run(list(args), full_env, timeout)
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=full_env,
                          timeout=timeout)


# The Omniglot sample: $SKD_OMNIGLOT_ZIP, else where `python -m dataset.prepare omniglot --download` puts it.
OMNIGLOT_ZIP = Path(os.environ.get("SKD_OMNIGLOT_ZIP") or omniglot_cache_path())


@pytest.fixture(scope="session")
def omniglot_root(tmp_path_factory) -> Path:
    """The real Omniglot sample split by alphabet into DIR/{train,val,test}/<character>/*.png."""
    if not OMNIGLOT_ZIP.is_file():
        pytest.skip("the Omniglot sample is not here: `python -m dataset.prepare omniglot --download` fetches it "
                    "(1.3 MB), or set SKD_OMNIGLOT_ZIP to a copy")
    from dataset.prepare import build_omniglot

    root = tmp_path_factory.mktemp("omniglot") / "omniglot"
    build_omniglot(OMNIGLOT_ZIP, root)
    return root


@pytest.fixture(scope="session")
def omniglot_gen0(omniglot_root, tmp_path_factory) -> Path:
    """A Gen-0 checkpoint trained once on the Omniglot sample (narrow ResNet-12, 28 px, 6 epochs), for
    every slow test that needs a trained network on real images; tests read it, never write beside it."""
    save = tmp_path_factory.mktemp("omniglot_gen0")
    # Features transfer only after a few epochs (ResNet-12 after 2: below the untrained network).
    done = run_script("train_supervised_ssl.py", "--dataset", "folder", "--image_size", "28", "--device", "cpu",
                      "--amp", CPU_AMP, "--num_workers", "0", "--batch_size", "32", "--no_final_eval",
                      "--data_root", str(omniglot_root), "--model_path", str(save), "--model", TEST_MODEL,
                      "--epochs", "6", "--lr_decay_epochs", "5", timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(next(line for line in done.stdout.splitlines()
                     if line.startswith("checkpoint: "))[len("checkpoint: "):])
