"""The device and the precision are never a surprise: the line each script prints, the refusal of
--device cuda without a GPU, --amp auto, TF32 named as such; data loading seeds the CPU generator
only; the default number of loader workers follows the CPU affinity and the ranks on the node."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import engine.args
import util
from conftest import run_script
from dataset.imageset import ImageSet
from dataset.loaders import TransformedImages, augmentation_seed
from published.profiles import CIFAR_NORMALIZATION
from dataset.transforms import train_transform

CUDA = torch.device("cuda")


@pytest.fixture
def tf32_flags():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_cpu_device_line_says_why():
    assert util.describe_device(torch.device("cpu"), "cpu").startswith("cpu (--device cpu), torch ")
    assert f"torch {torch.__version__}" in util.describe_device(torch.device("cpu"))


def test_cuda_unavailable_reasons(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert util.cuda_unavailable_reason() == "no CUDA device visible: CUDA_VISIBLE_DEVICES=''"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")

    asked = []

    def old_driver() -> bool:  # as torch: the warning on the first call only (the device count is cached)
        if not asked:
            warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 12020).")
        asked.append(1)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", old_driver)
    util._cuda_probe.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's warning is kept for the device line, not printed
            assert util.resolve_device(None) == torch.device("cpu")  # the first call: the default device
        reason = util.cuda_unavailable_reason()
    finally:
        util._cuda_probe.cache_clear()  # later tests ask the real torch
    assert reason.startswith("CUDA driver too old for this torch build") and "found version 12020" in reason
    monkeypatch.setattr(torch.version, "cuda", None)
    assert util.cuda_unavailable_reason().endswith("is a CPU build")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path):
    done = run_script("train_supervised_ssl.py", "--dataset", "synthetic", "--device", "cuda",
                      "--model_path", str(tmp_path / "save"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: --device cuda: no usable GPU (") and done.stderr.count("\n") == 1
    assert not (tmp_path / "save").exists()


def test_amp_auto(monkeypatch):
    assert util.resolve_amp("auto", torch.device("cpu")) == ("bf16" if util.cpu_has_native_bf16() else "off")
    assert util.resolve_amp("fp16", CUDA) == "fp16"  # only auto is decided
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert util.resolve_amp("auto", CUDA) == "fp16"  # a T4: bf16 emulated only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert util.resolve_amp("auto", CUDA) == "bf16"


def test_precision_names_tf32(monkeypatch, tf32_flags):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    util.configure_tf32(CUDA, True)
    assert util.precision_name(CUDA, "off") == "tf32" and util.precision_name(CUDA, "bf16") == "bf16"
    util.configure_tf32(CUDA, False)  # the default: fp32 is fp32
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert util.precision_name(CUDA, "off") == "fp32"
    util.configure_tf32(CUDA, True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # a V100 has no TF32
    assert util.precision_name(CUDA, "off") == "fp32"
    assert util.precision_name(torch.device("cpu"), "off") == "fp32"


def _images() -> ImageSet:
    rng = np.random.RandomState(0)
    return ImageSet(rng.randint(0, 256, (6, 32, 32, 3)).astype(np.uint8), np.arange(6) % 3, "memory")


def test_augmentation_seeds_the_cpu_generator_only(monkeypatch):
    """The same images bit for bit as seeding with torch.manual_seed, and no GPU stream touched."""
    dataset = TransformedImages(_images(), train_transform(32, 4, CIFAR_NORMALIZATION))
    expected = []
    for index in range(6):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(augmentation_seed(0, 1, index))
            expected.append(dataset.transform(dataset.images.images[index]))

    def no_gpu_seeding(*args, **kwargs):
        raise AssertionError("data loading re-seeded the GPU's random stream")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", no_gpu_seeding)
    monkeypatch.setattr(torch.cuda, "manual_seed", no_gpu_seeding)
    before = torch.get_rng_state()
    for index in range(6):
        image, _ = dataset[index, augmentation_seed(0, 1, index)]
        assert torch.equal(image, expected[index])
    assert torch.equal(torch.get_rng_state(), before)  # the training stream (dropout masks) is left alone


@pytest.mark.parametrize("cores, ranks, workers", [(2, None, 2), (64, None, 8), (16, "4", 4), (2, "4", 0)])
def test_default_workers_follow_the_affinity_and_the_ranks_on_the_node(monkeypatch, cores, ranks, workers):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    if ranks is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
    assert engine.args.default_num_workers() == workers


def test_resume_restores_the_training_gpus_stream_on_a_node_with_fewer_gpus(monkeypatch):
    """A checkpoint of a 4-GPU node (every GPU's stream, as checkpoints before the fix kept) resumes on a
    node with one GPU; a new checkpoint keeps the training GPU's stream only."""
    from runtime import preemption

    restored = []
    monkeypatch.setattr(preemption, "cuda_usable", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.full((4,), 7, dtype=torch.uint8))
    state = preemption.rng_state()
    assert [s.tolist() for s in state["cuda"]] == [[7, 7, 7, 7]]
    state["cuda"] = [torch.full((4,), i, dtype=torch.uint8) for i in range(4)]  # saved on GPUs 0-3
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    preemption.set_rng_state(state)
    assert restored[-1].tolist() == [2, 2, 2, 2]  # this rank's GPU index had a saved stream
    state["cuda"] = state["cuda"][:1]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)  # GPU 3 of a node that saved one stream
    preemption.set_rng_state(state)
    assert restored[-1].tolist() == [0, 0, 0, 0]


def test_a_tool_under_torchrun_takes_its_device_without_joining_the_process_group(monkeypatch):
    """runtime.process.start(join_ranks=False): with the launcher's variables set, the process group is never
    joined (a join would fail the test at once instead of waiting for peers that never come)."""
    import runtime.distributed
    from runtime.process import ProcessConfig, start

    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)

    def joined(device_name):
        raise AssertionError("joined the process group")

    monkeypatch.setattr(runtime.distributed, "setup", joined)
    process = start(ProcessConfig("cpu", join_ranks=False))
    assert process.device.type == "cpu" and process.ranks.world_size == 1
    with pytest.raises(AssertionError, match="joined"):  # what training and evaluation do
        start(ProcessConfig("cpu"))
