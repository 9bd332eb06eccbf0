#!/usr/bin/env bash
# AG News topic, the Llama-3 sequence-classification write-up: a classification head (MiniLM here),
# class-weighted loss, balanced sampling per label, accuracy before vs after training. Only the
# 7,600-row test file is available, so it is split: 1,000 / 200 / 200 rows per label.
#   bash recipes/ag_news.sh                  (about 5 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/recipes/ag_news}
source recipes/lib.sh
new_output_dir "$OUT"
start=$(date +%s)
$PY preprocess.py --task ag_news --template alpaca --test_ratio 0.2 --balance_per_label 1000,200,200 \
    --output_dir "$OUT/data" > "$OUT/preprocess.log"
$PY train.py --dataset_name "$OUT/data" --model_name minilm-l6 --class_weights auto --epoch 1 --max_seq_length 128 \
    --learning_rate 5e-4 --train_batch_size 16 --quiet --output_dir "$OUT/head"
$PY evaluate.py --adapters_name "$OUT"/head/*-epoch1 --base_only --split test --quiet --output_dir "$OUT/eval"
echo "ag_news head: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
