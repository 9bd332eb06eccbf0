#!/usr/bin/env bash
# How train.py's defaults were chosen: balance none / oversample / weights, 3 epochs with
# every epoch scored, on the imbalanced tasks at a small budget (300 labelled rows: 240 train + 60
# validation), with validation and test carved from each task's train rows (--resplit) so that the
# test splits of the quality table (bench/quality.py) are not looked at; SST-2 (balanced) for the
# number of epochs only. Task by task, so each finished task is a complete comparison.
# Results: bench/results/quality_defaults.json.
#   bash bench/choose_defaults.sh            (about 2 hours on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
common=(--resplit --train_rows 300 --test_rows 200 --out bench/results/quality_defaults.json
        --runs runs/bench/choose_defaults)
for task in drug_neutral sbic_offensive drug_reviews sst2; do
  $PY bench/quality.py "${common[@]}" --tasks "$task" --recipes baselines,base
  balances="none oversample weights"
  [ "$task" = sst2 ] && balances="none"
  for balance in $balances; do
    $PY bench/quality.py "${common[@]}" --tasks "$task" --recipes tuned --tag "e3-$balance" \
        --train_args "--epoch 3 --save_epochs all --balance $balance"
  done
done
