"""Classify your own images: fit the evaluation's logistic regression on a support folder (one
sub-folder per class, any number of images each) and predict each query image's class.

    python -m tools.classify --model_path CKPT --support DIR --query DIR_OR_LIST_OR_FILES... [--out PREFIX]

The features, the support augmentation (--n_aug_support_samples crops and flips of each support
image) and the classifier are eval_fewshot.py's: pooled features of the frozen network, L2-normalised,
multinomial logistic regression (C = 1, scikit-learn's problem); the probability is its softmax.
Prints one line per query and writes PREFIX.csv and PREFIX.json.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import util
from dataset.folder import class_folders, describe_conversions, image_files, list_images, load_image
from dataset.transforms import crop_flip_batch
from eval.classifiers import logistic_regression_scores
from eval.embed import embed
from eval.fewshot import episode_generator, l2_normalize
from tools.backbone import Backbone, add_backbone_args, load_backbone, setup_device

QUERY_CHUNK = 4096  # query images read and held as pixels at once; their features are kept, the pixels not


def get_args_parser() -> argparse.ArgumentParser:
    parser = util.ArgumentParser("python -m tools.classify", description=__doc__.split("\n\n")[0])
    add_backbone_args(parser)
    g = parser.add_argument_group("images")
    g.add_argument("--support", required=True,
                   help="folder with one sub-folder of images per class (at least 2 classes)")
    g.add_argument("--query", required=True, nargs="+",
                   help="query images: folders (their images, and those of their sub-folders), .txt lists (one path "
                        "a line, relative to the list) or image files")
    g.add_argument("--n_aug_support_samples", type=int, default=5, help="augmented copies of each support image")
    g.add_argument("--seed", type=int, default=0, help="seed of the support augmentations")
    g.add_argument("--out", default="predictions", help="writes PREFIX.csv and PREFIX.json")
    return parser


def read_support(folder: Path, image_size: int, modes: Counter) -> tuple[np.ndarray, np.ndarray, list[str], list[Path]]:
    """(uint8 images, labels, class names, paths) of a support folder; refuses an empty class and a single class."""
    if not folder.is_dir():
        raise util.UsageError(f"--support {folder}: folder not found")
    classes = class_folders(folder)
    if len(classes) < 2:
        raise util.UsageError(f"--support {folder}: {len(classes)} class folder(s); expected at least 2, as "
                              f"{folder}/<class>/*.png|jpg (a classifier needs two classes to tell apart)")
    paths, labels = [], []
    for label, class_dir in enumerate(classes):
        files = image_files(class_dir)
        if not files:
            raise util.UsageError(f"--support: class {class_dir.name!r} ({class_dir}) has no .png or .jpg images")
        paths += files
        labels += [label] * len(files)
    images = np.stack([load_image(p, image_size, modes=modes) for p in paths])
    return images, np.asarray(labels), [d.name for d in classes], paths


def support_features(backbone: Backbone, images: np.ndarray, labels: np.ndarray, n_aug: int, seed: int,
                     device: torch.device, batch_size: int, amp: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation's support set: every image repeated n_aug times (np.tile order), each copy randomly
    cropped and flipped (eval.fewshot.evaluate's augmentation, its generator for episode 0), embedded
    and L2-normalised; with the labels in the same order."""
    index = np.tile(np.arange(len(images)), n_aug)
    augmented = crop_flip_batch(torch.from_numpy(images[index]), backbone.crop_padding, episode_generator(seed, 0))
    features, _ = embed(backbone.model, augmented, backbone.norm, device, batch_size, amp)
    return l2_normalize(features), torch.from_numpy(labels[index]).to(device)


def query_features(backbone: Backbone, paths: list[Path], device: torch.device, batch_size: int, amp: str,
                   modes: Counter) -> torch.Tensor:
    """L2-normalised features of every query image, read and embedded QUERY_CHUNK images at a time."""
    chunks = []
    with tqdm(total=len(paths), desc="queries", unit="img", disable=None, leave=False) as bar:
        for start in range(0, len(paths), QUERY_CHUNK):
            part = paths[start:start + QUERY_CHUNK]
            pixels = torch.from_numpy(np.stack([load_image(p, backbone.image_size, modes=modes) for p in part]))
            chunks.append(embed(backbone.model, pixels, backbone.norm, device, batch_size, amp)[0])
            bar.update(len(part))
    return l2_normalize(torch.cat(chunks))


def classify_images(backbone: Backbone, support_dir: Path, queries: list[Path], n_aug: int, seed: int,
                    device: torch.device, batch_size: int, amp: str) -> tuple[list[str], np.ndarray, Counter]:
    """(class names, query probabilities (queries, classes), image modes converted to RGB)."""
    modes: Counter = Counter()
    images, labels, names, _ = read_support(support_dir, backbone.image_size, modes)
    support, support_labels = support_features(backbone, images, labels, n_aug, seed, device, batch_size, amp)
    query = query_features(backbone, queries, device, batch_size, amp, modes)
    scores = logistic_regression_scores(support[None], support_labels[None], query[None], len(names))[0]
    return names, torch.softmax(scores, dim=1).cpu().numpy(), modes


def known_class(path: Path, names: list[str]) -> str | None:
    """The true class of a query in a folder named like a support class (a labelled query set), else None."""
    return path.parent.name if path.parent.name in names else None


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    util.check_positive(args, "n_aug_support_samples", "eval_batch_size")
    out = Path(args.out)
    util.check_writable_folder(out.parent, "--out")
    queries = list_images(args.query)
    device, precision = setup_device(args)
    backbone = load_backbone(args, device)
    names, probabilities, modes = classify_images(backbone, Path(args.support), queries, args.n_aug_support_samples,
                                                  args.seed, device, args.eval_batch_size, args.amp)
    conversions = describe_conversions(modes)
    if conversions:
        print(conversions)
    predicted = probabilities.argmax(1)
    rows = []
    width = max(len(str(p)) for p in queries)
    for path, k, probs in zip(queries, predicted, probabilities):
        rows.append({"path": str(path), "prediction": names[k], "probability": float(probs[k]),
                     "true_class": known_class(path, names),
                     "probabilities": {n: float(v) for n, v in zip(names, probs)}})
        print(f"{str(path):{width}s}  {names[k]}  {probs[k]:.3f}")
    labelled = [r for r in rows if r["true_class"] is not None]
    accuracy = (100 * float(np.mean([r["prediction"] == r["true_class"] for r in labelled])) if labelled else None)
    if accuracy is not None:
        print(f"accuracy: {accuracy:.2f}% on the {len(labelled)} queries in folders named like a support class "
              f"(chance: {100 / len(names):.2f}%)")
    support_counts = {d.name: len(image_files(d)) for d in class_folders(Path(args.support))}
    report = {"checkpoint": str(backbone.path), "model": backbone.model_name, "source_dataset": backbone.source_dataset,
              "source_domain": backbone.source_domain,
              "image_size": backbone.image_size, "normalization": backbone.norm_source,
              "device": util.describe_device(device, args.device), "precision": precision,
              "classifier": "LR", "n_aug_support_samples": args.n_aug_support_samples, "seed": args.seed,
              "support": str(args.support), "classes": names, "support_images": support_counts,
              "accuracy": accuracy, "predictions": rows}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "prediction", "probability", "true_class", *(f"p_{n}" for n in names)])
    for r in rows:
        writer.writerow([r["path"], r["prediction"], r["probability"], r["true_class"] or "",
                         *r["probabilities"].values()])
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, content in ((".csv", text.getvalue()), (".json", json.dumps(report, indent=2) + "\n")):
        with util.atomic_write(out.with_name(out.name + suffix)) as tmp:
            tmp.write_text(content)
    print(f"predictions: {out}.csv, {out}.json")
    return report


if __name__ == "__main__":
    util.run_cli(main)
