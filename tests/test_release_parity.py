"""Runs scripts/release_parity.py against a checkout of the official release named by SKD_RELEASE_DIR."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "scripts", "release_parity.py")
RELEASE = os.environ.get("SKD_RELEASE_DIR")
needs_release = pytest.mark.skipif(not RELEASE, reason="set SKD_RELEASE_DIR to a checkout of the release: "
                                                       "git clone https://github.com/brjathu/SKD")


def parity(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *argv], capture_output=True, text=True, timeout=timeout)


@needs_release
@pytest.mark.slow
def test_release_parity_passes_at_zero_tolerance():
    result = parity("--official", RELEASE, "--tol", "0", timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    assert result.stdout.count("step gen") == 4 * 2 * 3  # 4 cases, 2 DropBlock counters, 3 steps


@needs_release
def test_one_step_is_bit_identical_only_with_the_rounding_differences_matched():
    argv = ("--official", RELEASE, "--mode", "step", "--steps", "1", "--dropblock_calls", "40000", "--tol", "0")
    matched, unmatched = parity(*argv), parity(*argv, "--unmatched")
    assert matched.returncode == 0, matched.stdout + matched.stderr
    assert matched.stdout.count("gradients (") == 4 and "max|diff| gradients (52 tensors)=0 " in matched.stdout
    assert unmatched.returncode == 1 and "FAIL" in unmatched.stdout, unmatched.stdout + unmatched.stderr


def test_release_parity_rejects_a_directory_without_the_release(tmp_path):
    result = parity("--official", str(tmp_path), timeout=60)
    assert result.returncode != 0
    assert "models/resnet_ssl.py not found" in result.stderr


def test_the_rewrites_change_what_they_name_and_refuse_a_tree_they_do_not_change():
    import ast

    from scripts import release_parity as tool

    def rewritten(rewrite, source: str) -> str:
        return ast.unparse(rewrite.apply(ast.parse(source), "snippet.py"))

    assert rewritten(tool.NormL2(), "y = torch.mean(torch.sqrt(torch.sum(d ** 2, dim=1)))") == \
        "y = torch.mean(d.norm(p=2, dim=1))"
    assert rewritten(tool.TwoViewsNoDivisor(), "out = net(v[:4 * batch_size])\nloss = a + g * l / 3") == \
        "out = net(v[:2 * batch_size])\nloss = a + g * l"
    assert rewritten(tool.FullBlockMask(), "i = non_zero_idxs.repeat(b ** 2, 1)") == \
        "i = non_zero_idxs.repeat_interleave(b ** 2, dim=0)"
    assert "torch.as_tensor(float(countM), dtype=count_ones.dtype) / count_ones" in \
        rewritten(tool.TrueDivisionRescale(), "s = countM / count_ones")
    with pytest.raises(SystemExit, match="found nothing to change"):
        tool.NormL2().apply(ast.parse("y = d.norm(dim=1)"), "snippet.py")


@needs_release
def test_every_release_network_gives_the_same_features_logits_and_rotation_logits():
    result = parity("--official", RELEASE, "--mode", "features", "--model", "all", "--tol", "0")
    assert result.returncode == 0 and "PASS" in result.stdout, result.stdout + result.stderr
    for name in ("convnet4", "resnet12_ssl", "resnet18", "resnet24", "seresnet12", "wrn_28_10"):
        for size in (32, 84):
            assert f"features {name} {size}px logits: max|diff|=0" in result.stdout
    assert result.stdout.count("rotation logits: max|diff|=0") == 4 * 2  # the four with SKD's rotation head


def test_a_step_of_a_release_network_without_a_rotation_head_is_refused_in_one_line(tmp_path):
    result = parity("--official", str(tmp_path), "--mode", "step", "--model", "convnet4", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "--mode step --model convnet4: the release's convnet4 has no rotation head, so its train() cannot step it "
        "(the features and episode modes compare it)")
