"""Classify your own images: fit the evaluation's logistic regression on a support folder (one
sub-folder per class, any number of images each) and predict each query image's class.

    python -m tools.classify --model_path CKPT --support DIR --query DIR_OR_LIST_OR_FILES... [--out PREFIX]

The features, the support augmentation (--n_aug_support_samples crops and flips of each support
image) and the classifier are eval_fewshot.py's: pooled features of the frozen network, L2-normalised,
multinomial logistic regression (C = 1, scikit-learn's problem). Each query gets its predicted
class, the runner-up class and the margin between them (MARGIN_HELP). Queries that are support images
(the same pixels once read) are marked and left out of the accuracy. Prints one line per query and
writes PREFIX.csv and PREFIX.json.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import util
from dataset.folder import (IMAGE_SUFFIXES, class_folders, describe_conversions, image_files, list_images,
                            load_image)
from dataset.transforms import crop_flip_batch
from eval.classifiers import CLASSIFIERS, DEFAULT_CLASSIFIER
from eval.embed import embed
from eval.fewshot import episode_generator, l2_normalize
from tools.backbone import Backbone, add_backbone_args, load_backbone, setup_device

QUERY_CHUNK = 4096  # query images read and held as pixels at once; their features are kept, the pixels not
# Why a margin and not the softmax: with C = 1 on unit-length features the logistic regression's decision
# values lie close together, so its softmax sits near 1 / classes for every query and reads as a confidence
# it is not. The margin is what the decision turns on (0: a tie), and claims no more than that.
MARGIN_HELP = ("margin: the classifier's decision value (for LR, the logit) of the predicted class minus that of the "
               "runner-up class; 0 is a tie, larger is a clearer decision. It is a score, not a probability: its "
               "scale depends on the checkpoint and the support set, so compare margins within one run (check the "
               "queries with the smallest first).")


def get_args_parser() -> argparse.ArgumentParser:
    parser = util.ArgumentParser("python -m tools.classify", description=__doc__.split("\n\n")[0],
                                 epilog=MARGIN_HELP)
    add_backbone_args(parser)
    g = parser.add_argument_group("images")
    g.add_argument("--support", required=True,
                   help="folder with one sub-folder of images per class (at least 2 classes)")
    g.add_argument("--query", required=True, nargs="+",
                   help="query images: folders (their images, and those of their sub-folders, one level deep; a "
                        "sub-folder named like a support class is its images' true class), .txt lists (one path a "
                        "line, relative to the list) or image files")
    g.add_argument("--n_aug_support_samples", type=int, default=5, help="augmented copies of each support image")
    g.add_argument("--seed", type=int, default=0, help="seed of the support augmentations")
    g.add_argument("--classifier", default=DEFAULT_CLASSIFIER, choices=CLASSIFIERS.names(),
                   help="fitted on the supports: the evaluation's classifiers (eval_fewshot.py --classifier)")
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


def support_features(backbone: Backbone, images: np.ndarray, labels: np.ndarray, *, n_aug: int, seed: int,
                     device: torch.device, batch_size: int, amp: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation's support set: every image repeated n_aug times (np.tile order), each copy randomly
    cropped and flipped (eval.fewshot.evaluate's augmentation, its generator for episode 0), embedded
    and L2-normalised; with the labels in the same order."""
    index = np.tile(np.arange(len(images)), n_aug)
    augmented = crop_flip_batch(torch.from_numpy(images[index]), backbone.crop_padding, episode_generator(seed, 0))
    features, _ = embed(backbone.model, augmented, backbone.norm, device, batch_size, amp)
    return l2_normalize(features), torch.from_numpy(labels[index]).to(device)


def pixel_hash(pixels: np.ndarray) -> str:
    """An image's identity as the network reads it (decoded, RGB, resized): a re-encoded copy of an image has
    other bytes but the same pixels, and the same features."""
    return hashlib.sha256(pixels.tobytes()).hexdigest()


def query_features(backbone: Backbone, paths: list[Path], device: torch.device, batch_size: int, amp: str,
                   modes: Counter) -> tuple[torch.Tensor, list[str]]:
    """(L2-normalised features, pixel_hash) of every query image, read and embedded QUERY_CHUNK images at a time."""
    chunks, hashes = [], []
    with tqdm(total=len(paths), desc="queries", unit="img", disable=None, leave=False) as bar:
        for start in range(0, len(paths), QUERY_CHUNK):
            part = paths[start:start + QUERY_CHUNK]
            pixels = np.stack([load_image(p, backbone.image_size, modes=modes) for p in part])
            hashes += [pixel_hash(image) for image in pixels]
            chunks.append(embed(backbone.model, torch.from_numpy(pixels), backbone.norm, device, batch_size, amp)[0])
            bar.update(len(part))
    return l2_normalize(torch.cat(chunks)), hashes


def classify_images(backbone: Backbone, support_dir: Path, queries: list[Path], *, classifier: str, n_aug: int,
                    seed: int, device: torch.device, batch_size: int, amp: str
                    ) -> tuple[list[str], np.ndarray, list[Path | None], Counter]:
    """(class names, the queries' decision values (queries, classes), the support image each query is a copy
    of or None, image modes converted to RGB)."""
    modes: Counter = Counter()
    images, labels, names, paths = read_support(support_dir, backbone.image_size, modes)
    support, support_labels = support_features(backbone, images, labels, n_aug=n_aug, seed=seed, device=device,
                                               batch_size=batch_size, amp=amp)
    query, hashes = query_features(backbone, queries, device, batch_size, amp, modes)
    scores = CLASSIFIERS.get(classifier)(support[None], support_labels[None], query[None], len(names))[0]
    support_by_hash = {pixel_hash(image): path for image, path in zip(images, paths)}
    return names, scores.cpu().numpy(), [support_by_hash.get(h) for h in hashes], modes


def check_query_depth(sources: list[str]) -> None:
    """Refuse a --query folder with images below its sub-folders: they would not be read (the folder's images and
    its sub-folders' are), and a query left out without a word would skew the accuracy."""
    for folder in (Path(s) for s in sources if Path(s).is_dir()):
        for nested in (d for sub in class_folders(folder) for d in class_folders(sub)):
            if any(f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() for f in nested.rglob("*")):
                raise util.UsageError(f"--query {folder}: {nested} holds images two or more folders deep, which are "
                                      f"not read; expected {folder}/*.png|jpg or {folder}/<class>/*.png|jpg (or pass "
                                      f"{nested} as a --query of its own)")


def known_class(path: Path, names: list[str]) -> str | None:
    """The true class of a query in a folder named like a support class (a labelled query set), else None."""
    return path.parent.name if path.parent.name in names else None


def prediction_rows(queries: list[Path], names: list[str], scores: np.ndarray,
                    duplicates: list[Path | None]) -> list[dict]:
    """One row per query: its prediction (the largest decision value), the runner-up and the margin between them
    (MARGIN_HELP), its true class when its folder names one, and the support image it is a copy of."""
    rows = []
    for path, values, duplicate in zip(queries, scores, duplicates):
        first, second = np.argsort(-values, kind="stable")[:2]  # first = values.argmax(): the same prediction
        rows.append({"path": str(path), "prediction": names[first], "margin": float(values[first] - values[second]),
                     "runner_up": names[second], "true_class": known_class(path, names),
                     "duplicate_of": str(duplicate) if duplicate is not None else None,
                     "scores": {n: float(v) for n, v in zip(names, values)}})
    return rows


def print_predictions(rows: list[dict], n_classes: int) -> float | None:
    """One line per query, then the copies of support images left out and the accuracy; returns the accuracy."""
    width = max(len(r["path"]) for r in rows)
    for r in rows:
        copy = f"  (a copy of {r['duplicate_of']})" if r["duplicate_of"] else ""
        print(f"{r['path']:{width}s}  {r['prediction']}  margin {r['margin']:.4f} over {r['runner_up']}{copy}")
    copies = sum(r["duplicate_of"] is not None for r in rows)
    if copies:
        what = "query that is a support image" if copies == 1 else "queries that are support images"
        print(f"left out of the accuracy: {copies} {what} (the same pixels once read; duplicate_of names which)")
    # A support image scored as a query is a leak: it is predicted, but never counted.
    labelled = [r for r in rows if r["true_class"] is not None and r["duplicate_of"] is None]
    if not labelled:
        return None
    accuracy = 100 * float(np.mean([r["prediction"] == r["true_class"] for r in labelled]))
    print(f"accuracy: {accuracy:.2f}% on the {len(labelled)} queries in folders named like a support class "
          f"(chance: {100 / n_classes:.2f}%)")
    return accuracy


def write_predictions(out: Path, report: dict) -> None:
    """PREFIX.csv (one row per query) and PREFIX.json (the report), each written whole or not at all."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "prediction", "margin", "runner_up", "true_class", "duplicate_of",
                     *(f"score_{n}" for n in report["classes"])])
    for r in report["predictions"]:
        writer.writerow([r["path"], r["prediction"], r["margin"], r["runner_up"], r["true_class"] or "",
                         r["duplicate_of"] or "", *r["scores"].values()])
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, content in ((".csv", text.getvalue()), (".json", json.dumps(report, indent=2) + "\n")):
        with util.atomic_write(out.with_name(out.name + suffix)) as tmp:
            tmp.write_text(content)


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    util.check_positive(vars(args), "n_aug_support_samples", "eval_batch_size")
    out = Path(args.out)
    util.check_writable_folder(out.parent, "--out")
    check_query_depth(args.query)
    queries = list_images(args.query)
    device, precision = setup_device(args)
    backbone = load_backbone(args, device)
    names, scores, duplicates, modes = classify_images(backbone, Path(args.support), queries,
                                                       classifier=args.classifier, n_aug=args.n_aug_support_samples,
                                                       seed=args.seed, device=device, batch_size=args.eval_batch_size,
                                                       amp=args.amp)
    conversions = describe_conversions(modes)
    if conversions:
        print(conversions)
    rows = prediction_rows(queries, names, scores, duplicates)
    accuracy = print_predictions(rows, len(names))
    support_counts = {d.name: len(image_files(d)) for d in class_folders(Path(args.support))}
    report = {"checkpoint": str(backbone.path), "model": backbone.model_name, "source_dataset": backbone.source_dataset,
              "source_domain": backbone.source_domain,
              "image_size": backbone.image_size, "normalization": backbone.norm_source,
              "device": util.describe_device(device, args.device), "precision": precision,
              "classifier": args.classifier, "margin_definition": MARGIN_HELP,
              "n_aug_support_samples": args.n_aug_support_samples,
              "seed": args.seed, "support": str(args.support), "classes": names, "support_images": support_counts,
              "accuracy": accuracy, "support_copies_left_out": sum(d is not None for d in duplicates),
              "predictions": rows}
    write_predictions(out, report)
    print(f"predictions: {out}.csv, {out}.json")
    return report


if __name__ == "__main__":
    util.run_cli(main)
