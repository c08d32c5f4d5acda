"""Every registered method, as its script runs it: one epoch on tiny data, resumed for a second, its
checkpoint evaluated; and the registry's selection of a method from flags and from recorded arguments."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import methods
import util
from conftest import TEST_MODEL, make_cifar_package, run_script

# Beyond the tiny run's common flags, what a method needs to run on 16 training images at batch 8.
TINY_FLAGS = {"dvp_prior": ["--dvp_queue", "16"], "sskd": ["--sskd_head_epochs", "1"]}
# What each method checkpoints beside "model" (and the keys every checkpoint has).
EXTRA_KEYS = {"dvp_prior": {"dvp_prior"}, "sskd": {"sskd_heads"}, "dvp": {"dvp_connectors"}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny data and a cache of each method's trained checkpoint (a student's teacher is trained first)."""
    root = tmp_path_factory.mktemp("tiny")
    make_cifar_package(root / "data" / "CIFAR-FS", train_classes=4, per_class_train=4, eval_classes=5,
                       per_class_eval=4)
    return {"root": root, "checkpoints": {}}


def _command(name: str, tiny: dict, epochs: int, *extra: str) -> list[str]:
    method = methods.get_method(name)
    # A student takes its teacher's architecture; a network trained from scratch is the narrow test model.
    network = ["--path_t", str(_trained(method.teacher, tiny))] if method.teacher else ["--model", TEST_MODEL]
    return [method.script, *method.mode_flags, *network, *TINY_FLAGS.get(name, []), "--dataset", "CIFAR-FS",
            "--data_root", str(tiny["root"] / "data"), "--model_path", str(tiny["root"] / "runs"), "--device", "cpu",
            "--amp", "off", "--batch_size", "8", "--num_workers", "0", "--no_final_eval", "--epochs", str(epochs),
            "--lr_decay_epochs", "1", *extra]


def _checkpoint_path(stdout: str) -> Path:
    return Path(next(line for line in stdout.splitlines() if line.startswith("checkpoint: "))[len("checkpoint: "):])


def _trained(name: str, tiny: dict) -> Path:
    if name not in tiny["checkpoints"]:
        done = run_script(*_command(name, tiny, 1))
        assert done.returncode == 0, done.stderr[-3000:]
        tiny["checkpoints"][name] = _checkpoint_path(done.stdout)
    return tiny["checkpoints"][name]


@pytest.mark.slow  # about 15 s a method on a 2-core CPU; CI runs it (`-m slow`)
@pytest.mark.parametrize("name", methods.method_names())
def test_every_method_trains_resumes_and_evaluates(name, tiny):
    method = methods.get_method(name)
    checkpoint = _trained(name, tiny)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1 and saved["args"]["objective"] == method.objective
    assert methods.method_of_training_args(saved["args"]) is method  # eval.table reads the method back from it
    extra = set(saved) - {"epoch", "model", "optimizer", "scaler", "args", "dropblock_calls", "wandb_id", "identity",
                          "image_size", "normalization", "path_t"}
    assert extra == EXTRA_KEYS.get(name, set())  # beside the official "model" weights, under the same keys as ever

    resumed = run_script(*_command(name, tiny, 2, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {checkpoint} after epoch 1" in resumed.stdout
    after = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert after["epoch"] == 2 and set(after) == set(saved)  # the method's extra modules kept under their keys
    log = [json.loads(line) for line in (checkpoint.parent / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]

    output = tiny["root"] / f"{name}_eval.json"
    evaluated = run_script("eval_fewshot.py", "--model_path", str(checkpoint), "--data_root", str(tiny["root"] / "data"),
                           "--device", "cpu", "--n_shots", "1", "--n_queries", "2", "--n_test_runs", "2",
                           "--output", str(output))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(output.read_text())["results"][0]["n_episodes"] == 2


def test_each_script_selects_its_methods_by_their_own_flags():
    import train_distillation
    import train_supervised_ssl

    gen0 = train_supervised_ssl.get_args_parser().parse_args
    gen1 = lambda argv: train_distillation.get_args_parser().parse_args(["--path_t", "t.pth", *argv])  # noqa: E731
    select = methods.select_method
    assert select(methods.GEN0_SCRIPT, gen0([])).name == "skd_gen0"
    assert select(methods.GEN0_SCRIPT, gen0(["--plain"])).name == "rfs_simple"
    assert select(methods.GEN0_SCRIPT, gen0(["--objective", "dvp"])).name == "dvp_prior"
    assert [select(methods.DISTILL_SCRIPT, gen1(["--objective", o])).name for o in ("skd", "rfs", "sskd", "dvp")] == [
        "skd_gen1", "rfs_distill", "sskd", "dvp"]
    assert select(methods.DISTILL_SCRIPT, gen1([])).name == "skd_gen1"
    with pytest.raises(util.UsageError, match="^--plain: trains RFS-simple; it does not combine with --objective dvp$"):
        select(methods.GEN0_SCRIPT, gen0(["--plain", "--objective", "dvp"]))
    with pytest.raises(util.UsageError, match="^--official_quirks: reproduce the released SKD Gen-1; they do not "
                                              "apply to --objective sskd$"):
        select(methods.DISTILL_SCRIPT, gen1(["--official_quirks", "--objective", "sskd"]))
    # Arguments recorded before --objective existed mean the scripts' defaults.
    assert methods.method_of_training_args({"epochs": 65, "plain": True}).name == "rfs_simple"
    assert methods.method_of_training_args({"epochs": 65, "path_t": "t.pth"}).name == "skd_gen1"


def test_every_method_has_published_settings_with_sources_and_its_flags_in_help():
    import train_distillation
    import train_supervised_ssl

    helps = {methods.GEN0_SCRIPT: train_supervised_ssl.get_args_parser().format_help(),
             methods.DISTILL_SCRIPT: train_distillation.get_args_parser().format_help()}
    for name in methods.method_names():
        method = methods.get_method(name)
        assert set(method.published) == {"CIFAR-FS", "FC100", "miniImageNet", "tieredImageNet"}, name
        for settings in [*method.published.values(), method.small_scale]:
            assert set(method.weight_flags) <= set(settings.weights), name
            assert all(value.source for value in settings.by_name().values()), name
        for flag in method.weight_flags.values():
            assert f"{flag} " in helps[method.script], (name, flag)
