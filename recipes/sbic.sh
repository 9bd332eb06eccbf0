#!/usr/bin/env bash
# SBIC (Social Bias Inference Corpus v2): hasBiasedImplication (binary), offensiveYN (3 bins of the
# mean vote), targetMinority (generation), on SmolLM2-135M. Train on a seeded sample of agg.dev
# (the train split is not available here), test on a fixed seeded sample of agg.tst; base vs tuned.
#   bash recipes/sbic.sh                     (about 15 minutes on 2 CPU cores)
# --long_examples drop: docs/results.md's table was trained leaving out examples longer than --max_seq_length.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/recipes/sbic}
TRAIN=${TRAIN:-480}
TEST=${TEST:-240}
source recipes/lib.sh
new_output_dir "$OUT"
for task in sbic_biased sbic_offensive sbic_target; do
  start=$(date +%s)
  $PY train.py --task "$task" --epoch 1 --max_train_samples "$TRAIN" --max_eval_samples 100 --max_seq_length 384 \
      --quiet --long_examples drop --output_dir "$OUT/$task"
  echo "train $task: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
  start=$(date +%s)
  adapter=$(ls -d "$OUT/$task"/*-epoch1)
  if [ "$task" = sbic_target ]; then
    $PY evaluate.py --adapters_name "$adapter" --base_only --split test --max_samples "$TEST" --max_new_tokens 16 \
        --quiet --output_dir "$OUT/$task-eval"
  else
    $PY evaluate.py --adapters_name "$adapter" --base_only --split test --max_samples "$TEST" --quiet \
        --output_dir "$OUT/$task-eval"
    $PY evaluate.py --adapters_name "$adapter" --split test --max_samples "$TEST" --mode generate \
        --quiet --output_dir "$OUT/$task-generate"
  fi
  echo "evaluate $task: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
done
