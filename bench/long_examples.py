"""Cut or leave out long training texts (train.py --long_examples): the tuned arm of two learning-curve
folders trained on the same rows and seeds, one with --long_examples cut and one with drop, paired on
their shared test rows.

    .venv/bin/python bench/long_examples.py --cut runs/curve-drug_reviews-cut --drop runs/curve-drug_reviews

The folders (docs/results.md, "Long reviews: cut to fit or left out"):
    python learning_curve.py --task drug_reviews --sizes 400 --seeds 2 --models tuned \\
        --train_args '--max_seq_length 256' --output_dir runs/curve-drug_reviews-cut   # then --sizes 50
    python learning_curve.py --task drug_reviews --sizes 50,100,200,400 --seeds 2 --models tuned \\
        --train_args '--max_seq_length 256 --long_examples drop' --output_dir runs/curve-drug_reviews
Per size both folders have: each arm's metric (the seeds' mean), cut - drop with its 95% interval
(curves.resample, as learning_curve.py's bands: test rows and seeds resampled together, the same
test rows for both arms), the rows each trained on, the minutes and optimizer steps a cell; then each seed's metric and, of each label's
training rows, the share the dropping cells left out. Prints a markdown table.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

METRICS = ("macro_f1", "balanced_accuracy")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cut", required=True, help="learning-curve folder trained with --long_examples cut")
    p.add_argument("--drop", required=True, help="learning-curve folder trained with --long_examples drop")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws (default: 1000)")
    return p.parse_args(argv)


def gold_of(folder: Path) -> tuple:
    """(gold labels in the plan's test order, the label names) of a curve folder."""
    plan = json.loads((folder / "curve_plan.json").read_text(encoding="utf-8"))
    predictions = next(folder.glob("tuned/seed*/n*/eval/*/test/predictions.jsonl"))
    gold = {r["id"]: r["gold"] for r in map(json.loads, predictions.read_text(encoding="utf-8").splitlines())}
    return [gold[i] for i in plan["test_ids"]], plan["labels"], plan["test_ids"]


def trained(folder: Path, size: int) -> list:
    """(training examples, minutes, optimizer steps) of each seed's tuned cell of this size."""
    out = []
    for cell in sorted(folder.glob(f"tuned/seed*/n{size}")):
        manifest = json.loads((cell / "run" / "manifest.json").read_text(encoding="utf-8"))
        result = json.loads((cell / "result.json").read_text(encoding="utf-8"))
        out.append((manifest["train_examples"], result["seconds"] / 60, manifest["result"]["steps"]))
    return out


def span(values, fmt) -> str:
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}-{high}"


def main(argv=None):
    args = parse_args(argv)
    import learning_curve
    from annotune.labelling import curves
    from annotune.labelling.metrics import label_metric

    cut, drop = Path(args.cut), Path(args.drop)
    gold, labels, test_ids = gold_of(cut)
    if gold_of(drop)[2] != test_ids:
        sys.exit("the two folders were scored on different test rows")
    series = {}
    for name, folder in (("cut", cut), ("drop", drop)):
        for (arm, size), predictions in learning_curve.finished_cells(folder)[0].items():
            if arm == "tuned":
                series[name, size] = predictions
    sizes = sorted({s for n, s in series if n == "cut"} & {s for n, s in series if n == "drop"})
    series = {key: value for key, value in series.items() if key[1] in sizes}
    summary = {m: curves.summarise(curves.resample(series, gold, labels, m, args.bootstrap), reference="drop")
               for m in METRICS}
    print("| labelled rows | rows trained, cut / drop | " + " | ".join(
        f"{m} cut | {m} drop | {m} cut - drop [95% CI]" for m in METRICS) + " | minutes a cell, cut / drop | steps, cut / drop |")
    print("|---|---|" + "---|---|---|" * len(METRICS) + "---|---|")
    for size in sizes:
        runs = {name: trained(folder, size) for name, folder in (("cut", cut), ("drop", drop))}
        cells = []
        for m in METRICS:
            c, d = summary[m]["cut"][size], summary[m]["drop"][size]
            lo, hi = c["vs_reference_ci"]
            cells.append(f"{c['value']:.3f} | {d['value']:.3f} | {c['vs_reference']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        print(f"| {size} | {span([r[0] for r in runs['cut']], '{}')} / {span([r[0] for r in runs['drop']], '{}')} | "
              + " | ".join(cells) + f" | {span([r[1] for r in runs['cut']], '{:.1f}')} / "
              f"{span([r[1] for r in runs['drop']], '{:.1f}')} | {span([r[2] for r in runs['cut']], '{}')} / "
              f"{span([r[2] for r in runs['drop']], '{}')} |")
    fn = label_metric(METRICS[0]).fn
    for size in sizes:
        each = {name: ", ".join(f"{fn(gold, p, labels):.3f}" for p in series[name, size]) for name in ("cut", "drop")}
        print(f"\n{size} rows, {METRICS[0]} of each seed: cut {each['cut']}; drop {each['drop']}", end="")
    print()
    for size in sizes:
        print(f"{size} rows, share of each label's training rows that drop left out: " + "; ".join(
            f"seed {seed} {shares}" for seed, shares in left_out(drop, size)))
    return 0


def left_out(folder: Path, size: int) -> list:
    """[(seed, 'label p%, ...')]: of each label's training rows of a dropping cell, the share longer than
    its --max_seq_length (training_set.build_features with --long_examples drop, as train.py ran it)."""
    from transformers import AutoTokenizer

    from annotune.labelling.contract import from_source
    from annotune.model.models import resolve_model_path
    from annotune.training.training_set import build_features

    out = []
    for cell in sorted(folder.glob(f"tuned/seed*/n{size}")):
        flags = json.loads((cell / "run" / "manifest.json").read_text(encoding="utf-8"))["args"]
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(flags["model_name"]))
        labelling = from_source(str(cell / "data"), None, {}, tokenizer, lambda task_type: "causal")
        rows = labelling.splits["train"]
        feats, _ = build_features("causal", tokenizer, rows, labelling.scored.label_names, flags["max_seq_length"],
                                  prompter=labelling.prompter(tokenizer), long_examples="drop")
        kept = {f["id"] for f in feats}
        shares = []
        for label in labelling.scored.label_names:
            ids = [r["id"] for r in rows if r["label"] == label]
            shares.append(f"{label} {100 * sum(i not in kept for i in ids) / len(ids):.0f}%")
        out.append((cell.parent.name[4:], ", ".join(shares)))
    return out


if __name__ == "__main__":
    sys.exit(main())
