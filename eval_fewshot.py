"""Few-shot evaluation of a trained model: N-way K-shot episodes on frozen
features (or logits), a classifier fitted per episode on the augmented support set, accuracy as
mean and 95% interval over episodes.

    python eval_fewshot.py --model_path save/.../checkpoint.pth --n_shots 1
    python eval_fewshot.py --model_path CKPT --dataset folder --data_root EuroSAT --preset bscd   # across domains
    python eval_fewshot.py --features FEATURES.npz --n_shots 5        # from `python -m tools.embed`'s file

Dataset, data root, image size and normalisation default to what the checkpoint was trained with.
`--dataset folder --data_root DIR` with no DIR/test/ evaluates on DIR's own class folders: a
checkpoint trained on one dataset, tested on another domain's classes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataset import dataset_names, load_split
from dataset.episodes import check_episode_feasible
from dataset.folder import RESIZE_MODES, class_folders, image_files, read_image_folder
from dataset.imageset import ImageSet
from published.profiles import Normalization, dataset_profile
from eval import CLASSIFIERS, DEFAULT_CLASSIFIER, summary_metrics, write_results
from eval.features import evaluate_features, feature_class_indices, read_features
from eval.fewshot import EvalConfig
from eval.report import evaluation_projection, run_evaluations
from models import DEFAULT_MODEL, list_models
import published
from runtime.process import Process, ProcessConfig
import engine.args
import engine.checkpoint
import engine.official_flags
import engine.run
import engine.trained
import runtime.distributed
import runtime.logger
import runtime.process
import util

# Evaluation protocols by name; flags given explicitly override a preset's values.
PRESETS: dict[str, dict[str, Any]] = {
    # BSCD-FSL (Guo et al., ECCV 2020, "A Broader Study of Cross-Domain Few-Shot Learning"): 5-way, 5/20/50
    # shots, 15 queries, 600 episodes; test images resized to 1.15 x the side and centre-cropped.
    "bscd": {"n_ways": 5, "shots": (5, 20, 50), "n_queries": 15, "n_test_runs": 600, "resize": "crop"},
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = util.ArgumentParser(description="SKD few-shot evaluation")
    g = parser.add_argument_group("checkpoint and model")
    g.add_argument("--model_path", default=None,
                   help="checkpoint: ours, the official {'model': state_dict}, a bare or a DataParallel state dict "
                        "(required unless --features)")
    g.add_argument("--features", default=None, metavar="FILE.npz",
                   help="evaluate episodes on the features `python -m tools.embed` wrote, instead of a checkpoint and "
                        "images: embed once, run many protocols")
    g.add_argument("--source_dataset", default=None, choices=dataset_names(),
                   help="the dataset the checkpoint was trained on, recorded as the source domain and, for an official "
                        "checkpoint (which records none), giving its normalisation and image size (default: the "
                        "checkpoint's, else --dataset)")
    g.add_argument("--model", choices=list_models(),
                   help="network architecture (default: the checkpoint's; resnet12_ssl where it records none)")
    g = parser.add_argument_group("evaluation")
    g.add_argument("--split", default="test", choices=["val", "test"], help="split the episodes come from")
    g.add_argument("--use_logit", action="store_true",
                   help="embed with the logits instead of the pooled feature (640-d for ResNet-12)")
    g.add_argument("--classifier", default=DEFAULT_CLASSIFIER, choices=CLASSIFIERS.names(),
                   help="LR: batched logistic regression (scikit-learn's problem); sklearn: scikit-learn itself")
    g.add_argument("--seed", type=int, default=0, help="seed of the support augmentations")
    g.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="a named protocol: bscd = BSCD-FSL's (5-way, 5, 20 and 50 shots, 15 queries, 600 episodes, "
                        "--resize crop); flags given explicitly override it")
    g.add_argument("--resize", default="stretch", choices=RESIZE_MODES,
                   help="folder datasets: stretch = resize each image to --image_size square; crop = resize to 1.15 x "
                        "--image_size, then the central square (BSCD-FSL's test transform)")
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments, a --preset's values filling every flag not given explicitly; `args.shots` is the list of
    shot settings to evaluate (the preset's, or --n_shots)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    preset = PRESETS.get(args.preset, {})
    if preset:
        parser.set_defaults(**{k: v for k, v in preset.items() if k != "shots"}, n_shots=None)
        args = parser.parse_args(argv)
    args.shots = [args.n_shots] if args.n_shots is not None else list(preset["shots"])
    if args.n_shots is None:
        args.n_shots = args.shots[0]
    if (args.model_path is None) == (args.features is None):
        raise util.UsageError("--model_path or --features: give one (a checkpoint to embed images with, or a "
                              "tools.embed file of features)")
    return args


def is_class_folder(data_root: str | Path | None, split: str) -> bool:
    """Whether a folder dataset's root is itself a set of class folders (another domain's classes, no splits)."""
    if not data_root or not Path(data_root).is_dir() or (Path(data_root) / split).is_dir():
        return False
    return any(image_files(d) for d in class_folders(Path(data_root)))


def load_images(args: argparse.Namespace) -> ImageSet:
    """The split to draw episodes from: `--data_root/<split>/` of the dataset, or, for `--dataset folder`
    whose root holds class folders and no split folders, the root's classes themselves."""
    if args.dataset == "folder" and is_class_folder(args.data_root, args.split):
        images = read_image_folder(Path(args.data_root), args.image_size, args.resize)
        print(f"target: {args.data_root}: {images.num_classes} classes, {len(images)} images (no {args.split}/ in it: "
              f"its class folders are the {args.split} classes)")
    elif args.resize != "stretch":
        if args.dataset != "folder":
            raise util.UsageError(f"--resize {args.resize}: applies to folder datasets; {args.dataset} is stored at "
                                  f"its own size")
        images = read_image_folder(Path(args.data_root) / args.split, args.image_size, args.resize)
    else:
        return load_split(args.dataset, args.data_root, args.split, args.image_size)
    images.profile = dataset_profile("folder", images.image_size)
    return images


def resolve_setting(args: argparse.Namespace, checkpoint: dict) -> None:
    """Fill --dataset, --data_root, --image_size and --model from the checkpoint where not given; say in
    one line each which value is used when it is not simply the checkpoint's."""
    recorded = engine.trained.trained_with(checkpoint)
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


def check_shots(class_indices: list[np.ndarray], args: argparse.Namespace, source: str) -> None:
    """Every shot setting's episodes fit the classes, checked before the first is evaluated."""
    for shots in args.shots:
        check_episode_feasible(class_indices, args.n_ways, shots, args.n_queries, source)


def eval_config(args: argparse.Namespace, n_aug: int | None = None) -> EvalConfig:
    """The episodes of this command (`n_aug`: the support copies, when not --n_aug_support_samples)."""
    return EvalConfig(args.n_ways, args.n_queries, args.n_test_runs,
                      args.n_aug_support_samples if n_aug is None else n_aug, args.eval_batch_size, args.seed)


def main_features(args: argparse.Namespace) -> None:
    """eval_fewshot.py --features: episodes on a tools.embed file, no network and no images."""
    if args.use_logit:
        raise util.UsageError("--use_logit: a --features file holds pooled features only")
    path = Path(args.features)
    data = read_features(path)
    device = util.resolve_device(args.device)
    print(f"device: {util.describe_device(device, args.device)}")
    available = data["augmented"].shape[1] if "augmented" in data else 0
    n_aug = args.n_aug_support_samples
    if available == 0:
        n_aug = 0
        print(f"supports: the plain features ({path} holds no augmented copies; `python -m tools.embed "
              f"--n_aug_support_samples {args.n_aug_support_samples}` stores them)")
    elif n_aug > available:
        raise util.UsageError(f"--n_aug_support_samples {n_aug}: {path} holds {available} augmented copies per image")
    folder = str(data["folder"]) if "folder" in data else str(path)
    check_shots(feature_class_indices(data["labels"]), args, str(path))
    print(f"features: {path}: {len(data['labels'])} images, {len(data['class_names'])} classes, from {folder}")
    start = time.perf_counter()
    results = []
    for shots in args.shots:
        for result in evaluate_features(data, args.split, eval_config(args, n_aug).setting(shots), device,
                                        (args.classifier,), args.seed):
            print(result.line())
            results.append(result)
    seconds = time.perf_counter() - start
    print(f"evaluated in {seconds:.1f} s on {device}")
    if args.output:
        source = str(data["source_domain"]) if "source_domain" in data else None
        write_results(results, Path(args.output),
                      {"features": str(path), "checkpoint": str(data["model_path"]) if "model_path" in data else None,
                       "dataset": "folder", "git": util.git_sha(), "seconds": seconds,
                       "device": util.describe_device(device, args.device), "args": vars(args)},
                      source_domain=args.source_dataset or source, target_domain=Path(folder).name)
        print(f"results: {args.output}")


def eval_logger(args: argparse.Namespace, checkpoint: dict,
                run_facts: dict[str, str]) -> runtime.logger.RunLogger | None:
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
    config = {**vars(args), **run_facts,
              "trained_with": {k: train_args.get(k) for k in ("dataset", "epochs", "seed", "trial")}}
    shots = "-".join(map(str, getattr(args, "shots", [args.n_shots])))  # parse_args sets shots; a bare parser not
    method = published.card_of_training_args(train_args).name if train_args else "official"  # the release's: none
    dataset = args.dataset or train_args.get("dataset")
    tags = ["eval", *engine.run.run_tags({**train_args, "dataset": dataset}, method), f"split:{args.split}",
            f"shots:{shots}"]
    return runtime.logger.RunLogger(None, mode=args.wandb, project=project, config=config, wandb_dir=wandb_dir,
                                   tags=tags, group=train_args.get("wandb_group") or run_name, job_type="eval",
                                   name=f"eval_{run_name}_{args.split}_{shots}shot")


def load_model_and_images(args: argparse.Namespace, checkpoint: dict, recorded: dict, source: str | None,
                          device: torch.device) -> tuple[ImageSet, torch.nn.Module, Normalization, str]:
    """The split to evaluate, the checkpoint's network on the device in eval mode, and the source's
    normalisation (of the dataset the network was trained on, never of the evaluated images) with
    where it came from."""
    images = load_images(args)
    model = engine.checkpoint.model_from_checkpoint(args.model, args.model_path, checkpoint, args.dataset,
                                                    images.image_size)
    util.to_device(model, device).eval()
    source_root = args.data_root if source == args.dataset else recorded["data_root"]
    norm, norm_source = engine.trained.evaluation_normalization(args.normalization, checkpoint, source, source_root,
                                                                images.image_size)
    print(f"normalization: {norm_source}")
    trained_size = checkpoint.get("image_size")
    if trained_size is not None and trained_size != images.image_size:
        print(f"warning: the model was trained on {trained_size}px images, these are {images.image_size}px "
              f"(--image_size {trained_size} resizes them)")
    return images, model, norm, norm_source


def open_checkpoint(args: argparse.Namespace) -> tuple[dict, dict, str | None]:
    """Read --model_path (a run folder: its checkpoint.pth), fill the flags it decides where not given;
    returns its content, what its run recorded and the source domain's dataset."""
    args.model_path = str(engine.trained.checkpoint_file(args.model_path))
    checkpoint = engine.checkpoint.load_checkpoint(args.model_path)
    resolve_setting(args, checkpoint)
    recorded = engine.trained.trained_with(checkpoint)
    source = args.source_dataset or recorded["dataset"] or args.dataset
    if args.image_size is None and args.dataset == "folder" and source not in (None, "folder"):
        args.image_size = dataset_profile(source).image_size  # an official checkpoint's size on another domain
        print(f"image_size: {args.image_size} (the {source} profile's)")
    return checkpoint, recorded, source


def write_output(args: argparse.Namespace, results: list, checkpoint: dict, recorded: dict, source: str | None,
                 extra: dict[str, Any]) -> None:
    """--output: the results with what produced them, and the source and target domains."""
    source_root = recorded["data_root"] if source == recorded["dataset"] else None
    write_results(results, Path(args.output), {"checkpoint": str(args.model_path), "dataset": args.dataset,
                                               "checkpoint_choice": engine.trained.checkpoint_choice(checkpoint),
                                               "git": util.git_sha(), **extra, "args": vars(args)},
                  source_domain=engine.trained.domain_name(source, source_root),
                  target_domain=engine.trained.domain_name(args.dataset, args.data_root))
    print(f"results: {args.output}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    util.check_positive(vars(args), "n_ways", "n_shots", "n_queries", "n_test_runs", "n_aug_support_samples",
                        "eval_batch_size")
    if args.output:
        util.check_writable_folder(Path(args.output).parent, "--output")
    if args.features:
        main_features(args)
        return
    # torchrun: the episodes are shared out over the ranks
    process = runtime.process.start(ProcessConfig(args.device, args.amp, args.tf32))
    args.amp = process.amp  # recorded as decided
    checkpoint, recorded, source = open_checkpoint(args)
    engine.official_flags.report_official_flags(args)
    runtime.process.print_header(vars(args), process)
    images, model, norm, norm_source = load_model_and_images(args, checkpoint, recorded, source, process.device)
    check_shots(images.class_indices(), args, images.source)
    episodes = eval_config(args)
    planned = [(args.split, images, episodes.setting(shots)) for shots in args.shots]
    evaluations = {"classifiers": (args.classifier,), "embeddings": ("logit" if args.use_logit else "feature",)}
    if process.device.type == "cpu" and process.ranks.is_main:  # minutes on a CPU: say how long before they start
        print(evaluation_projection(planned, model, norm, process.device, episodes, process.amp, **evaluations),
              flush=True)
    start = time.perf_counter()
    results = run_evaluations(planned, model, norm, process.device, episodes, process.amp, **evaluations)
    seconds = time.perf_counter() - start
    print(f"evaluated in {seconds:.1f} s on {process.device} ({process.precision})"
          + (f" x {process.ranks.world_size} processes" if process.ranks.enabled else ""))
    if process.ranks.is_main:
        facts = {"device": process.device_name, "precision": process.precision}
        if args.output:
            write_output(args, results, checkpoint, recorded, source,
                         {"seconds": seconds, **facts, "normalization": norm_source})
        logger = eval_logger(args, checkpoint, {"device_name": facts["device"], "precision": process.precision})
        if logger is not None:
            evaluated = runtime.logger.recorded_artifact(Path(args.model_path))
            if evaluated is not None:  # W&B's lineage: this evaluation read that checkpoint
                logger.use_model(evaluated, "evaluated")
            logger.summary(summary_metrics(results))
            logger.finish()
    runtime.distributed.cleanup()


if __name__ == "__main__":
    util.run_cli(main)
