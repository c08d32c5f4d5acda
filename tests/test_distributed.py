"""torchrun on CPU with gloo: two processes train one tiny epoch of Gen-0 and of Gen-1 and evaluate
with the episodes shared out; the results must be those of one process."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import engine.checkpoint
from conftest import REPO, TEST_MODEL
from dataset import load_split
from published.profiles import CIFAR_NORMALIZATION
from eval import EpisodeSetting, evaluate
from train_supervised_ssl import get_args_parser

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

FAST = ["--dataset", "CIFAR-FS", "--batch_size", "16", "--num_workers", "0", "--device", "cpu", "--epochs", "1",
        "--no_final_eval"]
GEN0 = [*FAST, "--model", TEST_MODEL]  # Gen-1 runs take the teacher's architecture
GEN0_NAME = f"{TEST_MODEL}_CIFAR-FS_lr_0.05_decay_0.0005_trans_D_trial_1"


def torchrun(*args: str, nproc: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def ddp_gen0(cifar_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    save = tmp_path_factory.mktemp("ddp")
    done = torchrun("train_supervised_ssl.py", *GEN0, "--data_root", str(cifar_root), "--model_path", str(save))
    assert done.returncode == 0, done.stderr[-3000:]
    return save / GEN0_NAME, done


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_gen0_under_torchrun(ddp_gen0):
    folder, done = ddp_gen0
    # One run folder, written by rank 0 only: one checkpoint, one log line, one header.
    assert sorted(p.name for p in folder.iterdir()) == ["args.json", "checkpoint.pth", "log.jsonl"]
    assert len(list(folder.parent.iterdir())) == 1
    assert done.stdout.count("git: ") == 1
    assert "distributed: 2 processes (gloo), global batch 16 = 2 x 8" in done.stdout
    [record] = _records(folder)
    assert record["epoch"] == 1 and math.isfinite(record["train_loss"])
    # 48 images, global batch 16: 3 steps, 48 images over the two ranks together.
    assert record["images_per_s"] * record["epoch_seconds"] == pytest.approx(48)
    assert "replicas check: parameters and buffers identical on 2 ranks" in done.stdout
    checkpoint = engine.checkpoint.load_checkpoint(folder / "checkpoint.pth")
    assert not any(k.startswith("module.") for k in checkpoint["model"])  # the official key names
    assert checkpoint["dropblock_calls"] == [3, 3]


@pytest.mark.slow
def test_gen1_under_torchrun(ddp_gen0, cifar_root, tmp_path):
    teacher, _ = ddp_gen0
    done = torchrun("train_distillation.py", *FAST, "--data_root", str(cifar_root), "--model_path", str(tmp_path),
                    "--path_t", str(teacher / "checkpoint.pth"))
    assert done.returncode == 0, done.stderr[-3000:]
    [folder] = list(tmp_path.iterdir())
    assert (folder / "checkpoint.pth").is_file()
    [record] = _records(folder)
    assert math.isfinite(record["train_loss"]) and record["train_kd"] >= 0
    assert "teacher check: weights and BatchNorm statistics unchanged" in done.stdout
    assert "replicas check: parameters and buffers identical on 2 ranks" in done.stdout


@pytest.mark.slow  # a minute on a 2-core CPU without AVX-512; CI runs it (`-m slow`)
def test_sharded_evaluation_equals_one_process(ddp_gen0, cifar_root, tmp_path):
    """5-shot with 5 augmentations: 16 episodes per chunk, so 17 episodes make 2 chunks (one per rank),
    and the 100 val images 4 embedding batches of 32 (two per rank)."""
    folder, _ = ddp_gen0
    output = tmp_path / "results.json"
    done = torchrun("eval_fewshot.py", "--model_path", str(folder / "checkpoint.pth"), "--data_root", str(cifar_root),
                    "--split", "val", "--n_shots", "5", "--n_test_runs", "17", "--eval_batch_size", "32",
                    "--device", "cpu", "--output", str(output))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "x 2 processes" in done.stdout
    [sharded] = json.loads(output.read_text())["results"]
    checkpoint = engine.checkpoint.load_checkpoint(folder / "checkpoint.pth")
    model = engine.checkpoint.model_from_checkpoint(TEST_MODEL, folder, checkpoint, "CIFAR-FS", 32)
    [single] = evaluate(model.to(memory_format=torch.channels_last), load_split("CIFAR-FS", cifar_root, "val"), "val",
                        EpisodeSetting(5, 5, 15, 17, 5), CIFAR_NORMALIZATION, torch.device("cpu"), batch_size=32,
                        progress=False)
    assert len(sharded["accuracies"]) == 17
    np.testing.assert_array_equal(sharded["accuracies"], np.round(single.accuracies, 6))
    assert sharded["fingerprint"] == single.fingerprint


def test_global_batch_must_divide_over_ranks(cifar_root, tmp_path):
    done = torchrun("train_supervised_ssl.py", *GEN0, "--batch_size", "15", "--data_root", str(cifar_root),
                    "--model_path", str(tmp_path))
    assert done.returncode != 0
    assert "error: --batch_size 15: the global batch must divide evenly over 2 processes" in done.stderr
    assert not any(tmp_path.iterdir())


def test_plain_python_run_starts_no_process_group():
    import runtime.distributed

    info, device = runtime.distributed.setup("cpu")
    assert not info.enabled and info.is_main and device == torch.device("cpu")
    model = torch.nn.Linear(2, 2)
    assert runtime.distributed.wrap(model) is model  # the model itself, no DDP
    assert get_args_parser().parse_args([]).bn_stats == "global"  # the step of one process, also under torchrun


@pytest.mark.slow
def test_sigterm_under_torchrun_resumes_bit_identically(cifar_root, tmp_path):
    """torchrun passes the signal to both ranks; they agree on the step, every rank's RNG states go into
    the checkpoint, and a resumed torchrun run ends where an uninterrupted one does. Both ranks wait in
    the first step of epoch 2 (tests/pause_at_step.py) until the signal comes."""
    import signal

    common = ["train_supervised_ssl.py", "--dataset", "CIFAR-FS", "--data_root", str(cifar_root), "--batch_size", "8",
              "--augment", "workers", "--num_workers", "1", "--device", "cpu", "--no_final_eval", "--epochs", "3",
              "--log_interval", "1", "--model", TEST_MODEL]
    straight = torchrun(*common, "--model_path", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    # 48 images, global batch 8: 6 steps an epoch, so step 7 is epoch 2's first. stderr goes to a file: a full
    # pipe that nobody reads while the test waits for stdout would stall the run.
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                    "tests/pause_at_step.py", "7", *common, "--model_path", str(tmp_path / "b")],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                                   start_new_session=True)
    paused = 0
    for line in process.stdout:  # to the end of a run that failed before both ranks paused
        paused += line == "paused at step 7\n"
        if paused == 2:
            os.killpg(process.pid, signal.SIGTERM)  # torchrun's group: torchrun sends it on to each rank's
            break
    process.communicate(timeout=300)
    err = (tmp_path / "stderr").read_text()
    assert paused == 2, f"the ranks did not both pause at step 7: {err[-3000:]}"
    assert process.returncode != 0 and "stopped: SIGTERM at epoch 2, step 1/6; " in err, err[-3000:]
    [folder] = (tmp_path / "b").iterdir()
    partial = engine.checkpoint.load_checkpoint(folder / "checkpoint.pth")["partial"]
    assert (partial["epoch"], partial["step"], partial["world_size"], len(partial["ranks"])) == (2, 1, 2, 2)
    resumed = torchrun(*common, "--model_path", str(tmp_path / "b"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [a] = (tmp_path / "a").iterdir()
    one = engine.checkpoint.load_checkpoint(a / "checkpoint.pth")["model"]
    two = engine.checkpoint.load_checkpoint(folder / "checkpoint.pth")["model"]
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_dvp_both_phases_under_torchrun(cifar_root, tmp_path):
    """DVP's momentum encoder and queue live outside DDP: the queue takes every rank's keys, the key
    encoder follows the (identical) query encoder, and the replica check covers both; phase 2's
    connectors train inside DDP with the student."""
    prior = torchrun("train_supervised_ssl.py", *GEN0, "--objective", "dvp", "--dvp_queue", "32",
                     "--data_root", str(cifar_root), "--model_path", str(tmp_path / "prior"))
    assert prior.returncode == 0, prior.stderr[-3000:]
    assert "replicas check: parameters and buffers identical on 2 ranks" in prior.stdout
    [folder] = list((tmp_path / "prior").iterdir())
    checkpoint = engine.checkpoint.load_checkpoint(folder / "checkpoint.pth")
    assert int(checkpoint["dvp_prior"]["queue.pointer"]) == 48 % 32  # 3 steps x 2 ranks x 8 keys, gathered
    student = torchrun("train_distillation.py", *FAST, "--objective", "dvp", "--path_t", str(folder / "checkpoint.pth"),
                       "--dvp_no_distill_epochs", "0", "--data_root", str(cifar_root),
                       "--model_path", str(tmp_path / "dvp"))
    assert student.returncode == 0, student.stderr[-3000:]
    assert "replicas check: parameters and buffers identical on 2 ranks" in student.stdout
    assert "teacher check: weights and BatchNorm statistics unchanged" in student.stdout


def _compare_steps(two: dict, one: dict) -> None:
    initial = one["initial"]
    for stage in ("gen0", "gen1"):
        for key, value in one[stage].items():
            if "running" in key:  # the statistics themselves: forward arithmetic only
                torch.testing.assert_close(two[stage][key], value, rtol=1e-4, atol=1e-6, msg=f"{stage} {key}")
            elif value.is_floating_point():
                update, other = value - initial[key], two[stage][key] - initial[key]
                # (Gen-1 leaves the rotation head alone, in both runs)
                assert (other - update).norm() <= 0.01 * update.norm(), f"{stage} {key}"
        assert one[stage]["layer1.0.conv1.weight"].ne(initial["layer1.0.conv1.weight"]).any()


def _two_ranks_and_one(tmp_path: Path, device: str, env: dict | None = None) -> tuple[dict, dict]:
    script = str(REPO / "tests" / "ddp_one_step.py")
    done = torchrun(script, str(tmp_path / "two.pth"), device, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = subprocess.run([sys.executable, script, str(tmp_path / "one.pth"), device], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    return torch.load(tmp_path / "two.pth"), torch.load(tmp_path / "one.pth")


@pytest.mark.slow
def test_two_ranks_take_the_step_of_one_process(tmp_path):
    """BatchNorm over the global batch (--bn_stats global, the default) and DDP's gradient average:
    2 ranks with 8 images each take the Gen-0 and the Gen-1 step that one process takes with the 16.
    Float noise (1e-6) in the forward moves a few near-ties of the 2x2 max-pools, which route their
    gradient elsewhere, so each weight update is compared to within 1% of its norm. Dropout and
    DropBlock are off (their masks are drawn per rank); with DropBlock on:
    test_two_ranks_with_dropblock_on_take_the_forward_and_step_of_one_process."""
    _compare_steps(*_two_ranks_and_one(tmp_path, "cpu"))


@pytest.mark.cuda
def test_two_ranks_sharing_one_gpu_take_the_step_of_one_process(tmp_path):
    """The same comparison on CUDA with a single GPU: two ranks share cuda:0 under gloo
    (SKD_DIST_BACKEND=gloo), so the global BatchNorm's all-reduces (forward and backward) and DDP's
    gradient all-reduce run on CUDA tensors; fp32 with TF32 off in both runs. Same tolerance as on the
    CPU and for the same reason: the ranks' half-batch sums added across ranks are summed in another
    order than one process's sum over 16 images (float noise ~1e-6), which moves max-pool near-ties."""
    two, one = _two_ranks_and_one(tmp_path, "cuda", env={"SKD_DIST_BACKEND": "gloo"})
    _compare_steps(two, one)

SRUN_TASK = """
import sys, torch, runtime.distributed as d
info, device = d.setup("cpu")
ranks = d.all_gather_objects((info.rank, info.local_rank, info.world_size))
total = d.all_reduce_sum(torch.tensor([float(info.rank + 1)]))
sys.stdout.write(f"{ranks} {float(total)} {d.current().world_size}")  # print is rank 0's only
d.cleanup()
"""


def test_srun_tasks_form_one_job_without_torchrun():
    """What `srun --ntasks 2 python train_supervised_ssl.py` gives each task: SLURM's variables and no
    torchrun's. The two tasks must join one gloo group of 2 (rank and local rank from SLURM_PROCID and
    SLURM_LOCALID, the address from the node list), not run as two separate one-process jobs."""
    from conftest import REPO as repo
    from test_collectives import _free_port

    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    base.update({"SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "localhost",
                 "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)})
    tasks = [subprocess.Popen([sys.executable, "-c", SRUN_TASK], cwd=repo, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)}) for r in range(2)]
    outputs = [task.communicate(timeout=120) for task in tasks]
    for task, (out, err) in zip(tasks, outputs):
        assert task.returncode == 0, err[-2000:]
        assert out.split() == ["[(0,", "0,", "2),", "(1,", "1,", "2)]", "3.0", "2"]


def test_slurm_node_list_first_host():
    import runtime.distributed

    assert runtime.distributed.first_slurm_host("gpu[03-05,09],cpu1") == "gpu03"
    assert runtime.distributed.first_slurm_host("node7,node8") == "node7"


def test_two_ranks_with_dropblock_on_take_the_forward_and_step_of_one_process(tmp_path):
    """DropBlock active (drop_rate 0.1 at the ramp's end) and BatchNorm over the global batch, 2 gloo
    ranks of 8 images against one process of the 16 (tests/dropblock_two_ranks.py: both drop the same
    blocks), on the narrow ResNet-12. The forward's logits agree to float noise; each weight update to
    within 3% of its norm: float noise moves near-ties of the 2x2 max-pools, which route their gradient
    elsewhere (test_two_ranks_take_the_step_of_one_process), more often at the narrow width (1.4% at most
    measured here). With each rank
    rescaling DropBlock by its own share kept (its images skewed to drop more on rank 0), the logits are
    off by far more: the comparison can see a rescale that is not global."""
    from dropblock_two_ranks import step
    from test_collectives import _free_port

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "step"
    ranks = subprocess.Popen([sys.executable, str(REPO / "tests" / "dropblock_two_ranks.py"), str(out), "2"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    alone = step(1, 0)  # this process meanwhile: no process group, plain BatchNorm and DropBlock over the 16
    _, err = ranks.communicate(timeout=300)
    assert ranks.returncode == 0, err[-3000:]
    two = [torch.load(f"{out}.rank{r}") for r in range(2)]
    for r in range(2):
        torch.testing.assert_close(two[r]["global"]["logits"], alone["logits"][r::2], rtol=1e-4, atol=1e-5)
        # the same blocks dropped, rescaled by each rank's share: off by several percent of the logits' scale
        off = (two[r]["per_rank"]["logits"] - alone["logits"][r::2]).abs().max()
        assert off > 0.03 * alone["logits"].abs().max(), float(off)
    weights = {k for k in alone if k not in ("logits", "initial")}
    for key in weights:  # DDP: one set of weights on both ranks
        assert torch.equal(two[0]["global"][key], two[1]["global"][key]), key
    initial, after = alone["initial"], two[0]["global"]
    for key in weights:
        value = alone[key]
        if "running" in key:  # the global batch's statistics: forward arithmetic only
            torch.testing.assert_close(after[key], value, rtol=1e-4, atol=1e-6, msg=key)
        elif value.is_floating_point():
            update, other = value - initial[key], after[key] - initial[key]
            assert (other - update).norm() <= 0.03 * update.norm(), key
