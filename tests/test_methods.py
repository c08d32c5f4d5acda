"""Every registered method, as its script runs it: one epoch on tiny data, resumed for a second, its
checkpoint evaluated; and the registry's selection of a method from flags and from recorded arguments."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import methods
import util
from conftest import REPO, TEST_MODEL, make_cifar_package, run_script
from method_runs import build_run, script_parser, tiny_command_line
from published.settings import DATASETS as PUBLISHED_DATASETS

# Beyond the tiny run's common flags, what a method needs to run on 16 training images at batch 8.
TINY_FLAGS = {"dvp_prior": ["--dvp_queue", "16"], "sskd": ["--sskd_head_epochs", "1"]}
# What every checkpoint holds besides the method's extra modules.
COMMON_KEYS = {"epoch", "model", "optimizer", "scaler", "args", "dropblock_calls", "wandb_id", "identity",
               "image_size", "normalization", "path_t"}


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
    # What the run of the same flags holds, built in-process: its extra modules and the phases before its epochs.
    run = build_run(method, script_parser(method).parse_args(tiny_command_line(method, *TINY_FLAGS.get(name, []))))
    checkpoint = _trained(name, tiny)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1 and saved["args"]["objective"] == method.objective
    assert methods.method_of_training_args(saved["args"]) is method  # eval.table reads the method back from it
    assert set(saved) - COMMON_KEYS == set(run.extra_modules)  # beside the official "model" weights, each by its key

    resumed = run_script(*_command(name, tiny, 2, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {checkpoint} after epoch 1" in resumed.stdout
    after = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert after["epoch"] == 2 and set(after) == set(saved)  # the method's extra modules kept under their keys
    log = [json.loads(line) for line in (checkpoint.parent / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "phase" not in r] == [1, 2]  # the method's own epochs, each once
    # A phase before them (SSKD's teacher head) logs its epochs under its name, once each, never retrained.
    phases = [(r["phase"], r[f"{r['phase']}_epoch"]) for r in log if "phase" in r]
    assert phases == [(p.name, epoch) for p in run.pre_phases(None, None) for epoch in range(1, p.epochs + 1)]

    output = tiny["root"] / f"{name}_eval.json"
    evaluated = run_script("eval_fewshot.py", "--model_path", str(checkpoint),
                           "--data_root", str(tiny["root"] / "data"), "--device", "cpu", "--n_shots", "1",
                           "--n_queries", "2", "--n_test_runs", "2", "--output", str(output))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(output.read_text())["results"][0]["n_episodes"] == 2


def _parsers():
    import train_distillation
    import train_supervised_ssl

    gen0 = lambda argv: train_supervised_ssl.get_args_parser().parse_args(  # noqa: E731
        ["--dataset", "synthetic", *argv])
    gen1 = lambda argv: train_distillation.get_args_parser().parse_args(  # noqa: E731
        ["--path_t", "t.pth", "--dataset", "synthetic", *argv])
    return gen0, gen1


def test_each_script_selects_its_methods_by_objective_and_refuses_another_methods_flags():
    gen0, gen1 = _parsers()
    select = methods.select_method
    assert select(methods.GEN0_SCRIPT, gen0([])).name == "skd_gen0"
    assert select(methods.GEN0_SCRIPT, gen0(["--objective", "rfs_simple"])).name == "rfs_simple"
    assert select(methods.GEN0_SCRIPT, gen0(["--plain"])).name == "rfs_simple"  # the alias
    for name in methods.method_names():  # each method by its own flags, on its own script
        method = methods.get_method(name)
        parse = gen0 if method.script == methods.GEN0_SCRIPT else gen1
        assert select(method.script, parse(list(method.mode_flags))) is method, name
    assert select(methods.DISTILL_SCRIPT, gen1([])).name == "skd_gen1"
    with pytest.raises(util.UsageError, match="^--plain: the alias of --objective rfs_simple; it does not combine "
                                              "with --objective dvp$"):
        gen0(["--plain", "--objective", "dvp"])
    refused = {("--official_quirks", "--objective", "sskd"): "--official_quirks: SSKD",
               ("--kd_T", "3", "--objective", "sskd"): "--kd_T: SSKD",
               ("-r", "0.2", "--objective", "dvp"): "-r/--gamma: DVP",
               ("--sskd_ce", "0.2"): "--sskd_ce: SKD Gen-1",
               ("--test_batch_size", "4"): "--test_batch_size: read only by the released ramp"}
    for argv, start in refused.items():
        with pytest.raises(util.UsageError, match=f"^{start}"):
            gen1(list(argv))
    with pytest.raises(util.UsageError, match="^--gamma: RFS-simple"):
        gen0(["--plain", "--gamma", "1"])
    assert gen1(["--test_batch_size", "4", "--official_ramp"]).test_batch_size == 4
    # Arguments recorded before rfs_simple was an objective (--plain) and before --objective existed.
    assert methods.method_of_training_args({"epochs": 65, "objective": "skd", "plain": True}).name == "rfs_simple"
    assert methods.method_of_training_args({"epochs": 65, "plain": True}).name == "rfs_simple"
    assert methods.method_of_training_args({"epochs": 65, "path_t": "t.pth"}).name == "skd_gen1"


def test_rfs_distill_reads_the_rfs_releases_r_and_a_as_its_weights():
    _, gen1 = _parsers()
    args = gen1(["--objective", "rfs", "-r", "0.3", "-a", "0.7"])
    assert (args.ce_weight, args.kd_weight) == (0.3, 0.7)
    assert not hasattr(args, "official_alpha")  # taken, so not also noted as an ignored release flag
    with pytest.raises(util.UsageError, match="^--ce_weight and -r/--gamma"):
        gen1(["--objective", "rfs", "-r", "0.3", "--ce_weight", "0.4"])


@pytest.mark.parametrize("dataset", PUBLISHED_DATASETS)
@pytest.mark.parametrize("script", [methods.GEN0_SCRIPT, methods.DISTILL_SCRIPT])
def test_flags_not_given_take_the_published_settings_of_the_dataset(script, dataset):
    method = methods.default_method(script)
    published = method.published[dataset]
    argv = ["--dataset", dataset, *(["--path_t", "t.pth"] if script == methods.DISTILL_SCRIPT else [])]
    parser = script_parser(method)
    single = {name: v for name, v in published.weights.items() if not isinstance(v.value, tuple)}
    swept = [name for name in published.weights if name not in single]
    if swept:  # no single published value (miniImageNet's beta): refused until given
        with pytest.raises(util.UsageError, match="has no single published value"):
            parser.parse_args(argv)
        argv += [method.weight_flags[swept[0]], "0.05"]
    args = parser.parse_args(argv)
    for name in ("epochs", "learning_rate", "lr_decay_rate", "batch_size", "weight_decay", "momentum"):
        assert getattr(args, name) == getattr(published, name).value, name
    assert args.lr_decay_epochs == list(published.lr_decay_epochs.value)
    for name, value in single.items():
        assert getattr(args, name) == value.value, name  # Gen-1's beta is `beta` whatever its flag
    # Every value is printed with where it came from.
    lines = "\n".join(parser.settings)
    assert f"--epochs {published.epochs.value} (published: {published.epochs.source})" in lines
    assert "(given)" in lines if swept else "(given)" not in lines
    for name, flag in method.weight_flags.items():  # as typed, and by the method's name where that differs
        assert (f"{flag} " if flag == f"--{name}" else f"{flag} ({name}) ") in lines, name
    # A given value wins over the published one.
    assert parser.parse_args([*argv, "--epochs", "3"]).epochs == 3 and "--epochs 3 (given)" in parser.settings


def test_the_default_dataset_is_the_releases_and_data_root_never_means_synthetic(tmp_path):
    gen0 = __import__("train_supervised_ssl").get_args_parser()
    assert gen0.parse_args([]).dataset == "miniImageNet"
    done = subprocess.run([sys.executable, "train_supervised_ssl.py", "--data_root", str(tmp_path),
                           "--model_path", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == (f"error: {tmp_path}: expected miniImageNet/ inside it or "
                                                    f"miniImageNet_category_split_train_phase_train.pickle in it\n")
    assert not (tmp_path / "out").exists()


def test_every_method_has_published_settings_with_sources_and_its_flags_in_help():
    import train_distillation
    import train_supervised_ssl

    helps = {methods.GEN0_SCRIPT: train_supervised_ssl.get_args_parser().format_help(),
             methods.DISTILL_SCRIPT: train_distillation.get_args_parser().format_help()}
    for name in methods.method_names():
        method = methods.get_method(name)
        assert set(method.published) == set(PUBLISHED_DATASETS), name
        for settings in [*method.published.values(), method.small_scale]:
            assert set(method.weight_flags) <= set(settings.weights), name
            assert all(value.source for value in settings.by_name().values()), name
        for flag in method.weight_flags.values():
            assert f"{flag} " in helps[method.script], (name, flag)


def test_a_student_draws_other_batches_and_augmentations_than_its_teacher_at_the_same_seed():
    import engine.run
    from dataset import load_split
    from dataset.transforms import choose_normalization
    from engine.config import DataConfig
    from engine.data import TrainingData, make_train_loader

    assert engine.run.stage_seed(7, 0) == 7  # first generations draw what they always drew
    assert len({engine.run.stage_seed(seed, g) for seed in range(3) for g in (0, 1)}) == 6
    train = load_split("synthetic", None, "train", 16)
    data = TrainingData(train, None, choose_normalization("auto", "synthetic", train.images))
    config = DataConfig(dataset="synthetic", image_size=16, batch_size=16, augment="device")

    def first_batch(method: type[methods.Method]) -> tuple[torch.Tensor, torch.Tensor]:
        """The first batch a run of `method` draws at seed 0 (methods.train seeds its loader by generation)."""
        loader = make_train_loader(data, config, torch.device("cpu"), engine.run.stage_seed(0, method.generation))
        loader.sampler.set_epoch(1)
        return next(iter(loader))

    students = [m for m in map(methods.get_method, methods.method_names()) if m.teacher]
    assert students
    for student in students:
        teacher_images, teacher_labels = first_batch(methods.get_method(student.teacher))
        images, labels = first_batch(student)
        assert not torch.equal(teacher_images, images), student.name  # other images, or the same augmented otherwise
        assert not torch.equal(teacher_labels, labels), student.name  # another order
