"""A merged task scored from a model of the finer labels: the merge applied after prediction
(gold and predicted labels through the task's named merge, each merged label's probability the sum
of its finer labels'), instead of training on the merged labels. Prints one markdown row with
95% bootstrap CIs, on exactly the rows of the predictions file.

    .venv/bin/python bench/merge_after.py --task drug_reviews --merge neutral_vs_rest \\
        --predictions runs/bench/quality/drug_reviews-n600-v0.2-t400-w256-s42/tuned-defaults-eval/*/test/predictions.jsonl

docs/results.md uses it on the quality table's drug_neutral task ("neutral" vs the rest), which
drug_reviews' 3-label model ranks far better than a model trained on the 2 merged labels.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import cell  # noqa: E402  (bench/quality.py, which also puts the repository on the path)

from annotune.base.cli import UserError, parser, run_cli  # noqa: E402


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--predictions", required=True, help="predictions.jsonl written by evaluate.py (fine labels)")
    p.add_argument("--task", required=True, help="task whose named merge applies, e.g. drug_reviews")
    p.add_argument("--merge", required=True, help="the named merge, e.g. neutral_vs_rest")
    return p.parse_args(argv)


def merged_metrics(records: list, spec) -> dict:
    """classification_metrics of the records (gold, prediction, probs over the finer labels) under
    spec's merge (spec = the merged TaskSpec)."""
    from annotune.data.labels import merged_prediction
    from annotune.labelling.metrics import classification_metrics

    labels, to = spec.label_names, spec.merge_map
    gold = [to[r["gold"]] for r in records]
    pred = [to.get(r["prediction"], r["prediction"]) for r in records]  # the rule's label; invalid stays invalid
    probs = None
    if all(r.get("probs") for r in records):
        probs = [[m["probs"][label] for label in labels] for m in (merged_prediction(r, labels, to) for r in records)]
    return classification_metrics(gold, pred, labels, probs)


def main(argv=None):
    args = parse_args(argv)
    from annotune.base.files import read_jsonl
    from annotune.data.task import load_task

    spec = load_task(args.task).merged(args.merge)
    path = Path(args.predictions)
    if not path.is_file():
        raise UserError(f"--predictions {path}: no such file")
    records = read_jsonl(path)
    unknown = sorted({r["gold"] for r in records} - set(spec.merge_map))
    if unknown:
        raise UserError(f"{path}: gold labels {unknown} are not labels of task {args.task} before the merge")
    m = merged_metrics(records, spec)
    print("| merged after prediction | n | macro-F1 [95% CI] | balanced acc. [95% CI] | ranking AUC | per-label F1 |")
    print("|---|---|---|---|---|---|")
    per_label = ", ".join(f"{label} {v['f1']:.3f}" for label, v in m["per_class"].items())
    print(f"| {args.task} -> {args.merge} | {m['n']} | {cell(m, 'macro_f1')} | {cell(m, 'balanced_accuracy')} | "
          f"{cell(m, 'ranking_auc')} | {per_label} |")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
