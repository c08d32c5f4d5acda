"""--augment device: the batched augmentation gives torchvision's PIL result on every pixel, to the
bit, for the same parameters; its parameters have torchvision's distributions, drawn per image;
they depend on (seed, epoch, index) alone, so batches, ranks and resumption do not change them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from dataset.batch_augment import BRIGHTNESS, CONTRAST, ORDERS, SATURATION, augment_batch, draw_params
from dataset.device_loader import DeviceBatches
from dataset.imageset import ImageSet
from published.profiles import CIFAR_NORMALIZATION, IMAGENET_NORMALIZATION
from dataset.transforms import normalize_batch, train_transform

PIL_JITTER = {BRIGHTNESS: TF.adjust_brightness, CONTRAST: TF.adjust_contrast, SATURATION: TF.adjust_saturation}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Random pixels, a quarter of them posterised (flat regions, ties in the luma mean's rounding)
    and a few saturated at 0 and 255 (clipping)."""
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8)
    images[: n // 4] = (images[: n // 4] // 64) * 60 + 10
    images[n // 4: n // 4 + 4] = rng.choice([0, 255], (4, size, size, 3)).astype(np.uint8)
    return images


def _steps(size: int, padding: int, norm) -> list:
    """The project's own worker-path augmentation, dataset.transforms.train_transform, step by step."""
    return train_transform(size, padding, norm).transforms


def _jitter_ranges(size: int = 32, padding: int = 4, norm=CIFAR_NORMALIZATION) -> dict[int, tuple[float, float]]:
    [jitter] = [t for t in _steps(size, padding, norm) if isinstance(t, T.ColorJitter)]
    assert jitter.hue is None
    return {BRIGHTNESS: jitter.brightness, CONTRAST: jitter.contrast, SATURATION: jitter.saturation}


def _torchvision(image: np.ndarray, params, i: int, padding: int, norm) -> torch.Tensor:
    """train_transform's own steps, in its order and with its settings, each with image i's parameters
    instead of a random draw (checked to lie in the step's own range). A step this does not know fails."""
    size, out = image.shape[0], image
    for step in _steps(size, padding, norm):
        if step is Image.fromarray:
            out = step(out)
        elif isinstance(step, T.RandomCrop):
            assert tuple(step.size) == (size, size) and not step.pad_if_needed
            out = TF.crop(TF.pad(out, step.padding, step.fill, step.padding_mode), int(params.top[i]),
                          int(params.left[i]), size, size)
        elif isinstance(step, T.ColorJitter):
            assert step.hue is None
            ranges = {BRIGHTNESS: step.brightness, CONTRAST: step.contrast, SATURATION: step.saturation}
            for op in params.order[i].tolist():
                factor = float(params.factors[i, op])
                assert ranges[op][0] <= factor <= ranges[op][1]
                out = PIL_JITTER[op](out, factor)
        elif isinstance(step, T.RandomHorizontalFlip):
            out = TF.hflip(out) if params.flip[i] else out
        elif isinstance(step, (T.ToTensor, T.Normalize)):
            out = step(out)
        else:
            raise AssertionError(f"train_transform has a step this reference does not know: {step}")
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size, padding, norm", [(32, 4, CIFAR_NORMALIZATION), (84, 8, IMAGENET_NORMALIZATION)])
def test_every_pixel_is_torchvisions_to_the_bit(device, size, padding, norm):
    images = _images(96, size)
    params = draw_params(0, 1, torch.arange(96, device=device), padding)
    ours = augment_batch(torch.from_numpy(images).to(device), params, padding, norm).cpu()
    assert ours.shape == (96, 3, size, size) and ours.dtype == torch.float32
    for i in range(96):
        assert torch.equal(ours[i], _torchvision(images[i], params, i, padding, norm)), f"image {i}"


class CudaScalarDivision(TorchDispatchMode):
    """CUDA's rule for dividing a floating tensor by a host scalar, emulated on the CPU: ATen's CUDA kernel
    multiplies by the scalar's reciprocal (computed in float32 for float32), which may lose a bit, where the
    CPU divides. Stricter than CUDA: a one-element tensor divisor counts as a host scalar too (on the CPU a
    host scalar and one on the dividend's device cannot be told apart). Each such division is recorded in
    `seen`, whether or not its bits happen to change."""

    IN_PLACE = (torch.ops.aten.div_.Tensor, torch.ops.aten.div_.Scalar)
    OUT_OF_PLACE = (torch.ops.aten.div.Tensor, torch.ops.aten.div.Scalar)

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.IN_PLACE + self.OUT_OF_PLACE and not kwargs.get("rounding_mode"):
            x, divisor = args[:2]
            one_value = isinstance(divisor, (int, float)) or (torch.is_tensor(divisor) and divisor.numel() == 1)
            if one_value and x.is_floating_point():
                self.seen.append(f"{func}({x.dtype} {tuple(x.shape)}, {divisor})")
                opmath = np.float64 if x.dtype == torch.float64 else np.float32
                reciprocal = float(opmath(1) / opmath(float(divisor)))
                return x.mul_(reciprocal) if func in self.IN_PLACE else x * reciprocal
        return func(*args, **kwargs)


def test_the_pixel_path_divides_truly_where_cuda_would_multiply_by_a_reciprocal():
    """`--augment device` and evaluation's normalisation give the same bits under CUDA's scalar-division
    rule as without it, so their bit-exactness holds on the GPU too: no division by a host number."""
    pixels = torch.arange(256, dtype=torch.float32)
    with CudaScalarDivision():
        emulated = pixels / 255
    assert not torch.equal(emulated, pixels / 255)  # the emulation does change a host-scalar division's bits
    images = torch.from_numpy(_images(16, 32))
    params = draw_params(0, 1, torch.arange(16), 4)
    augmented = augment_batch(images, params, 4, CIFAR_NORMALIZATION)
    normalized = normalize_batch(images, CIFAR_NORMALIZATION)
    with CudaScalarDivision() as cuda_rule:
        augmented_cuda_rule = augment_batch(images, params, 4, CIFAR_NORMALIZATION)
        normalized_cuda_rule = normalize_batch(images, CIFAR_NORMALIZATION)
    assert cuda_rule.seen == []  # also those whose bits happen to agree on these images (the contrast mean's)
    assert torch.equal(augmented_cuda_rule, augmented) and torch.equal(normalized_cuda_rule, normalized)


def test_parameters_have_torchvisions_distributions_drawn_per_image():
    """One batch of 60,000 images: a wrong range, a per-batch draw or a skewed order fails a test."""
    n, padding = 60_000, 4
    p = draw_params(7, 3, torch.arange(n), padding)
    for offsets in (p.top, p.left):  # uniform on 0..2p: chi-square over the 9 values
        counts = torch.bincount(offsets, minlength=2 * padding + 1).numpy()
        assert len(counts) == 2 * padding + 1 and stats.chisquare(counts).pvalue > 1e-4
    # The ranges and the flip rate of train_transform's own steps (the worker path's).
    [flip] = [t for t in _steps(32, padding, CIFAR_NORMALIZATION) if isinstance(t, T.RandomHorizontalFlip)]
    flips = int(p.flip.sum())
    assert stats.binomtest(flips, n, flip.p).pvalue > 1e-4
    for j, (low, high) in _jitter_ranges(32, padding).items():
        factors = p.factors[:, j].double().numpy()
        assert factors.min() >= low and factors.max() < high
        assert stats.kstest(factors, stats.uniform(low, high - low).cdf).pvalue > 1e-4
    order_ids = (p.order[:, None, :] == ORDERS[None]).all(2).float().argmax(1)
    assert stats.chisquare(torch.bincount(order_ids, minlength=6).numpy()).pvalue > 1e-4
    # Independent across images and across parameters, not one draw per batch.
    assert abs(np.corrcoef(p.factors[:-1, 0].numpy(), p.factors[1:, 0].numpy())[0, 1]) < 0.02
    assert abs(np.corrcoef(p.factors[:, 0].numpy(), p.factors[:, 1].numpy())[0, 1]) < 0.02


def test_parameters_depend_on_seed_epoch_and_index_only():
    everyone = draw_params(0, 5, torch.arange(100), 4)
    some = torch.tensor([97, 3, 41])
    picked = draw_params(0, 5, some, 4)
    assert torch.equal(picked.factors, everyone.factors[some]) and torch.equal(picked.order, everyone.order[some])
    assert torch.equal(picked.top, everyone.top[some]) and torch.equal(picked.flip, everyone.flip[some])
    assert not torch.equal(draw_params(0, 6, torch.arange(100), 4).factors, everyone.factors)
    assert not torch.equal(draw_params(1, 5, torch.arange(100), 4).factors, everyone.factors)


def _epoch(loader: DeviceBatches, epoch: int, skip: int = 0) -> dict[int, torch.Tensor]:
    """{image index: its augmented tensor} over one epoch of `loader` (images tagged by their label)."""
    loader.sampler.set_epoch(epoch, skip)
    return {int(label): image for images, labels in loader for image, label in zip(images, labels)}


def test_device_batches_augment_each_image_the_same_whatever_the_batch_size_ranks_or_resumption():
    images = ImageSet(_images(48, 32), np.arange(48), "memory")  # the label is the image's index
    cpu = torch.device("cpu")
    whole = _epoch(DeviceBatches(images, 16, 3, 4, CIFAR_NORMALIZATION, cpu), 2)
    assert len(whole) == 48
    for batch in (8, 12):
        other = _epoch(DeviceBatches(images, batch, 3, 4, CIFAR_NORMALIZATION, cpu), 2)
        assert all(torch.equal(other[i], whole[i]) for i in other)
    shards = [_epoch(DeviceBatches(images, 8, 3, 4, CIFAR_NORMALIZATION, cpu, shard=(r, 2)), 2) for r in (0, 1)]
    assert sorted([*shards[0], *shards[1]]) == list(range(48))
    assert all(torch.equal(t, whole[i]) for shard in shards for i, t in shard.items())
    resumed = _epoch(DeviceBatches(images, 16, 3, 4, CIFAR_NORMALIZATION, cpu), 2, skip=16)
    assert len(resumed) == 32 and all(torch.equal(t, whole[i]) for i, t in resumed.items())
