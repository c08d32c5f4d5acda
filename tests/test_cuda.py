"""The CUDA path: training steps in fp16 and bf16, fp16 resume bit for bit, evaluation and the
logistic-regression solver on the GPU. Every test is marked `cuda` and skips without a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_script
from dataset import load_split
from dataset.profiles import CIFAR_NORMALIZATION
from eval import EpisodeSetting, evaluate
from eval.classifiers import logistic_regression
from eval.embed import embed
from models import create_model
from train_distillation import clone_student, gen1_step
from train_supervised_ssl import gen0_step
import util

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
@pytest.mark.parametrize("stage", ["gen0", "gen1"])
def test_training_steps_on_cuda(stage, amp):
    torch.manual_seed(0)
    model = util.to_device(create_model("resnet12_ssl", 5, "CIFAR-FS", image_size=32), CUDA).train()
    if stage == "gen0":
        step = gen0_step(model, gamma=2.0)
        params = list(model.parameters())
    else:
        teacher = model.eval().requires_grad_(False)
        student = clone_student(teacher).train()
        step = gen1_step(student, teacher, beta=0.1, temperature=4.0, official_quirks=False)
        params = [p for n, p in student.named_parameters() if not n.startswith("rot_classifier")]
    x, y = torch.randn(8, 3, 32, 32, device=CUDA), torch.randint(0, 5, (8,), device=CUDA)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    with util.autocast(CUDA, amp):
        result = step(x, y)
    assert result.loss.dtype == torch.float32 and torch.isfinite(result.loss)  # losses compute in float32
    scaler.scale(result.loss).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


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
    on_cpu = logistic_regression(support, labels, query, 5)
    on_gpu = logistic_regression(support.to(CUDA), labels.to(CUDA), query.to(CUDA), 5)
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)
