"""Checkpoints: the official dict format ({'epoch', 'model', 'optimizer'} plus our extras), written
atomically, read without executing code, and loaded into a model with exact key checks."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dataset.transforms import Normalization
from models import create_model
from util import CheckpointError, atomic_write

CHECKPOINT_NAME = "checkpoint.pth"  # the last epoch's
BEST_NAME = "best.pth"  # the best epoch by val accuracy (--eval_freq), beside it


def save_checkpoint(state: dict, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def extract_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model weights of our, the official ({'model': ...}), bare, or DataParallel checkpoints."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict):
        raise CheckpointError(f"expected checkpoint['model'] to be a state dict, found {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_model_weights(model: nn.Module, path: str | Path, checkpoint: dict | None = None) -> dict:
    """Load a checkpoint's weights into `model` (strict); say exactly which keys or shapes differ.
    `checkpoint`: the already loaded content of `path`, to avoid reading it twice."""
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    state = extract_state_dict(checkpoint)
    expected = model.state_dict()
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
        raise CheckpointError(f"{path}: does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return checkpoint


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
