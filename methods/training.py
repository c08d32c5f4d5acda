"""The wiring both training scripts share: one run of a method from its data (and teacher) to its
final report, each phase through the one training loop."""
from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

import engine.loop
import engine.run
from methods.base import Method


def train(method: type[Method], *, args: argparse.Namespace, device: torch.device, data: engine.run.TrainingData,
          name: str, identity: dict[str, Any], teacher: nn.Module | None = None,
          checkpoint_extra: dict[str, Any] | None = None) -> None:
    """Build the run of `method`, open (or resume) its run folder `name`, train its phases and its own
    epochs, check what must have stayed frozen, and report. `identity`: what a resumed run must share
    with its checkpoint besides the method (model, dataset, image size, the teacher file)."""
    run = method.from_args(args, device=device, data=data, teacher=teacher)
    optimizer = engine.run.sgd(run.model, run.extra_parameters(), args)
    data_seed = engine.run.stage_seed(args.seed, method.generation)
    state = engine.run.prepare_run(args=args, name=name, model=run.model, optimizer=optimizer, job_type=method.name,
                                   identity={**identity, "method": method.name}, data=data,
                                   checkpoint_extra=checkpoint_extra, extra_modules=run.extra_modules,
                                   data_seed=data_seed)
    loader = engine.run.make_train_loader(data, args, device, run.train_transform(), seed=data_seed)
    engine.loop.fit(state=state, make_step=lambda: run.make_step(state, loader), phases=run.pre_phases(state, loader),
                    loader=loader, args=args, device=device, after_epoch=run.after_epoch,
                    before_epoch=run.before_epoch)
    run.check_frozen()
    engine.run.finish_training(state, data, args, device)
