"""Checkpoints: the official dict format ({'epoch', 'model', 'optimizer'} plus our extras), written
atomically, read without executing code, and loaded into a model with exact key checks."""
from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from dataset.transforms import Normalization
from models import architecture_of, create_model, list_models
from util import CheckpointError, WriteFailed, atomic_write

CHECKPOINT_NAME = "checkpoint.pth"  # the last epoch's
BEST_NAME = "best.pth"  # the best epoch by val accuracy (--eval_freq), beside it


def save_checkpoint(state: dict, path: Path) -> None:
    """Write `state` to `path` atomically. A failed write (a full disk, a quota) leaves the file that was
    there before intact and stops the run in one line. torch.save is given a Python file so that the
    failure arrives as the OSError that names it, not as the zip writer's position mismatch."""
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
    except OSError as e:
        before = ("the previous checkpoint there is intact: free space, then run the same command with --resume"
                  if path.is_file() else "nothing was saved")
        raise WriteFailed(f"{path}: could not be written ({e.strerror or e}); {before}") from None


# Besides tensors, numbers, strings and containers, the official RFS/SKD `*_last.pth` files hold the
# run's argparse.Namespace ('opt'): a plain attribute bag, safe to rebuild.
SAFE_CHECKPOINT_GLOBALS = [argparse.Namespace]


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6: a zip archive holding a pickle
PICKLE_MAGIC = b"\x80"  # pickle protocol 2 and above; torch's legacy format starts with one


def not_a_checkpoint(path: Path) -> str | None:
    """Why the file cannot be a PyTorch checkpoint (empty, a damaged zip, neither zip nor pickle), told
    from its bytes before torch reads it: a broken download is then never mistaken for a payload."""
    import zipfile

    with path.open("rb") as f:
        head = f.read(64)
    if not head:
        return "empty file"
    if head.startswith(ZIP_MAGIC):
        return None if zipfile.is_zipfile(path) else "a truncated or damaged zip archive (an incomplete download?)"
    if head.startswith(PICKLE_MAGIC):
        return None
    text = head.decode("utf-8", errors="replace")
    if text.isprintable() or "\n" in text and text.replace("\n", "").replace("\r", "").isprintable():
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"text, not a zip archive or a pickle (it starts {first!r})"
    return "neither a zip archive nor a pickle"


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict:
    """A checkpoint's content, read without executing code: torch.load(weights_only=True) rebuilds
    only tensors, plain containers and SAFE_CHECKPOINT_GLOBALS, and a pickle holding anything else (a
    payload that would run code) is refused with the offending global named."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        reason = not_a_checkpoint(path)
    except OSError as e:
        raise CheckpointError(f"{path}: not readable ({e.strerror or e})") from None
    if reason is not None:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint: {reason}")
    try:
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # Only a well-formed pickle naming a global it would import is a payload; anything else is damage.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(f"{path}: refused: it holds Python objects ({found.group(1)}) "
                                  f"that loading would have to execute; a checkpoint from this project or the official "
                                  f"releases holds only tensors and plain data") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_describe(e)})") from None
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_describe(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _describe(error: Exception) -> str:
    """`Type: first sentence of the message` (torch's run to paragraphs; some have no message)."""
    lines = str(error).strip().splitlines()
    if isinstance(error, pickle.UnpicklingError) and lines and lines[0].startswith("Weights only load failed"):
        # torch's advice to retry with weights_only=False is wrong here; its reason is further down
        detail = next((line.strip() for line in lines[1:] if line.strip().startswith("Unsupported")), "")
        return f"a damaged pickle{': ' + detail if detail else ''}"
    return f"{type(error).__name__}: {lines[0].split('. ')[0]}" if lines else (
        type(error).__name__ + (" (the file ends too early)" if isinstance(error, EOFError) else ""))


def extract_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model weights of our, the official ({'model': ...}), bare, or DataParallel checkpoints."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict):
        raise CheckpointError(f"expected checkpoint['model'] to be a state dict, found {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# SKD's rotation head, which checkpoints of networks trained without it (the release's ConvNet and WRN, RFS's
# ResNet-12) do not hold.
ROTATION_HEAD = ("rot_classifier.bias", "rot_classifier.weight")


def load_model_weights(model: nn.Module, path: str | Path, checkpoint: dict | None = None) -> dict:
    """Load a checkpoint's weights into `model` (strict, except a checkpoint with no rotation head at all,
    whose absence is said in one line); say exactly which keys or shapes differ. `checkpoint`: the already
    loaded content of `path`, to avoid reading it twice."""
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    state = extract_state_dict(checkpoint)
    expected = model.state_dict()
    if tuple(sorted(set(expected) - set(state))) == ROTATION_HEAD:
        print(f"note: {path} has no rotation head (trained without SKD's); rot_classifier keeps its initialisation")
        state = {**state, **{k: expected[k] for k in ROTATION_HEAD}}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(other_architecture(path, checkpoint, state, expected)
                              or f"{path}: does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return checkpoint


def other_architecture(path: str | Path, checkpoint: dict, state: dict[str, torch.Tensor],
                       expected: dict[str, torch.Tensor]) -> str | None:
    """For weights of another registered architecture than the model's (`expected`, its state dict),
    one line naming it, how that is known, and the flag that builds it; None where no registered
    architecture other than the model's fits them (a damaged or foreign file, another class count),
    which the key and shape lists describe better."""
    held, built = fitting_architectures(state), fitting_architectures(expected)
    if not held or set(held) & set(built):
        return None
    train_args = training_args(checkpoint)
    recorded = train_args.get("model_s") or train_args.get("model")  # what architecture_of reads, sans default
    name = recorded if recorded in held else held[0]
    how = "recorded in its args" if recorded in held else "told by its weights' shapes"
    fix = (f"leave --model out to use the checkpoint's, or pass --model {name}" if recorded in held
           else f"pass --model {name}")
    return (f"{path}: holds a {name} ({how}), not the {' / '.join(built) or 'model'} built for it: {fix} "
            f"(a Gen-1 teacher: --model_t)")


def fitting_architectures(state: dict[str, torch.Tensor]) -> list[str]:
    """The registered models with exactly the keys of `state` and its shapes, for its class count
    (classifier.weight's rows). Built on the meta device: shapes only, no memory or initialisation."""
    classes = int(state["classifier.weight"].shape[0]) if "classifier.weight" in state else 1
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fitting = []
    for name in list_models():
        with torch.device("meta"):
            candidate = create_model(name, classes, image_size=32)  # the image size shapes no weight
        if {k: tuple(v.shape) for k, v in candidate.state_dict().items()} == shapes:
            fitting.append(name)
    return fitting


def model_from_checkpoint(name: str, path: str | Path, checkpoint: dict, dataset: str | None,
                          image_size: int) -> nn.Module:
    """Model `name` sized to fit `checkpoint` (the class count read from classifier.weight), with
    its weights loaded. `checkpoint` is the loaded content of `path`."""
    state = extract_state_dict(checkpoint)
    if "classifier.weight" not in state:
        raise CheckpointError(f"{path}: has no classifier.weight; expected a {name} checkpoint")
    model = create_model(name, int(state["classifier.weight"].shape[0]), dataset, image_size=image_size)
    load_model_weights(model, path, checkpoint)
    return model


def recorded_model(checkpoint: dict, path: str | Path) -> str:
    """The registered architecture of the network in `checkpoint` (the content of `path`), from its run's
    arguments (architecture_of)."""
    name = architecture_of(training_args(checkpoint))
    if name not in list_models():
        raise CheckpointError(f"{path}: its run trained a {name!r}, which is not a registered model "
                              f"({', '.join(list_models())})")
    return name


def training_args(checkpoint: dict) -> dict:
    """The arguments of the run that wrote `checkpoint` (ours record them; official checkpoints do not: {})."""
    args = checkpoint.get("args")
    return args if isinstance(args, dict) else {}


def checkpoint_normalization(checkpoint: dict) -> Normalization | None:
    """The normalisation a model was trained with, when its checkpoint records it (ours do)."""
    norm = checkpoint.get("normalization")
    if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm:
        return None
    return Normalization(tuple(norm["mean"]), tuple(norm["std"]))
