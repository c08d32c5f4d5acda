"""The ground floor: small helpers every other module may use, importing nothing from the project
(the CLI's error types and entry point, device and autocast, seeding, git sha, atomic writes)."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

REPO_DIR = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- errors and entry point

class UsageError(ValueError):
    """A bad flag value or input file; reported as one line, exit code 2."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops loudly instead of training on garbage."""


class Preempted(RuntimeError):
    """SIGTERM or SIGINT stopped training after a checkpoint; exit code 128 + the signal's number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_cli(main: Callable[[], Any]) -> None:
    """Run a script's main(); turn expected failures into a one-line error and a non-zero exit."""
    try:
        main()
    except UsageError as e:  # dataset.DataError is one too
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other error of the CLI: `error: <what>`, exit 2
    (argparse's own prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (--help lists the flags)\n")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}: expected a positive integer, got {getattr(args, name)}")


def check_writable_folder(folder: str | Path, flag: str) -> None:
    """Fail before any work if `folder` could not be created or written to (its nearest existing
    ancestor is a file, or not writable); creates nothing."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{flag} {folder}: {existing} is a file, expected a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {folder}: {existing} is not writable")


# ----------------------------------------------------------------------------- device, precision, seeds

def resolve_device(name: str | None) -> torch.device:
    """The device to run on: `name`, or cuda when available, else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return device


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """An autocast context for `--amp`; a no-op when amp is off."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16: needs a CUDA device; use --amp bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to `device` in channels-last layout: 5-18% faster training on this CPU (bench_train.py
    --contiguous compares) and the layout tensor cores want on CUDA. State-dict values and names
    are unchanged."""
    return model.to(device, memory_format=torch.channels_last)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def print_run_header(args: argparse.Namespace) -> None:
    print(f"git: {git_sha()}")
    print("\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())))


# ----------------------------------------------------------------------------- files

@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; it replaces `path` only if the block
    finishes, so a reader never sees a half-written file, even if the process is killed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _remove_dead_writers_files(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_dead_writers_files(path: Path) -> None:
    """Temporary files of `path` left by writers that were killed mid-write (SIGKILL runs no cleanup);
    those of live processes are left alone."""
    prefix = f".{path.name}.tmp"
    if not path.parent.is_dir():
        return
    for leftover in path.parent.glob(f"{prefix}*"):
        pid = leftover.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoints run to hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
