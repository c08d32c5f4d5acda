#!/usr/bin/env bash
# The GPU check: run on a machine with an NVIDIA GPU, from a fresh clone with the requirements
# installed, in under 8 minutes on one modern GPU. It prints the figures docs/speed.md's GPU tables
# take, each section headed by the command that made it, and keeps every log in OUT.
#
#   bash bench/gpu_check.sh [OUT]        (OUT defaults to a new folder under /tmp)
#
# 1. the cuda tests (every objective's step without a host wait, fp16 skip and resume, loader with
#    workers and pinned memory, one-process NCCL torchrun, eval_fewshot.py on the GPU);
# 2. a torchrun smoke run of Gen-0 then Gen-1 on the built-in data, one process, and two with 2+ GPUs;
# 3. bench_train.py at 32 and 84 px in fp32, TF32, bf16 and fp16 (cuDNN autotuning, 20 warm-up steps);
# 4. the training loader alone with the default workers at 32 and 84 px;
# 5. bench_eval.py, 1- and 5-shot, 600 episodes;
# 6. the training scripts end to end with --augment device and workers at 32 and 84 px (bench_scripts.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python || command -v python3)}"
OUT="${1:-$(mktemp -d /tmp/gpu_check.XXXX)}"
mkdir -p "$OUT"
export WANDB_MODE=disabled
FAILED=0

section() { echo; echo "== $*"; }
run() {  # run a command, tee its output to OUT/<name>.log, remember a failure and go on
    local name="$1"; shift
    echo "\$ $*"
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc="${PIPESTATUS[0]}"
    [ "$rc" -eq 0 ] || { echo "!! $name exited $rc"; FAILED=1; }
}

section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || { echo "no nvidia-smi"; exit 2; }
"$PY" -c 'import torch, util
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("arch list", " ".join(torch.cuda.get_arch_list()))
print("device:", util.describe_device(util.resolve_device(None)))
print("bf16 native:", torch.cuda.is_bf16_supported(including_emulation=False))' || exit 2
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $GPUS GPU(s), logs in $OUT"

section "1. cuda tests"
run cuda_tests "$PY" -m pytest -q -m cuda -p no:cacheprovider

section "2. torchrun smoke run (built-in data, Gen-0 then Gen-1, 2 epochs each)"
SMOKE=(--dataset synthetic --epochs 2 --batch_size 64 --n_test_runs 100 --amp auto)
for N in 1 2; do
    [ "$N" -le "$GPUS" ] || { echo "(skipped: $N processes need $N GPUs)"; continue; }
    run "gen0_nproc$N" "$PY" -m torch.distributed.run --standalone --nproc_per_node "$N" train_supervised_ssl.py \
        "${SMOKE[@]}" --model_path "$OUT/smoke$N"
    GEN0=$(sed -n 's/^checkpoint: //p' "$OUT/gen0_nproc$N.log" | head -1)
    [ -n "$GEN0" ] && run "gen1_nproc$N" "$PY" -m torch.distributed.run --standalone --nproc_per_node "$N" \
        train_distillation.py "${SMOKE[@]}" --path_t "$GEN0" --model_path "$OUT/smoke$N"
done

section "3. training step alone (bench/bench_train.py)"
for SIZE in 32 84; do
    run "train_step_${SIZE}px" "$PY" bench/bench_train.py --device cuda --image_size "$SIZE" --batch_size 64 \
        --amp off,tf32,bf16,fp16 --steps 50 --warmup 20
done

section "4. training loader alone, default workers (bench/bench_loader.py)"
for SIZE in 32 84; do
    run "loader_${SIZE}px" "$PY" bench/bench_loader.py --device cuda --image_size "$SIZE" --batches 200
done

section "5. few-shot evaluation (bench/bench_eval.py, 600 episodes)"
run eval "$PY" bench/bench_eval.py --device cuda --shots 1,5 --episodes 600 --reference_episodes 10

section "6. the training scripts end to end, --augment device vs workers (bench/bench_scripts.py)"
run scripts_32px "$PY" bench/bench_scripts.py --device cuda --image_size 32 --images 38400 --epochs 2 --batch_size 64 \
    --amp auto --repeats 1
run scripts_84px "$PY" bench/bench_scripts.py --device cuda --image_size 84 --images 12800 --epochs 2 --batch_size 64 \
    --amp auto --repeats 1

section "done: $([ "$FAILED" -eq 0 ] && echo "all sections passed" || echo "SOME SECTIONS FAILED (see above)")"
exit "$FAILED"
