"""A checkpoint as a frozen feature extractor, with the preprocessing the evaluation gives it: the
flags every tool shares and the one function that reads them."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import engine.args
import engine.checkpoint
import engine.trained
import runtime.process
import util
from dataset import dataset_names
from published.profiles import Normalization, dataset_profile
from dataset.transforms import NORMALIZATIONS
from models import list_models


@dataclass(frozen=True)
class Backbone:
    model: nn.Module  # in eval mode, on the chosen device
    model_name: str
    path: Path
    source_dataset: str  # what the checkpoint was trained on
    source_domain: str  # its name in results files: the dataset, or a folder dataset's folder name
    image_size: int  # every image is made this size before it is embedded
    norm: Normalization
    norm_source: str  # where `norm` came from, in words
    crop_padding: int  # of the support augmentation (the profile's RandomCrop padding)


def add_backbone_args(parser: argparse.ArgumentParser, runtime: bool = True) -> None:
    """The checkpoint's flags; `runtime`: also --device, --amp, --tf32 and --eval_batch_size."""
    g = parser.add_argument_group("checkpoint")
    g.add_argument("--model_path", required=True,
                   help="checkpoint: ours, the official {'model': state_dict}, a bare or a DataParallel state dict")
    g.add_argument("--model", choices=list_models(),
                   help="network architecture (default: the checkpoint's; resnet12_ssl where it records none)")
    g.add_argument("--dataset", default=None, choices=dataset_names(),
                   help="the dataset the checkpoint was trained on, which fixes its image size and normalisation "
                        "(default: the checkpoint's; official checkpoints record none: pass e.g. miniImageNet)")
    g.add_argument("--image_size", type=int, default=None,
                   help="side images are resized to (default: the checkpoint's, else the --dataset profile's)")
    g.add_argument("--normalization", default="auto", choices=NORMALIZATIONS,
                   help="auto = the checkpoint's, else the --dataset profile's constants")
    if not runtime:
        return
    g = parser.add_argument_group("runtime")
    engine.args.add_device_args(g, amp_help="autocast while embedding")
    g.add_argument("--eval_batch_size", type=int, default=256, help="images per forward pass when embedding")


def load_backbone(args: argparse.Namespace, device: torch.device) -> Backbone:
    """The network of --model_path on `device` and its preprocessing, decided as eval_fewshot.py decides
    them (engine.trained.evaluation_normalization); prints the normalisation's source."""
    path = engine.trained.checkpoint_file(args.model_path)  # a file, a run folder or a W&B artifact reference
    checkpoint = engine.checkpoint.load_checkpoint(path)
    recorded = engine.trained.trained_with(checkpoint)
    dataset = args.dataset or recorded["dataset"]
    if dataset is None:
        raise util.UsageError(f"--dataset: {path} does not record the dataset it was trained on; pass --dataset "
                              f"(e.g. miniImageNet)")
    image_size = args.image_size or recorded["image_size"]
    if image_size is None:
        if dataset == "folder":
            raise util.UsageError(f"--image_size: {path} records no image size; pass the size it was trained at")
        image_size = dataset_profile(dataset).image_size
    if image_size < 8:
        raise util.UsageError(f"--image_size: expected at least 8 pixels, got {image_size}")
    name = args.model or engine.checkpoint.recorded_model(checkpoint, path)
    model = engine.checkpoint.model_from_checkpoint(name, path, checkpoint, dataset, image_size)
    util.to_device(model, device).eval()
    # The training run's data root: --normalization data (or a folder run that recorded no statistics)
    # reads its training split, never the images being classified.
    norm, norm_source = engine.trained.evaluation_normalization(args.normalization, checkpoint, dataset,
                                                                recorded["data_root"], image_size)
    source_root = recorded["data_root"] if dataset == recorded["dataset"] else None
    domain = engine.trained.domain_name(dataset, source_root)
    print(f"model: {name} trained on {dataset}{f' ({domain})' if domain != dataset else ''}, {image_size}px images, "
          f"normalization: {norm_source}")
    return Backbone(model, name, path, dataset, domain, image_size, norm, norm_source,
                    dataset_profile(dataset, image_size).crop_padding)


def setup_device(args: argparse.Namespace) -> tuple[torch.device, str]:
    """The device (cuda when usable, unless --device says otherwise) and precision, chosen once and printed."""
    # A tool shares no work over ranks: under torchrun or srun each process just takes its device.
    process = runtime.process.start(runtime.process.ProcessConfig(args.device, args.amp, args.tf32, join_ranks=False))
    args.amp = process.amp  # recorded as decided
    print(f"device: {process.device_name}, precision: {process.precision}")
    return process.device, process.precision
