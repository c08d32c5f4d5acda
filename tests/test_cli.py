"""The command lines: every flag documented and in a named group, defaults shown, and the official
release's command lines accepted (each release flag noted, or refused in one line when it would change
the method)."""
from __future__ import annotations

import argparse
import re
import shlex

import pytest

import util
import engine.args
from conftest import run_script
from engine.official_flags import apply_official_flags


def _parsers() -> dict[str, argparse.ArgumentParser]:
    import sys

    import eval_fewshot
    import train_distillation
    import train_supervised_ssl
    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import reproduce

    return {"train_supervised_ssl.py": train_supervised_ssl.get_args_parser(),
            "train_distillation.py": train_distillation.get_args_parser(),
            "eval_fewshot.py": eval_fewshot.get_args_parser(), "scripts/reproduce.py": reproduce.get_args_parser()}


@pytest.mark.parametrize("script", ["train_supervised_ssl.py", "train_distillation.py", "eval_fewshot.py",
                                    "scripts/reproduce.py"])
def test_every_flag_has_help_a_group_and_its_default_shown(script):
    parser = _parsers()[script]
    ungrouped = {a.dest for a in parser._optionals._group_actions} - {"help"}
    if script != "scripts/reproduce.py":  # reproduce.py's few flags are one group: the plan
        assert not ungrouped, f"{script}: flags outside a named group: {sorted(ungrouped)}"
    for action in parser._actions:
        assert action.help, f"{script}: {action.option_strings} has no help"
    text = parser.format_help()
    assert "(default: 600)" in text or script == "scripts/reproduce.py"  # --n_test_runs's default shown


# The release's README commands, with every release flag its scripts have that ours do not need.
RELEASE_GEN0 = ("--tags cifarfs,may30 --model resnet12_ssl --model_path {save} --dataset CIFAR-FS --data_root {data} "
                "--n_aug_support_samples 5 --n_ways 5 --n_shots 1 --epochs 65 --lr_decay_epochs 60 --gamma 2.0 "
                "--eval_freq 10 --print_freq 100 --tb_freq 500 --save_freq 10 --num_workers 8 --transform D "
                "--ssl True --simclr False --use_trainval False --tb_path tb/ --test_batch_size 1")
RELEASE_GEN1 = ("--tags cifarfs,gen1,may30 --model_s resnet12_ssl --model_t resnet12_ssl --path_t {teacher} "
                "--model_path {save} --dataset CIFAR-FS --data_root {data} --n_aug_support_samples 5 --n_ways 5 "
                "--n_shots 1 --epochs 65 --lr_decay_epochs 60 -r 0.1 -a 0 -b 0 --distill kd --kd_T 2 "
                "--feat_dim 128 --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --transform D --print_freq 100")
RELEASE_EVAL = ("--model resnet12_ssl --model_path {teacher} --dataset CIFAR-FS --data_root {data} --n_ways 5 "
                "--n_shots 1 --n_queries 15 --n_test_runs 600 --n_aug_support_samples 5 --num_workers 3 "
                "--test_batch_size 1 --batch_size 64 --transform D")


@pytest.mark.parametrize("script, line", [("train_supervised_ssl.py", RELEASE_GEN0),
                                          ("train_distillation.py", RELEASE_GEN1), ("eval_fewshot.py", RELEASE_EVAL)])
def test_the_release_command_lines_parse_and_each_release_flag_is_noted(script, line):
    args = _parsers()[script].parse_args(shlex.split(line.format(save="s", data="d", teacher="t.pth")))
    notes = apply_official_flags(args)
    assert notes and all(note.startswith("--") for note in notes)
    if script == "train_supervised_ssl.py":
        assert args.use_trainval is False and args.gamma == 2.0  # --use_trainval False means False here
        assert not any(note.startswith(("--transform", "--ssl", "--simclr")) for note in notes)  # as the release did
    if script == "train_distillation.py":
        assert args.beta == 0.1  # -r is the release's short form of the L2 weight


@pytest.mark.parametrize("script, flags, message", [
    ("train_supervised_ssl.py", "--adam", "--adam: the paper trains with SGD"),
    ("train_supervised_ssl.py", "--ssl False", "--ssl False: SKD is trained with the rotation self-supervision"),
    ("train_supervised_ssl.py", "--simclr True", "--simclr True: the release's unused SimCLR option"),
    ("train_supervised_ssl.py", "--transform A", "--transform A: CIFAR-FS trains with the release's transform D"),
    ("train_distillation.py --path_t t.pth", "--distill hint", "--distill hint: SKD Gen-1 distils logits (kd)"),
])
def test_a_release_flag_that_would_change_the_method_is_refused(script, flags, message):
    name, *rest = script.split()
    args = _parsers()[name].parse_args([*rest, "--dataset", "CIFAR-FS", *shlex.split(flags)])
    with pytest.raises(util.UsageError, match=f"^{re.escape(message)}"):
        apply_official_flags(args)


def test_a_refused_release_flag_is_one_line_before_anything_is_printed(cifar_root, tmp_path):
    done = run_script("train_supervised_ssl.py", "--dataset", "CIFAR-FS", "--data_root", str(cifar_root),
                      "--model_path", str(tmp_path / "save"), "--device", "cpu", "--adam")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: --adam: the paper trains with SGD (momentum 0.9); Adam would change "
                                        "the method and is not implemented"]
    assert not (tmp_path / "save").exists()


def test_help_marks_the_release_flags_and_only_them():
    from engine.official_flags import RELEASE_FLAGS

    for script, parser in _parsers().items():
        if script not in RELEASE_FLAGS:
            continue
        for action in parser._actions:
            released = bool(RELEASE_FLAGS[script] & set(action.option_strings))
            assert action.help.endswith("[release flag]") == released, (script, action.option_strings)


def test_amp_fp32_is_accepted_as_off():
    # The scripts print `precision: fp32` for --amp off, so fp32 is what a user types back.
    parser = argparse.ArgumentParser()
    engine.args.add_device_args(parser)
    assert parser.parse_args(["--amp", "fp32"]).amp == "off"
    assert parser.parse_args(["--amp", "bf16"]).amp == "bf16"
