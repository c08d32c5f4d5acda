"""SKD's two generations (Rajasegaran et al., 2020): their rows of the paper's table and the
settings they were trained with, per dataset."""
from __future__ import annotations

from published.cards import DISTILL_SCRIPT, GEN0_SCRIPT, MethodCard
from published.settings import SKD_GEN0, SKD_GEN1, SKD_RUN_SCRIPT, SMALL_LR, PublishedSettings, Sourced, small_scale

TIERED = ("not published; chosen here: FC100's value, as the official run script's tieredImageNet block is a copy "
          "of FC100's")


def gen0_settings(epochs: int, lr_decay_epochs: tuple[int, ...]) -> PublishedSettings:
    return PublishedSettings(
        epochs=Sourced(epochs, SKD_GEN0), lr_decay_epochs=Sourced(lr_decay_epochs, SKD_GEN0),
        learning_rate=Sourced(0.05, SKD_GEN0), lr_decay_rate=Sourced(0.1, SKD_GEN0),
        batch_size=Sourced(64, f"{SKD_GEN0}: before the 4x rotations"), weight_decay=Sourced(5e-4, SKD_GEN0),
        momentum=Sourced(0.9, SKD_GEN0), weights={"gamma": Sourced(2.0, f"{SKD_GEN0}: rotation loss weight")})


def gen1_settings(epochs: Sourced[int], lr_decay_epochs: Sourced[tuple[int, ...]],
                  beta: Sourced[float | tuple[float, ...]]) -> PublishedSettings:
    return PublishedSettings(
        epochs=epochs, lr_decay_epochs=lr_decay_epochs,
        learning_rate=Sourced(0.001, f"{SKD_GEN1}: the release's default, which its run script keeps"),
        lr_decay_rate=Sourced(0.1, "SKD release default (train_distillation.py --lr_decay_rate)"),
        batch_size=Sourced(64, SKD_GEN1), weight_decay=Sourced(5e-4, SKD_GEN1), momentum=Sourced(0.9, SKD_GEN1),
        weights={"beta": beta, "kd_T": Sourced(2.0, SKD_GEN1)})


def from_run_script(value):
    return Sourced(value, SKD_RUN_SCRIPT)


SKD_GEN0_CARD = MethodCard(
    name="skd_gen0", label="SKD Gen-0", script=GEN0_SCRIPT, objective="skd", default=True, in_paper=True,
    paper={"miniImageNet": (65.93, 83.15), "tieredImageNet": (71.69, 86.66), "CIFAR-FS": (74.5, 88.0),
           "FC100": (45.3, 62.2)},
    weight_flags={"gamma": "--gamma"}, forwards_per_image=4,
    published={"CIFAR-FS": gen0_settings(65, (60,)), "FC100": gen0_settings(65, (60,)),
               "miniImageNet": gen0_settings(65, (60,)), "tieredImageNet": gen0_settings(60, (30, 40, 50))},
    small_scale=small_scale(10, (7,), 0.02, SMALL_LR, {"gamma": Sourced(2.0, SKD_GEN0)}))

SKD_GEN1_CARD = MethodCard(
    name="skd_gen1", label="SKD Gen-1", script=DISTILL_SCRIPT, objective="skd", default=True, teacher="skd_gen0",
    in_paper=True,
    paper={"miniImageNet": (67.04, 83.54), "tieredImageNet": (72.03, 86.50), "CIFAR-FS": (76.9, 88.9),
           "FC100": (46.5, 63.1)},
    weight_flags={"beta": "--gamma", "kd_T": "--kd_T"},
    published={
        "CIFAR-FS": gen1_settings(from_run_script(65), from_run_script((60,)), from_run_script(0.1)),
        "FC100": gen1_settings(from_run_script(8), from_run_script((3,)), from_run_script(0.2)),
        "miniImageNet": gen1_settings(from_run_script(8), from_run_script((5,)), Sourced(
            (0.025, 0.05, 0.075), f"{SKD_RUN_SCRIPT}: it runs the first three values of its list; the paper gives "
                                  f"no single value")),
        "tieredImageNet": gen1_settings(Sourced(8, TIERED), Sourced((3,), TIERED), Sourced(0.2, TIERED)),
    },
    small_scale=small_scale(5, (4,), 0.001, SKD_GEN1, {"beta": Sourced(0.1, f"{SKD_GEN1} (CIFAR-FS)"),
                                                       "kd_T": Sourced(2.0, SKD_GEN1)}))
