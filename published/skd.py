"""SKD's two generations (Rajasegaran et al., 2020): their rows of the paper's table and the
settings they were trained with, per dataset: each value where the SKD release's run.sh or one of its
training scripts gives it, else ours with the reason."""
from __future__ import annotations

from published.cards import DISTILL_SCRIPT, GEN0_SCRIPT, MethodCard, Reported
from published.settings import SKD_GEN0, SKD_GEN1, SMALL_LR, PublishedSettings, Sourced, small_scale


def command(dataset: str, generation: str, flag: str) -> str:
    """Where `flag` of run.sh's `generation` command for `dataset` is given. The README's two training
    commands are run.sh's CIFAR-FS ones, so those are in both."""
    where = "run.sh and README" if dataset == "CIFAR-FS" else "run.sh"
    return f"SKD release {where}, {dataset} {generation} command ({flag})"


def gen0_settings(dataset: str, epochs: int, lr_decay_epochs: tuple[int, ...]) -> PublishedSettings:
    return PublishedSettings(
        epochs=Sourced(epochs, command(dataset, "Gen-0", "--epochs")),
        lr_decay_epochs=Sourced(lr_decay_epochs, command(dataset, "Gen-0", "--lr_decay_epochs")),
        learning_rate=Sourced(0.05, SKD_GEN0), lr_decay_rate=Sourced(0.1, SKD_GEN0),
        batch_size=Sourced(64, f"{SKD_GEN0}: before the 4x rotations"), weight_decay=Sourced(5e-4, SKD_GEN0),
        momentum=Sourced(0.9, SKD_GEN0),
        weights={"gamma": Sourced(2.0, command(dataset, "Gen-0", "--gamma, the rotation loss weight"))})


# run.sh's FC100 Gen-1 command runs train_distillation5.py, which the release does not ship, so what that command
# leaves to its script's defaults is not published: ours, the defaults of the Gen-1 script the release ships.
FC100_DEFAULT = f"ours: {SKD_GEN1}; run.sh's FC100 Gen-1 command runs the unshipped train_distillation5.py"
# run.sh has no tieredImageNet Gen-1 command: the block under its tieredImageNet heading is FC100's command
# (--dataset FC100, FC100's teacher, the same flags) looping --gamma over the first seven values of the list in its
# miniImageNet block, 0.025 to 0.25, FC100's 0.2 among them. That block is the release's only word on
# tieredImageNet's Gen-1, so tieredImageNet takes FC100's settings.
TIERED = "ours: FC100's, as run.sh's tieredImageNet Gen-1 block runs FC100's command (--dataset FC100)"
TIERED_BETA = f"{TIERED} over seven --gamma values (0.025-0.25), FC100's 0.2 among them"
TIERED_DEFAULT = f"ours: {SKD_GEN1}, as for FC100 (run.sh has no tieredImageNet Gen-1 command)"


def gen1_settings(epochs: Sourced[int], lr_decay_epochs: Sourced[tuple[int, ...]], batch_size: Sourced[int],
                  beta: Sourced[float | tuple[float, ...]], default: str = SKD_GEN1) -> PublishedSettings:
    """`default`: the source of what the dataset's command leaves to its script's defaults."""
    return PublishedSettings(
        epochs=epochs, lr_decay_epochs=lr_decay_epochs, learning_rate=Sourced(0.001, default),
        lr_decay_rate=Sourced(0.1, default), batch_size=batch_size, weight_decay=Sourced(5e-4, default),
        momentum=Sourced(0.9, default), weights={"beta": beta, "kd_T": Sourced(2.0, default)})


def gen1_command(dataset: str, epochs: int, lr_decay_epochs: tuple[int, ...], batch_size: Sourced[int],
                 beta: Sourced[float | tuple[float, ...]], default: str = SKD_GEN1) -> PublishedSettings:
    """The settings of run.sh's Gen-1 command for `dataset`."""
    return gen1_settings(Sourced(epochs, command(dataset, "Gen-1", "--epochs")),
                         Sourced(lr_decay_epochs, command(dataset, "Gen-1", "--lr_decay_epochs")),
                         batch_size, beta, default)


# LibFewShot's re-implementation of SKD (its own training pipeline; its ResNet12 and ResNet18 have 512-d features,
# other networks than the release's): github.com/RL-VIG/LibFewShot, config/reproduce/SKD/README.md.
LIBFEWSHOT = "LibFewShot's SKD, github.com/RL-VIG/LibFewShot config/reproduce/SKD/README.md"

SKD_GEN0_CARD = MethodCard(
    name="skd_gen0", label="SKD Gen-0", script=GEN0_SCRIPT, objective="skd", default=True, in_paper=True,
    paper={"miniImageNet": (65.93, 83.15), "tieredImageNet": (71.69, 86.66), "CIFAR-FS": (74.5, 88.0),
           "FC100": (45.3, 62.2)},
    reported=(Reported(LIBFEWSHOT, "convnet4", {"miniImageNet": (48.14, 66.36), "tieredImageNet": (51.78, 70.65)}),
              Reported(LIBFEWSHOT, "LibFewShot ResNet12", {"miniImageNet": (66.40, 83.06),
                                                           "tieredImageNet": (71.90, 86.20)}),
              Reported(LIBFEWSHOT, "LibFewShot ResNet18", {"miniImageNet": (66.18, 82.21),
                                                           "tieredImageNet": (70.00, 84.70)})),
    weight_flags={"gamma": "--gamma"}, forwards_per_image=4,
    published={"CIFAR-FS": gen0_settings("CIFAR-FS", 65, (60,)), "FC100": gen0_settings("FC100", 65, (60,)),
               "miniImageNet": gen0_settings("miniImageNet", 65, (60,)),
               "tieredImageNet": gen0_settings("tieredImageNet", 60, (30, 40, 50))},
    small_scale=small_scale(10, (7,), 0.02, SMALL_LR, {"gamma": Sourced(2.0, SKD_GEN0)}))

# run.sh's FC100 (and tieredImageNet) Gen-1 block loops --gamma over the first seven values of its list.
RELEASE_BETA_SWEEP = Sourced((0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25),
                             "SKD release run.sh, FC100 Gen-1 block under its tieredImageNet heading: --gamma "
                             "looped over params[0..6]")

SKD_GEN1_CARD = MethodCard(
    name="skd_gen1", label="SKD Gen-1", script=DISTILL_SCRIPT, objective="skd", default=True, teacher="skd_gen0",
    in_paper=True, born_again=True,  # SKD's Gen-1 is one step of a born-again chain
    release_sweeps={"FC100": {"beta": RELEASE_BETA_SWEEP}, "tieredImageNet": {"beta": RELEASE_BETA_SWEEP}},
    paper={"miniImageNet": (67.04, 83.54), "tieredImageNet": (72.03, 86.50), "CIFAR-FS": (76.9, 88.9),
           "FC100": (46.5, 63.1)},
    reported=(Reported(LIBFEWSHOT, "LibFewShot ResNet12", {"miniImageNet": (67.35, 83.31)}),
              Reported(LIBFEWSHOT, "LibFewShot ResNet18", {"miniImageNet": (66.70, 82.60)})),
    weight_flags={"beta": "--gamma", "kd_T": "--kd_T"},
    published={
        "CIFAR-FS": gen1_command("CIFAR-FS", 65, (60,), Sourced(64, SKD_GEN1),
                                 Sourced(0.1, command("CIFAR-FS", "Gen-1", "--gamma"))),
        "FC100": gen1_command("FC100", 8, (3,), Sourced(64, command("FC100", "Gen-1", "--batch_size")),
                              Sourced(0.2, command("FC100", "Gen-1", "--gamma")), FC100_DEFAULT),
        # Every value of a sweep is trained and the best on val kept (scripts/reproduce.py).
        "miniImageNet": gen1_command(
            "miniImageNet", 8, (5,), Sourced(64, command("miniImageNet", "Gen-1", "--batch_size")),
            Sourced((0.025, 0.05, 0.075), command("miniImageNet", "Gen-1", "--gamma looped over the first three "
                                                  "values of a list of ten, 0.025-0.5; the release picks none"))),
        "tieredImageNet": gen1_settings(Sourced(8, TIERED), Sourced((3,), TIERED), Sourced(64, TIERED),
                                        Sourced(0.2, TIERED_BETA), TIERED_DEFAULT),
    },
    small_scale=small_scale(5, (4,), 0.001, SKD_GEN1, {"beta": Sourced(0.1, command("CIFAR-FS", "Gen-1", "--gamma")),
                                                       "kd_T": Sourced(2.0, SKD_GEN1)}))
