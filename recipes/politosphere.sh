#!/usr/bin/env bash
# Politosphere (gun-control Reddit sentences), the four tables of the write-up, on SmolLM2-135M:
# 7 labels with and without definitions, pol/unpol/oth, supp/anti/oth; one training run each with
# adapters saved at several epochs; then the per-epoch table (train / validation), score vs generate
# mode on the last adapter, and kappa model-vs-human beside human-vs-human.
#   bash recipes/politosphere.sh            (about 47 minutes on 2 CPU cores; EPOCHS=8 SAVE=2,4,8: 26)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/recipes/politosphere}
EPOCHS=${EPOCHS:-20}
SAVE=${SAVE:-5,10,20}
DATA=${ANNOTUNE_DATA_DIR:-../shared/data}
ANN="$DATA/politosphere/annotated_data_leo.json $DATA/politosphere/annotated_data_yifei_v2.json"
source recipes/lib.sh
new_output_dir "$OUT"
# The write-up trained on the merged labels (merge_labels.py, then training): --merge_at training keeps
# that; train.py's own default learns the 7 labels and merges its predictions (docs/results.md).
for variant in "7labels-defs:" "7labels-nodefs:--without_definitions" \
               "pol_unpol_oth:--merge pol_unpol_oth --merge_at training" \
               "supp_anti_oth:--merge supp_anti_oth --merge_at training"; do
  name=${variant%%:*}; flags=${variant#*:}
  start=$(date +%s)
  $PY train.py --task politosphere $flags --template llama2-chat --epoch "$EPOCHS" --save_epochs "$SAVE" \
      --train_batch_size 16 --learning_rate 2e-4 --max_eval_samples 0 --quiet --output_dir "$OUT/$name"
  echo "train $name: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
  start=$(date +%s)
  $PY evaluate.py --adapters_name "$OUT/$name"/*-epoch* --base_only --table --quiet --output_dir "$OUT/$name-table"
  last=$(ls -d "$OUT/$name"/*-epoch"${SAVE##*,}")
  $PY evaluate.py --adapters_name "$last" --mode generate --quiet --output_dir "$OUT/$name-generate"
  $PY evaluate.py --adapters_name "$last" --annotations $ANN --quiet --output_dir "$OUT/$name-agreement"
  echo "evaluate $name: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
done
