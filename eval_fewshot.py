"""Few-shot evaluation of a trained model (SPEC section 5): N-way K-shot episodes on frozen
features (or logits), a classifier fitted per episode on the augmented support set, accuracy as
mean and 95% interval over episodes.

    python eval_fewshot.py --model_path save/.../checkpoint.pth --n_shots 1

Dataset, data root, image size and normalisation default to what the checkpoint was trained with.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from dataset import load_split
from dataset.profiles import NAMED_NORMALIZATIONS, Normalization, dataset_profile
from dataset.transforms import data_normalization
from eval import CLASSIFIERS, EpisodeSetting, evaluate, summary_metrics, write_results
from models import DEFAULT_MODEL, list_models
import engine.args
import engine.checkpoint
import runtime.distributed
import runtime.logger
import engine.official_flags
import util


def get_args_parser() -> argparse.ArgumentParser:
    parser = util.ArgumentParser(description="SKD few-shot evaluation")
    g = parser.add_argument_group("checkpoint and model")
    g.add_argument("--model_path", required=True,
                   help="checkpoint: ours, the official {'model': state_dict}, a bare or a DataParallel state dict")
    g.add_argument("--model", choices=list_models(),
                   help="network architecture (default: the checkpoint's; resnet12_ssl where it records none)")
    g = parser.add_argument_group("evaluation")
    g.add_argument("--split", default="test", choices=["val", "test"], help="split the episodes come from")
    g.add_argument("--use_logit", action="store_true", help="embed with the logits instead of the pooled feature (640-d for ResNet-12)")
    g.add_argument("--classifier", default="LR", choices=CLASSIFIERS,
                   help="LR: batched logistic regression (scikit-learn's problem); sklearn: scikit-learn itself")
    g.add_argument("--seed", type=int, default=0, help="seed of the support augmentations")
    engine.args.add_data_args(parser, dataset_default=None,
                              dataset_help="dataset (default: the one the checkpoint was trained on)", loader=False)
    engine.args.add_fewshot_args(parser)
    g = parser.add_argument_group("runtime and logging")
    engine.args.add_device_args(g, amp_help="autocast while embedding")
    g.add_argument("--output", default=None, help="write the results to this JSON file")
    g.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="log the results to a W&B run of their own (job type eval), in the training run's group")
    g.add_argument("--wandb_dir", default=None,
                   help="where W&B keeps its files (default: beside --output, else ~/.cache/skd/eval; never the "
                        "current folder)")
    # Evaluation reads a split's arrays in-process and augments supports as batched tensor ops: the release's
    # --num_workers, --test_batch_size and --batch_size have nothing to set (engine/official_flags.py).
    engine.official_flags.add_official_flags(parser, "eval_fewshot.py")
    return parser


def trained_with(checkpoint: dict) -> dict[str, Any]:
    """What the checkpoint records of its training run (ours do; official checkpoints record nothing)."""
    train_args = engine.checkpoint.training_args(checkpoint)
    return {"dataset": train_args.get("dataset"), "data_root": train_args.get("data_root"),
            "image_size": checkpoint.get("image_size")}


def resolve_setting(args: argparse.Namespace, checkpoint: dict) -> None:
    """Fill --dataset, --data_root, --image_size and --model from the checkpoint where not given; say in
    one line each which value is used when it is not simply the checkpoint's."""
    recorded = trained_with(checkpoint)
    for name in ("dataset", "data_root", "image_size"):
        given, trained = getattr(args, name), recorded[name]
        if given is None:
            setattr(args, name, trained)
            if trained is not None:
                print(f"{name}: {trained} (from the checkpoint)")
        elif trained is not None and given != trained:
            print(f"{name}: {given} (--{name}; the checkpoint was trained with {trained})")
    if args.model is None:
        args.model = engine.checkpoint.recorded_model(checkpoint, args.model_path)
        if args.model != DEFAULT_MODEL:
            print(f"model: {args.model} (from the checkpoint)")
    if args.dataset is None:
        raise util.UsageError(f"--dataset: {args.model_path} does not record the dataset it was trained on; "
                              f"pass --dataset")


def checkpoint_choice(checkpoint: dict) -> str:
    """Which weights of a run these are, as results.json says it (tables never mix choices): a best.pth
    ("best val (epoch K)"), an unfinished run's checkpoint ("epoch K of N"), else the last epoch."""
    if "val_acc" in checkpoint and "epoch" in checkpoint:
        return f"best val (epoch {checkpoint['epoch']})"
    epochs = engine.checkpoint.training_args(checkpoint).get("epochs")
    if epochs is not None and checkpoint.get("epoch") is not None and checkpoint["epoch"] < epochs:
        return f"epoch {checkpoint['epoch']} of {epochs}"
    return "last epoch"


def evaluation_normalization(args: argparse.Namespace, checkpoint: dict, image_size: int) -> tuple[Normalization, str]:
    """The checkpoint's normalisation, else the dataset profile's constants, else the statistics of
    the training split: never of the split being evaluated."""
    recorded = engine.checkpoint.checkpoint_normalization(checkpoint)
    if args.normalization == "auto" and recorded is not None:
        return recorded, "the checkpoint's"
    profile_norm = dataset_profile(args.dataset, image_size).normalization
    if args.normalization == "auto" and profile_norm is not None:
        return profile_norm, f"the {args.dataset} profile's constants"
    if args.normalization in ("auto", "data"):
        train = load_split(args.dataset, args.data_root, "train", image_size)
        return data_normalization(train.images), f"statistics of the training split {train.source}"
    return NAMED_NORMALIZATIONS[args.normalization], f"--normalization {args.normalization}"


def eval_logger(args: argparse.Namespace, checkpoint: dict, run_facts: dict[str, str]) -> runtime.logger.RunLogger | None:
    """A W&B run of its own (job type eval), in the group of the run that trained the checkpoint;
    it never resumes that run and writes nothing into the checkpoint's folder."""
    if args.wandb == "disabled":
        return None
    train_args = engine.checkpoint.training_args(checkpoint)
    run_name = Path(args.model_path).resolve().parent.name
    project = train_args.get("wandb_project") or (Path(train_args["model_path"]).name if train_args.get("model_path")
                                                   else "skd")
    # Never the current folder (a clone's root) nor the checkpoint's: beside --output, else the user's cache.
    default = Path(args.output).parent if args.output else Path.home() / ".cache" / "skd" / "eval"
    wandb_dir = Path(args.wandb_dir or default)
    config = {**vars(args), **run_facts, "trained_with": {k: train_args.get(k) for k in ("dataset", "epochs", "seed", "trial")}}
    return runtime.logger.RunLogger(None, mode=args.wandb, project=project, config=config, wandb_dir=wandb_dir,
                                   tags=["eval"], group=train_args.get("wandb_group") or run_name, job_type="eval",
                                   name=f"eval_{run_name}_{args.split}_{args.n_shots}shot")


def main() -> None:
    args = get_args_parser().parse_args()
    util.check_positive(args, "n_ways", "n_shots", "n_queries", "n_test_runs", "n_aug_support_samples",
                        "eval_batch_size")
    if args.output:
        util.check_writable_folder(Path(args.output).parent, "--output")
    ranks, device = runtime.distributed.setup(args.device)  # torchrun: the episodes are shared out over the ranks
    precision = util.setup_precision(args, device)  # --amp auto decided, --tf32 applied, --amp checked
    if not Path(args.model_path).is_file():
        raise util.UsageError(f"--model_path {args.model_path}: checkpoint not found")
    checkpoint = engine.checkpoint.load_checkpoint(args.model_path)
    resolve_setting(args, checkpoint)
    engine.official_flags.report_official_flags(args)
    util.print_run_header(args, device)

    images = load_split(args.dataset, args.data_root, args.split, args.image_size)
    model = engine.checkpoint.model_from_checkpoint(args.model, args.model_path, checkpoint, args.dataset, images.image_size)
    util.to_device(model, device).eval()
    norm, norm_source = evaluation_normalization(args, checkpoint, images.image_size)
    print(f"normalization: {norm_source}")
    trained_size = checkpoint.get("image_size")
    if trained_size is not None and trained_size != images.image_size:
        print(f"warning: the model was trained on {trained_size}px images, these are {images.image_size}px "
              f"(--image_size {trained_size} resizes them)")

    setting = EpisodeSetting(args.n_ways, args.n_shots, args.n_queries, args.n_test_runs, args.n_aug_support_samples)
    embedding = "logit" if args.use_logit else "feature"
    start = time.perf_counter()
    results = evaluate(model, images, args.split, setting, norm, device, (args.classifier,), (embedding,),
                       args.eval_batch_size, args.seed, args.amp)
    seconds = time.perf_counter() - start
    for result in results:
        print(result.line())
    print(f"evaluated in {seconds:.1f} s on {device} ({precision})"
          + (f" x {ranks.world_size} processes" if ranks.enabled else ""))
    if not ranks.is_main:
        runtime.distributed.cleanup()
        return
    if args.output:
        write_results(results, Path(args.output), {"checkpoint": str(args.model_path), "dataset": args.dataset,
                                                   "checkpoint_choice": checkpoint_choice(checkpoint),
                                                   "git": util.git_sha(), "seconds": seconds,
                                                   "device": util.describe_device(device, args.device),
                                                   "precision": precision,
                                                   "normalization": norm_source, "args": vars(args)})
        print(f"results: {args.output}")
    logger = eval_logger(args, checkpoint, {"device_name": util.describe_device(device, args.device),
                                            "precision": precision})
    if logger is not None:
        logger.summary(summary_metrics(results))
        logger.finish()
    runtime.distributed.cleanup()


if __name__ == "__main__":
    util.run_cli(main)
