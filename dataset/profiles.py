"""One profile per dataset: the facts that follow from which dataset a run uses (normalisation,
crop padding, DropBlock block size, the official transform letter), read by transforms, models,
evaluation and run names alike.

Image size never changes a named dataset's profile: `--dataset CIFAR-FS --image_size 84` keeps the
CIFAR statistics, padding and block size. Only `folder` datasets, which have no published profile,
take the CIFAR-like or ImageNet-like one by the size of their images.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Generic, TypeVar


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR_NORMALIZATION = Normalization((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
IMAGENET_NORMALIZATION = Normalization(
    (120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255),
    (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255),
)
NAMED_NORMALIZATIONS = {"cifar": CIFAR_NORMALIZATION, "imagenet": IMAGENET_NORMALIZATION}  # --normalization NAME


@dataclass(frozen=True)
class DatasetProfile:
    family: str  # "cifar" or "imagenet"
    image_size: int  # the published image side
    normalization: Normalization | None  # None: the training images' own statistics (folder datasets)
    crop_padding: int  # RandomCrop padding, for training and for support augmentation (SPEC 3, 5)
    dropblock_size: int  # DropBlock block size in stages 3 and 4 (SPEC 1)
    transform_letter: str  # the official transform family in run names: D (CIFAR) or A (ImageNet)


CIFAR_LIKE = DatasetProfile("cifar", 32, CIFAR_NORMALIZATION, crop_padding=4, dropblock_size=2, transform_letter="D")
IMAGENET_LIKE = DatasetProfile("imagenet", 84, IMAGENET_NORMALIZATION, crop_padding=8, dropblock_size=5,
                               transform_letter="A")

PROFILES: dict[str, DatasetProfile] = {
    "CIFAR-FS": CIFAR_LIKE,
    "FC100": CIFAR_LIKE,
    "toy": CIFAR_LIKE,
    "synthetic": CIFAR_LIKE,
    "miniImageNet": IMAGENET_LIKE,
    "tieredImageNet": IMAGENET_LIKE,
}

# Folder images of at least this side get the ImageNet-like profile (84 px), smaller ones the CIFAR-like one.
FOLDER_IMAGENET_MIN_SIZE = 64


def dataset_profile(dataset: str, image_size: int | None = None) -> DatasetProfile:
    """The profile of `dataset`; for `folder`, chosen by `image_size` (the side of its images)."""
    if dataset in PROFILES:
        return PROFILES[dataset]
    if dataset != "folder":
        raise ValueError(f"no profile for dataset {dataset!r}; known: {', '.join([*PROFILES, 'folder'])}")
    if image_size is None:
        raise ValueError("dataset 'folder': its profile depends on the image size; pass image_size")
    family = IMAGENET_LIKE if image_size >= FOLDER_IMAGENET_MIN_SIZE else CIFAR_LIKE
    return DatasetProfile(family.family, image_size, None, family.crop_padding, family.dropblock_size,
                          family.transform_letter)


# ----------------------------------------------------------------------------- published settings
# What the paper's tables were trained and evaluated with, per dataset and method, each value with
# where it is published, so that scripts/reproduce.py writes every one of them into its commands.

T = TypeVar("T")


@dataclass(frozen=True)
class Sourced(Generic[T]):
    """A published value and where it is published (SPEC section, official script, release default)."""
    value: T
    source: str


@dataclass(frozen=True)
class PublishedSettings:
    """One method's training settings on one dataset."""
    epochs: Sourced[int]
    lr_decay_epochs: Sourced[tuple[int, ...]]
    learning_rate: Sourced[float]
    lr_decay_rate: Sourced[float]
    batch_size: Sourced[int]
    weight_decay: Sourced[float]
    momentum: Sourced[float]
    # The method's loss weights by name; a tuple of values is a sweep, decided by val accuracy (never test).
    weights: dict[str, Sourced[float | tuple[float, ...]]] = field(default_factory=dict)

    def by_name(self) -> dict[str, Sourced]:
        """Every setting by name, the loss weights last."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "weights"}, **self.weights}


@dataclass(frozen=True)
class PublishedDataset:
    # Images in the train split; an epoch draws all of them but the last incomplete batch.
    train_images: Sourced[int]
    methods: dict[str, PublishedSettings]


@dataclass(frozen=True)
class EvalProtocol:
    """The few-shot evaluation behind every number of the paper's tables."""
    n_ways: Sourced[int]
    shots: Sourced[tuple[int, ...]]
    n_queries: Sourced[int]
    n_aug_support_samples: Sourced[int]
    episodes: Sourced[int]
    classifier: Sourced[str]


# The paper's rows, in its order; each method's teacher comes before it.
METHODS = ("rfs_simple", "rfs_distill", "skd_gen0", "skd_gen1")
# Relatives run under the same protocol (not in the paper's tables), after their teachers: SSKD, and
# DVP's two phases (dvp_prior, the self-supervised teacher; dvp, the distilled student).
SIBLING_METHODS = ("sskd", "dvp_prior", "dvp")
ALL_METHODS = METHODS + SIBLING_METHODS

PUBLISHED_EVAL = EvalProtocol(n_ways=Sourced(5, "SPEC 5"), shots=Sourced((1, 5), "SPEC 5, 7"),
                              n_queries=Sourced(15, "SPEC 5"), n_aug_support_samples=Sourced(5, "SPEC 5"),
                              episodes=Sourced(600, "SPEC 5"), classifier=Sourced("LR", "SPEC 5 (logistic regression)"))


def _gen0(epochs: int, lr_decay_epochs: tuple[int, ...]) -> PublishedSettings:
    return PublishedSettings(
        epochs=Sourced(epochs, "SPEC 3"), lr_decay_epochs=Sourced(lr_decay_epochs, "SPEC 3"),
        learning_rate=Sourced(0.05, "SPEC 3"), lr_decay_rate=Sourced(0.1, "SPEC 3"),
        batch_size=Sourced(64, "SPEC 3 (before the 4x rotations)"), weight_decay=Sourced(5e-4, "SPEC 3"),
        momentum=Sourced(0.9, "SPEC 3"), weights={"gamma": Sourced(2.0, "SPEC 3 (rotation loss weight)")})


def _gen1(epochs: Sourced[int], lr_decay_epochs: Sourced[tuple[int, ...]],
          beta: Sourced[float | tuple[float, ...]]) -> PublishedSettings:
    return PublishedSettings(
        epochs=epochs, lr_decay_epochs=lr_decay_epochs,
        learning_rate=Sourced(0.001, "SPEC 4 (official default; the run script keeps it)"),
        lr_decay_rate=Sourced(0.1, "SKD release default (train_distillation.py --lr_decay_rate)"),
        batch_size=Sourced(64, "SPEC 4"), weight_decay=Sourced(5e-4, "SPEC 4"), momentum=Sourced(0.9, "SPEC 4"),
        weights={"beta": beta, "kd_T": Sourced(2.0, "SPEC 4")})


def _rfs(script: str, weights: dict[str, Sourced[float | tuple[float, ...]]]) -> PublishedSettings:
    """The RFS release's schedule (its defaults, the same for every dataset), used for the paper's RFS rows."""
    return PublishedSettings(
        epochs=Sourced(100, f"SPEC 4 (RFS release {script} default)"),
        lr_decay_epochs=Sourced((60, 80), f"SPEC 4 (RFS release {script} default)"),
        learning_rate=Sourced(0.05, f"SPEC 4 (RFS release {script} default)"),
        lr_decay_rate=Sourced(0.1, f"RFS release {script} default"),
        batch_size=Sourced(64, f"RFS release {script} default"),
        weight_decay=Sourced(5e-4, f"RFS release {script} default"),
        momentum=Sourced(0.9, f"RFS release {script} default"), weights=weights)


_RFS_METHODS = {
    "rfs_simple": _rfs("train_supervised.py", {}),  # cross-entropy only, plain images
    "rfs_distill": _rfs("train_distillation.py", {
        "ce_weight": Sourced(0.5, "SPEC 4 (RFS release scripts/run.sh: -r 0.5)"),
        "kl_weight": Sourced(0.5, "SPEC 4 (RFS release scripts/run.sh: -a 0.5)"),
        "kd_T": Sourced(4.0, "SPEC 4 (RFS release train_distillation.py default)")}),
}
_SSKD = "SSKD release student.py default"


def _sskd_weights(head_epochs: Sourced[int]) -> dict[str, Sourced[float | tuple[float, ...]]]:
    return {"sskd_ce": Sourced(0.1, _SSKD), "sskd_kd": Sourced(0.9, _SSKD), "sskd_tf": Sourced(2.7, _SSKD),
            "sskd_ss": Sourced(10.0, _SSKD), "sskd_kd_T": Sourced(4.0, _SSKD), "sskd_tf_T": Sourced(4.0, _SSKD),
            "sskd_ss_T": Sourced(0.5, _SSKD), "sskd_tf_ratio": Sourced(1.0, _SSKD),
            "sskd_ss_ratio": Sourced(0.75, _SSKD), "sskd_head_epochs": head_epochs}


# SSKD never published few-shot settings: its student gets RFS-distill's schedule (the same training
# budget as the born-again baseline it is compared with), its loss the SSKD release's defaults.
_SSKD_METHOD = replace(_rfs("train_distillation.py", _sskd_weights(Sourced(60, f"{_SSKD} (t_epoch)"))),
                       epochs=Sourced(100, "ours: RFS-distill's schedule (SSKD publishes no few-shot settings)"),
                       lr_decay_epochs=Sourced((60, 80), "ours: RFS-distill's schedule"),
                       learning_rate=Sourced(0.05, "ours: RFS-distill's (the SSKD release also uses 0.05)"))
_DVP_MOCO = "DVP release moco/main_moco.py default"
_DVP_COMMAND = "DVP release README's phase-1 command"
_DVP_STUDENT = "DVP release sup_train_distill/train_selfsup.py"


def _dvp_prior_weights(queue: Sourced[int], momentum: Sourced[float]) -> dict[str, Sourced[float | tuple[float, ...]]]:
    return {"dvp_margin": Sourced(0.4, f"{_DVP_MOCO} (--small_margin)"),
            "dvp_temperature": Sourced(0.07, f"{_DVP_MOCO} (--moco-t; the command sets no other)"),
            "dvp_momentum": momentum, "dvp_dim": Sourced(128, f"{_DVP_MOCO} (--moco-dim)"), "dvp_queue": queue,
            "dvp_key_groups": Sourced(2, "ours: shuffle BN on one process (the release shuffles keys across GPUs)"),
            "dvp_head": Sourced("bn_linear", "ours: the release's linear head collapses on ResNet-12 (README)")}


# DVP's phase 1 with its release's MoCo schedule and loss; ours: the queue (the release's 65,536 keys exceed
# the 38,400 training images of CIFAR-FS, FC100 and miniImageNet), the BatchNorm head and the key groups.
_DVP_PRIOR = PublishedSettings(
    epochs=Sourced(200, f"{_DVP_MOCO} (--epochs)"), lr_decay_epochs=Sourced((120, 160), f"{_DVP_MOCO} (--schedule)"),
    learning_rate=Sourced(0.03, f"{_DVP_COMMAND} (--lr 0.03)"),
    lr_decay_rate=Sourced(0.1, f"{_DVP_MOCO} (x0.1 per milestone)"),
    batch_size=Sourced(256, f"{_DVP_COMMAND} (--batch-size 256)"), weight_decay=Sourced(1e-4, f"{_DVP_MOCO} (--wd)"),
    momentum=Sourced(0.9, f"{_DVP_MOCO} (--momentum)"),
    weights=_dvp_prior_weights(Sourced(4096, "ours: ~11% of an epoch of 38,400 images, so an image's own earlier key "
                                             "is rarely its negative (the release's 65,536 exceed the training sets)"),
                               Sourced(0.999, f"{_DVP_MOCO} (--moco-m)")))


def _dvp_student_weights(off_epochs: Sourced[int]) -> dict[str, Sourced[float | tuple[float, ...]]]:
    return {"dvp_weight": Sourced(1e-4, f"{_DVP_STUDENT} (distillation sum / batch / 10000)"),
            "dvp_no_distill_epochs": off_epochs}


# DVP's phase 2 publishes no few-shot settings: its student gets RFS-distill's schedule, as SSKD's.
_DVP_METHOD = replace(_rfs("train_distillation.py", _dvp_student_weights(
                           Sourced(4, f"{_DVP_STUDENT} (epoch < --no_distill_epoch 5, counting from 1)"))),
                      epochs=Sourced(100, "ours: RFS-distill's schedule (DVP publishes no few-shot settings)"),
                      lr_decay_epochs=Sourced((60, 80), "ours: RFS-distill's schedule"),
                      learning_rate=Sourced(0.05, "ours: RFS-distill's (the DVP release: 0.1 at batch 256)"))
_SIBLINGS = {"sskd": _SSKD_METHOD, "dvp_prior": _DVP_PRIOR, "dvp": _DVP_METHOD}
_GEN1_SCRIPT = "SPEC 4 (official run script)"
_TIERED_GEN1 = ("not published (SPEC 4); chosen here: FC100's value, as the official run script's tieredImageNet "
                "block is a copy of FC100's")
_PER_CLASS = "SPEC 6: {} classes x 600 images"

PUBLISHED: dict[str, PublishedDataset] = {
    "CIFAR-FS": PublishedDataset(Sourced(64 * 600, _PER_CLASS.format(64)), {
        **_RFS_METHODS,
        "skd_gen0": _gen0(65, (60,)),
        "skd_gen1": _gen1(Sourced(65, _GEN1_SCRIPT), Sourced((60,), _GEN1_SCRIPT), Sourced(0.1, _GEN1_SCRIPT)),
        **_SIBLINGS,
    }),
    "FC100": PublishedDataset(Sourced(60 * 600, _PER_CLASS.format(60)), {
        **_RFS_METHODS,
        "skd_gen0": _gen0(65, (60,)),
        "skd_gen1": _gen1(Sourced(8, _GEN1_SCRIPT), Sourced((3,), _GEN1_SCRIPT), Sourced(0.2, _GEN1_SCRIPT)),
        **_SIBLINGS,
    }),
    "miniImageNet": PublishedDataset(Sourced(64 * 600, _PER_CLASS.format(64)), {
        **_RFS_METHODS,
        "skd_gen0": _gen0(65, (60,)),
        "skd_gen1": _gen1(Sourced(8, _GEN1_SCRIPT), Sourced((5,), _GEN1_SCRIPT),
                          Sourced((0.025, 0.05, 0.075), "SPEC 4 (official run script runs the first three values of "
                                                        "its list; the paper gives no single value)")),
        **_SIBLINGS,
    }),
    "tieredImageNet": PublishedDataset(
        Sourced(448695, "Ren et al. 2018 (the tieredImageNet paper): 448,695 train images of 351 classes, the "
                        "split MetaOptNet and RFS package as train_images.npz (not counted here)"), {
            **_RFS_METHODS,
            "skd_gen0": _gen0(60, (30, 40, 50)),
            "skd_gen1": _gen1(Sourced(8, _TIERED_GEN1), Sourced((3,), _TIERED_GEN1), Sourced(0.2, _TIERED_GEN1)),
            **_SIBLINGS,
        }),
}


# ----------------------------------------------------------------------------- small-scale settings
# For `folder` datasets (no published settings): what the README's CPU study on the Omniglot sample
# (~1300 training images at 28 px) uses. Ours, chosen to fit the study in about 90 minutes on 2 cores;
# the paper's ratios are kept where they fit: Gen-1 and RFS-distill start from a trained teacher, Gen-1
# runs at the official lr 0.001 with a shorter schedule (as on FC100 and miniImageNet).
_OURS = "ours: small-scale CPU study, not published"
_SMALL_LR = "ours: 0.05 overshoots on ~1300 images (quickstart), 0.02 trains"


def _small(epochs: int, decay: tuple[int, ...], lr: float, lr_source: str,
           weights: dict[str, Sourced[float | tuple[float, ...]]]) -> PublishedSettings:
    return PublishedSettings(
        epochs=Sourced(epochs, _OURS), lr_decay_epochs=Sourced(decay, _OURS), learning_rate=Sourced(lr, lr_source),
        lr_decay_rate=Sourced(0.1, "SPEC 3"), batch_size=Sourced(32, "ours: ~40 steps per epoch on ~1300 images"),
        weight_decay=Sourced(5e-4, "SPEC 3"), momentum=Sourced(0.9, "SPEC 3"), weights=weights)


SMALL_SCALE: dict[str, PublishedSettings] = {
    "rfs_simple": _small(10, (7,), 0.02, _SMALL_LR, {}),
    "rfs_distill": _small(10, (7,), 0.02, _SMALL_LR, {
        "ce_weight": Sourced(0.5, "SPEC 4 (RFS release)"), "kl_weight": Sourced(0.5, "SPEC 4 (RFS release)"),
        "kd_T": Sourced(4.0, "SPEC 4 (RFS release)")}),
    "skd_gen0": _small(10, (7,), 0.02, _SMALL_LR, {"gamma": Sourced(2.0, "SPEC 3")}),
    "skd_gen1": _small(5, (4,), 0.001, "SPEC 4", {"beta": Sourced(0.1, "SPEC 4 (CIFAR-FS)"),
                                                  "kd_T": Sourced(2.0, "SPEC 4")}),
    "sskd": _small(10, (7,), 0.02, _SMALL_LR, _sskd_weights(Sourced(5, _OURS + " (the release: 60)"))),
    # The prior trains without labels on 2 views (not 4 rotations) per image: 20 epochs cost about 2/3 of Gen-0's 10.
    "dvp_prior": replace(_small(20, (14, 17), 0.03, "the DVP release's (at batch 256)", _dvp_prior_weights(
        Sourced(256, _OURS + ": ~20% of the 1,312 images an epoch draws"),
        Sourced(0.99, _OURS + ": the release's 0.999 lags ~1000 steps, 24 of these epochs"))),
        weight_decay=Sourced(1e-4, _DVP_MOCO)),
    "dvp": _small(10, (7,), 0.02, _SMALL_LR, _dvp_student_weights(
        Sourced(1, _OURS + ": the release's first 4 of 100 epochs, scaled to 10"))),
}
