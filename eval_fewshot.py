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
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataset import dataset_names, load_split
from dataset.episodes import check_episode_feasible, sample_episodes
from dataset.folder import RESIZE_MODES, class_folders, image_files, read_image_folder
from dataset.imageset import ImageSet
from dataset.profiles import NAMED_NORMALIZATIONS, Normalization, dataset_profile
from dataset.transforms import data_normalization
from eval import CLASSIFIERS, EpisodeSetting, evaluate, summary_metrics, write_results
from eval.classifiers import classify
from eval.fewshot import SUPPORT_IMAGES_PER_CHUNK, FewShotResult, l2_normalize
from eval.report import evaluation_projection
from models import DEFAULT_MODEL, list_models
import engine.args
import engine.checkpoint
import runtime.distributed
import runtime.logger
import engine.official_flags
import util

# Evaluation protocols by name; flags given explicitly override a preset's values.
PRESETS: dict[str, dict[str, Any]] = {
    # BSCD-FSL (Guo et al., ECCV 2020, "A Broader Study of Cross-Domain Few-Shot Learning"): 5-way, 5/20/50
    # shots, 15 queries, 600 episodes; test images resized to 1.15 x the side and centre-cropped.
    "bscd": {"n_ways": 5, "shots": (5, 20, 50), "n_queries": 15, "n_test_runs": 600, "resize": "crop"},
}
FEATURE_KEYS = ("features", "labels", "class_names", "paths")  # what a tools.embed file holds at least


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
    g.add_argument("--classifier", default="LR", choices=CLASSIFIERS,
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


def domain_name(dataset: str | None, data_root: str | Path | None) -> str | None:
    """A domain as results files name it: the dataset, or for a folder dataset the folder's name."""
    if dataset == "folder" and data_root:
        return Path(data_root).resolve().name
    return dataset


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


def checkpoint_file(given: str) -> Path:
    """--model_path as a checkpoint file: a file as given; a run folder's checkpoint.pth (its last epoch,
    the paper's protocol), said in one line; a folder without one refused, naming what it holds."""
    path = Path(given)
    if path.is_file():
        return path
    if not path.is_dir():
        raise util.UsageError(f"--model_path {given}: checkpoint not found")
    last, best = path / engine.checkpoint.CHECKPOINT_NAME, path / engine.checkpoint.BEST_NAME
    if last.is_file():
        other = f"; best.pth: give {best} as --model_path" if best.is_file() else ""
        print(f"checkpoint: {last} (the run folder's last epoch{other})")
        return last
    found = sorted(p.name for p in path.glob("*.pth") if p.is_file())
    held = (f"it holds {', '.join(found[:3])}{', ...' if len(found) > 3 else ''}: give one as --model_path" if found
            else "it holds no .pth file")
    raise util.UsageError(f"--model_path {given}: a folder without {engine.checkpoint.CHECKPOINT_NAME} (a run "
                          f"folder's last-epoch checkpoint); {held}")


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


def read_features(path: Path) -> dict[str, np.ndarray]:
    """A tools.embed file's arrays (np.load, no pickles), refused with one line if it is none or has no labels."""
    if not path.is_file():
        raise util.UsageError(f"--features {path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except Exception as e:  # a damaged zip or header fails in many ways
        raise util.UsageError(f"--features {path}: not a readable .npz "
                              f"({type(e).__name__}: {str(e).split('. ')[0]})") from None
    missing = [k for k in FEATURE_KEYS if k not in data]
    if missing:
        raise util.UsageError(f"--features {path}: lacks {', '.join(missing)}; expected a file of "
                              f"`python -m tools.embed`")
    if (data["labels"] < 0).any():
        raise util.UsageError(f"--features {path}: its images have no classes (embedded from a flat folder); episodes "
                              f"need a folder with one sub-folder per class")
    return data


def feature_class_indices(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each class's images, in file order (as ImageSet.class_indices)."""
    order = np.argsort(labels, kind="stable")
    return np.split(order, np.cumsum(np.bincount(labels))[:-1])


def check_shots(class_indices: list[np.ndarray], args: argparse.Namespace, source: str) -> None:
    """Every shot setting's episodes fit the classes, checked before the first is evaluated."""
    for shots in args.shots:
        check_episode_feasible(class_indices, args.n_ways, shots, args.n_queries, source)


def evaluate_features(data: dict[str, np.ndarray], split: str, setting: EpisodeSetting, device: torch.device,
                      classifiers: tuple[str, ...], seed: int) -> list[FewShotResult]:
    """eval.fewshot.evaluate's episodes, on features embedded beforehand: the same episode sampler and classifiers
    on L2-normalised features. Supports are the file's augmented copies (the first setting.n_aug of each image)
    when it has them, else the plain features (setting.n_aug 0)."""
    class_indices = feature_class_indices(data["labels"])
    s = setting
    episodes = sample_episodes(class_indices, s.n_episodes, s.n_ways, s.n_shots, s.n_queries, "--features")
    features = torch.from_numpy(data["features"]).to(device)
    augmented = torch.from_numpy(data["augmented"][:, :s.n_aug]).to(device) if s.n_aug else None
    support_index = torch.from_numpy(np.stack([e.support.reshape(-1) for e in episodes])).to(device)
    query_index = torch.from_numpy(np.stack([e.query.reshape(-1) for e in episodes])).to(device)
    support_labels = torch.arange(s.n_ways, device=device).repeat_interleave(s.n_shots).repeat(max(s.n_aug, 1))
    query_labels = torch.arange(s.n_ways).repeat_interleave(s.n_queries)
    per_chunk = max(1, SUPPORT_IMAGES_PER_CHUNK // (support_index.shape[1] * max(s.n_aug, 1)))
    predictions = {clf: [] for clf in classifiers}
    for start in range(0, len(episodes), per_chunk):
        ids = support_index[start:start + per_chunk]
        if augmented is None:
            support = features[ids]
        else:  # (E, shots, n_aug, d) -> copy-major, as eval.fewshot tiles the supports
            support = augmented[ids].transpose(1, 2).reshape(len(ids), -1, features.shape[1])
        query = features[query_index[start:start + per_chunk]]
        for clf in classifiers:
            predictions[clf].append(classify(clf, l2_normalize(support), support_labels.expand(len(ids), -1),
                                             l2_normalize(query), s.n_ways).cpu())
    digest = hashlib.sha256(json.dumps({"setting": asdict(s), "seed": int(data.get("seed", seed))},
                                       sort_keys=True).encode())
    for key in ("labels", "features", *(["augmented"] if s.n_aug else [])):
        digest.update(np.ascontiguousarray(data[key]))
    results = []
    for clf in classifiers:
        found = torch.cat(predictions[clf])
        accuracies = (found == query_labels).double().mean(1).numpy()
        results.append(FewShotResult(split, s, "feature", clf, accuracies, found.numpy().astype(np.int8),
                                     str(data.get("precision", "fp32")), digest.hexdigest()[:16],
                                     int(data["image_size"]) if "image_size" in data else None))
    return results


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
        setting = EpisodeSetting(args.n_ways, shots, args.n_queries, args.n_test_runs, n_aug)
        for result in evaluate_features(data, args.split, setting, device, (args.classifier,), args.seed):
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


def replace_namespace(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


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
    return runtime.logger.RunLogger(None, mode=args.wandb, project=project, config=config, wandb_dir=wandb_dir,
                                   tags=["eval"], group=train_args.get("wandb_group") or run_name, job_type="eval",
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
    source_setting = replace_namespace(args, dataset=source, data_root=args.data_root if source == args.dataset
                                       else recorded["data_root"])
    norm, norm_source = evaluation_normalization(source_setting, checkpoint, images.image_size)
    print(f"normalization: {norm_source}")
    trained_size = checkpoint.get("image_size")
    if trained_size is not None and trained_size != images.image_size:
        print(f"warning: the model was trained on {trained_size}px images, these are {images.image_size}px "
              f"(--image_size {trained_size} resizes them)")
    return images, model, norm, norm_source


def projected_time(args: argparse.Namespace, images: ImageSet, model: torch.nn.Module, norm: Normalization,
                   device: torch.device) -> str:
    """eval.report.evaluation_projection's line for this command's evaluations."""
    planned = [(args.split, images, EpisodeSetting(args.n_ways, shots, args.n_queries, args.n_test_runs,
                                                   args.n_aug_support_samples)) for shots in args.shots]
    return evaluation_projection(planned, model, norm, device, args.eval_batch_size, args.amp, (args.classifier,),
                                 ("logit" if args.use_logit else "feature",))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    util.check_positive(args, "n_ways", "n_shots", "n_queries", "n_test_runs", "n_aug_support_samples",
                        "eval_batch_size")
    if args.output:
        util.check_writable_folder(Path(args.output).parent, "--output")
    if args.features:
        main_features(args)
        return
    ranks, device = runtime.distributed.setup(args.device)  # torchrun: the episodes are shared out over the ranks
    precision = util.setup_precision(args, device)  # --amp auto decided, --tf32 applied, --amp checked
    args.model_path = str(checkpoint_file(args.model_path))
    checkpoint = engine.checkpoint.load_checkpoint(args.model_path)
    resolve_setting(args, checkpoint)
    recorded = trained_with(checkpoint)
    source = args.source_dataset or recorded["dataset"] or args.dataset
    if args.image_size is None and args.dataset == "folder" and source not in (None, "folder"):
        args.image_size = dataset_profile(source).image_size  # an official checkpoint's size on another domain
        print(f"image_size: {args.image_size} (the {source} profile's)")
    engine.official_flags.report_official_flags(args)
    util.print_run_header(args, device)

    images, model, norm, norm_source = load_model_and_images(args, checkpoint, recorded, source, device)

    check_shots(images.class_indices(), args, images.source)
    embedding = "logit" if args.use_logit else "feature"
    if device.type == "cpu" and ranks.is_main:  # minutes on a CPU: say how long before they start
        print(projected_time(args, images, model, norm, device), flush=True)
    start = time.perf_counter()
    results = []
    for shots in args.shots:
        setting = EpisodeSetting(args.n_ways, shots, args.n_queries, args.n_test_runs, args.n_aug_support_samples)
        for result in evaluate(model, images, args.split, setting, norm, device, (args.classifier,), (embedding,),
                               args.eval_batch_size, args.seed, args.amp):
            print(result.line(), flush=True)
            results.append(result)
    seconds = time.perf_counter() - start
    print(f"evaluated in {seconds:.1f} s on {device} ({precision})"
          + (f" x {ranks.world_size} processes" if ranks.enabled else ""))
    if not ranks.is_main:
        runtime.distributed.cleanup()
        return
    if args.output:
        source_root = recorded["data_root"] if source == recorded["dataset"] else None
        write_results(results, Path(args.output), {"checkpoint": str(args.model_path), "dataset": args.dataset,
                                                   "checkpoint_choice": checkpoint_choice(checkpoint),
                                                   "git": util.git_sha(), "seconds": seconds,
                                                   "device": util.describe_device(device, args.device),
                                                   "precision": precision,
                                                   "normalization": norm_source, "args": vars(args)},
                      source_domain=domain_name(source, source_root),
                      target_domain=domain_name(args.dataset, args.data_root))
        print(f"results: {args.output}")
    logger = eval_logger(args, checkpoint, {"device_name": util.describe_device(device, args.device),
                                            "precision": precision})
    if logger is not None:
        logger.summary(summary_metrics(results))
        logger.finish()
    runtime.distributed.cleanup()


if __name__ == "__main__":
    util.run_cli(main)
