import pytest
import torch

from models import ResNet12SSL, create_model, list_models
from models.dropblock import RAMP_STEPS, DropBlock


def expected_state_dict_shapes(n_cls: int) -> dict[str, tuple]:
    """The 100 entries of the official resnet12_ssl checkpoints (SPEC section 1)."""
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


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("dataset,size,final_map", [("CIFAR-FS", 32, 2), ("miniImageNet", 84, 5)])
def test_forward_shapes(name, dataset, size, final_map):
    model = create_model(name, 7, dataset).eval()
    out = model.forward_all(torch.randn(3, 3, size, size))
    assert [tuple(s.shape[1:]) for s in out.stages] == [
        (64, size // 2, size // 2), (160, size // 4, size // 4), (320, size // 8, size // 8),
        (640, final_map, final_map)]
    assert out.feature.shape == (3, 640)
    assert out.logits.shape == (3, 7)
    assert out.rot_logits.shape == (3, 4)
    assert torch.equal(model(torch.zeros(1, 3, size, size)), model.forward_head(model.forward_features(torch.zeros(1, 3, size, size))))


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


def test_dropblock_ramp_follows_the_spec():
    block = DropBlock(block_size=5, drop_rate=0.1)
    for n, keep in [(0, 1.0), (20_000, 0.95), (40_000, 0.9), (80_000, 0.9)]:
        block.num_calls = n
        assert block.keep_rate() == pytest.approx(keep)
    block.num_calls = 40_000
    feat = 10
    assert block.seed_probability(feat) == pytest.approx(0.1 / 25 * 100 / 36)


def test_dropblock_mask_geometry():
    block = DropBlock(block_size=2, drop_rate=0.1)
    seeds = torch.zeros(1, 1, 4, 4)  # a 5x5 map has a 4x4 seed grid
    seeds[0, 0, 1, 2] = 1
    mask = block.block_mask(seeds)[0, 0]
    expected = torch.ones(5, 5)
    expected[1:3, 2:4] = 0  # rows i..i+1, columns j..j+1
    assert torch.equal(mask, expected)


def test_dropblock_drop_fraction_and_rescaling_in_training():
    torch.manual_seed(0)
    b, feat = 2, 10
    block = DropBlock(block_size=b, drop_rate=0.1).train()
    block.num_calls = RAMP_STEPS  # fully ramped: keep = 0.9
    gamma = block.seed_probability(feat)
    x = torch.ones(64, 64, feat, feat)
    y = block(x)
    # Each position is dropped if any seed whose block covers it fires.
    grid = feat - b + 1
    cover = torch.zeros(feat, feat)
    for i in range(grid):
        for j in range(grid):
            cover[i:i + b, j:j + b] += 1
    expected = (1 - (1 - gamma) ** cover).mean().item()
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(expected, abs=0.005)
    assert 0.07 < dropped < 0.1
    assert y.sum().item() == pytest.approx(x.numel(), rel=1e-5)  # rescaled to keep the total


def test_dropblock_counter_is_not_in_the_state_dict():
    model = create_model("resnet12_ssl", 5, "CIFAR-FS").train()
    model(torch.randn(2, 3, 32, 32))
    assert [m.num_calls for m in model.modules() if isinstance(m, DropBlock)] == [1, 1]
    fresh = create_model("resnet12_ssl", 5, "CIFAR-FS")
    fresh.load_state_dict(model.state_dict())
    assert [m.num_calls for m in fresh.modules() if isinstance(m, DropBlock)] == [0, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dropblock_runs_on_cuda():
    block = DropBlock(block_size=5, drop_rate=0.1).train().cuda()
    block.num_calls = RAMP_STEPS
    assert block(torch.ones(2, 4, 10, 10, device="cuda")).device.type == "cuda"


def test_unknown_model_and_dataset_are_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet99", 5, "CIFAR-FS")
    with pytest.raises(ValueError, match="image size"):
        create_model("resnet12_ssl", 5, "my-data")
    assert isinstance(create_model("resnet12_ssl", 5, "my-data", image_size=84), ResNet12SSL)


def test_dropblock_shrinks_blocks_to_small_feature_maps():
    """At 28px layer4's map is 1x1, smaller than the 2x2 block: DropBlock becomes per-position dropout."""
    block = DropBlock(block_size=2, drop_rate=0.5, ramp_steps=1).train()
    block.num_calls = 1
    out = block(torch.ones(64, 32, 1, 1))
    kept = out != 0
    assert 0.3 < kept.float().mean() < 0.7
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / kept.float().mean().item()))
    model = create_model("resnet12_ssl", 5, image_size=28).train()
    model(torch.randn(2, 3, 28, 28)).sum().backward()
