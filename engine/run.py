"""A training run's folder from start to finish: the process set up and the run's header printed, the
run folder opened (or resumed) with its one writer's lock, its logger, and at the end the report (the
only reader of the test split)."""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

import published
import runtime.process
from engine.checkpoint import load_checkpoint, load_model_weights
from engine.checkpointer import Checkpointer
from engine.config import RunConfig, Schedule, TrainConfig
from engine.data import TrainingData, load_eval_split
from engine.loop import TrainState
from eval.report import final_report
from eval.validation import ValEvaluation
from models import architecture_of
from runtime import distributed
from runtime.folder_lock import FolderLock
from runtime.logger import ARTIFACT_RECORD, LOG_NAME, RunLogger, artifact_name, recorded_artifact
from runtime.process import Process
from util import REPO_DIR, UsageError, atomic_write, git_sha, source_files


def start_training_run(config: TrainConfig, settings: Sequence[str] = ()) -> tuple[TrainConfig, Process]:
    """Join the torchrun process group when launched by torchrun, pick the (per-rank) device, decide the
    precision (recorded in the config's flags, so that the argument dump and checkpoints say what ran),
    print the git sha, every flag and `settings` (where each schedule value came from: given, or
    published with its source), seed everything (per rank)."""
    process = runtime.process.start(config.process)
    distributed.per_rank_batch_size(config.data.batch_size)  # validates the global batch against the ranks
    config = replace(config, flags={**config.flags, "amp": process.amp})
    runtime.process.print_header(config.flags, process)
    for line in settings:
        print(f"setting: {line}")
    ranks = process.ranks
    if ranks.enabled:
        print(f"distributed: {ranks.world_size} processes ({torch.distributed.get_backend()}), global batch "
              f"{config.data.batch_size} = {ranks.world_size} x {config.data.batch_size // ranks.world_size}")
    runtime.process.seed(config.seed)
    return config, process


def stage_seed(seed: int, generation: int) -> int:
    """The seed of a stage's data order, augmentations and dropout masks: --seed itself for a first
    generation (Gen-0, RFS-simple, DVP's prior), so that their runs draw what they always drew; a
    distinct stream for each later generation, so that a student never sees its teacher's batches
    and augmentations at the same --seed. (An offset in the low 32 bits: the CPU generator's Mersenne
    twister reads only those of its seed.)"""
    return seed + generation * 1_000_000_007


def sgd(model: nn.Module, extra_parameters: list[nn.Parameter], schedule: Schedule) -> torch.optim.SGD:
    """SGD on the network (the first parameter group) and on what the method trains beside it (a
    second group, when there is any), with the schedule's lr, momentum and weight decay."""
    optimizer = torch.optim.SGD(model.parameters(), lr=schedule.learning_rate, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay)
    if extra_parameters:
        optimizer.add_param_group({"params": extra_parameters})
    return optimizer


def run_folder(run: RunConfig, name: str) -> Path:
    return Path(run.model_path) / name


def training_logger(folder: Path, config: TrainConfig, process: Process, name: str, job_type: str,
                    run_id: str | None = None) -> RunLogger:
    """W&B (project: --wandb_project or the last part of --model_path; group: --wandb_group or the
    run-folder name; name: wandb_run_name; config: the flags, the device and the precision that ran, the
    command line; tags: --tags and run_tags) and `log.jsonl` in the run folder."""
    wandb = config.run.wandb
    project = wandb.project or Path(config.run.model_path).name or "skd"
    recorded = {**config.flags, "device_name": process.device_name, "precision": process.precision,
                "command": shlex.join(sys.argv)}
    return RunLogger(folder / LOG_NAME, mode=wandb.mode, project=project, config=recorded, wandb_dir=folder,
                     tags=[*wandb.tags, *run_tags(config.flags, job_type)], run_id=run_id, group=wandb.group or name,
                     job_type=job_type, name=wandb_run_name(name, config.flags, job_type))


def wandb_run_name(folder: str, flags: dict[str, Any], method: str) -> str:
    """The W&B run's name: the method (and a later generation), then the run folder's name, which holds the
    dataset and the seed (its trial), so that a run and its folder are matched at a glance."""
    generation = flags.get("generation", 1)
    return f"{method}{f'-gen{generation}' if generation > 1 else ''} {folder}"


def run_tags(flags: dict[str, Any], method: str) -> list[str]:
    """What finds a run among a project's: dataset, method, architecture, seed, and a later generation."""
    tags = [f"dataset:{flags.get('dataset')}", f"method:{method}", f"model:{architecture_of(flags)}",
            f"seed:{flags.get('seed')}"]
    return tags + ([f"generation:{flags['generation']}"] if flags.get("generation", 1) > 1 else [])


def _trim_log(log: Path, last_epoch: int, phase: dict | None = None) -> None:
    """Keep the JSON-lines records of what the checkpoint holds: the method's epochs up to its epoch
    and, of a phase in progress, its epochs up to the saved one (a crash after a log line but before
    the next checkpoint must not leave an epoch logged twice once it is trained again)."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
            name = record.get("phase")
            if name is None:
                keep = record.get("epoch", 0) <= last_epoch
            else:  # a phase before the method's own: done, unless it is the one in progress
                keep = phase is None or name != phase["name"] or record.get(f"{name}_epoch", 0) <= phase["epoch"]
            if keep:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):
            pass  # a line cut short by the crash
    with atomic_write(log) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept))


def prepare_run(*, config: TrainConfig, process: Process, name: str, model: nn.Module,
                optimizer: torch.optim.Optimizer, job_type: str, identity: dict[str, Any],
                data: TrainingData | None = None, checkpoint_extra: dict | None = None,
                extra_modules: dict[str, nn.Module] | None = None, data_seed: int | None = None) -> TrainState:
    """Open the run folder: a fresh run (refusing a folder that holds a checkpoint), or with --resume
    the last checkpoint restored into everything the run's Checkpointer owns (weights, optimizer, grad
    scaler, extra modules, DropBlock ramp, a phase in progress, a mid-epoch stop) and the best val
    accuracy so far from best.pth. Under torchrun every rank restores; rank 0 alone writes and logs.

    `identity`: what a resumed run must share with the checkpoint (model, dataset, image size, method,
    the Gen-1 teacher); recorded in every checkpoint. `data`: the run's splits (its val split serves
    --eval_freq; its image size and normalisation go into every checkpoint). `extra_modules`: trained
    modules besides `model` (an objective's heads), checkpointed and restored under their keys.
    `data_seed`: the stage's seed of data order and dropout (stage_seed; default the run's seed).
    """
    validation = None
    if config.loop.eval_freq:
        if data is None or data.val is None:
            raise ValueError("eval_freq: prepare_run needs the run's TrainingData with its val split")
        validation = ValEvaluation(data.val, data.norm, replace(config.episodes, n_episodes=config.loop.val_episodes),
                                   process.amp)
    # fp16 gradients underflow without loss scaling; for bf16 and fp32 the scaler is a pass-through.
    scaler = torch.amp.GradScaler(next(model.parameters()).device.type, enabled=process.amp == "fp16")
    checkpointer = Checkpointer(model=model, optimizer=optimizer, scaler=scaler, flags=config.flags,
                                identity=identity, extra_modules=extra_modules,
                                extra={**(data.checkpoint_extra() if data is not None else {}),
                                       **(checkpoint_extra or {})})
    state = TrainState(checkpointer=checkpointer, folder=run_folder(config.run, name), logger=None,
                       validation=validation, data_seed=config.seed if data_seed is None else data_seed)
    state.lock = _lock_run_folder(state.folder) if distributed.is_main_process() else None
    try:
        args_file = _resume(state, config.schedule.epochs) if config.run.resume else _start_fresh(state)
    except BaseException:
        release_run_folder(state)
        raise
    if distributed.is_main_process():
        with atomic_write(state.folder / args_file) as tmp:
            tmp.write_text(json.dumps(config.flags, indent=2, default=str) + "\n")
        state.logger = training_logger(state.folder, config, process, name, job_type, checkpointer.wandb_id)
        state.logger.log_code(REPO_DIR, source_files())
        teacher = recorded_artifact(Path(identity["path_t"])) if identity.get("path_t") else None
        if teacher is not None:  # W&B's lineage: the teacher's checkpoint is this run's input
            state.logger.use_model(teacher, "teacher")
    else:
        state.logger = RunLogger(None, mode="disabled", project="", config={}, wandb_dir=state.folder)
    checkpointer.wandb_id = state.logger.wandb_id
    return state


def _lock_run_folder(folder: Path) -> FolderLock:
    """This process is the run folder's one writer (runtime.folder_lock) before anything in it is read."""
    lock = FolderLock(folder, what="run folder")
    lock.acquire()
    return lock


def release_run_folder(state: TrainState) -> None:
    """Give the run folder's lock back (the process's end does too); a folder this run made and left
    empty (a run refused after the lock) is removed."""
    if state.lock is not None:
        state.lock.release()
        state.lock = None


def _start_fresh(state: TrainState) -> str:
    """A new run: refuse a folder holding a checkpoint; returns the name of its arguments file."""
    if state.checkpoint_path.is_file():
        raise UsageError(f"{state.folder}: run folder already has a checkpoint; pass --resume to continue it, "
                         f"or a new --trial")
    # A run that crashed before its first checkpoint left a log (and maybe a best.pth) of epochs that are
    # trained again now.
    if distributed.is_main_process():
        (state.folder / LOG_NAME).unlink(missing_ok=True)
        state.best_path.unlink(missing_ok=True)
    return "args.json"


def _resume(state: TrainState, epochs: int) -> str:
    """Restore the last checkpoint; returns the name of this resumption's arguments file (args.json
    stays the original run's). `epochs`: the run's, to say so when the checkpoint already holds them all."""
    point = state.checkpointer.resume(state.checkpoint_path)
    state.resumed, state.start_epoch, state.phase, state.partial = True, point.epoch + 1, point.phase, point.partial
    if state.best_path.is_file():  # a resumed run must beat the best epoch before the interruption
        state.best_val_acc = float(load_checkpoint(state.best_path)["val_acc"])
    if distributed.is_main_process():
        _trim_log(state.folder / LOG_NAME, point.epoch, point.phase)
    where = (f"epoch {point.phase['epoch']} of phase {point.phase['name']}" if point.phase
             else f"epoch {point.epoch}")
    if point.epoch >= epochs and not point.phase and not point.partial:
        print(f"resume: {state.checkpoint_path} already holds all {point.epoch} epochs (--epochs {epochs}); "
              f"nothing left to train")
    else:
        print(f"resuming {state.checkpoint_path} after {where}"
              + (f", step {point.partial['step']} of epoch {point.partial['epoch']}" if point.partial else ""))
    phase = f"_{point.phase['name']}_{point.phase['epoch']}" if point.phase else ""
    return f"args.resume_after_epoch_{point.epoch}{phase}.json"


def final_weights(state: TrainState, config: TrainConfig) -> tuple[Path, str, int]:
    """What the final report evaluates: (checkpoint, choice for results.json, epoch). The last epoch
    (the paper's protocol), or with --final_checkpoint best, best.pth's weights loaded into the model."""
    if config.run.final_checkpoint == "last":
        return state.checkpoint_path, "last epoch", config.schedule.epochs
    best = load_model_weights(state.model, state.best_path)
    return state.best_path, f"best val (epoch {best['epoch']})", int(best["epoch"])


def log_checkpoints(state: TrainState, config: TrainConfig, process: Process) -> None:
    """The checkpoints --wandb_artifacts names as versions of the run's W&B artifact (type model): best.pth
    (alias best), then checkpoint.pth (latest, final), with what the run was; their references go to
    wandb_artifact.json beside them, for the lineage of the students and evaluations that read them."""
    choice = config.run.wandb.artifacts
    if choice == "none" or state.logger.wandb_run is None:
        return
    flags = config.flags
    metadata = {"method": published.card_of_training_args(flags).name if "epochs" in flags else None,
                "dataset": config.data.dataset, "architecture": architecture_of(flags), "seed": config.seed,
                "epochs": config.schedule.epochs, "generation": published.generation_of(flags),
                "best_val_acc": state.best_val_acc, "git": git_sha(), "precision": process.precision}
    files = [(state.best_path, ["best"])] if choice in ("best", "all") and state.best_path.is_file() else []
    files += [(state.checkpoint_path, ["final"])] if choice in ("final", "all") else []
    references = {}
    for path, aliases in files:
        reference = state.logger.log_model(path, artifact_name(state.folder.name), aliases,
                                           {**metadata, "file": path.name})
        if reference is not None:
            references[path.name] = reference
    if references:
        with atomic_write(state.folder / ARTIFACT_RECORD) as tmp:
            tmp.write_text(json.dumps(references, indent=2) + "\n")


def finish_training(state: TrainState, data: TrainingData, config: TrainConfig, process: Process) -> None:
    """Print the checkpoint path, run the few-shot report unless --no_final_eval (its episodes shared
    out over the ranks under torchrun), close the logger and the process group."""
    print(f"checkpoint: {state.checkpoint_path}", flush=True)
    if distributed.is_main_process():
        log_checkpoints(state, config, process)
    if config.run.final_eval:
        path, choice, epoch = final_weights(state, config)
        print(f"final evaluation: {path} ({choice})", flush=True)
        splits = {"val": data.val, "test": load_eval_split(config.data, config.episodes, "test", data.image_size)}
        extra = {"checkpoint": str(path), "checkpoint_choice": choice, "epoch": epoch,
                 "dataset": config.data.dataset, "git": git_sha(), "device": process.device_name,
                 "precision": process.precision, "args": config.flags}
        final_report(state.model, splits, data.norm, process.device, config.episodes, process.amp,
                     logger=state.logger, output=state.folder / "results.json" if distributed.is_main_process()
                     else None, extra=extra)
    state.logger.finish()
    release_run_folder(state)
    distributed.cleanup()
