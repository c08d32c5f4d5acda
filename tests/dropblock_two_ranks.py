"""One training-mode forward and SGD step of ResNet-12 with DropBlock on, on a fixed batch of 16 shared
out over the ranks as the training loader does (every world-th image), with BatchNorm over the global
batch and DropBlock's rescale by the share kept over the global batch (runtime.distributed.
use_global_batch_statistics). `python tests/dropblock_two_ranks.py OUT N` forks N ranks after the
imports (one interpreter's import of torch instead of N; MASTER_ADDR and MASTER_PORT from the
environment), each writing OUT.rank<r>; `step(1, 0)` is one process, called in the test's own.

DropBlock's block seeds are drawn per rank from the global RNG, which no number of ranks can share with
one process; here they come from one draw over the global batch, of which each rank takes its images'
rows, so both sides drop the same blocks and only the arithmetic across ranks differs. The seed rate is
skewed between the images of rank 0 (x1.8) and rank 1 (x0.2): a rescale by each rank's own share kept
is then far from the global one (tests/test_distributed.py checks that it would be caught). Stages 1-2's
plain dropout is off (its masks too are per rank; DropBlock, stages 3-4, is what is under test)."""
from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime.distributed  # noqa: E402
from models import create_model  # noqa: E402
from models.dropblock import DropBlock, set_dropblock_calls  # noqa: E402

GLOBAL_BATCH = 16
MODEL = "resnet12_ssl_narrow"


@contextmanager
def global_block_seeds(rank: int, world_size: int) -> Iterator[None]:
    """torch.bernoulli (DropBlock's seed draw) replaced by rows `rank::world_size` of one draw over the
    global batch, the n-th call's draw from seed n."""
    real, calls = torch.bernoulli, [0]

    def bernoulli(probs: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        calls[0] += 1
        g = torch.Generator().manual_seed(calls[0])
        shape = (GLOBAL_BATCH, *probs.shape[1:])
        skew = torch.tensor([1.8, 0.2]).repeat(GLOBAL_BATCH // 2).view(-1, 1, 1, 1)
        seeds = (torch.rand(shape, generator=g) < probs.flatten()[0] * skew).float()
        return seeds[rank::world_size]

    torch.bernoulli = bernoulli
    try:
        yield
    finally:
        torch.bernoulli = real


def step(world_size: int, rank: int, global_rescale: bool = True) -> dict[str, torch.Tensor]:
    """This rank's logits of the training-mode forward ("logits"), the initial weights ("initial") and the
    weights after one SGD step (the state dict's keys); the logits alone with each rank's own rescale."""
    torch.manual_seed(0)
    model = create_model(MODEL, 5, "CIFAR-FS", image_size=32)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    set_dropblock_calls(model, [40_000, 40_000])  # the ramp's end: keep rate 1 - drop_rate
    assert all(m.drop_rate > 0 for m in model.modules() if isinstance(m, DropBlock))
    for block in model.modules():  # stages 1-2's plain dropout: per-rank masks this script does not share out
        if getattr(block, "dropblock", True) is None:
            block.drop_rate = 0.0
    model = runtime.distributed.use_global_batch_statistics(model.train())
    if not global_rescale:  # each rank's own share kept: what the test must tell apart
        for m in model.modules():
            if isinstance(m, DropBlock):
                m.sum_over_ranks = None
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g)
    targets = torch.randint(0, 5, (GLOBAL_BATCH,), generator=g)
    mine = slice(rank, None, world_size)
    forward = runtime.distributed.wrap(model, unused=("rot_classifier",))  # the forward gives class logits only
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with global_block_seeds(rank, world_size):
        logits = forward(images[mine])
    if not global_rescale:
        return {"logits": logits.detach().clone()}
    F.cross_entropy(logits, targets[mine]).backward()  # DDP averages the ranks' gradients
    optimizer.step()
    return {"logits": logits.detach().clone(), "initial": initial,
            **{k: v.detach().clone() for k, v in model.state_dict().items()}}


def rank_main(out: str) -> None:
    info, _ = runtime.distributed.setup("cpu")
    results = {"global": step(info.world_size, info.rank),
               "per_rank": step(info.world_size, info.rank, global_rescale=False)}
    torch.save(results, f"{out}.rank{info.rank}")
    runtime.distributed.cleanup()


def main(out: str, world_size: str) -> None:
    """Fork the ranks before any torch operation (so no thread pool is inherited); exit 1 if any failed."""
    children = []
    for rank in range(int(world_size)):
        pid = os.fork()
        if pid == 0:
            os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=world_size, LOCAL_WORLD_SIZE=world_size)
            try:
                rank_main(out)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        children.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    sys.exit(0 if all(code == 0 for code in codes) else 1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
