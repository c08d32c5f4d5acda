"""The wiring both training scripts share: one run of a method from its data (and teacher) to its
final report, each phase through the one training loop."""
from __future__ import annotations

from typing import Any

import engine.loop
import engine.run
from engine.config import TrainConfig
from engine.data import TrainingData, make_train_loader
from methods.base import Method
from runtime.process import Process


def train(run: Method, *, config: TrainConfig, process: Process, data: TrainingData, name: str,
          identity: dict[str, Any], checkpoint_extra: dict[str, Any] | None = None) -> None:
    """Open (or resume) the run folder `name` of `run` (one run of a method, built from its values), train
    its phases and its own epochs, check what must have stayed frozen, and report. `identity`: what a
    resumed run must share with its checkpoint besides the method (model, dataset, image size, the
    teacher file)."""
    method = type(run)
    optimizer = engine.run.sgd(run.model, run.extra_parameters(), config.schedule)
    data_seed = engine.run.stage_seed(config.seed, method.generation)
    state = engine.run.prepare_run(config=config, process=process, name=name, model=run.model, optimizer=optimizer,
                                   job_type=method.name, identity={**identity, "method": method.name}, data=data,
                                   checkpoint_extra=checkpoint_extra, extra_modules=run.extra_modules,
                                   data_seed=data_seed)
    loader = make_train_loader(data, config.data, process.device, data_seed, run.train_transform())
    engine.loop.fit(state=state, make_step=lambda: run.make_step(state, loader), loader=loader,
                    schedule=config.schedule, loop=config.loop, device=process.device, amp=process.amp,
                    phases=run.pre_phases(state, loader), after_epoch=run.after_epoch, before_epoch=run.before_epoch)
    run.check_frozen()
    engine.run.finish_training(state, data, config, process)
