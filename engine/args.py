"""Flag groups shared by the scripts, so that every script spells a setting the same way, and the boundary
where a training script's parsed flags become typed values (training_config)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from dataset import dataset_names
from dataset.catalog import DATASETS, resolve_dataset_folder
from dataset.device_loader import AUGMENT_CHOICES, resolve_augment
from dataset.transforms import NORMALIZATIONS
from engine.config import DataConfig, LoopConfig, RunConfig, Schedule, TrainConfig, WandbConfig
from engine.official_flags import official_bool, report_official_flags
from eval.fewshot import EvalConfig
from runtime.process import ProcessConfig
from util import UsageError, as_typed, check_positive, check_writable_folder


@dataclass(frozen=True)
class Unset:
    """The default of a flag whose value depends on the method and the dataset (methods.registry
    resolves it): `fallback` is used where nothing is published. A parsed value that is still an
    Unset was not given on the command line."""
    fallback: Any

    def __str__(self) -> str:
        return as_typed(self.fallback)


# The optimisation flags every method's published settings fix (PublishedSettings' fields, by flag).
SCHEDULE_FLAGS = ("epochs", "lr_decay_epochs", "learning_rate", "lr_decay_rate", "batch_size", "weight_decay",
                  "momentum")


def comma_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def comma_strings(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


AMP_CHOICES = ("off", "auto", "bf16", "fp16")


def amp_choice(text: str) -> str:
    """--amp's value, with fp32 (what the run prints as its precision) accepted as off."""
    return "off" if text == "fp32" else text


def default_num_workers() -> int:
    """Data-loading workers: the cores this process may run on (its CPU affinity, which SLURM and
    containers narrow, not the machine's core count) shared among the ranks torchrun starts on the
    node, at most 8 (more rarely helps one GPU at these image sizes)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    ranks_on_node = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return min(8, cores // ranks_on_node)


def add_data_args(parser: argparse.ArgumentParser, dataset_default: str | Unset | None = Unset("miniImageNet"),
                  dataset_help: str = "dataset (the release's default: miniImageNet); 'synthetic' is built in and "
                                      "needs no files",
                  loader: bool = True) -> argparse._ArgumentGroup:
    """`loader`: the script reads images through a DataLoader (training), so --num_workers applies.
    `dataset_default`: an Unset by default, so that the training scripts know whether --dataset was given
    (Gen-1 then takes its teacher's; methods.registry fills the fallback). Returns the group, for a
    script's own data flags."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default=dataset_default, choices=dataset_names(), help=dataset_help)
    g.add_argument("--data_root", default=None,
                   help="folder holding <dataset>/ (official layout) or the dataset folder itself")
    if loader:
        g.add_argument("--augment", default="auto", choices=AUGMENT_CHOICES,
                       help="where the training augmentation runs: device = the split held on the training device "
                            "as uint8, each batch augmented there at once (bit-exact torchvision arithmetic, "
                            "per-image draws); workers = torchvision on PIL in --num_workers loader processes, the "
                            "official path; auto = device (DVP's two-view augmentation always runs on workers)")
        g.add_argument("--num_workers", type=int, default=default_num_workers(),
                       help="data-loading worker processes (default: the cores this process may use / ranks on the "
                            "node, at most 8; 0 loads in the main process; --augment workers only)")
    g.add_argument("--image_size", type=int, default=None,
                   help="resize images to N x N (default: the data's own size)")
    g.add_argument("--normalization", default="auto", choices=NORMALIZATIONS,
                   help="per-channel normalisation: auto = official constants for the benchmarks and the training "
                        "images' statistics for --dataset folder; evaluation uses what the checkpoint was trained with")
    return g


def add_fewshot_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("few-shot evaluation")
    g.add_argument("--n_ways", type=int, default=5, help="classes per episode")
    g.add_argument("--n_shots", type=int, default=1, help="support images per class")
    g.add_argument("--n_queries", type=int, default=15, help="query images per class")
    g.add_argument("--n_test_runs", type=int, default=600, help="episodes per evaluation")
    g.add_argument("--n_aug_support_samples", type=int, default=5, help="augmented copies of each support image")
    g.add_argument("--eval_batch_size", type=int, default=256, help="images per forward pass when embedding")


def add_device_args(g: argparse._ActionsContainer, amp_help: str = "autocast precision of the network") -> None:
    g.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N (default: cuda when a usable GPU is visible, else cpu; the run prints "
                        "which and why)")
    g.add_argument("--amp", default="off", type=amp_choice, choices=AMP_CHOICES,
                   help=f"{amp_help}: off or fp32 (fp32, or tf32 with --tf32), bf16, fp16 (CUDA, with loss scaling), "
                        "auto (bf16 where the device runs it natively, else fp16 on a GPU, else off); losses, "
                        "softmaxes and statistics stay float32")
    g.add_argument("--tf32", action="store_true",
                   help="CUDA, capability 8.0+: let fp32 convolutions and matmuls round to TF32 (faster; results then "
                        "say tf32). Off by default, so that fp32 is fp32")


def add_training_args(parser: argparse.ArgumentParser, learning_rate: float, lr_decay_epochs: str) -> None:
    """The schedule flags. Not given, each takes the method's published value for --dataset (the run
    prints it with its source), else the default shown."""
    g = parser.add_argument_group("optimisation (not given: the published value for --dataset and the method, "
                                  "printed with its source; else the default shown)")
    g.add_argument("--epochs", type=int, default=Unset(65), help="training epochs")
    g.add_argument("--batch_size", type=int, default=Unset(64),
                   help="images per step before rotations, global: under torchrun each of N ranks takes batch_size/N")
    g.add_argument("--learning_rate", type=float, default=Unset(learning_rate), help="SGD learning rate at the start")
    g.add_argument("--lr_decay_epochs", type=comma_ints, default=Unset(comma_ints(lr_decay_epochs)),
                   help="comma-separated epochs after which lr is multiplied by --lr_decay_rate")
    g.add_argument("--lr_decay_rate", type=float, default=Unset(0.1), help="lr factor at each decay epoch")
    g.add_argument("--weight_decay", type=float, default=Unset(5e-4), help="SGD weight decay")
    g.add_argument("--momentum", type=float, default=Unset(0.9), help="SGD momentum")
    g.add_argument("--cosine", action="store_true", help="cosine annealing instead of step decay")


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model selection on val (the test split is read only by the final report)")
    g.add_argument("--eval_freq", type=int, default=0,
                   help="evaluate the val split every E epochs and at the last, logging val_1shot_acc, val_5shot_acc "
                        "and their mean val_acc, and keep best.pth by val_acc beside checkpoint.pth (0: off)")
    g.add_argument("--val_episodes", type=int, default=200,
                   help="fixed val episodes per shot setting for --eval_freq (features, logistic regression)")
    g.add_argument("--final_checkpoint", default="last", choices=["last", "best"],
                   help="what the final report evaluates: the last epoch (the paper's protocol) or best.pth "
                        "(needs --eval_freq)")


def add_run_args(parser: argparse.ArgumentParser, tags: str) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--model_path", default="save",
                   help="parent folder of run folders; its last part names the W&B project")
    g.add_argument("--tags", type=comma_strings, default=comma_strings(tags), help="comma-separated W&B tags")
    g.add_argument("-t", "--trial", default="1", help="experiment id, part of the run-folder name")
    g.add_argument("--seed", type=int, default=0,
                   help="seeds initialisation, data order, augmentation and dropout (per rank under torchrun)")
    g.add_argument("--dropblock_mask", choices=("full", "release"), default=None,
                   help="DropBlock's mask: full = every seed zeroes its b x b block (the method as published); "
                        "release = the official code's mask, whose seeds zero their full block only when the seed "
                        "count is coprime with b^2 (default: release under --official_quirks, else full)")
    add_device_args(g)
    g.add_argument("--deterministic", action="store_true",
                   help="CUDA: deterministic cuDNN/cuBLAS algorithms and no cuDNN autotuning, so that a run (or a "
                        "resumed run) repeats bit for bit; slower. CPU runs are deterministic without it")
    g.add_argument("--compile", action="store_true",
                   help="run the training step (forward and losses; backward follows) through torch.compile: fewer "
                        "kernel launches per step; the first steps compile (minutes on a small CPU). Checkpoints are "
                        "the same format")
    g.add_argument("--resume", action="store_true", help="continue the run in the run folder from its last checkpoint")
    g.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="W&B mode; auto: online when logged in, otherwise offline")
    g.add_argument("--wandb_project", default=None, help="W&B project (default: last part of --model_path)")
    g.add_argument("--wandb_artifacts", default="all", choices=["none", "final", "best", "all"],
                   help="checkpoints logged as W&B artifacts of type model at the end: all (default: checkpoint.pth "
                        "and, where --eval_freq keeps it, best.pth: what students and evaluations read, kept when a "
                        "cluster's scratch folder goes with its job), final (checkpoint.pth), best (best.pth), none")
    g.add_argument("--wandb_group", default=None,
                   help="W&B group (default: the run-folder name); evaluations of the checkpoint join it")
    g.add_argument("--log_interval", type=int, default=20,
                   help="steps between progress-bar updates, non-finite loss checks and, under torchrun, the ranks' "
                        "check for a stop signal (each reads the GPU once): SIGTERM stops within this many steps")
    g.add_argument("--halt_on_divergence", action="store_true",
                   help="stop (exit code 1, as a non-finite loss) instead of warning when a window of --log_interval "
                        "steps has a mean loss 10x the first step's, or an epoch's training accuracy is at chance")
    g.add_argument("--no_final_eval", action="store_true", help="skip the few-shot report at the end of training")


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("distributed (launch with torchrun; --batch_size stays the global batch)")
    g.add_argument("--bn_stats", default="global", choices=["global", "per_rank"],
                   help="under torchrun: global = BatchNorm statistics and DropBlock's rescale over the global batch, "
                        "so N ranks take the step one process takes at --batch_size; "
                        "per_rank = each rank's share only (plain DDP, no extra communication)")
    g.add_argument("--sync_bn", action="store_true",
                   help="accepted for older command lines: global BatchNorm statistics are the default (--bn_stats)")


def add_training_script_args(parser: argparse.ArgumentParser, learning_rate: float, lr_decay_epochs: str,
                             tags: str) -> None:
    """Everything both training scripts accept besides their stage's own flags."""
    data = add_data_args(parser)
    data.add_argument("--use_trainval", nargs="?", const=True, default=False, type=official_bool,
                      help="train on train+val (the trainval split); the release's `--use_trainval True` is accepted")
    add_training_args(parser, learning_rate, lr_decay_epochs)
    add_fewshot_args(parser)
    add_selection_args(parser)
    add_run_args(parser, tags)
    add_distributed_args(parser)


def run_name_suffix(args: argparse.Namespace) -> str:
    """The end of the official run-folder names: [_cosine]_trial_<t>[_trainval]."""
    trial = f"{args.trial}_trainval" if args.use_trainval else args.trial
    return f"{'_cosine' if args.cosine else ''}_trial_{trial}"


def check_training_flags(args: argparse.Namespace) -> None:
    """Refuse, in one line naming the flag, a value no run could use, before anything is printed or written."""
    check_positive(vars(args), "epochs", "batch_size", "n_ways", "n_shots", "n_queries", "n_test_runs",
                   "n_aug_support_samples", "eval_batch_size", "log_interval", "val_episodes")
    for name in ("learning_rate", "lr_decay_rate"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name}: expected a positive number, got {getattr(args, name)}")
    check_writable_folder(args.model_path, "--model_path")
    if args.dataset in DATASETS:  # a missing data folder is one line before the header, not after it
        resolve_dataset_folder(DATASETS.get(args.dataset), args.data_root)
    if args.eval_freq < 0:
        raise UsageError(f"--eval_freq: expected 0 (off) or a number of epochs, got {args.eval_freq}")
    if args.final_checkpoint == "best" and not args.eval_freq:
        raise UsageError("--final_checkpoint best: needs --eval_freq, which keeps best.pth by val accuracy")


def training_config(args: argparse.Namespace, device_augment_refusal: str | None = None) -> TrainConfig:
    """A training script's parsed flags (every published default already filled) as the run's values,
    checked. `device_augment_refusal`: why the method's augmentation cannot run with --augment device (it
    then runs on loader workers, and an explicit --augment device is refused). --augment is recorded as
    decided; --amp is decided with the device (engine.run.start_training_run)."""
    report_official_flags(args)  # a refusal comes before anything is printed
    if device_augment_refusal is not None and args.augment == "device":
        raise UsageError(f"--augment device: {device_augment_refusal}; use --augment workers (or auto)")
    check_training_flags(args)
    args.augment = "workers" if device_augment_refusal is not None else resolve_augment(args.augment)
    return TrainConfig(
        schedule=Schedule(args.epochs, args.learning_rate, tuple(args.lr_decay_epochs), args.lr_decay_rate,
                          args.cosine, args.momentum, args.weight_decay),
        data=DataConfig(args.dataset, args.data_root, args.image_size, args.normalization,
                        bool(getattr(args, "use_trainval", False)), args.batch_size, args.num_workers, args.augment),
        process=ProcessConfig(args.device, args.amp, args.tf32, args.deterministic),
        loop=LoopConfig(args.log_interval, args.eval_freq, args.val_episodes, args.halt_on_divergence, args.compile),
        run=RunConfig(args.model_path, args.resume, not args.no_final_eval, args.final_checkpoint,
                      WandbConfig(args.wandb, args.wandb_project, args.wandb_group, tuple(args.tags),
                                  args.wandb_artifacts)),
        episodes=EvalConfig(args.n_ways, args.n_queries, args.n_test_runs, args.n_aug_support_samples,
                            args.eval_batch_size, args.seed),
        seed=args.seed, flags=dict(vars(args)))
