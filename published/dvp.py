"""DVP (Zhao and Wen, 2020) under the few-shot protocol: not in the SKD paper. Phase 1, a
momentum-contrast prior trained without labels, with the DVP release's MoCo schedule; phase 2, its
student, with RFS-distill's schedule (DVP publishes no few-shot settings for it)."""
from __future__ import annotations

from published.cards import DISTILL_SCRIPT, GEN0_SCRIPT, MethodCard
from published.settings import DATASETS, OURS_SMALL, SMALL_LR, PublishedSettings, Sourced, rfs_settings, small_scale

MOCO = "DVP release moco/main_moco.py default"
COMMAND = "DVP release moco/README.md's phase-1 command"  # the top README's phase 1 points there
STUDENT = "DVP release sup_train_distill/train_selfsup.py"


def prior_weights(queue: Sourced[int], momentum: Sourced[float]) -> dict[str, Sourced]:
    return {"dvp_margin": Sourced(0.4, f"{MOCO} (--small_margin)"),
            "dvp_temperature": Sourced(0.07, f"{MOCO} (--moco-t; the command sets no other)"),
            "dvp_momentum": momentum, "dvp_dim": Sourced(128, f"{MOCO} (--moco-dim)"), "dvp_queue": queue,
            "dvp_key_groups": Sourced(2, "ours: shuffle BN on one process (the release's moco/moco/builder.py "
                                         "shuffles keys across GPUs)"),
            "dvp_head": Sourced("bn_linear",
                                "ours: the release's linear head collapses on ResNet-12 (docs/methods.md)")}


# The release's MoCo schedule and loss; ours: the queue (the release's 65,536 keys exceed the 36,000-38,400 training
# images of CIFAR-FS, FC100 and miniImageNet), the BatchNorm head and the key groups.
PRIOR = PublishedSettings(
    epochs=Sourced(200, f"{MOCO} (--epochs)"), lr_decay_epochs=Sourced((120, 160), f"{MOCO} (--schedule)"),
    learning_rate=Sourced(0.03, f"{COMMAND} (--lr 0.03)"), lr_decay_rate=Sourced(0.1, f"{MOCO} (x0.1 per milestone)"),
    batch_size=Sourced(256, f"{COMMAND} (--batch-size 256)"), weight_decay=Sourced(1e-4, f"{MOCO} (--wd)"),
    momentum=Sourced(0.9, f"{MOCO} (--momentum)"),
    weights=prior_weights(Sourced(4096, "ours: ~11% of an epoch of 38,400 images, so an image's own earlier key is "
                                        "rarely its negative (the release's 65,536 exceed CIFAR-FS's and "
                                        "miniImageNet's 38,400, FC100's 36,000)"),
                          Sourced(0.999, f"{MOCO} (--moco-m)")))


def student_weights(off_epochs: Sourced[int]) -> dict[str, Sourced]:
    return {"dvp_weight": Sourced(1e-4, f"{STUDENT} (distillation sum / batch / 10000)"),
            "dvp_no_distill_epochs": off_epochs}


DVP_PRIOR_CARD = MethodCard(
    name="dvp_prior", label="DVP phase 1, self-supervised prior (ours, same protocol)", script=GEN0_SCRIPT,
    objective="dvp",
    weight_flags={name: f"--{name}" for name in ("dvp_margin", "dvp_temperature", "dvp_momentum", "dvp_dim",
                                                 "dvp_queue", "dvp_key_groups", "dvp_head")},
    forwards_per_image=2, forwarded_copies="views",  # the query view and the key view
    published={dataset: PRIOR for dataset in DATASETS},
    # The prior trains without labels on 2 views (not 4 rotations) per image: 20 epochs cost about 2/3 of Gen-0's 10.
    small_scale=small_scale(20, (14, 17), 0.03, f"{COMMAND} (--lr 0.03, at batch 256)", prior_weights(
        Sourced(256, OURS_SMALL + ": ~20% of the 1,312 images an epoch draws"),
        Sourced(0.99, OURS_SMALL + ": the release's 0.999 lags ~1000 steps, 24 of these epochs")),
        weight_decay=Sourced(1e-4, MOCO)))

DVP_CARD = MethodCard(
    name="dvp", label="DVP (ours, same protocol)", script=DISTILL_SCRIPT, objective="dvp", teacher="dvp_prior",
    weight_flags={"dvp_weight": "--dvp_weight", "dvp_no_distill_epochs": "--dvp_no_distill_epochs"},
    published={dataset: rfs_settings(dataset, "train_distillation.py", student_weights(
                   Sourced(4, f"{STUDENT} (epoch < --no_distill_epoch 5, counting from 1)")),
                   Sourced(0.05, "ours: RFS-distill's (the DVP release: 0.1 at batch 256)"),
                   "RFS-distill's schedule, DVP publishes no few-shot settings")
               for dataset in DATASETS},
    small_scale=small_scale(10, (7,), 0.02, SMALL_LR, student_weights(
        Sourced(1, OURS_SMALL + ": the release's first 4 of 100 epochs, scaled to 10"))))
