"""bench/quality.py's results under the current decision rule, without retraining.

    .venv/bin/python bench/studies/rule_change.py                       # every base and tuned record in the results
    .venv/bin/python bench/studies/rule_change.py --tasks sst2,ag_news --dry_run
    .venv/bin/python bench/studies/rule_change.py --would_have    # what the old test (any gain) would have given

A rule's acceptance test (annotune.labelling.decision: MIN_GAIN) is applied when labels are given, not when it
is fit, so a stricter test changes which rows get their rule without changing any probability.
For each untuned-base and tuned record this reads the evaluation already on disk and rewrites the
row: a rule that no longer passes gives the row of the argmax labels (recorded beside it). A tuned
record also depends on the test through train.py's epoch choice (validation score plus the held-out
gain of an applied rule; epochs that give one label to every row rank last); the choice is redone
from the run's recorded history, and where it would keep another epoch, or cannot tell (an epoch
whose rule is dropped and whose balanced accuracy is exactly 1/K may now be collapsed), the record
is removed so that the next bench/quality.py run retrains it.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quality import REPO, TASKS, load_results, scores_of  # noqa: E402  (bench/quality.py)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names (default: all)")
    p.add_argument("--out", default="bench/results/quality.json", help="results file (default: bench/results/quality.json)")
    p.add_argument("--runs", default="runs/bench/quality", help="bench/quality.py's working folder (default: runs/bench/quality)")
    p.add_argument("--dry_run", action="store_true", help="only say what would change")
    p.add_argument("--would_have", action="store_true",
                   help="only print, for tuned records whose rule gained (0, MIN_GAIN) held out and so is not applied, "
                        "the test macro-F1 with and without it (from the predictions on disk)")
    return p.parse_args(argv)


def rule_applies(metrics: dict) -> bool:
    from annotune.labelling.decision import DecisionRule

    rule = metrics.get("decision_rule")
    return isinstance(rule, dict) and DecisionRule.from_dict(rule, rule["labels"]).fitted


def kept_epoch(history: list, k: int):
    """train.py's choice over a recorded history under the current rule test; None if unknowable."""
    from annotune.labelling.decision import DecisionRule, expected_score

    ranks = {}
    for h in history:
        rule = DecisionRule.from_dict(h.get("decision_rule"), (h.get("decision_rule") or {}).get("labels", []))
        collapsed = h.get("collapsed", False)
        if rule.fitted_on and not rule.fitted and rule.heldout_gain and rule.heldout_gain > 0:
            if abs(h["balanced_accuracy"] - 1 / k) < 1e-9:  # argmax labels may all be one label
                return None
            collapsed = False  # its labels are now argmax's, which do not all agree (balanced acc. != 1/K)
        ranks[h["epoch"]] = (not collapsed, expected_score(h, rule))
    return max(ranks, key=ranks.get)


def rescored(record: dict, folder: Path):
    """(new row, what changed) of a base or tuned record; (None, why) when it must be retrained."""
    (kind, row), = record["rows"].items()
    if kind == "base":
        found = list((folder / "base-eval").glob("base_*/test/metrics.json"))
    else:
        history = json.loads((folder / f"tuned-{record['tag']}" / "manifest.json").read_text())["result"]["history"]
        epoch = kept_epoch(history, len(history[0]["decision_rule"]["labels"]))
        if epoch != row["epoch_kept"] or "per_epoch" in row:
            return None, f"train.py would keep epoch {epoch}, not {row['epoch_kept']}: retrain"
        found = list((folder / f"tuned-{record['tag']}-eval").glob(f"*-epoch{epoch}/test/metrics.json"))
    if len(found) != 1:
        return None, f"{len(found)} evaluations found under {folder}: retrain"
    metrics = json.loads(found[0].read_text())
    if "argmax" not in metrics or rule_applies(metrics):  # no rule was applied, or it still is
        return row, "unchanged"
    new = dict(row, **scores_of(metrics["argmax"]))
    new["rule"] = f"{row['rule']} -> held-out gain below annotune.labelling.decision.MIN_GAIN: not applied (argmax is used)"
    return new, f"rule dropped: macro-F1 {row['macro_f1']:.3f} -> {new['macro_f1']:.3f}"


def would_have(record: dict, folder: Path):
    """(argmax, with the rule) test macro-F1 of a tuned record whose rule the MIN_GAIN test turned
    away (0 < held-out gain < MIN_GAIN); None for any other record."""
    from annotune.labelling.decision import DecisionRule
    from annotune.base.files import read_jsonl
    from annotune.labelling.metrics import macro_f1

    (kind, row), = record["rows"].items()
    adapters = list((folder / f"tuned-{record['tag']}").glob(f"*-epoch{row.get('epoch_kept')}/annotune.json"))
    if kind != "tuned" or len(adapters) != 1:
        return None
    info = json.loads(adapters[0].read_text())
    rule = DecisionRule.from_dict(info.get("decision_rule"), info["labels"])
    if rule.fitted or not rule.heldout_gain or rule.heldout_gain <= 0:
        return None
    found = list((folder / f"tuned-{record['tag']}-eval").glob(f"{adapters[0].parent.name}/test/predictions.jsonl"))
    preds = list(read_jsonl(found[0]))
    gold = [p["gold"] for p in preds]
    argmax = [p.get("argmax_prediction", p["prediction"]) for p in preds]  # evaluated under the old test: ruled
    return (rule.heldout_gain, macro_f1(gold, argmax, info["labels"]),
            macro_f1(gold, [p["prediction"] for p in rule.relabel(preds)], info["labels"]))


def main(argv=None):
    from annotune.base.files import atomic_write_json

    args = parse_args(argv)
    out = REPO / args.out
    if args.would_have:
        for record in load_results(out)["records"]:
            found = record["recipe"] == "tuned" and would_have(record, REPO / args.runs / record["data"])
            if found:
                print(f"{record['key']}: held-out gain {found[0]:+.3f}; test macro-F1 argmax {found[1]:.3f}, "
                      f"with the rule {found[2]:.3f}")
        return 0
    results, tasks = load_results(out), args.tasks.split(",")
    kept = []
    for record in results["records"]:
        if record["recipe"] in ("base", "tuned") and record["task"] in tasks:
            row, what = rescored(record, REPO / args.runs / record["data"])
            print(f"{record['key']}: {what}")
            if row is None:
                continue
            record = dict(record, rows={next(iter(record["rows"])): row})
        kept.append(record)
    if not args.dry_run:
        atomic_write_json(out, dict(results, records=kept))
    return 0


if __name__ == "__main__":
    sys.exit(main())
