"""The training scripts end to end, --augment device against --augment workers, side by side:
Gen-0 then Gen-1 (from that Gen-0) on random CIFAR-sized data in the official file format, each
path run in turn, `--repeats` times, on the same machine in one invocation. Prints the images per
second each run logged (log.jsonl's images_per_s, its last epoch: the first carries start-up).

    python bench/bench_scripts.py --device cpu --image_size 32 --images 640 --epochs 2 --repeats 2
    python bench/bench_scripts.py --device cuda --image_size 84 --images 38400 --epochs 2 --amp bf16
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import util  # noqa: E402


def write_split(folder: Path, images: int, size: int, classes: int) -> None:
    """A CIFAR-FS-style package of random pixels: {train,val,test}.pickle."""
    rng = np.random.RandomState(0)
    folder.mkdir(parents=True)
    for split, n, first in (("train", images, 0), ("val", 100, 1000), ("test", 100, 2000)):
        labels = first + np.arange(n) % (classes if split == "train" else 5)
        data = {"data": rng.randint(0, 256, (n, size, size, 3), dtype=np.uint8), "labels": labels.tolist()}
        with open(folder / f"{split}.pickle", "wb") as f:
            pickle.dump(data, f)


def last_rate(run_root: Path) -> float:
    [log] = run_root.glob("*/log.jsonl")
    return json.loads(log.read_text().splitlines()[-1])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser("training scripts end to end: --augment device vs workers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--images", type=int, default=640, help="training images (random pixels, 64 classes)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--amp", default="off")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"device: {util.describe_device(util.resolve_device(args.device), args.device)}")  # the scripts' own
    work = Path(tempfile.mkdtemp(prefix="bench_scripts_"))
    write_split(work / "data" / "CIFAR-FS", args.images, args.image_size, 64)
    common = ["--dataset", "CIFAR-FS", "--data_root", str(work / "data"), "--epochs", str(args.epochs),
              "--batch_size", str(args.batch_size), "--device", args.device, "--amp", args.amp, "--no_final_eval",
              "--lr_decay_epochs", str(args.epochs)]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    rates: dict[tuple[str, str], list[float]] = {}
    failures: list[str] = []
    for repeat in range(args.repeats):
        for augment in ("workers", "device"):
            root = work / f"{augment}_{repeat}"
            for stage, script in (("gen0", "train_supervised_ssl.py"), ("gen1", "train_distillation.py")):
                teacher = next((root / "gen0").glob("*/checkpoint.pth"), None)
                if stage == "gen1" and teacher is None:
                    continue  # its Gen-0 failed, said above
                extra = ["--path_t", str(teacher)] if stage == "gen1" else []
                done = subprocess.run([sys.executable, script, *common, "--augment", augment, "--model_path",
                                       str(root / stage), *extra], cwd=REPO, env=env, capture_output=True, text=True)
                if done.returncode:  # say so and go on: the other path's figures still count
                    failures.append(f"{stage} --augment {augment} (repeat {repeat + 1})")
                    print(f"error: {script} --augment {augment} exited {done.returncode}:\n{done.stderr[-2000:]}",
                          flush=True)
                    continue
                rates.setdefault((stage, augment), []).append(last_rate(root / stage))
                print(f"{stage} --augment {augment} (repeat {repeat + 1}): {rates[stage, augment][-1]:.2f} images/s",
                      flush=True)
    print(f"\n| stage, {args.image_size} px, {args.device}, amp {args.amp} | workers (images/s) | device (images/s) "
          f"| device / workers |")
    print("|---|---|---|---|")
    for stage in ("gen0", "gen1"):
        w, d = (statistics.mean(rates[stage, a]) if rates.get((stage, a)) else None for a in ("workers", "device"))
        ratio = f"{d / w:.2f}" if w and d else "-"
        print(f"| {stage} | {'failed' if w is None else f'{w:.2f}'} | {'failed' if d is None else f'{d:.2f}'} "
              f"| {ratio} |")
    if failures:
        sys.exit(f"error: {len(failures)} run(s) failed: {'; '.join(failures)}")

if __name__ == "__main__":
    main()
