"""A training run's data: the splits it reads before anything is written (the test split only for the
final report, so nothing during training can select on it) and the loader of shuffled, augmented batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dataset import ImageSet, load_split
from dataset.device_loader import DeviceBatches
from dataset.episodes import check_episode_feasible
from dataset.errors import DataError
from dataset.loaders import train_loader
from published.profiles import DatasetProfile
from dataset.transforms import Normalization, choose_normalization, train_transform
from engine.config import DataConfig, TrainConfig
from eval.fewshot import EvalConfig
from eval.report import REPORT_SHOTS
from runtime import distributed
from util import UsageError


@dataclass
class TrainingData:
    train: ImageSet
    val: ImageSet | None  # read when --eval_freq or the final report uses it; test is read by the report only
    norm: Normalization

    @property
    def image_size(self) -> int:
        return self.train.image_size

    @property
    def profile(self) -> DatasetProfile:
        return self.train.profile

    def checkpoint_extra(self) -> dict:
        """What evaluation needs to see images as training did."""
        return {"image_size": self.image_size,
                "normalization": {"mean": list(self.norm.mean), "std": list(self.norm.std)}}


def load_eval_split(data: DataConfig, episodes: EvalConfig, split: str, image_size: int) -> ImageSet:
    """The val or test split, checked against the training images' size and the report's episodes."""
    images = load_split(data.dataset, data.data_root, split, data.image_size)
    if images.image_size != image_size:
        raise DataError(f"{images.source}: images are {images.image_size}px, the training images are {image_size}px")
    check_episode_feasible(images.class_indices(), episodes.n_ways, max(REPORT_SHOTS), episodes.n_queries,
                           images.source)
    return images


def load_training_data(config: TrainConfig, norm: Normalization | None = None) -> TrainingData:
    """Read the training split and, for the val evaluation or the final report, the val split, before
    anything is written, so that bad data fails cleanly. `norm`: a normalisation fixed by the caller (Gen-1:
    the teacher's); default: the configured one."""
    data = config.data
    with_val = bool(config.loop.eval_freq) or config.run.final_eval
    train = load_split(data.dataset, data.data_root, "trainval" if data.use_trainval else "train", data.image_size)
    val = load_eval_split(data, config.episodes, "val", train.image_size) if with_val else None
    if len(train) < data.batch_size:
        raise UsageError(f"--batch_size {data.batch_size}: larger than the {len(train)} training images of "
                         f"{train.source}")
    if norm is None:
        norm = choose_normalization(data.normalization, data.dataset, train.images)
    return TrainingData(train, val, norm)


def make_train_loader(data: TrainingData, config: DataConfig, device: torch.device, seed: int,
                      transform: Callable | None = None):
    """Shuffled, augmented batches of the stage's `seed` (engine.run.stage_seed); under torchrun each rank
    reads its share of every epoch's order in batches of batch_size / world size. With augment "device"
    (and the default transform), the split is held on `device` and augmented there in batches
    (dataset.device_loader); otherwise a DataLoader applies `transform` (default: the Gen-0/Gen-1 training
    augmentation of the dataset's profile) to each image in num_workers processes."""
    ranks = distributed.current()
    shard = (ranks.rank, ranks.world_size) if ranks.enabled else None
    batch_size = distributed.per_rank_batch_size(config.batch_size)
    if transform is None and config.augment == "device":
        return DeviceBatches(data.train, batch_size, seed, data.profile.crop_padding, data.norm, device, shard=shard)
    transform = transform or train_transform(data.image_size, data.profile.crop_padding, data.norm)
    return train_loader(data.train, transform, batch_size, config.num_workers, seed,
                        pin_memory=device.type == "cuda", shard=shard)
