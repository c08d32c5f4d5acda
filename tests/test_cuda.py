"""The CUDA path: training steps of every objective in fp32, bf16 and fp16 without a host wait, a
skipped fp16 step, fp16 resume bit for bit, the loader with workers and pinned memory, torchrun
with NCCL, evaluation (and eval_fewshot.py end to end) and the logistic-regression solver on the
GPU. Every test is marked `cuda` and skips without a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import json
import os
import subprocess
import sys

from conftest import REPO, run_script
from dataset import load_split
from published.profiles import CIFAR_NORMALIZATION
from eval import EpisodeSetting, evaluate
from eval.classifiers import classify
from eval.embed import embed
from models import create_model
from dataset.loaders import train_loader
from dataset.transforms import train_transform
from distill.dvp import feature_margins
from distill.sskd import SSKDWeights
from models import ProjectionHead, WithConnectors, WithProjection, connector
from methods.base import clone_student
from methods.dvp import DistillWeight, dvp_step
from methods.dvp_prior import DVPPriorValues, MomentumContrast, dvp_prior_step
from methods.skd_gen0 import gen0_step
from methods.skd_gen1 import gen1_step
from methods.sskd import sskd_step
import util

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    """CPU-vs-CUDA comparisons and step checks in real fp32 (TF32 rounds inputs to 10 mantissa bits)."""
    util.configure_tf32(CUDA, False)


def _step(stage: str):
    """(step, trained parameters, images) of one objective on a fresh ResNet-12 on the GPU."""
    torch.manual_seed(0)
    model = util.to_device(create_model("resnet12_ssl", 5, "CIFAR-FS", image_size=32), CUDA).train()
    x = torch.randn(8, 3, 32, 32, device=CUDA)
    if stage == "gen0":
        return gen0_step(model, gamma=2.0), list(model.parameters()), x
    if stage == "dvp_prior":
        values = DVPPriorValues(dvp_dim=16, dvp_head="bn_linear", dvp_queue=64, dvp_momentum=0.999,
                                dvp_key_groups=2, dvp_margin=0.4, dvp_temperature=0.07)
        prior = MomentumContrast(model, values, seed=0).to(CUDA)
        params = [p for n, p in model.named_parameters() if "classifier" not in n] + list(prior.query_head.parameters())
        return dvp_prior_step(model, prior, values), params, torch.stack([x, x.flip(3)], 1)
    teacher = model.eval().requires_grad_(False)
    student = clone_student(teacher).train()
    params = [p for n, p in student.named_parameters() if not n.startswith("rot_classifier")]
    if stage == "gen1":
        return gen1_step(student, teacher, beta=0.1, temperature=4.0, official_quirks=False), params, x
    if stage == "sskd":
        heads = [ProjectionHead(640).to(CUDA) for _ in range(2)]
        wrapped = WithProjection(student, heads[0])
        return sskd_step(wrapped, teacher, heads[1].eval(), SSKDWeights()), params + list(heads[0].parameters()), x
    connectors = torch.nn.ModuleList([connector(w, w) for w in (64, 160, 320, 640)]).to(CUDA)
    step = dvp_step(WithConnectors(student, connectors), teacher, feature_margins(teacher.preactivation_batchnorms()),
                    DistillWeight(1e-4, 0))
    return step, params + list(connectors.parameters()), x


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
@pytest.mark.parametrize("stage", ["gen0", "gen1", "sskd", "dvp_prior", "dvp"])
def test_training_steps_on_cuda_never_wait_for_the_gpu(stage, amp):
    """Forward and backward of every objective, with CUDA's sync debug mode raising on any host wait
    (an .item(), a nonzero, a copy to the host): the host can run ahead of the GPU. Only the fp16
    scaler's step reads the GPU (its inf check), outside this block."""
    step, params, x = _step(stage)
    y = torch.randint(0, 5, (8,), device=CUDA)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with util.autocast(CUDA, amp):
            result = step(x, y)
        scaler.scale(result.loss).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.loss.dtype == torch.float32 and torch.isfinite(result.loss)  # losses compute in float32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


def test_an_overflowing_fp16_step_is_skipped_and_training_goes_on():
    step, params, x = _step("gen0")
    y = torch.randint(0, 5, (8,), device=CUDA)
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16)
    before = [p.detach().clone() for p in params]
    with util.autocast(CUDA, "fp16"):
        result = step(x, y)
    scaler.scale(result.loss * 1e30).backward()  # gradients overflow fp16: the scaler must skip the update
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and scaler.get_scale() == 2.0**15
    optimizer.zero_grad(set_to_none=True)
    with util.autocast(CUDA, "fp16"):
        result = step(x, y)
    scaler.scale(result.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert any(not torch.equal(p, b) for p, b in zip(params, before))


def test_loader_with_workers_and_pinned_memory(cifar_root):
    images = load_split("CIFAR-FS", cifar_root, "train")
    loader = train_loader(images, train_transform(32, 4, CIFAR_NORMALIZATION), 8, 2, 0, pin_memory=True)
    loader.sampler.set_epoch(1)
    batch, labels = next(iter(loader))
    assert batch.is_pinned() and labels.is_pinned()
    on_gpu = batch.to(CUDA, non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(on_gpu.cpu(), batch)


def test_one_process_torchrun_with_nccl(cifar_root, tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           "train_supervised_ssl.py", "--dataset", "CIFAR-FS", "--data_root", str(cifar_root),
                           "--batch_size", "16", "--epochs", "1", "--device", "cuda", "--no_final_eval",
                           "--log_interval", "1", "--model_path", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed: 1 processes (nccl)" in done.stdout and "device: cuda:0 " in done.stdout


def test_eval_fewshot_on_cuda_end_to_end(cifar_root, tmp_path):
    train = run_script("train_supervised_ssl.py", "--dataset", "CIFAR-FS", "--data_root", str(cifar_root),
                       "--batch_size", "16", "--epochs", "1", "--device", "cuda", "--no_final_eval",
                       "--model_path", str(tmp_path / "save"))
    assert train.returncode == 0, train.stderr[-3000:]
    [folder] = (tmp_path / "save").iterdir()
    for amp, precision in (("off", "fp32"), ("bf16", "bf16")):
        out = tmp_path / f"{amp}.json"
        done = run_script("eval_fewshot.py", "--dataset", "CIFAR-FS", "--data_root", str(cifar_root), "--model_path",
                          str(folder / "checkpoint.pth"), "--n_test_runs", "20", "--device", "cuda", "--amp", amp,
                          "--output", str(out))
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads(out.read_text())
        assert results["device"].startswith("cuda:0 ") and results["precision"] == precision
        assert results["results"][0]["precision"] == precision


def test_fp16_resume_is_bit_exact(cifar_root, tmp_path):
    common = ["--dataset", "CIFAR-FS", "--data_root", str(cifar_root), "--batch_size", "16", "--num_workers", "0",
              "--device", "cuda", "--amp", "fp16", "--deterministic", "--no_final_eval"]
    straight = run_script("train_supervised_ssl.py", *common, "--model_path", str(tmp_path / "a"), "--epochs", "2")
    assert straight.returncode == 0, straight.stderr[-3000:]
    for epochs, extra in (("1", []), ("2", ["--resume"])):
        done = run_script("train_supervised_ssl.py", *common, "--model_path", str(tmp_path / "b"), "--epochs", epochs,
                          *extra)
        assert done.returncode == 0, done.stderr[-3000:]
    [a] = (tmp_path / "a").iterdir()
    [b] = (tmp_path / "b").iterdir()
    one = torch.load(a / "checkpoint.pth", map_location="cpu", weights_only=True)
    two = torch.load(b / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert one["scaler"] == two["scaler"] and one["scaler"]["scale"] > 0
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=0, atol=0, msg=key)


def test_evaluation_on_cuda_matches_cpu(cifar_root):
    torch.manual_seed(0)
    model = create_model("resnet12_ssl", 6, "CIFAR-FS", image_size=32).eval()
    images = load_split("CIFAR-FS", cifar_root, "val")
    pixels = torch.from_numpy(images.images)
    cpu_features, _ = embed(util.to_device(model, torch.device("cpu")), pixels, CIFAR_NORMALIZATION,
                            torch.device("cpu"), 64)
    cuda_model = util.to_device(model, CUDA)
    cuda_features, _ = embed(cuda_model, pixels, CIFAR_NORMALIZATION, CUDA, 64)
    assert cuda_features.device.type == "cuda"
    torch.testing.assert_close(cuda_features.cpu(), cpu_features, rtol=1e-3, atol=1e-4)
    setting = EpisodeSetting(5, 1, 15, 20, 5)
    [on_cpu] = evaluate(util.to_device(model, torch.device("cpu")), images, "val", setting, CIFAR_NORMALIZATION,
                        torch.device("cpu"), progress=False)
    [on_gpu] = evaluate(cuda_model.to(CUDA), images, "val", setting, CIFAR_NORMALIZATION, CUDA, progress=False)
    # The same episodes; float noise may flip a borderline query, never an episode's accuracy by much.
    assert on_cpu.fingerprint == on_gpu.fingerprint
    assert np.abs(on_cpu.accuracies - on_gpu.accuracies).max() <= 2 / 75
    [bf16] = evaluate(cuda_model, images, "val", setting, CIFAR_NORMALIZATION, CUDA, amp="bf16", progress=False)
    assert bf16.precision == "bf16" and abs(bf16.mean_ci[0] - on_gpu.mean_ci[0]) < 3.0


def test_logistic_regression_solves_on_the_gpu():
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(4, 25, 64, generator=g), torch.randn(4, 75, 64, generator=g)
    labels = torch.arange(5).repeat_interleave(5).expand(4, -1)
    on_cpu = classify("LR", support, labels, query, 5)
    on_gpu = classify("LR", support.to(CUDA), labels.to(CUDA), query.to(CUDA), 5)
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)
