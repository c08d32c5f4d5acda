#!/usr/bin/env bash
# The GPU check: does the project compute the right thing on this GPU, and how fast. Run from a clone
# of the repository on a machine with an NVIDIA GPU, with the torch that is installed there (it
# installs nothing and needs no network or wandb):
#
#   bash bench/gpu_check.sh OUT          (OUT: a new or empty folder; default a new one under /tmp)
#
# OUT ends up with two files: summary.txt (the versions, then one PASS / FAIL / TIMEOUT / SKIP line
# with seconds per section, appended as each ends, then the verdict; exit 0 only if every section
# ran and passed) and logs.tar.gz (every section's full log, packed
# again after each section, so a run killed from outside still leaves both). Every section runs under
# its own `timeout` (its budget, cut to what is left of GPU_CHECK_TOTAL_S, default 400 s, so the whole
# check ends in under 7 minutes), in its own session, whose leftover processes are killed after it.
# Correctness first, then the benchmarks, most informative first:
#   cuda_augment      --augment device on the GPU equal to torchvision's PIL result to the bit
#   parity            bench/gpu_parity.py: a Gen-0 and a Gen-1 step and evaluation, GPU against CPU
#   cuda_ddp          the `cuda` tests of tests/test_distributed.py (2 ranks sharing the GPU over gloo)
#   cuda_tests        every other `cuda` test (steps without host waits, fp16, loader, NCCL, eval)
#   train_step_84px   bench/bench_train.py: the step alone in fp32, TF32, bf16, fp16
#   scripts_32px      bench/bench_scripts.py: the scripts end to end, --augment device and workers
#   train_step_32px, eval (bench/bench_eval.py), scripts_84px, loader_32px, loader_84px
#
# GPU_CHECK_ALLOW_CPU=1 runs the same sections on the CPU at toy sizes (cuda tests skip): a dry run of
# the check's own machinery (budgets, summary, archive) on a machine without a GPU.
set -uo pipefail
for tool in setsid timeout tar awk; do
    command -v "$tool" > /dev/null || { echo "error: the check needs the command $tool"; exit 2; }
done
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled WANDB_SILENT=true
PY="${PYTHON:-$(command -v python3 || command -v python)}"
TOTAL_S="${GPU_CHECK_TOTAL_S:-400}"
OUT="${1:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXX")}"
mkdir -p "$OUT" || { echo "error: cannot create the output folder $OUT"; exit 2; }
OUT="$(cd "$OUT" && pwd)"  # before the cd below: a relative OUT is the caller's
cd "$(dirname "$0")/.." || exit 2
SUMMARY="$OUT/summary.txt"
ARCHIVE="$OUT/logs.tar.gz"
for f in "$SUMMARY" "$ARCHIVE"; do  # never overwrite an earlier check's results
    [ ! -e "$f" ] || { echo "error: $f exists already; give the check a new or empty folder"; exit 2; }
done
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_logs.XXXX")"  # packed into OUT; removed on any exit
trap 'rm -rf "$LOGS"' EXIT
START=$(date +%s)
DEADLINE=$((START + TOTAL_S))
RESERVE=10  # seconds kept for the last archive and the summary
CURRENT_SID=""
FAILED=0
SKIPPED=0

note() { echo "$*" | tee -a "$SUMMARY"; }
pack() { tar -czf "$ARCHIVE.tmp" -C "$LOGS" . && mv -f "$ARCHIVE.tmp" "$ARCHIVE"; }

session_pids() {  # the processes of session $1 (from /proc: no ps needed)
    local sid="$1" stat rest fields
    for stat in /proc/[0-9]*/stat; do
        read -r rest < "$stat" 2>/dev/null || continue
        read -r -a fields <<< "${rest##*) }"  # after "pid (comm) ": state ppid pgrp session ...
        [ "${fields[3]:-}" = "$sid" ] && { stat="${stat#/proc/}"; echo "${stat%/stat}"; }
    done
}

end_session() {  # whatever a section left running: TERM, then KILL
    local sid="$1" pids
    pids="$(session_pids "$sid")"
    [ -n "$pids" ] || return 0
    kill -TERM $pids 2>/dev/null
    sleep 2
    pids="$(session_pids "$sid")"
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
}

finish() {
    echo
    echo "== summary ($SUMMARY; logs in $ARCHIVE)"
    cat "$SUMMARY"
    exit "$1"
}

interrupted() {
    [ -z "$CURRENT_SID" ] || end_session "$CURRENT_SID"
    note "INTERRUPTED after $(( $(date +%s) - START )) s: the check was stopped from outside"
    pack
    finish 130
}
trap interrupted INT TERM HUP

# section NAME BUDGET_S COMMAND...: run COMMAND under timeout in a new session, log to LOGS/NAME.log,
# print its tail, append its PASS/FAIL/TIMEOUT line to the summary, re-pack the logs.
section() {
    local name="$1" budget="$2"; shift 2
    local left=$((DEADLINE - $(date +%s) - RESERVE))
    local limit=$((budget < left ? budget : left))
    local log="$LOGS/$name.log"
    if [ "$limit" -lt 5 ]; then
        note "$(printf '%-8s %6s s  %-16s (no time left of %s s)' SKIP 0 "$name" "$TOTAL_S")"
        SKIPPED=$((SKIPPED + 1))
        return
    fi
    echo
    echo "== $name (limit ${limit} s): $*"
    { echo "\$ $*"; echo "(limit ${limit} s)"; } > "$log"
    local t0="$EPOCHREALTIME"
    setsid -w bash -c 'echo $$ > "$0.sid"; exec timeout -k 10 "$@"' "$log" "$limit" "$@" >> "$log" 2>&1 &
    local pid=$!
    CURRENT_SID="$pid"
    wait "$pid"
    local rc=$?
    [ ! -s "$log.sid" ] || CURRENT_SID="$(cat "$log.sid")"
    rm -f "$log.sid"
    end_session "$CURRENT_SID"
    CURRENT_SID=""
    local seconds
    seconds="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
    local status=PASS detail=""
    case "$rc" in
        0) ;;
        124|137) status=TIMEOUT; detail="(stopped at its ${limit} s limit; 137 can also be a kill for memory)" ;;
        5) status=FAIL; detail="(exit 5: pytest collected no tests)" ;;
        *) status=FAIL; detail="(exit $rc)" ;;
    esac
    [ "$status" = PASS ] || FAILED=1
    tail -n "${GPU_CHECK_TAIL:-15}" "$log"
    local line
    line="$(printf '%-8s %6s s  %-16s %s' "$status" "$seconds" "$name" "$detail")"
    note "${line%"${line##*[! ]}"}"  # without trailing blanks
    pack
}

# --- what the check needs, before anything runs ---
missing="$("$PY" - <<'EOF'
import importlib.util
needed = ["torch", "torchvision", "numpy", "scipy", "sklearn", "PIL", "tqdm", "pytest", "hypothesis"]
print(" ".join(name for name in needed if importlib.util.find_spec(name) is None))
EOF
)" || { echo "error: $PY does not run"; exit 2; }
if [ -n "$missing" ]; then
    echo "error: $PY lacks the Python packages: $missing (pip install -r requirements.txt, or PYTHON=another python)"
    exit 2
fi

"$PY" - > "$LOGS/versions.txt" 2>&1 <<'EOF'
import importlib.util
import platform
import torch
import torchvision
cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"CUDA {torch.version.cuda}, cuDNN {cudnn}")
if torch.cuda.is_available():
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    print(f"GPU {torch.cuda.get_device_name(index)} ({torch.cuda.device_count()} visible), capability {major}.{minor}, "
          f"{torch.cuda.get_device_properties(index).total_memory / 2**30:.0f} GiB, "
          f"bf16 native {torch.cuda.is_bf16_supported(including_emulation=False)}, "
          f"arch list {' '.join(torch.cuda.get_arch_list())}")
else:
    print("GPU none: torch.cuda.is_available() is false")
print("wandb", "installed (disabled for the check)" if importlib.util.find_spec("wandb") else
      "not installed (the scripts log to log.jsonl only)")
EOF
[ $? -eq 0 ] || { cat "$LOGS/versions.txt"; echo "error: torch does not import"; exit 2; }
if COMMIT="$(git rev-parse --short HEAD 2>/dev/null)"; then
    git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
else
    COMMIT="unknown (not a git checkout here)"
fi
{
    echo "# GPU check, commit $COMMIT, started $(date -u '+%Y-%m-%d %H:%M UTC'), budget ${TOTAL_S} s"
    sed 's/^/# /' "$LOGS/versions.txt"
    driver="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
    echo "# driver: ${driver:-no nvidia-smi}"
} | tee "$SUMMARY"

if grep -q "^GPU none" "$LOGS/versions.txt"; then
    if [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
        echo "error: this torch sees no GPU (see above); GPU_CHECK_ALLOW_CPU=1 dry-runs the check on the CPU"
        rm -f "$SUMMARY"
        exit 2
    fi
    note "# DRY RUN on the CPU (GPU_CHECK_ALLOW_CPU=1): toy sizes, cuda tests skip, no figure here is a GPU's"
    DEVICE=cpu
    PARITY=(--model resnet12_ssl_narrow --shots 1 --episodes 5)
    TRAIN=(--batch_size 8 --amp off --steps 1 --warmup 1)
    SCRIPTS=(--images 128 --epochs 1 --batch_size 32 --amp off)
    SCRIPTS_84=(--images 64 --epochs 1 --batch_size 16 --amp off)
    EVAL=(--shots 1 --episodes 10 --reference_episodes 2)
    LOADER=(--batches 5 --images 640)
else
    DEVICE=cuda
    PARITY=(--model resnet12_ssl)
    TRAIN=(--batch_size 64 --amp off,tf32,bf16,fp16 --steps 30 --warmup 10)
    SCRIPTS=(--images 12800 --epochs 2 --batch_size 64 --amp auto)
    SCRIPTS_84=(--images 6400 --epochs 2 --batch_size 64 --amp auto)
    EVAL=(--shots 1,5 --episodes 600 --reference_episodes 10)
    LOADER=(--batches 200)
fi
pack

PYTEST=("$PY" -m pytest -q -p no:cacheprovider -m cuda)
section cuda_augment 60 "${PYTEST[@]}" tests/test_batch_augment.py
section parity 90 "$PY" bench/gpu_parity.py --device "$DEVICE" "${PARITY[@]}"
section cuda_ddp 90 "${PYTEST[@]}" tests/test_distributed.py
section cuda_tests 150 "${PYTEST[@]}" --ignore tests/test_batch_augment.py --ignore tests/test_distributed.py
section train_step_84px 75 "$PY" bench/bench_train.py --device "$DEVICE" --image_size 84 "${TRAIN[@]}"
section scripts_32px 100 "$PY" bench/bench_scripts.py --device "$DEVICE" --image_size 32 "${SCRIPTS[@]}" --repeats 1
section train_step_32px 45 "$PY" bench/bench_train.py --device "$DEVICE" --image_size 32 "${TRAIN[@]}"
section eval 45 "$PY" bench/bench_eval.py --device "$DEVICE" "${EVAL[@]}"
section scripts_84px 90 "$PY" bench/bench_scripts.py --device "$DEVICE" --image_size 84 "${SCRIPTS_84[@]}" --repeats 1
section loader_32px 30 "$PY" bench/bench_loader.py --device "$DEVICE" --image_size 32 "${LOADER[@]}"
section loader_84px 30 "$PY" bench/bench_loader.py --device "$DEVICE" --image_size 84 "${LOADER[@]}"

VERDICT="ALL SECTIONS PASSED"
[ "$SKIPPED" -eq 0 ] || VERDICT="NOT ALL SECTIONS RAN ($SKIPPED skipped for lack of time)"
[ "$FAILED" -eq 0 ] || VERDICT="SOME SECTIONS FAILED"
note "$VERDICT in $(( $(date +%s) - START )) s"
pack
finish $((FAILED || SKIPPED))
