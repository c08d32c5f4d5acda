"""The ground floor: small helpers every other module may use, importing nothing from the project
(the CLI's error types and entry point, device and autocast, seeding, git sha, atomic writes)."""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import hashlib
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

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


class WriteFailed(RuntimeError):
    """A file could not be written (a full disk, a quota, an I/O error); what was there before is intact."""


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
    except (NonFiniteLossError, WriteFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each flag's default to its help, unless the help already says what the default is
    (`(default: the checkpoint's)`) or there is none (None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if ("(default" in help_text or action.default in (None, argparse.SUPPRESS)
                or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return help_text
        return f"{help_text} (default: {as_typed(action.default).replace('%', '%%')})"


def as_typed(value: object) -> str:
    """A default as a user types it on the command line: a list comma-joined (`60,80`, `gen0,ssl`)."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other error of the CLI: `error: <what>`, exit 2
    (argparse's own prints the whole usage first), and whose --help shows every flag's default.
    Flags are never abbreviated: `--model` given to a script that has `--model_s` and `--model_t` is
    an unknown flag, not a guess (scripts/reproduce.py routes flags by which script knows them)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (--help lists the flags)\n")


def check_positive(flags: dict[str, Any], *names: str) -> None:
    """Refuse in one line the first of `names` whose value in `flags` (a command line's, `vars(args)`) is below 1."""
    for name in names:
        if flags[name] < 1:
            raise UsageError(f"--{name}: expected a positive integer, got {flags[name]}")


def check_writable_folder(folder: str | Path, flag: str) -> None:
    """Fail before any work if `folder` could not be created or written to (its nearest existing
    ancestor is a file, or not writable); creates nothing."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{flag} {folder}: {existing} is a file, expected a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {folder}: {existing} is not writable")


# ----------------------------------------------------------------------------- registries

T = TypeVar("T")


class UnknownName(UsageError, KeyError):
    """A name no registry entry has: one line naming the registry and what it holds (a UsageError, so the
    CLI reports it with exit code 2; a KeyError, as a lookup)."""

    def __str__(self) -> str:  # KeyError's own quotes the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Entries of one kind, by name, in registration order: the one way each part is extended (models,
    methods, datasets, classifiers; detectron2's Registry). What an entry must be is the registry's
    contract, written in the docstring of the module that creates it. An entry is added once, by
    `@REGISTRY.register("name")` on a function or class or `REGISTRY.register("name", entry)`; everything
    that offers a choice (--help's choices, validation, reports) reads `names()`, so a new entry needs no
    other edit."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "model", "method"...: named in errors
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Any:
        """Add `entry` under `name`, or return a decorator that adds what it decorates."""
        if entry is None:
            return lambda decorated: self.register(name, decorated)
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove an entry (a test's or a plugin's that must not outlive it); returns it."""
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r}; registered: {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


# ----------------------------------------------------------------------------- device, precision, seeds

@functools.lru_cache(maxsize=1)
def _cuda_probe() -> tuple[bool, str]:
    """(torch.cuda.is_available(), the first line of what torch warned while answering), asked once:
    torch says why a driver refused ("The NVIDIA driver on your system is too old") on its first
    call only, since the device count is cached after it, so the reason is kept from that call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    return available, next((line for w in caught if (line := str(w.message).split("\n")[0].strip())), "")


def cuda_usable() -> bool:
    """Whether torch can run on a GPU here; torch's warning when it cannot goes into
    cuda_unavailable_reason(), not to stderr."""
    return _cuda_probe()[0]


def cuda_unavailable_reason() -> str:
    """Why torch sees no usable GPU, in a few words (for the device line and --device cuda's error)."""
    if torch.version.cuda is None and torch.version.hip is None:
        return f"this torch, {torch.__version__}, is a CPU build"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return f"no CUDA device visible: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"
    warned = _cuda_probe()[1]
    if "driver" in warned.lower():
        return f"CUDA driver too old for this torch build ({torch.__version__}): {warned}"
    if warned:
        return f"CUDA unusable: {warned}"
    return "no CUDA device visible"


def resolve_device(name: str | None) -> torch.device:
    """The device to run on: `name`, or cuda when available, else cpu."""
    if name is None:
        return torch.device("cuda" if cuda_usable() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not cuda_usable():
        raise UsageError(f"--device {name}: no usable GPU ({cuda_unavailable_reason()})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine shows {torch.cuda.device_count()} GPU(s)")
    return device


def describe_device(device: torch.device, requested: str | None = None) -> str:
    """One line on the device and why it was chosen, e.g. `cuda:0 NVIDIA H100 80GB HBM3, capability 9.0,
    torch 2.14.1+cu130` or `cpu (no CUDA device visible), torch 2.14.1+cu130, 2 threads`."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return (f"cuda:{index} {torch.cuda.get_device_name(index)}, capability {major}.{minor}, "
                f"torch {torch.__version__}")
    why = "--device cpu" if requested is not None else cuda_unavailable_reason()
    return f"cpu ({why}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: without either, CPU bf16 autocast is emulated, about 25x slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(amp: str, device: torch.device) -> str:
    """--amp auto: bf16 where the device computes it natively (CUDA capability 8.0 and newer, CPUs with
    avx512_bf16 or AMX), else fp16 with the grad scaler on older GPUs, else off (fp32) on the CPU."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if cpu_has_native_bf16() else "off"


def configure_tf32(device: torch.device, tf32: bool) -> None:
    """--tf32: let cuDNN convolutions and cuBLAS matmuls round fp32 inputs to TF32 on Ampere and newer
    (PyTorch's default for convolutions). Off, fp32 means fp32, as results.json then says."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32


def precision_name(device: torch.device, amp: str) -> str:
    """What the network really computes in: bf16 or fp16 under autocast; tf32 for fp32 on a GPU that
    rounds to TF32 (capability 8.0 and newer, TF32 allowed); fp32 otherwise."""
    if amp in ("bf16", "fp16"):
        return amp
    if (device.type == "cuda" and torch.backends.cudnn.allow_tf32
            and torch.cuda.get_device_capability(device)[0] >= 8):
        return "tf32"
    return "fp32"


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """An autocast context for `--amp`; a no-op when amp is off."""
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "auto":
        raise ValueError("--amp auto must be resolved first (util.resolve_amp)")
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


# The code a run is saved with (W&B's code artifact), where git cannot list it: these folders' .py files and the
# top level's.
SOURCE_FOLDERS = ("dataset", "distill", "engine", "eval", "methods", "models", "published", "runtime", "scripts",
                  "tools", "bench")


def source_files() -> list[Path]:
    """The repository's Python files: those git tracks (as they are in the working tree) in a checkout, else every
    .py of the top level and SOURCE_FOLDERS; never a virtualenv's or a run folder's, whatever its name."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "*.py"], cwd=REPO_DIR,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return [REPO_DIR / line for line in out.stdout.splitlines() if (REPO_DIR / line).is_file()]
    except (OSError, subprocess.SubprocessError):
        pass
    folders = (p for folder in SOURCE_FOLDERS for p in (REPO_DIR / folder).rglob("*.py"))
    return sorted([*REPO_DIR.glob("*.py"), *folders])


# ----------------------------------------------------------------------------- files

@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; it replaces `path` only if the block
    finishes, so a reader never sees a half-written file, even if the process is killed. The file's
    bytes reach the disk before the rename, and the rename before this returns (fsync of the file,
    then of its folder): without them a node that crashes soon after can leave an empty `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _remove_dead_writers_files(path)
    try:
        yield tmp
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        try:
            _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as e:  # some filesystems (and Windows) cannot sync a folder; the file itself is synced
            if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES, errno.EISDIR):
                raise
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
