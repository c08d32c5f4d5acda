"""Embed a folder of images once into one .npz of features, then evaluate or classify from it.

    python -m tools.embed --model_path CKPT --images DIR --output FEATURES.npz
    python eval_fewshot.py --features FEATURES.npz --n_shots 5     # episodes from the file, no network

DIR is in the ImageFolder layout (one sub-folder per class) or flat (images only: labels -1). The
.npz holds `features` (N, d) float32 (the evaluation's pooled features, before L2 normalisation),
`labels` (N,) int64, `class_names`, `paths` (relative to DIR), optionally `augmented` (N, K, d),
the features of K crop-and-flip copies of each image (--n_aug_support_samples K, for supports), and
the preprocessing that made them; numpy reads it without this repository (np.load, no pickles).

Large folders are embedded in shards kept in FEATURES.npz.partial/, each written whole or not at
all: a run that is stopped continues where it was when the same command is run again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import util
from dataset.folder import describe_conversions, folder_layout, load_image
from dataset.transforms import crop_flip_batch
from eval.embed import embed
from eval.fewshot import episode_generator
from tools.backbone import Backbone, add_backbone_args, load_backbone, setup_device

MANIFEST = "manifest.json"


def get_args_parser() -> argparse.ArgumentParser:
    parser = util.ArgumentParser("python -m tools.embed", description=__doc__.split("\n\n")[0])
    add_backbone_args(parser)
    g = parser.add_argument_group("images and output")
    g.add_argument("--images", required=True,
                   help="folder: DIR/<class>/*.png|jpg (ImageFolder layout) or DIR/*.png|jpg")
    g.add_argument("--output", required=True, help="the .npz to write (never overwritten)")
    g.add_argument("--n_aug_support_samples", type=int, default=0,
                   help="also store the features of this many augmented copies of each image (0: none); "
                        "eval_fewshot.py --features then augments supports as it does from images")
    g.add_argument("--seed", type=int, default=0, help="seed of the augmented copies")
    g.add_argument("--shard_size", type=int, default=2048, help="images per shard: the work a rerun may redo")
    return parser


def settings_of(args: argparse.Namespace, backbone: Backbone, paths: list[str], precision: str) -> dict:
    """What fixes the file's content: a partial folder is continued only under the same settings."""
    return {"checkpoint_sha256": util.file_sha256(backbone.path), "model": backbone.model_name,
            "image_size": backbone.image_size, "mean": list(backbone.norm.mean), "std": list(backbone.norm.std),
            "precision": precision, "n_aug": args.n_aug_support_samples, "seed": args.seed,
            "shard_size": args.shard_size, "images": len(paths),
            "paths_sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest()}


def open_partial(partial: Path, settings: dict) -> None:
    """Create the partial folder, or check that the one there was started with the same settings."""
    manifest = partial / MANIFEST
    if manifest.is_file():
        started = json.loads(manifest.read_text())
        changed = sorted(k for k in settings if started.get(k) != settings[k])
        if changed:
            raise util.UsageError(f"{partial}: an embedding started with other settings ({', '.join(changed)} "
                                  f"differ); delete that folder to start over, or choose another --output")
        return
    partial.mkdir(parents=True, exist_ok=True)
    with util.atomic_write(manifest) as tmp:
        tmp.write_text(json.dumps(settings, indent=2) + "\n")


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez, whole or not at all."""
    with util.atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def embed_shard(backbone: Backbone, files: list[Path], shard: int, args: argparse.Namespace, device: torch.device,
                modes: Counter) -> dict[str, np.ndarray]:
    """The features of one shard's images (and of their augmented copies), on the CPU as numpy."""
    pixels = torch.from_numpy(np.stack([load_image(p, backbone.image_size, modes=modes) for p in files]))
    features, _ = embed(backbone.model, pixels, backbone.norm, device, args.eval_batch_size, args.amp)
    out = {"features": features.cpu().numpy()}
    if args.n_aug_support_samples:
        # Copy-major (as eval.fewshot tiles supports), from a generator of this shard alone: a resumed run
        # draws the same crops.
        index = np.tile(np.arange(len(files)), args.n_aug_support_samples)
        augmented = crop_flip_batch(pixels[index], backbone.crop_padding, episode_generator(args.seed, shard))
        aug, _ = embed(backbone.model, augmented, backbone.norm, device, args.eval_batch_size, args.amp)
        out["augmented"] = aug.cpu().numpy().reshape(args.n_aug_support_samples, len(files), -1).transpose(1, 0, 2)
    return out


def main(argv: list[str] | None = None) -> Path:
    args = get_args_parser().parse_args(argv)
    util.check_positive(vars(args), "shard_size", "eval_batch_size")
    if args.n_aug_support_samples < 0:
        raise util.UsageError(f"--n_aug_support_samples: expected 0 or more, got {args.n_aug_support_samples}")
    output = Path(args.output)
    if output.suffix != ".npz":
        raise util.UsageError(f"--output {output}: expected a .npz file name")
    if output.exists():
        raise util.UsageError(f"--output {output}: exists; choose another name or delete it")
    util.check_writable_folder(output.parent, "--output")
    folder = Path(args.images)
    files, labels, class_names = folder_layout(folder)
    relative = [str(p.relative_to(folder)) for p in files]
    print(f"images: {len(files)} in {folder}"
          + (f", {len(class_names)} classes" if class_names else " (flat: no labels)"))
    device, precision = setup_device(args)
    backbone = load_backbone(args, device)
    partial = output.with_name(output.name + ".partial")
    open_partial(partial, settings_of(args, backbone, relative, precision))

    modes: Counter = Counter()
    starts = range(0, len(files), args.shard_size)
    shard_paths = [partial / f"shard_{i:05d}.npz" for i in range(len(starts))]
    done = sum(min(args.shard_size, len(files) - starts[i]) for i, p in enumerate(shard_paths) if p.is_file())
    if done:
        print(f"continuing: {done} of {len(files)} images already embedded in {partial}")
    with tqdm(total=len(files), initial=done, desc="embedding", unit="img", disable=None) as bar:
        for i, (start, shard_path) in enumerate(zip(starts, shard_paths)):
            if shard_path.is_file():
                continue
            part = files[start:start + args.shard_size]
            save_npz(shard_path, embed_shard(backbone, part, i, args, device, modes))
            bar.update(len(part))
    conversions = describe_conversions(modes)
    if conversions:
        print(conversions)

    shards = []
    for shard_path in shard_paths:
        with np.load(shard_path) as npz:
            shards.append({k: npz[k] for k in npz.files})
    arrays = {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}
    arrays.update(labels=labels, class_names=np.asarray(class_names, dtype=str), paths=np.asarray(relative, dtype=str),
                  folder=np.asarray(str(folder.resolve())), model_path=np.asarray(str(backbone.path.resolve())),
                  model=np.asarray(backbone.model_name), source_dataset=np.asarray(backbone.source_dataset),
                  source_domain=np.asarray(backbone.source_domain),
                  image_size=np.asarray(backbone.image_size), mean=np.asarray(backbone.norm.mean),
                  std=np.asarray(backbone.norm.std), normalization=np.asarray(backbone.norm_source),
                  precision=np.asarray(precision), seed=np.asarray(args.seed))
    save_npz(output, arrays)
    # The partial folder is this command's own: its shards and manifest go once the file is whole.
    for shard_path in (*shard_paths, partial / MANIFEST):
        shard_path.unlink(missing_ok=True)
    os.rmdir(partial)
    shape = arrays["features"].shape
    print(f"features: {output} ({shape[0]} images x {shape[1]} dims"
          + (f", {args.n_aug_support_samples} augmented copies each" if "augmented" in arrays else "") + ")")
    return output


if __name__ == "__main__":
    util.run_cli(main)
