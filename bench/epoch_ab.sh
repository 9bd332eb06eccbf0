#!/bin/bash
# One Politosphere epoch of train.py (optimisation seconds, from manifest.json), alternating a reference
# checkout and this tree, so the machine's drift falls on every arm alike.
#
#   git worktree add /tmp/ref 46628fc
#   bash bench/epoch_ab.sh /tmp/ref 3 "--cpu_bf16 off"     # arms: ref, this tree, this tree + flags
#
# Arguments: the reference checkout, rounds (default 3), extra train.py flags for a third arm (default:
# none, two arms). Flags as bench/train_speed.py's 'ours' worker: --balance none --max_seq_length 512,
# no evaluation. Prints one line per run and writes bench/results/epoch_ab.json.
set -euo pipefail
REF=${1:?usage: bench/epoch_ab.sh REF_CHECKOUT [ROUNDS] [EXTRA_FLAGS]}
ROUNDS=${2:-3}
EXTRA=${3:-}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=$HERE/.venv/bin/python
WORK=$(mktemp -d /tmp/annotune-epoch-ab.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
(cd "$HERE" && $PY preprocess.py --task politosphere --output_dir "$WORK/data" --num_preview 0 >/dev/null)
COMMON=(--dataset_name "$WORK/data" --epoch 1 --eval_strategy no --balance none --quiet --max_seq_length 512)
ARMS=(ref this)
[ -n "$EXTRA" ] && ARMS+=(this+flags)
LINES=()
for round in $(seq "$ROUNDS"); do
  for arm in "${ARMS[@]}"; do
    run=$WORK/run-$round-${arm/+/_}
    case $arm in
      ref) (cd "$REF" && $PY train.py "${COMMON[@]}" --output_dir "$run" >/dev/null 2>&1) ;;
      this) (cd "$HERE" && $PY train.py "${COMMON[@]}" --output_dir "$run" >/dev/null 2>&1) ;;
      *) (cd "$HERE" && $PY train.py "${COMMON[@]}" --output_dir "$run" $EXTRA >/dev/null 2>&1) ;;
    esac
    line=$($PY -c "import json, sys; r = json.load(open(sys.argv[1]))['result']; print(json.dumps({'round': $round, 'arm': '$arm', 'seconds': r['train_seconds'], 'processed_tokens': r['processed_tokens'], 'bf16_autocast': r.get('bf16_autocast')}))" "$run/manifest.json")
    echo "$line"
    LINES+=("$line")
  done
done
printf '%s\n' "${LINES[@]}" | $PY -c "
import json, platform, statistics, subprocess, sys
rows = [json.loads(l) for l in sys.stdin]
mean = {a: statistics.mean(r['seconds'] for r in rows if r['arm'] == a) for a in dict.fromkeys(r['arm'] for r in rows)}
rev = lambda d: subprocess.run(['git', '-C', d, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
out = {'ref': rev('$REF'), 'this': rev('$HERE'), 'extra_flags': '$EXTRA', 'rows': rows, 'mean_seconds': mean,
       'ref_over_arm': {a: mean['ref'] / s for a, s in mean.items()}, 'machine': platform.machine(),
       'command': 'bash bench/epoch_ab.sh $REF $ROUNDS \"$EXTRA\"'}
sys.path.insert(0, '$HERE')
from annotune.base.files import atomic_write_json
atomic_write_json('$HERE/bench/results/epoch_ab.json', out)
print(json.dumps({'mean_seconds': mean, 'ref_over_arm': out['ref_over_arm']}))
"
