"""Compare this repository with the official SKD release's own code (github.com/brjathu/SKD), given a
checkout of it (--official DIR). Lives in scripts/, not bench/: it checks correctness, not speed.

The release's modules are loaded under a private package name (`_skd_release`) so that its `models`
never shadows ours, and `.cuda()` is shimmed to a no-op on CPU. Its training scripts are not imported
(their top level queries nvidia-smi and builds their data pipeline): the definitions a mode needs
(`train`, `DistillKL`, `AverageMeter`) are executed alone from their syntax trees. Nothing of the
release is copied here.

Modes (each exits 1 past --tol, printing every compared quantity):
  dropblock  the release's DropBlock mask vs `--dropblock_mask release` on random seed grids (b = 2, 5)
  features   eval-mode stage maps, pooled features, logits and rotation logits of the release's network vs
             ours at 32 and 84 px (the DropBlock size the release's create_model gives each), same weights
             (loaded strictly; only our rotation head where the release's network has none), BatchNorm
             statistics away from the identity, same images
  step       --steps SGD steps on one fixed batch (float32, CIFAR-FS settings) of the release's own
             `train()` of train_selfsupervison.py (Gen-0) and train_distillation.py (Gen-1) vs this
             repository's Gen-0 and Gen-1 steps and optimizer, same weights loaded strictly, same seed:
             the loss, every gradient, the weights and BatchNorm statistics after each step, the DropBlock
             counters and the RNG state. The release side is changed only where a `Rewrite` below or a
             stand-in says why: three rounding differences matched (--unmatched leaves them in), the
             documented departures applied for this repository's defaults, and what stops the release
             running in this PyTorch.
  episode    one 5-way episode per shot count (1, 5; 15 queries a class, un-augmented): the release's
             meta_test() vs this repository's embedding and classifiers, on the same normalised images:
             the normalised support and query features and the logistic-regression predictions

--model NAME (or all) picks the network: the release's ResNet-12 by default; `resnet18`, `resnet24`, `seresnet12`
(its models/resnet_ssl.py), `convnet4` (models/convnet.py) and `wrn_28_10` (models/wresnet.py). The release's
train() needs SKD's rotation head, which its Conv-4 and WRN-28-10 lack: `step` compares the other four.

Usage: python scripts/release_parity.py --official /path/to/SKD [--mode dropblock|features|step|episode|all]
                                        [--model NAME|all]
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import io
import importlib.util
import os
import sys
import time
import types
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from sklearn import metrics as sklearn_metrics
from sklearn.linear_model import LogisticRegression as SKLearnLR
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import util  # noqa: E402
from published.profiles import CIFAR_NORMALIZATION  # noqa: E402
from dataset.synthetic import make_synthetic_split  # noqa: E402
from dataset.transforms import normalize_batch  # noqa: E402
from distill import rot180, rot270  # noqa: E402
from engine.config import Schedule  # noqa: E402
from engine.run import sgd  # noqa: E402
from eval.classifiers import classify  # noqa: E402
from eval.embed import embed  # noqa: E402
from eval.fewshot import l2_normalize  # noqa: E402
from methods.base import clone_student  # noqa: E402
from methods.skd_gen0 import gen0_step  # noqa: E402
from methods.skd_gen1 import gen1_step  # noqa: E402
from models.dropblock import dropblock_calls, release_block_mask, set_dropblock_calls, set_dropblock_mask  # noqa: E402
from models import Backbone, create_model  # noqa: E402

PRIVATE = "_skd_release"


def release_path(official: str, relpath: str) -> str:
    path = os.path.join(official, relpath)
    if not os.path.isfile(path):
        sys.exit(f"--official {official}: {relpath} not found (expected a checkout of github.com/brjathu/SKD)")
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # the release calls .cuda() unconditionally
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    return path


class Rewrite(ast.NodeTransformer):
    """One named change to the release's syntax tree; `apply` refuses a tree it does not change."""
    name = ""

    def __init__(self) -> None:
        self.changed = 0

    def apply(self, tree: ast.AST, path: str) -> ast.AST:
        tree = self.visit(tree)
        if not self.changed:
            sys.exit(f"{path}: the rewrite '{self.name}' found nothing to change (an unexpected release version)")
        return tree


def call_of(node: ast.AST, module: str, function: str) -> bool:
    """Whether `node` is a call of `module.function`."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == function
            and isinstance(node.func.value, ast.Name) and node.func.value.id == module)


class TrueDivisionRescale(Rewrite):
    """DropBlock's rescale `countM / count_ones` is a Python int over a tensor, which PyTorch computes as
    count_ones.reciprocal() * countM; ours divides tensors. Made the tensor division (rounding only)."""
    name = "DropBlock rescale as a tensor division"

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Div) and isinstance(node.left, ast.Name) and node.left.id == "countM":
            self.changed += 1
            node.left = ast.parse(f"torch.as_tensor(float(countM), dtype={ast.unparse(node.right)}.dtype)",
                                  mode="eval").body
        return node


class FullBlockMask(Rewrite):
    """The release tiles its seed list (`repeat`); interleaving it pairs every seed with every offset:
    the full-block mask of the method as published (our --dropblock_mask full)."""
    name = "DropBlock seeds interleaved (full-block mask)"

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        target = node.func
        if (isinstance(target, ast.Attribute) and target.attr == "repeat" and isinstance(target.value, ast.Name)
                and target.value.id == "non_zero_idxs"):
            self.changed += 1
            target.attr = "repeat_interleave"
            node.args = node.args[:1]
            node.keywords = [ast.keyword("dim", ast.Constant(0))]
        return node


class NormL2(Rewrite):
    """Gen-1's L2 is `sqrt(sum(d ** 2, dim=1))` in the release, `d.norm(dim=1)` here (rounding only)."""
    name = "L2 as .norm()"

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        inner = node.args[0] if call_of(node, "torch", "sqrt") and node.args else None
        if call_of(inner, "torch", "sum") and isinstance(inner.args[0], ast.BinOp) \
                and isinstance(inner.args[0].op, ast.Pow):
            self.changed += 1
            return ast.Call(ast.Attribute(inner.args[0].left, "norm", ast.Load()), [],
                            [ast.keyword("p", ast.Constant(2)), *inner.keywords])
        return node


class TwoViewsNoDivisor(Rewrite):
    """This repository's default Gen-1 (the documented departure): the student forwarded on x and x180
    only (the slice bound 4 * batch_size becomes 2 * batch_size) and the L2 term not divided by 3."""
    name = "Gen-1 default: two student views, L2 not divided by 3"

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Mult) and isinstance(node.left, ast.Constant) and node.left.value == 4 \
                and isinstance(node.right, ast.Name) and node.right.id == "batch_size":
            self.changed += 1
            node.left = ast.Constant(2)
        elif isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) and node.right.value == 3:
            self.changed += 1
            return node.left
        return node


def parse_release(path: str, rewrites: tuple[Rewrite, ...]) -> ast.Module:
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for rewrite in rewrites:
        tree = rewrite.apply(tree, path)
    return ast.fix_missing_locations(tree)


def load_release_module(official: str, relpath: str, rewrites: tuple[Rewrite, ...] = ()) -> types.ModuleType:
    """Import `relpath` of the release checkout as `_skd_release.<name>`, with `.cuda()` a no-op off GPU,
    after `rewrites`."""
    path = release_path(official, relpath)
    name = f"{PRIVATE}.{os.path.splitext(os.path.basename(relpath))[0]}"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
    exec(compile(parse_release(path, rewrites), path, "exec"), module.__dict__)
    return module


def release_definitions(official: str, relpath: str, names: tuple[str, ...], namespace: dict,
                        rewrites: tuple[Rewrite, ...] = ()) -> dict:
    """Execute only the top-level definitions `names` of a release file in `namespace` (their globals)."""
    path = release_path(official, relpath)
    body = [n for n in parse_release(path, ()).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names]
    if len(body) != len(names):
        sys.exit(f"--official {official}: {relpath} lacks one of {', '.join(names)}")
    tree = ast.Module(body, [])
    for rewrite in rewrites:  # only the definitions executed, so that a rewrite cannot count a change elsewhere
        tree = rewrite.apply(tree, path)
    exec(compile(ast.fix_missing_locations(tree), path, "exec"), namespace)
    return {name: namespace[name] for name in names}


# Our name -> the release file defining the network under the same name.
RELEASE_NETWORKS = {"resnet12_ssl": "models/resnet_ssl.py", "resnet18": "models/resnet_ssl.py",
                    "resnet24": "models/resnet_ssl.py", "seresnet12": "models/resnet_ssl.py",
                    "convnet4": "models/convnet.py", "wrn_28_10": "models/wresnet.py"}
WITHOUT_ROTATION_HEAD = ("convnet4", "wrn_28_10")  # the release's ConvNet and Wide_ResNet never had one
DATASET_AT = {32: "CIFAR-FS", 84: "miniImageNet"}  # the image size -> the dataset whose settings both sides take
NUM_CLASSES = 64


def release_network(official: str, name: str, image_size: int, rewrites: tuple[Rewrite, ...] = ()) -> nn.Module:
    """The release's network `name` with the arguments its create_model passes for the dataset at `image_size`:
    the ResNets avg_pool, drop rate 0.1 and DropBlock size 5 at 84 px, 2 at 32 px; the others the class count."""
    build = getattr(load_release_module(official, RELEASE_NETWORKS[name], rewrites), name)
    with contextlib.redirect_stdout(io.StringIO()):  # the release's WRN prints its name
        if name in WITHOUT_ROTATION_HEAD:
            return build(num_classes=NUM_CLASSES)
        return build(avg_pool=True, drop_rate=0.1, dropblock_size=5 if image_size == 84 else 2,
                     num_classes=NUM_CLASSES)


def our_network(name: str, image_size: int) -> Backbone:
    return create_model(name, NUM_CLASSES, DATASET_AT[image_size])


def load_ours_into(theirs: nn.Module, ours: nn.Module) -> nn.Module:
    """Our weights into the release's network, strictly: every key of it, only our rotation head left over
    where it has none."""
    keys = theirs.state_dict().keys()
    extra = sorted(set(ours.state_dict()) - set(keys))
    if extra not in ([], ["rot_classifier.bias", "rot_classifier.weight"]):
        sys.exit(f"the release's {type(theirs).__name__} lacks {', '.join(extra)}: an unexpected release version")
    theirs.load_state_dict({k: v for k, v in ours.state_dict().items() if k in keys}, strict=True)
    return theirs


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


def check_features(official: str, name: str) -> float:
    torch.manual_seed(0)
    worst = 0.0
    for image in DATASET_AT:
        ours = our_network(name, image)
        with torch.no_grad():  # BatchNorm statistics away from the identity, so that eval mode reads them
            for m in ours.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        ours.eval()
        theirs = load_ours_into(release_network(official, name, image), ours).eval()
        x = torch.randn(3, 3, image, image)
        with torch.no_grad():
            (*their_maps, their_feat), their_logits = theirs(x, is_feat=True)
            out = ours.forward_all(x)
            their_rotation = None if name in WITHOUT_ROTATION_HEAD else theirs(x, rot=True)[1][1]
        # The release's WRN returns only its pooled feature, no stage maps.
        pairs = [(f"stage{i + 1}", a, b) for i, (a, b) in enumerate(zip(their_maps, out.stages))]
        pairs += [("feature", their_feat, out.feature), ("logits", their_logits, out.logits)]
        pairs += [("rotation logits", their_rotation, out.rot_logits)] if their_rotation is not None else []
        for quantity, a, b in pairs:
            diff = max_diff(a, b)
            print(f"features {name} {image}px {quantity}: max|diff|={diff:g}")
            worst = max(worst, diff)
    return worst


# ----------------------------------------------------------------------------- training steps

class QuietProgress:
    """tqdm's interface, silent: the release's train() wraps its loader in it."""

    def __init__(self, iterable, total: int | None = None) -> None:
        self.iterable = iterable

    def __enter__(self) -> "QuietProgress":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def __iter__(self):
        return iter(self.iterable)

    def set_postfix(self, *args, **kwargs) -> None:
        pass


def top_k_stand_in(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[torch.Tensor]:
    """Replaces the release's accuracy(), which calls .view on a non-contiguous slice (an error in this
    PyTorch); it reads no gradient and draws no random number, so the step is unchanged."""
    return [torch.zeros(1) for _ in topk]


@dataclass
class StepState:
    """What one SGD step leaves, on either side."""
    loss: float
    gradients: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]  # weights, BatchNorm running statistics and counters, after the step
    dropblock_calls: list[int]
    rng: torch.Tensor


def capture(model: nn.Module, loss: float, calls: list[int]) -> StepState:
    return StepState(loss, {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None},
                     {k: v.detach().clone() for k, v in model.state_dict().items()}, calls, torch.get_rng_state())


def release_calls(model: nn.Module) -> list[int]:
    """The ramp counter of the release's DropBlock blocks (it counts every forward of a block)."""
    return [m.num_batches_tracked for m in model.modules() if getattr(m, "drop_block", False)]


def set_release_calls(model: nn.Module, calls: int) -> None:
    for m in model.modules():
        if getattr(m, "drop_block", False):
            m.num_batches_tracked = calls


@dataclass(frozen=True)
class Case:
    stage: str  # gen0 or gen1
    label: str
    mask: str  # ours: --dropblock_mask
    quirks: bool  # ours: --official_quirks (gen1)
    rewrites: tuple[type[Rewrite], ...]  # the release's model rewrites beyond the rescale
    train_rewrites: tuple[type[Rewrite], ...]  # the release's train() rewrites


CASES = (
    Case("gen0", "Gen-0, --dropblock_mask release vs the release", "release", False, (), ()),
    Case("gen0", "Gen-0, default (full mask) vs the release with interleaved seeds", "full", False, (FullBlockMask,),
         ()),
    Case("gen1", "Gen-1 --official_quirks vs the release", "release", True, (), (NormL2,)),
    Case("gen1", "Gen-1 default vs the release with the documented departures (two views, no /3, full mask)",
         "full", False, (FullBlockMask,), (NormL2, TwoViewsNoDivisor)),
)
GEN0_GAMMA, GEN1_BETA, KD_T = 2.0, 0.1, 2.0  # CIFAR-FS's published weights
LEARNING_RATE = {"gen0": 0.05, "gen1": 0.001}


def optimizer_settings(stage: str) -> Schedule:
    """The stage's SGD, as the release's main() builds it (its epochs are not read: the steps are taken here)."""
    return Schedule(epochs=1, learning_rate=LEARNING_RATE[stage], momentum=0.9, weight_decay=5e-4)


def our_steps(case: Case, model: Backbone, teacher: Backbone | None, images: torch.Tensor,
              targets: torch.Tensor, steps: int) -> list[StepState]:
    """This repository's step (methods/skd_gen0.py, skd_gen1.py) and optimizer (engine/run.py: sgd), K times."""
    set_dropblock_mask(model, case.mask)
    optimizer = sgd(model, [], optimizer_settings(case.stage))
    step = (gen0_step(model, GEN0_GAMMA) if case.stage == "gen0"
            else gen1_step(model, teacher, GEN1_BETA, KD_T, case.quirks))
    model.train()
    states = []
    for _ in range(steps):
        result = step(images, targets)
        optimizer.zero_grad(set_to_none=True)  # as engine/loop.py
        result.loss.backward()
        optimizer.step()
        states.append(capture(model, result.loss.item(), dropblock_calls(model)))
    return states


def release_train(official: str, case: Case, matched: bool) -> tuple[Callable, dict]:
    """The release's own train() of the stage's script, in a namespace holding what it reads."""
    namespace = {"torch": torch, "nn": nn, "F": F, "time": time, "tqdm": QuietProgress,
                 "accuracy": top_k_stand_in}
    release_definitions(official, "util.py", ("AverageMeter",), namespace)
    if case.stage == "gen0":
        return release_definitions(official, "train_selfsupervison.py", ("train",), namespace)["train"], namespace
    release_definitions(official, "distill/criterion.py", ("DistillKL",), namespace)
    rewrites = tuple(r() for r in case.train_rewrites if matched or r is not NormL2)
    train = release_definitions(official, "train_distillation.py", ("train",), namespace, rewrites)["train"]
    return train, namespace


def release_steps(official: str, case: Case, model: nn.Module, teacher: nn.Module | None, images: torch.Tensor,
                  targets: torch.Tensor, *, steps: int, matched: bool) -> list[StepState]:
    """The release's train() fed a one-batch loader K times, with the optimizer and criteria its main() builds."""
    train, namespace = release_train(official, case, matched)
    a = optimizer_settings(case.stage)
    optimizer = torch.optim.SGD(model.parameters(), lr=a.learning_rate, momentum=a.momentum,
                                weight_decay=a.weight_decay)
    loader = [(images, targets, torch.arange(len(images)))]
    # Its train() reads x_180 and x_270, whose assignments are commented out in the release: supplied here,
    # computed as those lines would.
    namespace.update(x_180=rot180(images), x_270=rot270(images))
    opt = argparse.Namespace(gamma=GEN0_GAMMA if case.stage == "gen0" else GEN1_BETA)
    states = []
    for epoch in range(1, steps + 1):
        # Its per-epoch accuracy line silenced; DistillKL's size_average=False (reduction="sum") warns.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "size_average", UserWarning)
            if case.stage == "gen0":
                _, loss = train(epoch, loader, model, nn.CrossEntropyLoss(), optimizer, opt)
            else:
                kl = namespace["DistillKL"](KD_T)
                _, loss = train(epoch, loader, model, [teacher], nn.CrossEntropyLoss(), kl, kl, optimizer, opt)
        states.append(capture(model, float(loss), release_calls(model)))
    return states


def compare_states(label: str, ours: list[StepState], theirs: list[StepState]) -> float:
    worst = 0.0
    for k, (a, b) in enumerate(zip(ours, theirs), 1):
        if set(a.gradients) != set(b.gradients) or set(a.state) != set(b.state):
            print(f"step {label} {k}: tensors differ by name: {sorted(set(a.gradients) ^ set(b.gradients))}")
            return float("inf")
        loss = abs(a.loss - b.loss)
        grads = max(max_diff(a.gradients[n], b.gradients[n]) for n in a.gradients)
        floats = [n for n, t in a.state.items() if t.is_floating_point()]
        weights = max(max_diff(a.state[n], b.state[n]) for n in floats if "running" not in n)
        stats = max(max_diff(a.state[n], b.state[n]) for n in floats if "running" in n)
        counters = sum(not torch.equal(a.state[n], b.state[n]) for n in a.state if n not in floats)
        calls = float(a.dropblock_calls != b.dropblock_calls)
        rng = float(not torch.equal(a.rng, b.rng))
        print(f"step {label} {k}: loss ours={a.loss:.9g} release={b.loss:.9g} |diff|={loss:g}; "
              f"max|diff| gradients ({len(a.gradients)} tensors)={grads:g} weights={weights:g} "
              f"BN running stats={stats:g}; BN counters differing={counters}; "
              f"DropBlock counters {a.dropblock_calls[0]} {'differ' if calls else 'equal'}; "
              f"RNG state {'differs' if rng else 'equal'}")
        worst = max(worst, loss, grads, weights, stats, float(counters), calls, rng)
    return worst


def check_steps(official: str, name: str, steps: int, calls: list[int], batch_size: int,
                matched: bool = True) -> float:
    """Every case of CASES from each DropBlock counter in `calls`, for network `name` at 32 px; `matched` False
    leaves the three rounding differences in (the rescale's division, the L2's formula, the release network's
    memory layout)."""
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, 32, 32)
    targets = torch.randint(0, NUM_CLASSES, (batch_size,))
    start = our_network(name, 32)
    # A teacher whose BatchNorm statistics are a batch's, as a trained one's are, not a fresh network's.
    teacher = copy.deepcopy(start)
    with torch.no_grad():
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        teacher.train()(torch.randn(4 * batch_size, 3, 32, 32))
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1  # PyTorch's default, which the release's networks keep
    teacher = util.to_device(teacher.eval().requires_grad_(False), torch.device("cpu"))
    worst = 0.0
    for case in CASES:
        rewrites = ((TrueDivisionRescale(),) if matched else ()) + tuple(r() for r in case.rewrites)
        for n in calls:
            label = f"{case.stage} {name} mask={case.mask}{' quirks' if case.quirks else ''} calls={n}"
            # Both in channels-last memory, as the training scripts lay the network out (util.to_device):
            # dropout's mask is drawn in memory order, so the layout decides which unit each draw drops.
            ours = util.to_device(clone_student(teacher) if case.stage == "gen1" else copy.deepcopy(start),
                                  torch.device("cpu"))
            theirs = load_ours_into(release_network(official, name, 32, rewrites), ours)
            theirs = util.to_device(theirs, torch.device("cpu")) if matched else theirs
            their_teacher = None
            if case.stage == "gen1":
                their_teacher = load_ours_into(release_network(official, name, 32, rewrites), teacher)
                their_teacher = (util.to_device(their_teacher, torch.device("cpu")) if matched
                                 else their_teacher).eval()
            set_dropblock_calls(ours, [n] * len(dropblock_calls(ours)))
            set_release_calls(theirs, n)
            torch.manual_seed(1)
            mine = our_steps(case, ours, teacher if case.stage == "gen1" else None, images, targets, steps)
            torch.manual_seed(1)
            reference = release_steps(official, case, theirs, their_teacher, images, targets, steps=steps,
                                      matched=matched)
            worst = max(worst, compare_states(label, mine, reference))
    return worst


# ----------------------------------------------------------------------------- one evaluation episode

class RecordingLR:
    """scikit-learn's LogisticRegression as the release's meta_test() calls it, recording what it was given
    and what it predicted. Accepts and drops `multi_class`, which this scikit-learn no longer has: with
    lbfgs the fit is multinomial either way, as the release asked."""
    calls: list[dict] = []

    def __init__(self, multi_class: str = "multinomial", **kwargs) -> None:
        self.classifier = SKLearnLR(**kwargs)

    def fit(self, x, y) -> "RecordingLR":
        RecordingLR.calls.append({"support": x, "labels": y})
        self.classifier.fit(x, y)
        return self

    def predict(self, x):
        predicted = self.classifier.predict(x)
        RecordingLR.calls[-1].update(query=x, predicted=predicted)
        return predicted


def check_episode(official: str, name: str, shots: tuple[int, ...] = (1, 5)) -> float:
    """One 5-way episode per shot count, 15 queries a class, un-augmented, 32 px: the release's meta_test() vs
    this repository's embedding (eval/embed.py), normalisation and classifiers, same network loaded strictly."""
    namespace = {"torch": torch, "np": np, "tqdm": QuietProgress, "LogisticRegression": RecordingLR,
                 "metrics": sklearn_metrics, "scipy": scipy, "t": scipy.stats.t}
    found = release_definitions(official, "eval/meta_eval.py", ("mean_confidence_interval", "normalize", "meta_test"),
                                namespace)
    # Its normalize() is sqrt(sum(x^2)) division; ours divides by .norm() (rounding only).
    namespace["normalize"] = l2_normalize
    torch.manual_seed(0)
    ours = our_network(name, 32)
    calibration = make_synthetic_split("train")
    with torch.no_grad():  # BatchNorm statistics of real batches, as a trained network's are
        for m in ours.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        ours.train()(normalize_batch(torch.from_numpy(calibration.images[:128]), CIFAR_NORMALIZATION))
    ours = util.to_device(ours.eval(), torch.device("cpu"))
    # Channels-last, as eval/embed.py lays the input out.
    theirs = util.to_device(load_ours_into(release_network(official, name, 32), ours), torch.device("cpu"))
    split = make_synthetic_split("test")
    worst = 0.0
    for n_shots in shots:
        rng = np.random.RandomState(n_shots)
        classes = rng.choice(np.unique(split.labels), 5, replace=False)
        picks = [rng.choice(np.flatnonzero(split.labels == c), n_shots + 15, replace=False) for c in classes]
        support_ids = np.concatenate([p[:n_shots] for p in picks])
        query_ids = np.concatenate([p[n_shots:] for p in picks])
        support_y, query_y = np.repeat(np.arange(5), n_shots), np.repeat(np.arange(5), 15)
        pixels = {k: torch.from_numpy(split.images[ids]) for k, ids in (("support", support_ids), ("query", query_ids))}
        features = {k: l2_normalize(embed(ours, v, CIFAR_NORMALIZATION, torch.device("cpu"), 64)[0])
                    for k, v in pixels.items()}
        loader = [(normalize_batch(pixels["support"], CIFAR_NORMALIZATION)[None], torch.from_numpy(support_y)[None],
                   normalize_batch(pixels["query"], CIFAR_NORMALIZATION)[None], torch.from_numpy(query_y)[None])]
        RecordingLR.calls = []
        with warnings.catch_warnings():  # scikit-learn's deprecation of `penalty`; the sem of one episode
            warnings.simplefilter("ignore")
            found["meta_test"](theirs, loader, use_logit=False, classifier="LR")
        (recorded,) = RecordingLR.calls
        episode = (features["support"][None], torch.from_numpy(support_y)[None], features["query"][None], 5)
        reference = classify("sklearn", *episode)[0].numpy()
        ours_lr = classify("LR", *episode)[0].numpy()
        diffs = {k: max_diff(features[k], torch.from_numpy(recorded[k])) for k in ("support", "query")}
        flips = int((reference != recorded["predicted"]).sum())
        ours_flips = int((ours_lr != recorded["predicted"]).sum())
        print(f"episode {name} {n_shots}-shot: max|diff| support features={diffs['support']:g} query "
              f"features={diffs['query']:g}; predictions differing: sklearn classifier (--classifier sklearn) "
              f"{flips}/{len(query_y)}, ours (--classifier LR, Newton-CG in float64) {ours_flips}/{len(query_y)} "
              f"(not counted: another solver of the same convex problem); release accuracy "
              f"{float(np.mean(recorded['predicted'] == query_y)):.4f}")
        worst = max(worst, *diffs.values(), float(flips))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="checkout of github.com/brjathu/SKD")
    parser.add_argument("--mode", choices=("dropblock", "features", "step", "episode", "all"), default="all")
    parser.add_argument("--model", choices=(*sorted(RELEASE_NETWORKS), "all"), default="resnet12_ssl",
                        help="the network compared (all: each of the release's)")
    parser.add_argument("--tol", type=float, default=0.0, help="largest allowed absolute difference")
    parser.add_argument("--steps", type=int, default=3, help="--mode step: SGD steps compared")
    parser.add_argument("--batch_size", type=int, default=8, help="--mode step: images of the fixed batch")
    parser.add_argument("--dropblock_calls", default="0,40000",
                        help="--mode step: DropBlock ramp counters to start from, comma-separated (0: a run's "
                             "start; 40000: ramp finished, the full drop rate)")
    parser.add_argument("--unmatched", action="store_true",
                        help="--mode step: leave the three matched differences in (memory layout, the rescale's "
                             "division, the L2's formula), to see their size")
    args = parser.parse_args(argv)
    try:
        calls = [int(c) for c in args.dropblock_calls.split(",")]
    except ValueError:
        parser.error(f"--dropblock_calls {args.dropblock_calls}: expected comma-separated integers")
    if args.steps < 1 or args.batch_size < 1 or min(calls) < 0:
        parser.error("--steps and --batch_size must be positive, --dropblock_calls non-negative")
    names = sorted(RELEASE_NETWORKS) if args.model == "all" else [args.model]
    if args.mode == "step" and args.model in WITHOUT_ROTATION_HEAD:
        parser.error(f"--mode step --model {args.model}: the release's {args.model} has no rotation head, so its "
                     f"train() cannot step it (the features and episode modes compare it)")
    worst = 0.0
    if args.mode in ("dropblock", "all"):
        worst = max(worst, check_dropblock(load_release_module(args.official, "models/resnet_ssl.py")))
    for name in names:
        if args.mode in ("features", "all"):
            worst = max(worst, check_features(args.official, name))
        if args.mode in ("episode", "all"):
            worst = max(worst, check_episode(args.official, name))
        if args.mode in ("step", "all") and name in WITHOUT_ROTATION_HEAD:
            print(f"step {name}: not compared (the release's network has no rotation head for its train())")
        elif args.mode in ("step", "all"):
            worst = max(worst, check_steps(args.official, name, args.steps, calls, args.batch_size,
                                           not args.unmatched))
    print(f"worst max|diff|={worst:g} tol={args.tol:g}: {'PASS' if worst <= args.tol else 'FAIL'}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
