#!/usr/bin/env bash
# DialogSum summarization, the FLAN-T5 write-up's ROUGE-1/2/L and BERTScore base vs tuned with
# boxplots, offline (BERTScore with the MiniLM that installs from PyPI). SmolLM2-135M instruction-tuned
# on a seeded sample of the 500 dev dialogues; tested on a seeded sample of the test dialogues
# against their three references.
#   bash recipes/dialogsum.sh                (about 10 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/recipes/dialogsum}
source recipes/lib.sh
new_output_dir "$OUT"
start=$(date +%s)
$PY train.py --task dialogsum --epoch 1 --max_train_samples 160 --max_seq_length 512 --max_eval_samples 10 \
    --quiet --output_dir "$OUT/sft"
$PY evaluate.py --adapters_name "$OUT"/sft/*-epoch1 --base_only --split test --max_samples 40 --max_new_tokens 60 \
    --batch_size 8 --quiet --output_dir "$OUT/eval"
echo "dialogsum: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
