#!/usr/bin/env bash
# The whole SKD pipeline on the built-in `synthetic` dataset, in about a minute on a 2-core CPU (README: the measured time):
# Gen-0 (supervised + rotation), Gen-1 (self-supervised distillation from Gen-0), then
# few-shot evaluation of each, printing the accuracy of every stage.
#
#   bash scripts/quickstart.sh [OUT]      (OUT defaults to runs/quickstart)
#   AMP=fp32 bash scripts/quickstart.sh  (AMP sets --amp for every stage: auto, the default, off or fp32, bf16, fp16)
#
# OUT must be new, empty, or a folder an earlier quickstart made (it holds .skd-quickstart): only
# then are its contents cleared. Any other folder is refused, never deleted.
#
# Cut down for speed: images resized to 16x16 (the paper's are 32 and 84), 4 + 2 epochs, 100 episodes;
# Gen-0 uses lr 0.02 (0.05, the paper's, overshoots in the first epochs on 400 images). The paper's
# settings are in docs/reproducing.md. Each evaluation
# is written into its checkpoint's run folder as results_test_1shot.json, so that
# `python -m eval.table OUT` reads them.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/quickstart}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
MARKER=.skd-quickstart

if [ -f "$OUT/$MARKER" ]; then
    find "$OUT" -mindepth 1 -delete  # a folder an earlier quickstart made: start it afresh
elif [ -e "$OUT" ] && { [ ! -d "$OUT" ] || [ -n "$(ls -A "$OUT")" ]; }; then
    echo "error: $OUT: exists and was not made by the quickstart (no $MARKER); give a new or empty folder" >&2
    exit 2
fi
mkdir -p "$OUT" && touch "$OUT/$MARKER"
export WANDB_MODE="${WANDB_MODE:-offline}"  # no account needed; `wandb sync` uploads later
export WANDB_SILENT="${WANDB_SILENT:-true}"
# W&B's offline hint once, at the end, instead of once per stage.
quiet() { "$@" 2> >(grep -v "^W&B: not logged in" >&2); }

# --amp auto: bf16 where the hardware runs it natively (about 2x on such CPUs), fp16 on older GPUs, fp32 elsewhere.
AMP="${AMP:-auto}"
COMMON=(--dataset synthetic --image_size 16 --model_path "$OUT" --batch_size 32 --amp "$AMP" --no_final_eval)
EPISODES=100
EVAL=(--dataset synthetic --image_size 16 --n_shots 1 --n_test_runs "$EPISODES" --amp "$AMP")

echo "== Gen-0: cross-entropy + rotation loss"
quiet $PY train_supervised_ssl.py "${COMMON[@]}" --epochs 4 --lr_decay_epochs 3 --learning_rate 0.02 \
    | tee "$OUT/gen0.log" | grep --line-buffered -E "^device:|^precision:|^epoch=|^checkpoint:"
GEN0=$(sed -n 's/^checkpoint: //p' "$OUT/gen0.log")
echo "== Gen-0: few-shot test accuracy"
quiet $PY eval_fewshot.py "${EVAL[@]}" --model_path "$GEN0" --output "$(dirname "$GEN0")/results_test_1shot.json" \
    | grep --line-buffered -E "^test "

echo "== Gen-1: self-supervised distillation from Gen-0"
quiet $PY train_distillation.py "${COMMON[@]}" --path_t "$GEN0" --epochs 2 --lr_decay_epochs 2 \
    | tee "$OUT/gen1.log" | grep --line-buffered -E "^epoch=|^checkpoint:|^teacher check"
GEN1=$(sed -n 's/^checkpoint: //p' "$OUT/gen1.log")
echo "== Gen-1: few-shot test accuracy"
quiet $PY eval_fewshot.py "${EVAL[@]}" --model_path "$GEN1" --output "$(dirname "$GEN1")/results_test_1shot.json" \
    | grep --line-buffered -E "^test "
echo "== 5-way 1-shot accuracy on unseen classes (chance: 20%);" \
    "synthetic classes are easy: this says the pipeline works"
echo "== done: checkpoints, logs and results in $OUT/; the table: python -m eval.table $OUT"
[ "$WANDB_MODE" = offline ] && echo "== W&B ran offline; upload with: wandb sync $OUT/*/wandb/offline-run-*"
true
