"""Ranking AUC (mean one-vs-rest, annotune.labelling.metrics.ranking_auc) of predictions.jsonl files written
before metrics.json carried it: whether a model ranks the rows at all, whatever its decision rule.

    .venv/bin/python bench/studies/ranking_auc.py runs/bench/choose_defaults/drug_neutral-*/*-eval/*/test/predictions.jsonl
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("predictions", nargs="+", help="predictions.jsonl files of score-mode evaluations")
    args = p.parse_args(argv)
    from annotune.labelling.metrics import ranking_auc

    print("| predictions | n | ranking AUC |\n|---|---|---|")
    for path in args.predictions:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        key = "probs" if all("probs" in r for r in rows) else None
        if not rows or key is None:
            print(f"| {path} | {len(rows)} | - (no probabilities) |")
            continue
        labels = list(rows[0][key])
        auc = ranking_auc([[r[key][l] for l in labels] for r in rows], [labels.index(r["gold"]) for r in rows])
        print(f"| {path} | {len(rows)} | {auc:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
