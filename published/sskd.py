"""SSKD (Xu et al., ECCV 2020) under the few-shot protocol: not in the SKD paper; its loss the SSKD
release's defaults, its student RFS-distill's schedule (SSKD publishes no few-shot settings) at a lower
learning rate, ours."""
from __future__ import annotations

from published.cards import DISTILL_SCRIPT, MethodCard
from published.settings import DATASETS, OURS_SMALL, SMALL_LR, Sourced, rfs_settings, small_scale

RELEASE = "SSKD release student.py default"
# The release's lr (RFS-distill's too) on ResNet-12: its KD terms push the logits with ~6x RFS-distill's
# gradient (0.9 x T + 2.7 x T against 0.5 + 0.5 x T at T 4), the first steps overshoot the teacher's logits
# and the student's features collapse to a chance-level network. Measured in docs/methods.md (SSKD).
STUDENT_LR = Sourced(0.01, "ours: the release's 0.05 (RFS-distill's too) collapses the fresh ResNet-12 student in "
                           "its first steps, the release's student.py as well; 0.01 trains (docs/methods.md, SSKD)")


def sskd_weights(head_epochs: Sourced[int]) -> dict[str, Sourced]:
    return {"sskd_ce": Sourced(0.1, RELEASE), "sskd_kd": Sourced(0.9, RELEASE), "sskd_tf": Sourced(2.7, RELEASE),
            "sskd_ss": Sourced(10.0, RELEASE), "sskd_kd_T": Sourced(4.0, RELEASE), "sskd_tf_T": Sourced(4.0, RELEASE),
            "sskd_ss_T": Sourced(0.5, RELEASE), "sskd_tf_ratio": Sourced(1.0, RELEASE),
            "sskd_ss_ratio": Sourced(0.75, RELEASE), "sskd_head_epochs": head_epochs}


SSKD_CARD = MethodCard(
    name="sskd", label="SSKD (ours, same protocol)", script=DISTILL_SCRIPT, objective="sskd", teacher="skd_gen0",
    weight_flags={name: f"--{name}" for name in sskd_weights(Sourced(0, ""))},
    forwards_per_image=4,  # the plain images and their three rotations, as in Gen-0
    # Its student gets RFS-distill's schedule: the training budget of the born-again baseline it is compared with.
    published={dataset: rfs_settings(dataset, "train_distillation.py",
                                     sskd_weights(Sourced(60, f"{RELEASE} (--t-epoch)")),
                                     STUDENT_LR,
                                     "RFS-distill's schedule, SSKD publishes no few-shot settings")
               for dataset in DATASETS},
    small_scale=small_scale(10, (7,), 0.02, SMALL_LR, sskd_weights(Sourced(5, OURS_SMALL + " (the release: 60)"))))
