#!/usr/bin/env bash
# IMDB sentiment, the LLM-fine-tuning write-up's F1 base vs tuned: a MiniLM classification head (their
# DistilBERT + LoRA setup) and SmolLM2-135M instruction tuning. Fixed 2,000-row train/test samples.
#   bash recipes/imdb.sh                     (about 12 minutes on 2 CPU cores)
# --long_examples drop: docs/results.md's table was trained leaving out examples longer than --max_seq_length.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/recipes/imdb}
TEST=${TEST:-500}
source recipes/lib.sh
new_output_dir "$OUT"
start=$(date +%s)
$PY train.py --task imdb --model_name minilm-l6 --epoch 1 --max_seq_length 256 --learning_rate 5e-4 \
    --train_batch_size 16 --max_eval_samples 200 --quiet --output_dir "$OUT/head"
$PY evaluate.py --adapters_name "$OUT"/head/*-epoch1 --base_only --split test --max_samples "$TEST" --quiet \
    --output_dir "$OUT/head-eval"
echo "minilm head: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
start=$(date +%s)
$PY train.py --task imdb --epoch 1 --max_train_samples 160 --max_seq_length 400 --max_eval_samples 60 --quiet \
    --long_examples drop --output_dir "$OUT/sft"
$PY evaluate.py --adapters_name "$OUT"/sft/*-epoch1 --base_only --split test --max_samples 150 --quiet \
    --output_dir "$OUT/sft-eval"
echo "smollm2 sft: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
