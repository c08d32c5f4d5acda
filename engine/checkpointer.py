"""One object owns what a training run saves and restores: the network (under the official "model"
key), its optimizer and grad scaler, the modules trained beside it (each under its own key), the
DropBlock ramp's counters, the run's identity and arguments, the W&B run id, a phase before the
method's own in progress (SSKD's teacher head: its epoch and optimizer) and, for a run stopped mid-epoch,
every rank's RNG streams and metric sums. detectron2's Checkpointer and DINO's
restart_from_checkpoint keep the same in one place."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint, training_args
from models.dropblock import dropblock_calls, set_dropblock_calls
from runtime import distributed
from util import CheckpointError

# How each identity entry is set on the command line, for the one-line refusal.
RESUME_FLAGS = {"image_size": "image size", "teacher_sha256": "a teacher file of sha256", "path_t": "--path_t",
                "method": "the method (--objective)"}


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run goes on: after `epoch` completed epochs of the method's own training, or
    inside the phase before it named in `phase`; `partial`: this rank's part of a mid-epoch stop."""
    epoch: int
    phase: dict | None  # {"name", "epoch", "optimizer"} of a phase before the method's own, in progress
    partial: dict | None  # {"epoch", "step", "rng", "meter"}


class Checkpointer:
    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 flags: dict[str, Any], identity: dict[str, Any],
                 extra_modules: dict[str, nn.Module] | None = None, extra: dict[str, Any] | None = None) -> None:
        """`flags`: the run's command line as resolved, recorded under "args" (the release's key) for what
        reads a checkpoint's training settings back; `identity`: what a resumed run must share with the
        checkpoint (model, dataset, image size, method, the teacher file); `extra`: plain entries saved as
        they are (image size, normalisation, the teacher's path)."""
        self.model, self.optimizer, self.scaler, self.flags = model, optimizer, scaler, flags
        self.identity = identity
        self.extra_modules = extra_modules or {}
        self.extra = {"identity": identity, **(extra or {})}
        self.wandb_id: str | None = None

    def state_dict(self, *, epoch: int, phase: dict | None = None) -> dict:
        """The checkpoint after `epoch` epochs of the method's own training (the official keys first)."""
        checkpoint = {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),  # fp16's loss scale; empty when the scaler is a pass-through
            "args": dict(self.flags),
            "dropblock_calls": dropblock_calls(self.model),
            "wandb_id": self.wandb_id,
            **{key: module.state_dict() for key, module in self.extra_modules.items()},
            **self.extra,
        }
        if phase is not None:
            checkpoint["phase"] = phase
        return checkpoint

    def save(self, path: Path, checkpoint: dict) -> None:
        save_checkpoint(checkpoint, path)

    def resume(self, path: Path) -> ResumePoint:
        """Restore everything from `path`, refusing in one line a checkpoint of another run."""
        if not path.is_file():
            raise CheckpointError(f"{path}: --resume given but the run folder has no checkpoint")
        checkpoint = load_checkpoint(path)
        self._check_identity(checkpoint, path)
        load_model_weights(self.model, path, checkpoint)
        for key, module in self.extra_modules.items():
            if key not in checkpoint:
                raise CheckpointError(f"{path}: has no '{key}' to resume this objective from")
            module.load_state_dict(checkpoint[key])
        if "optimizer" not in checkpoint:
            raise CheckpointError(f"{path}: has no optimizer state to resume from")
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):  # fp16 runs: continue with the loss scale reached, not a re-warm
            self.scaler.load_state_dict(checkpoint["scaler"])
        set_dropblock_calls(self.model, checkpoint.get("dropblock_calls", []))
        self.wandb_id = checkpoint.get("wandb_id")
        return ResumePoint(int(checkpoint["epoch"]), checkpoint.get("phase"), _partial_epoch(checkpoint, path))

    def _check_identity(self, checkpoint: dict, path: Path) -> None:
        """Refuse to resume a checkpoint made with another model, dataset, image size, method or teacher."""
        recorded = checkpoint.get("identity")
        if not isinstance(recorded, dict):  # checkpoints written before identities were recorded
            recorded = {**training_args(checkpoint), "image_size": checkpoint.get("image_size")}
        for key, value in self.identity.items():
            if key in recorded and recorded[key] is not None and recorded[key] != value:
                flag = RESUME_FLAGS.get(key, f"--{key}")
                raise CheckpointError(f"--resume: {path} was trained with {flag} {recorded[key]}, this run has "
                                      f"{value}; use a new --trial or the original setting")


def _partial_epoch(checkpoint: dict, path: Path) -> dict | None:
    """This rank's part of a mid-epoch checkpoint (engine.loop): {"epoch", "step", "rng", "meter"}."""
    partial = checkpoint.get("partial")
    if not partial:
        return None
    ranks = distributed.current()
    if partial["world_size"] != ranks.world_size:
        raise CheckpointError(f"--resume: {path} was stopped mid-epoch with {partial['world_size']} processes; resume "
                              f"it with the same number (this run has {ranks.world_size})")
    return {"epoch": int(partial["epoch"]), "step": int(partial["step"]), **partial["ranks"][ranks.rank]}
