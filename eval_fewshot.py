"""Few-shot evaluation of a trained model (SPEC section 5): N-way K-shot episodes on frozen
features (or logits), a classifier fitted per episode on the augmented support set, accuracy as
mean and 95% interval over episodes.

    python eval_fewshot.py --model_path save/.../checkpoint.pth --dataset CIFAR-FS --data_root DIR --n_shots 1
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from dataset import load_split
from dataset.transforms import choose_normalization
from eval import CLASSIFIERS, EpisodeSetting, evaluate, summary_metrics, write_results
from models import list_models
import engine.args
import engine.checkpoint
import engine.logger
import util


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("SKD few-shot evaluation")
    parser.add_argument("--model", default="resnet12_ssl", choices=list_models())
    parser.add_argument("--model_path", required=True,
                        help="checkpoint: ours, the official {'model': state_dict}, a bare or a DataParallel state dict")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--use_logit", action="store_true", help="embed with the logits instead of the 640-d feature")
    parser.add_argument("--classifier", default="LR", choices=CLASSIFIERS,
                        help="LR: batched logistic regression (scikit-learn's problem); sklearn: scikit-learn itself")
    parser.add_argument("--output", default=None, help="write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the support augmentations")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="autocast while embedding")
    parser.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"],
                        help="add the results to the summary of the W&B run that trained the checkpoint (when it has one)")
    engine.args.add_data_args(parser)
    engine.args.add_fewshot_args(parser)
    return parser


def log_to_training_run(checkpoint: dict, checkpoint_path: str, results: list, mode: str) -> None:
    """Put the results in the W&B summary of the run that wrote the checkpoint, next to its curves."""
    train_args = checkpoint.get("args")
    if not checkpoint.get("wandb_id") or not isinstance(train_args, dict) or mode == "disabled":
        return
    run_args = argparse.Namespace(**{**train_args, "wandb": mode})
    logger = engine.logger.RunLogger(Path(checkpoint_path).resolve().parent, run_args, checkpoint["wandb_id"])
    logger.summary(summary_metrics(results))
    logger.finish()


def main() -> None:
    args = get_args_parser().parse_args()
    util.check_positive(args, "n_ways", "n_shots", "n_queries", "n_test_runs", "n_aug_support_samples",
                        "eval_batch_size")
    device = util.resolve_device(args.device)
    amp = util.autocast(device, args.amp)
    util.print_run_header(args)

    checkpoint = engine.checkpoint.load_checkpoint(args.model_path)
    images = load_split(args.dataset, args.data_root, args.split, args.image_size)
    model = engine.checkpoint.model_from_checkpoint(args.model, args.model_path, checkpoint, args.dataset, images.image_size)
    util.to_device(model, device).eval()

    norm = engine.checkpoint.checkpoint_normalization(checkpoint)
    if norm is None or args.normalization != "auto":
        norm = choose_normalization(args.normalization, args.dataset, images.images)
    trained_size = checkpoint.get("image_size")
    if trained_size is not None and trained_size != images.image_size:
        print(f"warning: the model was trained on {trained_size}px images, these are {images.image_size}px "
              f"(--image_size {trained_size} resizes them)")

    setting = EpisodeSetting(args.n_ways, args.n_shots, args.n_queries, args.n_test_runs, args.n_aug_support_samples)
    embedding = "logit" if args.use_logit else "feature"
    start = time.perf_counter()
    results = evaluate(model, images, args.split, setting, norm, device, (args.classifier,), (embedding,),
                       args.eval_batch_size, args.seed, amp)
    seconds = time.perf_counter() - start
    for result in results:
        print(result.line())
    print(f"evaluated in {seconds:.1f} s on {device}")
    if args.output:
        write_results(results, Path(args.output), {"checkpoint": str(args.model_path), "dataset": args.dataset,
                                                   "git": util.git_sha(), "seconds": seconds,
                                                   "args": vars(args)})
        print(f"results: {args.output}")
    log_to_training_run(checkpoint, args.model_path, results, args.wandb)


if __name__ == "__main__":
    util.run_cli(main)
