"""Compare this repository with the official SKD release's own code (github.com/brjathu/SKD), given a
checkout of it (--official DIR). Lives in scripts/, not bench/: it checks correctness, not speed.

The release's modules are loaded under a private package name (`_skd_release`) so that its `models`
never shadows ours, and `.cuda()` is shimmed to a no-op on CPU. Nothing of the release is copied here.

Modes (each exits 1 past --tol, printing every compared quantity):
  dropblock  the release's DropBlock mask vs `--dropblock_mask release` on random seed grids (b = 2, 5)
  features   eval-mode stage maps, pooled features and logits of the release's ResNet-12 vs ours, same
             weights loaded strictly, same un-augmented images

Not yet implemented: the K-step training comparison for Gen-0 / Gen-1 and the meta_test (logistic
regression) episode comparison.

Usage: python scripts/release_parity.py --official /path/to/SKD [--mode dropblock|features|all]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from models.dropblock import release_block_mask  # noqa: E402
from models.resnet12 import ResNet12SSL  # noqa: E402

PRIVATE = "_skd_release"


def load_release_module(official: str, relpath: str) -> types.ModuleType:
    """Import `relpath` of the release checkout as `_skd_release.<name>`, with `.cuda()` a no-op off GPU."""
    path = os.path.join(official, relpath)
    if not os.path.isfile(path):
        sys.exit(f"--official {official}: {relpath} not found (expected a checkout of github.com/brjathu/SKD)")
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the release calls .cuda() unconditionally
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    name = f"{PRIVATE}.{os.path.splitext(os.path.basename(relpath))[0]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def check_dropblock(release: types.ModuleType) -> float:
    torch.manual_seed(0)
    worst = 0.0
    for b in (2, 5):
        for rate in (0.02, 0.1, 0.3):
            seeds = torch.bernoulli(torch.full((4, 8, 10 - b + 1, 10 - b + 1), rate))
            ref = release.DropBlock(b)._compute_block_mask(seeds.clone())
            ours = release_block_mask(seeds.clone(), b)
            diff = max_diff(ref, ours)
            print(f"dropblock b={b} seed_rate={rate} seeds={int(seeds.sum())} zeroed release={int((ref == 0).sum())} "
                  f"ours={int((ours == 0).sum())} max|diff|={diff:g}")
            worst = max(worst, diff)
    return worst


def check_features(release: types.ModuleType) -> float:
    torch.manual_seed(0)
    worst = 0.0
    for image, block in ((32, 2), (84, 5)):
        ours = ResNet12SSL(num_classes=64, dropblock_size=block).eval()
        theirs = release.resnet12_ssl(avg_pool=True, drop_rate=0.1, dropblock_size=block, num_classes=64).eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        x = torch.randn(6, 3, image, image)
        with torch.no_grad():
            (*their_maps, their_feat), their_logits = theirs(x, is_feat=True)
            out = ours.forward_all(x)
        pairs = [(f"stage{i + 1}", a, b) for i, (a, b) in enumerate(zip(their_maps, out.stages))]
        pairs += [("feature", their_feat, out.feature), ("logits", their_logits, out.logits)]
        for name, a, b in pairs:
            diff = max_diff(a, b)
            print(f"features {image}px {name}: max|diff|={diff:g}")
            worst = max(worst, diff)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="checkout of github.com/brjathu/SKD")
    parser.add_argument("--mode", choices=("dropblock", "features", "all"), default="all")
    parser.add_argument("--tol", type=float, default=0.0, help="largest allowed absolute difference")
    args = parser.parse_args(argv)
    release = load_release_module(args.official, "models/resnet_ssl.py")
    worst = 0.0
    if args.mode in ("dropblock", "all"):
        worst = max(worst, check_dropblock(release))
    if args.mode in ("features", "all"):
        worst = max(worst, check_features(release))
    print(f"worst max|diff|={worst:g} tol={args.tol:g}: {'PASS' if worst <= args.tol else 'FAIL'}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
