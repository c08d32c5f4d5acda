"""One rank of a 2-rank gloo job (tests/test_preemption.py starts both): rank 1 receives SIGTERM in its
first step; rank 0 writes the mid-epoch checkpoint slowly. Prints, as the rank exits, whether the
checkpoint was on disk by then."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import runtime.distributed  # noqa: E402
import engine.loop  # noqa: E402
import engine.checkpointer  # noqa: E402
import engine.run  # noqa: E402
import util  # noqa: E402
from test_preemption import SmallNet, _config, cpu_process  # noqa: E402


def main(folder: str) -> None:
    info, device = runtime.distributed.setup("cpu")
    save = engine.checkpointer.save_checkpoint

    def slow_save(checkpoint, path):
        time.sleep(2.0)  # a slow disk: a rank that did not wait would be gone by now
        save(checkpoint, path)

    engine.checkpointer.save_checkpoint = slow_save
    torch.manual_seed(0)
    model = SmallNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    config = _config(Path(folder), log_interval=1)
    state = engine.run.prepare_run(config=config, process=cpu_process(), name="run", model=model,
                                   optimizer=optimizer, job_type="test", identity={})
    net = runtime.distributed.wrap(model)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,)))
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator())

    def step(x, y):
        if info.rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        loss = F.cross_entropy(net(x), y)
        return engine.loop.StepResult(loss, {"ce": loss.detach()}, None, len(x))

    try:
        engine.loop.fit(state=state, make_step=lambda: step, loader=loader, schedule=config.schedule,
                        loop=config.loop, device=device)
    except util.Preempted:
        sys.stdout.write(f"rank {info.rank} exits; checkpoint on disk: {state.checkpoint_path.is_file()}\n")


if __name__ == "__main__":
    main(sys.argv[1])
