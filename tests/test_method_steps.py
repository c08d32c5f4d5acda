"""Every registered method built and stepped in-process (no subprocess): its network, its extra
modules, each phase's step and the method's own, one optimizer step each on built-in data."""
from __future__ import annotations

import pytest
import torch

import engine.args
import engine.data
import engine.run
import methods
import util
from conftest import TEST_MODEL
from dataset import load_split
from dataset.transforms import choose_normalization
from models import create_model, list_models


def _args(method: type[methods.Method], model: str = TEST_MODEL):
    import train_distillation
    import train_supervised_ssl

    script = train_supervised_ssl if method.script == methods.GEN0_SCRIPT else train_distillation
    argv = [*method.mode_flags, "--dataset", "synthetic", "--image_size", "16", "--batch_size", "8",
            "--num_workers", "0", "--no_final_eval", "--wandb", "disabled"]
    if method.script == methods.GEN0_SCRIPT:
        argv += ["--model", model]
    else:
        argv += ["--path_t", "teacher.pth", "--model_t", model, "--model_s", model]
    if method.name == "dvp_prior":
        argv += ["--dvp_queue", "16"]
    return script.get_args_parser().parse_args(argv)


def _one_step(step, optimizer, batch) -> float:
    images, targets = batch
    result = step(images, targets)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    optimizer.step()
    return float(result.loss.detach())


# Every method with every registered network: the narrow ResNet-12 and Conv-4 by default, the full-size ones (up
# to WRN-28-10's 36M parameters) with the slow tests.
FAST_MODELS = (TEST_MODEL, "convnet4")
METHOD_AND_MODEL = [pytest.param(name, model, marks=() if model in FAST_MODELS else pytest.mark.slow)
                    for model in list_models() for name in methods.method_names()]


@pytest.mark.parametrize("name, model", METHOD_AND_MODEL)
def test_each_method_builds_and_steps_in_process(name, model):
    method = methods.get_method(name)
    args = _args(method, model)
    config = engine.args.training_config(args, method.device_augment_refusal)  # as the script turns it into values
    torch.manual_seed(0)
    train = load_split("synthetic", None, "train", 16)
    data = engine.data.TrainingData(train, None, choose_normalization("auto", "synthetic", train.images))
    teacher = None
    if method.script == methods.DISTILL_SCRIPT:
        teacher = create_model(model, train.num_classes, "synthetic", image_size=16).requires_grad_(False).eval()
    run = method.from_args(args, device=torch.device("cpu"), data=data, teacher=teacher)
    loader = engine.data.make_train_loader(data, config.data, torch.device("cpu"), config.seed, run.train_transform())
    loader.sampler.set_epoch(1)
    batch = next(iter(loader))
    for phase in run.pre_phases(None, loader):  # SSKD's teacher head: it trains one of the extra modules
        before = {(m, k): v.clone() for m, module in run.extra_modules.items() for k, v in module.state_dict().items()}
        assert torch.isfinite(torch.tensor(_one_step(phase.make_step(), phase.optimizer, batch)))
        after = {(m, k): v for m, module in run.extra_modules.items() for k, v in module.state_dict().items()}
        assert any(not torch.equal(before[key], after[key]) for key in before), phase.name
    optimizer = engine.run.sgd(run.model, run.extra_parameters(), config.schedule)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    loss = _one_step(run.make_step(None, loader), optimizer, batch)
    assert torch.isfinite(torch.tensor(loss)), name
    changed = [k for k, v in run.model.state_dict().items() if not torch.equal(before[k], v)]
    assert any(k.endswith(".weight") for k in changed), name  # the step trained the network
    if teacher is not None:
        run.check_frozen()  # the teacher (and SSKD's head after its phase) did not move


def test_a_method_is_built_from_values_without_a_command_line():
    from methods.base import RunSetting
    from methods.skd_gen1 import SKDGen1, SKDGen1Values

    train = load_split("synthetic", None, "train", 16)
    data = engine.data.TrainingData(train, None, choose_normalization("auto", "synthetic", train.images))
    teacher = create_model(TEST_MODEL, train.num_classes, "synthetic", image_size=16).requires_grad_(False).eval()
    values = SKDGen1Values(beta=0.2, kd_T=4.0, official_quirks=False, official_ramp=False, test_batch_size=1,
                           n_test_runs=600)
    setting = RunSetting(model=TEST_MODEL, dataset="synthetic", bn_stats="per_rank", dropblock_mask="full", seed=0)
    run = SKDGen1(values=values, setting=setting, device=torch.device("cpu"), data=data, teacher=teacher)
    images, targets = torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)
    result = run.make_step(None, None)(images, targets)
    assert set(result.metrics) == {"kd", "l2"} and torch.isfinite(result.loss)
    # The student starts as the teacher's exact copy: KL to it is 0 on the same images in eval mode.
    run.model.eval()
    assert float(run.make_step(None, None)(images, targets).metrics["kd"]) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("name", [m.name for m in methods.methods_of_script(methods.DISTILL_SCRIPT)
                                  if not m.student_copies_teacher])
def test_a_fresh_student_of_another_architecture_steps_against_its_teacher(name):
    """--model_t narrow ResNet-12 --model_s convnet4: the student is built as Conv-4, the teacher stays."""
    import train_distillation

    method = methods.get_method(name)
    args = train_distillation.get_args_parser().parse_args(
        [*method.mode_flags, "--dataset", "synthetic", "--image_size", "16", "--batch_size", "8", "--path_t", "t.pth",
         "--model_t", TEST_MODEL, "--model_s", "convnet4", "--num_workers", "0", "--wandb", "disabled"])
    train_distillation.check_student_architecture(args, method)  # accepted
    config = engine.args.training_config(args, method.device_augment_refusal)
    train = load_split("synthetic", None, "train", 16)
    data = engine.data.TrainingData(train, None, choose_normalization("auto", "synthetic", train.images))
    teacher = create_model(TEST_MODEL, train.num_classes, "synthetic").requires_grad_(False).eval()
    run = method.from_args(args, device=torch.device("cpu"), data=data, teacher=teacher)
    assert type(run.model).__name__ == "ConvNetSSL" and run.model.feature_dim != teacher.feature_dim
    loader = engine.data.make_train_loader(data, config.data, torch.device("cpu"), config.seed, run.train_transform())
    loader.sampler.set_epoch(1)
    batch = next(iter(loader))
    for phase in run.pre_phases(None, loader):
        _one_step(phase.make_step(), phase.optimizer, batch)
    optimizer = engine.run.sgd(run.model, run.extra_parameters(), config.schedule)
    assert torch.isfinite(torch.tensor(_one_step(run.make_step(None, loader), optimizer, batch)))
    run.check_frozen()


def test_official_ramp_on_a_network_without_dropblock_is_refused_in_one_line():
    """--official_ramp ramps DropBlock as the release does; Conv-4 has none, so the flag would do nothing."""
    method = methods.get_method("skd_gen1")
    args = _args(method, "convnet4")
    args.official_ramp = True
    train = load_split("synthetic", None, "train", 16)
    data = engine.data.TrainingData(train, None, choose_normalization("auto", "synthetic", train.images))
    teacher = create_model("convnet4", train.num_classes, "synthetic").requires_grad_(False).eval()
    with pytest.raises(util.UsageError, match="^--official_ramp: the convnet4 student has no DropBlock to ramp$"):
        method.from_args(args, device=torch.device("cpu"), data=data, teacher=teacher)
