import math

from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from models import ResNetSSL, create_model, list_models
from models.dropblock import RAMP_STEPS, DropBlock


def expected_state_dict_shapes(n_cls: int) -> dict[str, tuple]:
    """The 100 entries of the official resnet12_ssl checkpoints."""
    shapes, inplanes = {}, 3
    for stage, planes in enumerate((64, 160, 320, 640), start=1):
        p = f"layer{stage}.0."
        for i, cin in enumerate((inplanes, planes, planes), start=1):
            shapes[f"{p}conv{i}.weight"] = (planes, cin, 3, 3)
        bns = [f"{p}bn1", f"{p}bn2", f"{p}bn3", f"{p}downsample.1"]
        shapes[f"{p}downsample.0.weight"] = (planes, inplanes, 1, 1)
        for bn in bns:
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{bn}.{name}"] = (planes,)
            shapes[f"{bn}.num_batches_tracked"] = ()
        inplanes = planes
    shapes.update({"classifier.weight": (n_cls, 640), "classifier.bias": (n_cls,),
                   "rot_classifier.weight": (4, n_cls), "rot_classifier.bias": (4,)})
    return shapes


def test_state_dict_has_the_official_names_and_shapes():
    model = create_model("resnet12_ssl", 64, "CIFAR-FS")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(got) == 100
    assert got == expected_state_dict_shapes(64)


def test_parameter_count_matches_the_spec():
    model = create_model("resnet12_ssl", 64, "miniImageNet")
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 12.47


def halving(widths: tuple[int, ...], pooled: int) -> Callable[[int], list[tuple[int, int, int]]]:
    """Stage maps of `widths` channels, each of the first `pooled` stages halving the side (floor)."""
    return lambda size: [(w, size >> min(i + 1, pooled), size >> min(i + 1, pooled)) for i, w in enumerate(widths)]


# Each registered network's stage maps (channels, height, width) at an input side: the architecture as built.
STAGE_MAPS = {"resnet12_ssl": halving((64, 160, 320, 640), 4), "resnet18": halving((64, 160, 320, 640), 4),
              "resnet24": halving((64, 160, 320, 640), 4), "seresnet12": halving((64, 160, 320, 640), 4),
              "resnet12_ssl_narrow": halving((16, 40, 80, 160), 4), "convnet4": halving((64,) * 4, 3),
              # stride-2 3x3 convolutions with padding 1 round up: 84 -> 42 -> 21
              "wrn_28_10": lambda size: [(160, size, size), (320, -(-size // 2), -(-size // 2)),
                                         (640, -(-size // 4), -(-size // 4))]}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("dataset,size", [("CIFAR-FS", 32), ("miniImageNet", 84)])
def test_forward_shapes(name, dataset, size):
    model = create_model(name, 7, dataset).eval()
    x = torch.randn(3, 3, size, size)
    out = model.forward_all(x)
    maps = STAGE_MAPS[name](size)
    assert [tuple(s.shape[1:]) for s in out.stages] == maps
    assert out.feature.shape == (3, maps[-1][0]) and model.feature_dim == maps[-1][0]
    assert out.logits.shape == (3, 7)
    assert out.rot_logits.shape == (3, 4)
    # The feature is the global average of the last map, the logits a linear read of it, and the
    # plain forward returns the same logits as forward_all.
    torch.testing.assert_close(out.feature, out.stages[-1].mean((2, 3)))
    torch.testing.assert_close(out.logits, out.feature @ model.classifier.weight.T + model.classifier.bias)
    torch.testing.assert_close(model(x), out.logits)


def test_rotation_head_reads_the_logits():
    model = create_model("resnet12_ssl", 7, "CIFAR-FS").eval()
    out = model.forward_all(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(out.rot_logits, model.rot_classifier(out.logits))


@pytest.mark.parametrize("dataset,block", [("CIFAR-FS", 2), ("FC100", 2), ("miniImageNet", 5), ("tieredImageNet", 5)])
def test_dropblock_size_follows_image_size(dataset, block):
    model = create_model("resnet12_ssl", 5, dataset)
    sizes = [m.block_size for m in model.modules() if isinstance(m, DropBlock)]
    assert sizes == [block, block]  # stages 3 and 4 only


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient(name):
    model = create_model(name, 5, "CIFAR-FS").train()
    out = model.forward_all(torch.randn(4, 3, 32, 32))
    (out.logits.logsumexp(1).sum() + out.rot_logits.logsumexp(1).sum()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_official_format_checkpoint_round_trip(tmp_path):
    from engine.checkpoint import load_model_weights

    model = create_model("resnet12_ssl", 64, "CIFAR-FS")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "official.pth"
    torch.save({"epoch": 65, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    fresh = create_model("resnet12_ssl", 64, "CIFAR-FS")
    load_model_weights(fresh, path)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_dropblock_is_identity_in_eval_mode():
    block = DropBlock(block_size=2, drop_rate=0.1).eval()
    block.num_calls = RAMP_STEPS
    x = torch.randn(4, 8, 6, 6)
    assert torch.equal(block(x), x)
    assert block.num_calls == RAMP_STEPS  # eval calls do not advance the ramp


def spec_gamma(n: int, drop_rate: float, block: int, feat: int) -> float:
    """The release's ramp: keep = max(1 - drop_rate * n / 40000, 1 - drop_rate);
    gamma = (1 - keep) / block^2 * feat^2 / (feat - block + 1)^2."""
    keep = max(1 - drop_rate * n / 40000, 1 - drop_rate)
    return (1 - keep) / block**2 * feat**2 / (feat - block + 1) ** 2


def loop_block_mask(seeds: torch.Tensor, block: int) -> torch.Tensor:
    """DropBlock's mask with plain loops: a seed at grid (i, j) zeroes rows i..i+block-1 and columns
    j..j+block-1 of a (grid + block - 1)^2 map."""
    n, c, gh, gw = seeds.shape
    mask = torch.ones(n, c, gh + block - 1, gw + block - 1)
    for s in range(n):
        for ch in range(c):
            for i in range(gh):
                for j in range(gw):
                    if seeds[s, ch, i, j] != 0:
                        for r in range(i, i + block):
                            for col in range(j, j + block):
                                mask[s, ch, r, col] = 0
    return mask


def hand_seeds() -> torch.Tensor:
    """Seeds on the 5x5 grid of a 2x3x9x9 map with block 5: overlapping blocks, corners, edges."""
    seeds = torch.zeros(2, 3, 5, 5)
    for s, ch, i, j in [(0, 0, 0, 0), (0, 0, 2, 3), (0, 0, 4, 4),  # overlapping, last one at the corner
                        (0, 2, 0, 4), (0, 2, 4, 0),  # the two other corners
                        (1, 0, 1, 1), (1, 0, 1, 2), (1, 0, 2, 1),  # adjacent seeds
                        (1, 2, 3, 1)]:
        seeds[s, ch, i, j] = 1
    seeds[1, 1] = 1  # every seed fires: the whole map is dropped
    return seeds  # (0, 1) has no seed at all


def test_dropblock_ramp_follows_the_spec():
    block = DropBlock(block_size=5, drop_rate=0.1)
    for n, keep in [(0, 1.0), (20_000, 0.95), (40_000, 0.9), (80_000, 0.9)]:
        block.num_calls = n
        assert block.keep_rate() == pytest.approx(keep)
    block.num_calls = 40_000
    feat = 10
    assert block.seed_probability(feat) == pytest.approx(0.1 / 25 * 100 / 36)


@pytest.mark.parametrize("block_size, feat", [(5, 10), (5, 5), (2, 4), (2, 2), (5, 9)])
@pytest.mark.parametrize("n", [0, 1, 20_000, 40_000, 80_000])
def test_dropblock_seed_probability_is_the_spec_formula(block_size, feat, n):
    """(5, 10) and (5, 5) are the maps stages 3 and 4 see at 84px, (2, 4) and (2, 2) at 32px."""
    block = DropBlock(block_size=block_size, drop_rate=0.1)
    block.num_calls = n
    assert block.seed_probability(feat) == pytest.approx(spec_gamma(n, 0.1, block_size, feat), rel=1e-12, abs=1e-15)


def test_dropblock_seed_probability_values():
    """A few values by hand: on the 5x5 map of stage 4 (84px) the grid is 1x1 and gamma = 1 - keep."""
    block = DropBlock(block_size=5, drop_rate=0.1)
    block.num_calls = 20_000
    assert block.seed_probability(5) == pytest.approx(0.05)
    assert block.seed_probability(10) == pytest.approx(0.05 / 25 * 100 / 36)
    block.num_calls = 80_000  # past the ramp: keep stays at 0.9
    assert block.seed_probability(5) == pytest.approx(0.1)
    block.num_calls = 0
    assert block.seed_probability(10) == 0.0


def test_dropblock_mask_geometry():
    block = DropBlock(block_size=2, drop_rate=0.1)
    seeds = torch.zeros(1, 1, 4, 4)  # a 5x5 map has a 4x4 seed grid
    seeds[0, 0, 1, 2] = 1
    mask = block.block_mask(seeds)[0, 0]
    expected = torch.ones(5, 5)
    expected[1:3, 2:4] = 0  # rows i..i+1, columns j..j+1
    assert torch.equal(mask, expected)


def test_dropblock_mask_geometry_block5_overlapping_seeds():
    seeds = hand_seeds()
    expected = loop_block_mask(seeds, 5)
    # The loop reference itself, by hand: blocks at (0,0), (2,3), (4,4) cover 25 + 25 + 25 - 6 - 1 - 12 + 1 = 57
    # of the 81 positions; the other corners (0,4) and (4,0) cover 50 - 1 (they share position (4, 4)).
    assert expected[0, 0].sum() == 81 - 57
    assert expected[0, 2].sum() == 81 - 49 and expected[0, 2, 4, 4] == 0 and expected[0, 2, 8, 8] == 1
    assert expected[0, 1].sum() == 81 and expected[1, 1].sum() == 0
    assert torch.equal(expected[1, 2, 3:8, 1:6], torch.zeros(5, 5)) and expected[1, 2].sum() == 81 - 25
    assert expected[1, 0].sum() == 81 - 35  # (1,1), (1,2), (2,1): rows 1-5 x cols 1-6, plus row 6 x cols 1-5
    got = DropBlock(block_size=5, drop_rate=0.1).block_mask(seeds, 5)
    assert got.shape == (2, 3, 9, 9)
    assert torch.equal(got, expected)
    # block_size falls back to the module's own
    assert torch.equal(DropBlock(block_size=5, drop_rate=0.1).block_mask(seeds), expected)


@pytest.mark.parametrize("block_size", [1, 2, 3, 5])
def test_dropblock_mask_matches_the_loop_reference_on_random_seeds(block_size):
    g = torch.Generator().manual_seed(block_size)
    grid = 9 - block_size + 1
    for rate in (0.05, 0.2, 0.5):
        seeds = torch.bernoulli(torch.full((2, 3, grid, grid), rate), generator=g)
        got = DropBlock(block_size=block_size, drop_rate=0.1).block_mask(seeds, block_size)
        assert torch.equal(got, loop_block_mask(seeds, block_size)), rate


def _fake_bernoulli(monkeypatch, seeds: torch.Tensor) -> list[torch.Tensor]:
    """torch.bernoulli returns `seeds`; the probability tensors it was asked for are recorded."""
    asked = []

    def fake(p, *args, **kwargs):
        asked.append(p.clone())
        return seeds.clone().to(p.device)

    monkeypatch.setattr(torch, "bernoulli", fake)
    return asked


def test_dropblock_forward_applies_the_mask_with_one_batch_wide_rescale(monkeypatch):
    seeds = hand_seeds()
    asked = _fake_bernoulli(monkeypatch, seeds)
    block = DropBlock(block_size=5, drop_rate=0.1).train()
    block.num_calls = 19_999  # the call is counted first, so this forward runs at n = 20000 (keep 0.95)
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    y = block(x)
    assert block.num_calls == 20_000
    assert len(asked) == 1 and asked[0].shape == (2, 3, 5, 5)  # one Bernoulli per sample, channel, grid position
    torch.testing.assert_close(asked[0], torch.full((2, 3, 5, 5), spec_gamma(20_000, 0.1, 5, 9)), rtol=1e-6, atol=0)
    mask = loop_block_mask(seeds, 5)
    kept = int(mask.sum())
    assert kept == 24 + 81 + 32 + 46 + 0 + 56  # per (sample, channel), counted by hand in the geometry test
    # numel(mask) / sum(mask) over the whole batch, not per sample or channel
    torch.testing.assert_close(y, x * mask * (mask.numel() / kept), rtol=1e-6, atol=1e-6)


def test_dropblock_rescale_under_torchrun_is_over_the_global_batch(monkeypatch):
    """With sum_over_ranks (set under torchrun), the rescale is numel / kept of all ranks' masks together,
    as one process at the global batch computes it: here another rank kept all of its 150 activations."""
    seeds = hand_seeds()
    _fake_bernoulli(monkeypatch, seeds)
    block = DropBlock(block_size=5, drop_rate=0.1).train()
    block.num_calls = 19_999
    other_rank = torch.tensor([150.0, 150.0])  # (kept, numel) of the other rank's mask
    block.sum_over_ranks = lambda counts: counts + other_rank
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    mask = loop_block_mask(seeds, 5)
    expected = x * mask * ((mask.numel() + 150) / (int(mask.sum()) + 150))
    torch.testing.assert_close(block(x), expected, rtol=1e-6, atol=1e-6)


def test_dropblock_all_dropped_gives_zeros_not_nan(monkeypatch):
    _fake_bernoulli(monkeypatch, torch.ones(2, 3, 5, 5))
    block = DropBlock(block_size=5, drop_rate=0.1).train()
    block.num_calls = RAMP_STEPS
    y = block(torch.randn(2, 3, 9, 9))
    assert torch.equal(y, torch.zeros_like(y))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("block_size, feat", [(5, 10), (5, 5), (2, 4)])
def test_dropblock_forward_equals_the_spec_on_its_own_draws(monkeypatch, device, block_size, feat):
    """The real Bernoulli draws, recorded: output = x * loop mask * numel / sum, on any device."""
    real = torch.bernoulli
    drawn = []

    def record(p, *args, **kwargs):
        out = real(p, *args, **kwargs)
        drawn.append(out)
        return out

    monkeypatch.setattr(torch, "bernoulli", record)
    torch.manual_seed(0)
    block = DropBlock(block_size=block_size, drop_rate=0.1).train().to(device)
    block.num_calls = RAMP_STEPS
    x = torch.randn(8, 32, feat, feat, device=device)
    y = block(x)
    assert y.device.type == device
    seeds = drawn[0].cpu()
    assert seeds.shape == (8, 32, feat - block_size + 1, feat - block_size + 1)
    assert 0 < seeds.sum() < seeds.numel()  # some blocks dropped, not all
    mask = loop_block_mask(seeds, block_size)
    torch.testing.assert_close(y.cpu(), x.cpu() * mask * (mask.numel() / mask.sum()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_size, feat", [(2, 10), (2, 4), (5, 10), (5, 5)])
def test_dropblock_drop_fraction_in_training(block_size, feat):
    torch.manual_seed(0)
    block = DropBlock(block_size=block_size, drop_rate=0.1).train()
    block.num_calls = RAMP_STEPS  # fully ramped: keep = 0.9
    gamma = spec_gamma(RAMP_STEPS + 1, 0.1, block_size, feat)
    x = torch.rand(64, 64, feat, feat) + 0.5  # positive: a zero output means dropped
    y = block(x)
    # Each position is dropped if any seed whose block covers it fires.
    grid = feat - block_size + 1
    cover = torch.zeros(feat, feat)
    for i in range(grid):
        for j in range(grid):
            cover[i:i + block_size, j:j + block_size] += 1
    expected = (1 - (1 - gamma) ** cover).mean().item()
    dropped_per_map = (y == 0).float().mean((2, 3)).flatten()
    dropped = dropped_per_map.mean().item()
    tolerance = 5 * dropped_per_map.std().item() / math.sqrt(len(dropped_per_map))
    assert dropped == pytest.approx(expected, abs=tolerance)
    # The expected fraction is close to (not exactly) 1 - keep = 0.1: blocks overlap and cover edges less.
    assert 0.07 < expected < 0.1 + 1e-6
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * (y.numel() / kept.sum().item()))


def test_dropblock_counter_is_not_in_the_state_dict():
    model = create_model("resnet12_ssl", 5, "CIFAR-FS").train()
    model(torch.randn(2, 3, 32, 32))
    assert [m.num_calls for m in model.modules() if isinstance(m, DropBlock)] == [1, 1]
    fresh = create_model("resnet12_ssl", 5, "CIFAR-FS")
    fresh.load_state_dict(model.state_dict())
    assert [m.num_calls for m in fresh.modules() if isinstance(m, DropBlock)] == [0, 0]


def test_unknown_model_and_dataset_are_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet99", 5, "CIFAR-FS")
    with pytest.raises(ValueError, match="no profile for dataset 'my-data'"):
        create_model("resnet12_ssl", 5, "my-data")
    with pytest.raises(ValueError, match="image size"):
        create_model("resnet12_ssl", 5, "folder")


@pytest.mark.parametrize("dataset, image_size, block", [
    ("folder", 84, 5), ("folder", 64, 5), ("folder", 63, 2), ("folder", 28, 2), (None, 84, 5),
    ("CIFAR-FS", 84, 2), ("miniImageNet", 32, 5)])  # a named dataset keeps its profile at any image size
def test_dropblock_size_of_folder_and_resized_datasets(dataset, image_size, block):
    model = create_model("resnet12_ssl", 5, dataset, image_size=image_size)
    assert isinstance(model, ResNetSSL)
    assert [m.block_size for m in model.modules() if isinstance(m, DropBlock)] == [block, block]


def test_dropblock_shrinks_blocks_to_small_feature_maps():
    """At 28px layer4's map is 1x1, smaller than the 2x2 block: DropBlock becomes per-position dropout."""
    block = DropBlock(block_size=2, drop_rate=0.5, ramp_steps=1).train()
    block.num_calls = 1
    out = block(torch.ones(64, 32, 1, 1))
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(0.5, abs=0.05)  # gamma = 1 - keep = 0.5; sd 0.011
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / kept.float().mean().item()))
    model = create_model("resnet12_ssl", 5, image_size=28).train()
    seen = _dropblock_inputs(model)
    model(torch.randn(2, 3, 28, 28)).sum().backward()
    assert seen == [(3, 3), (1, 1)]  # 28 -> 14 -> 7 -> 3 -> 1


def _dropblock_inputs(model) -> list[tuple[int, int]]:
    seen = []
    for m in model.modules():
        if isinstance(m, DropBlock):
            m.register_forward_pre_hook(lambda mod, inputs: seen.append(tuple(inputs[0].shape[2:])))
    return seen


@pytest.mark.parametrize("size, maps", [(84, [(10, 10), (5, 5)]), (32, [(4, 4), (2, 2)])])
def test_dropblock_sits_after_the_max_pool_of_stages_3_and_4(size, maps):
    """84 -> 42 -> 21 -> 10 -> 5: DropBlock(5) sees the pooled 10x10 and 5x5 maps (6x6 and 1x1 seed grids)."""
    torch.manual_seed(0)
    model = create_model("resnet12_ssl", 5, image_size=size).train()
    seen = _dropblock_inputs(model)
    pooled = {}
    for stage in (3, 4):
        block = getattr(model, f"layer{stage}")[0]
        block.maxpool.register_forward_hook(lambda m, i, o, stage=stage: pooled.setdefault(stage, o))
        block.dropblock.register_forward_pre_hook(
            lambda m, inputs, stage=stage: pooled.setdefault(f"in{stage}", inputs[0]))
    stages = model.forward_all(torch.randn(2, 3, size, size)).stages
    assert seen == maps
    for stage in (3, 4):
        assert pooled[f"in{stage}"] is pooled[stage]  # DropBlock's input is the max-pool's output
    assert [m.num_calls for m in model.modules() if isinstance(m, DropBlock)] == [1, 1]
    assert tuple(stages[2].shape[2:]) == maps[0] and tuple(stages[3].shape[2:]) == maps[1]


def test_stages_1_and_2_use_dropout_with_the_drop_rate(monkeypatch):
    import models.resnet as resnet12

    calls = []
    real = F.dropout

    def record(x, p=0.5, training=True, inplace=False):
        calls.append((tuple(x.shape[1:]), p, training))
        return real(x, p, training, inplace)

    monkeypatch.setattr(resnet12.F, "dropout", record)
    model = create_model("resnet12_ssl", 5, image_size=32)
    model.train()(torch.randn(2, 3, 32, 32))
    assert calls == [((64, 16, 16), 0.1, True), ((160, 8, 8), 0.1, True)]
    calls.clear()
    model.eval()(torch.randn(2, 3, 32, 32))
    assert [training for _, _, training in calls] == [False, False]


def _spec_forward(model: ResNetSSL, x: torch.Tensor) -> torch.Tensor:
    """The network in eval mode, written with functional ops on the model's weights."""
    def bn(m, t):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, 1e-5)

    for stage in model.stages:
        b = stage[0]
        out = F.leaky_relu(bn(b.bn1, F.conv2d(x, b.conv1.weight, stride=1, padding=1)), 0.1)
        out = F.leaky_relu(bn(b.bn2, F.conv2d(out, b.conv2.weight, stride=1, padding=1)), 0.1)
        out = bn(b.bn3, F.conv2d(out, b.conv3.weight, stride=1, padding=1))
        shortcut = bn(b.downsample[1], F.conv2d(x, b.downsample[0].weight, stride=1))
        x = F.max_pool2d(F.leaky_relu(out + shortcut, 0.1), 2)
    feature = x.mean((2, 3))
    return F.linear(feature, model.classifier.weight, model.classifier.bias)


def test_eval_forward_is_the_spec_architecture():
    torch.manual_seed(0)
    model = create_model("resnet12_ssl", 7, image_size=32).eval()
    with torch.no_grad():  # BatchNorm statistics and affine parameters away from the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            padding = (1, 1) if m.kernel_size == (3, 3) else (0, 0)
            assert m.bias is None and m.stride == (1, 1) and m.padding == padding
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _spec_forward(model, x), rtol=1e-4, atol=1e-4)


def test_initialisation_follows_the_spec():
    """Convs kaiming_normal(fan_out, leaky_relu): std sqrt(2 / (out * k * k)); BN 1 and 0; Linears
    PyTorch's default: uniform with bound 1 / sqrt(fan_in)."""
    torch.manual_seed(0)
    model = create_model("resnet12_ssl", 64, "miniImageNet")
    sd = model.state_dict()
    # fan_out and fan_in differ by >= 1.25x on these, and each has >= 92k weights (std known to < 1%)
    for name in ("layer2.0.conv1.weight", "layer4.0.conv2.weight", "layer4.0.downsample.0.weight"):
        w = sd[name]
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.03), name
        assert abs(w.mean().item()) < 0.1 * math.sqrt(2 / fan_out), name
    for name, v in sd.items():
        if ".bn" in name or "downsample.1" in name:
            if name.endswith("weight"):
                assert torch.equal(v, torch.ones_like(v)), name
            elif name.endswith("bias"):
                assert torch.equal(v, torch.zeros_like(v)), name
    for name, fan_in in (("classifier", 640), ("rot_classifier", 64)):
        for part in ("weight", "bias"):
            v = sd[f"{name}.{part}"]
            bound = 1 / math.sqrt(fan_in)
            assert v.abs().max().item() <= bound, name
    w = sd["classifier.weight"]
    assert w.std().item() == pytest.approx(1 / math.sqrt(3 * 640), rel=0.03)  # uniform(-b, b) has std b / sqrt(3)


def _release_pairing_reference(seeds: torch.Tensor, b: int) -> torch.Tensor:
    """Loop reference of the release's pairing: the j-th (seed, offset) pair is (j mod N, j mod b^2),
    j < N b^2, and each seed also keeps its own cell at offset ((b-1)//2, (b-1)//2)."""
    lead = (b - 1) // 2
    h, w = seeds.shape[-2] + b - 1, seeds.shape[-1] + b - 1
    dropped = torch.zeros(*seeds.shape[:2], h, w)
    positions = [tuple(p) for p in seeds.nonzero().tolist()]
    n = len(positions)
    for n_idx, c, i, j in positions:
        dropped[n_idx, c, i + lead, j + lead] = 1
    for pair in range(n * b * b):
        n_idx, c, i, j = positions[pair % n]
        k = pair % (b * b)
        dropped[n_idx, c, i + k // b, j + k % b] = 1
    return 1 - dropped


@pytest.mark.parametrize("b, cells", [(2, [(0, 0), (3, 3), (0, 5)]),            # N = 3, coprime with 4
                                      (2, [(0, 0), (3, 3)]),                    # N = 2, gcd 2
                                      (2, [(0, 0), (0, 4), (4, 0), (4, 4)]),    # N = 4, one offset each
                                      (5, [(0, 0), (5, 5)]),                    # N = 2, coprime with 25
                                      (5, [(0, 0), (0, 6), (6, 0), (6, 6), (12, 12)])])  # N = 5, gcd 5
def test_release_mask_pairs_seed_i_with_offsets_i_plus_kn(b, cells):
    from math import gcd
    from models.dropblock import release_block_mask
    seeds = torch.zeros(1, 1, 20 - b + 1, 20 - b + 1)
    for i, j in cells:
        seeds[0, 0, i, j] = 1
    got = release_block_mask(seeds, b)
    assert torch.equal(got, _release_pairing_reference(seeds, b))
    n = len(cells)
    # Seeds far apart: each zeroes b^2 / gcd(N, b^2) offsets, plus its own cell when that offset is not among them.
    zeroed = int((got == 0).sum())
    per_seed = (b * b) // gcd(n, b * b)
    assert per_seed * n <= zeroed <= (per_seed + 1) * n
    assert (zeroed == b * b * n) == (gcd(n, b * b) == 1)
    full = DropBlock(block_size=b, drop_rate=0.1).block_mask(seeds, b)
    assert int((full == 0).sum()) == b * b * n  # intended rule: every seed zeroes its full block


@pytest.mark.parametrize("b", [2, 5])
def test_release_mask_equals_full_mask_when_n_coprime(b):
    from models.dropblock import release_block_mask
    seeds = torch.zeros(1, 1, 12 - b + 1, 12 - b + 1)
    seeds[0, 0, 0, 0] = seeds[0, 0, 6, 6] = seeds[0, 0, 2, 7] = 1   # N = 3, coprime with 4 and 25
    assert torch.equal(release_block_mask(seeds, b), DropBlock(block_size=b, drop_rate=0.1).block_mask(seeds, b))


def test_dropblock_mask_flag_switches_every_block():
    from models.dropblock import set_dropblock_mask
    model = ResNetSSL(num_classes=5, dropblock_size=2)
    set_dropblock_mask(model, "release")
    assert {m.mask for m in model.modules() if isinstance(m, DropBlock)} == {"release"}
    with pytest.raises(ValueError, match="dropblock_mask"):
        set_dropblock_mask(model, "half")


def test_dropblock_mask_default_rule():
    import argparse
    from methods.base import dropblock_mask_of
    ns = argparse.Namespace
    assert dropblock_mask_of(ns(dropblock_mask=None)) == "full"
    assert dropblock_mask_of(ns(dropblock_mask=None, official_quirks=True)) == "release"
    assert dropblock_mask_of(ns(dropblock_mask="full", official_quirks=True)) == "full"
    assert dropblock_mask_of(ns(dropblock_mask="release")) == "release"
