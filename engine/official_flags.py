"""The official release's flags that this implementation does not need, accepted so that its command
lines run unchanged: each either does what it did, or says in one line what replaces it and goes on,
or, where its value would change the method, is refused in one line saying why.

The release's scripts: train_supervised_ssl.py (Gen-0), train_distillation.py (Gen-1) and
eval_fewshot.py; their flags that this implementation shares (the data, schedule, episode and run
flags) are the scripts' own and mean what they meant there.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from util import UsageError

TRAINING = ("train_supervised_ssl.py", "train_distillation.py")
EVAL = ("eval_fewshot.py",)


def official_bool(text: str) -> bool:
    """The release's `type=bool` flags: argparse's bool() is true for every non-empty string, so
    `--ssl False` meant True there; here the words mean what they say."""
    words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return words[text.lower()]


@dataclass(frozen=True)
class OfficialFlag:
    flags: tuple[str, ...]
    scripts: tuple[str, ...]
    kwargs: dict
    # (value, args) -> a note printed once and the run goes on, or raises UsageError; None: silent
    check: Callable[[object, argparse.Namespace], str | None]


def _note(text: str) -> Callable[[object, argparse.Namespace], str]:
    def check(value, args):
        return text
    check.help = text.split(": ", 1)[1]  # what --help says of the flag: what replaces it
    return check


def _refuse_unless(ok: Callable[[object], bool], why: str,
                   note: str | None = None) -> Callable[[object, argparse.Namespace], str | None]:
    def check(value, args):
        if not ok(value):
            raise UsageError(why.format(value=value))
        return note
    check.help = "refused where it would change the method: " + why.split(": ", 1)[1].format(value="another value")
    return check


def _transform(value, args: argparse.Namespace) -> str | None:
    """The release picks its augmentation by letter (A for miniImageNet and tieredImageNet, D for
    CIFAR-FS and FC100, forced there); here the dataset's profile picks the same one."""
    from published.profiles import dataset_profile

    if args.dataset == "folder" or args.dataset is None:
        return f"--transform {value}: the dataset's profile chooses the augmentation here"
    expected = dataset_profile(args.dataset).transform_letter
    if value != expected:
        raise UsageError(f"--transform {value}: {args.dataset} trains with the release's transform {expected}; "
                         f"another would change the augmentation (not implemented)")
    return None


_transform.help = ("the dataset's profile chooses the release's augmentation (A: miniImageNet, tieredImageNet; D: "
                   "CIFAR-FS, FC100); another letter is refused")

FLAGS = (
    OfficialFlag(("--print_freq",), TRAINING, {"type": int},
                 _note("--print_freq: progress shows every --log_interval steps here (a bar, or a line a minute "
                       "when output is not a terminal)")),
    OfficialFlag(("--tb_freq",), TRAINING, {"type": int},
                 _note("--tb_freq: no TensorBoard here; W&B and log.jsonl record every epoch")),
    OfficialFlag(("--tb_path",), TRAINING, {},
                 _note("--tb_path: no TensorBoard here; W&B and log.jsonl record every epoch")),
    OfficialFlag(("--save_freq",), TRAINING, {"type": int},
                 _note("--save_freq: checkpoint.pth is rewritten after every epoch here (and mid-epoch on SIGTERM)")),
    OfficialFlag(("--transform",), TRAINING + EVAL, {"choices": ["A", "B", "C", "D"]}, _transform),
    OfficialFlag(("--adam",), TRAINING, {"action": "store_true"},
                 _refuse_unless(lambda v: not v, "--adam: the paper trains with SGD (momentum 0.9); Adam would change "
                                             "the method and is not implemented")),
    OfficialFlag(("--ssl",), TRAINING, {"type": official_bool},
                 _refuse_unless(lambda v: v, "--ssl False: SKD is trained with the rotation self-supervision; for "
                                         "cross-entropy alone use train_supervised_ssl.py --objective rfs_simple "
                                         "(RFS-simple)")),
    OfficialFlag(("--simclr",), TRAINING + EVAL, {"type": official_bool},
                 _refuse_unless(lambda v: not v, "--simclr True: the release's unused SimCLR option is not part of "
                                             "SKD and is not implemented")),
    OfficialFlag(("--distill",), ("train_distillation.py",), {},
                 _refuse_unless(lambda v: v == "kd", "--distill {value}: SKD Gen-1 distils logits (kd); the release's "
                                                 "other choices are not implemented")),
    OfficialFlag(("-a", "--alpha"), ("train_distillation.py",), {"type": float},
                 _note("--alpha: the SKD release's Gen-1 loss does not read it (KL + beta x L2); ignored (under "
                       "--objective rfs it is the RFS release's KD weight, --kd_weight)")),
    OfficialFlag(("-b", "--beta"), ("train_distillation.py",), {"type": float},
                 _note("--beta: the release's Gen-1 loss does not read it; its L2 weight is --gamma (-r)")),
    OfficialFlag(("--feat_dim",), ("train_distillation.py",), {"type": int},
                 _note("--feat_dim: used only by the release's contrastive distillation; ignored")),
    OfficialFlag(("--nce_k",), ("train_distillation.py",), {"type": int},
                 _note("--nce_k: used only by the release's contrastive distillation; ignored")),
    OfficialFlag(("--nce_t",), ("train_distillation.py",), {"type": float},
                 _note("--nce_t: used only by the release's contrastive distillation; ignored")),
    OfficialFlag(("--nce_m",), ("train_distillation.py",), {"type": float},
                 _note("--nce_m: used only by the release's contrastive distillation; ignored")),
    OfficialFlag(("--num_workers",), EVAL, {"type": int},
                 _note("--num_workers: evaluation reads the split's arrays in-process; no loader to feed")),
    OfficialFlag(("--test_batch_size",), EVAL + ("train_supervised_ssl.py",), {"type": int},
                 _note("--test_batch_size: episodes are solved in batches here; --eval_batch_size sets the forward "
                       "batch")),
    OfficialFlag(("--batch_size",), EVAL, {"type": int},
                 _note("--batch_size: --eval_batch_size sets the forward batch of evaluation")),
)


# Every flag of the release's scripts (their parse_option), marked in --help; those this implementation has
# no use for are the FLAGS above.
_SHARED = {"--model_path", "--dataset", "--data_root", "--transform", "--simclr", "--n_test_runs", "--n_ways",
           "--n_shots", "--n_queries", "--n_aug_support_samples", "--num_workers", "--test_batch_size", "--batch_size"}
_TRAINING = _SHARED | {"--eval_freq", "--print_freq", "--tb_freq", "--save_freq", "--epochs", "--learning_rate",
                       "--lr_decay_epochs", "--lr_decay_rate", "--weight_decay", "--momentum", "--ssl", "--tags",
                       "--cosine", "--tb_path", "--trial"}
RELEASE_FLAGS = {
    "train_supervised_ssl.py": _TRAINING | {"--adam", "--model", "--use_trainval", "--gamma"},
    "train_distillation.py": _TRAINING | {"--model_s", "--model_t", "--path_t", "--distill", "--gamma", "--alpha",
                                          "--beta", "--kd_T", "--feat_dim", "--nce_k", "--nce_t", "--nce_m"},
    "eval_fewshot.py": _SHARED | {"--model"},
}


def add_official_flags(parser: argparse.ArgumentParser, script: str) -> None:
    """The release's flags of `script` that have no meaning of their own here, in a group of their own;
    then every flag the release has is marked so in --help."""
    g = parser.add_argument_group("official flags (accepted so that the release's command lines run; each says what "
                                  "replaces it, or refuses a value that would change the method)")
    taken = {s for action in parser._actions for s in action.option_strings}
    for flag in FLAGS:
        if script in flag.scripts:
            names = [name for name in flag.flags if name not in taken]  # a method may own it (-a, --test_batch_size)
            if not names:
                continue
            kwargs = {**flag.kwargs, "default": argparse.SUPPRESS}  # absent from args unless given
            g.add_argument(*names, dest=f"official_{flag.flags[-1].lstrip('-')}", help=flag.check.help,
                           **kwargs)
    for action in parser._actions:
        if RELEASE_FLAGS[script] & set(action.option_strings):
            action.help = f"{action.help} [release flag]"


def report_official_flags(args: argparse.Namespace) -> None:
    """apply_official_flags, its notes one `note:` line each on stderr (before the run's header)."""
    for note in apply_official_flags(args):
        print(f"note: {note}", file=sys.stderr)


def apply_official_flags(args: argparse.Namespace) -> list[str]:
    """Refuse (UsageError) or note each release flag given; return the notes, for one line each."""
    notes = []
    for flag in FLAGS:
        value = getattr(args, f"official_{flag.flags[-1].lstrip('-')}", None)
        if value is not None:
            note = flag.check(value, args)
            if note:
                notes.append(note)
    return notes
