"""A registered method's run, built in-process as its training script builds it (the script's own
parser, the method's `from_args`) on the built-in synthetic data, with a random frozen teacher for a
distillation method: for tests of what a run holds or how its step trains, without a subprocess."""
from __future__ import annotations

import argparse
import importlib

import numpy as np
import torch

import methods
from conftest import TEST_MODEL
from dataset import load_split
from dataset.transforms import choose_normalization, normalize_batch
from methods.base import TrainingData  # the type a method's run is built with, wherever engine/ keeps it
from models import create_model

IMAGE_SIZE = 16


def script_parser(method: type[methods.Method]) -> methods.MethodArgumentParser:
    """A fresh parser of the method's script: it holds the methods registered when it is built."""
    return importlib.import_module(method.script.removesuffix(".py")).get_args_parser()


def tiny_command_line(method: type[methods.Method], *extra: str) -> list[str]:
    """The method's command line on the built-in data, with the narrow test network; `extra` last."""
    network = (["--model", TEST_MODEL] if method.script == methods.GEN0_SCRIPT
               else ["--path_t", "teacher.pth", "--model_t", TEST_MODEL, "--model_s", TEST_MODEL])
    return [*method.mode_flags, *network, "--dataset", "synthetic", "--image_size", str(IMAGE_SIZE),
            "--batch_size", "8", *extra]


def build_run(method: type[methods.Method], args: argparse.Namespace) -> methods.Method:
    """The run of `method` for `args` on the CPU, on the synthetic training split."""
    train = load_split("synthetic", None, "train", IMAGE_SIZE)
    data = TrainingData(train, None, choose_normalization("auto", "synthetic", train.images))
    teacher = None
    if method.script == methods.DISTILL_SCRIPT:
        teacher = create_model(TEST_MODEL, train.num_classes, "synthetic", image_size=IMAGE_SIZE)
        teacher.requires_grad_(False).eval()
    return method.from_args(args, device=torch.device("cpu"), data=data, teacher=teacher)


def training_batch(data: TrainingData, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` training images drawn without replacement, normalised as the loaders do, and their labels
    (no augmentation: a step's arithmetic does not depend on it)."""
    index = np.random.RandomState(seed).choice(len(data.train), size, replace=False)
    images = normalize_batch(torch.from_numpy(data.train.images[index]), data.norm)
    return images, torch.from_numpy(data.train.labels[index]).long()
