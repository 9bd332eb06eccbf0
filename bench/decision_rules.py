"""The decision rule on evidence: argmax, the rule before issue 45 (offsets fit on all validation
rows, applied when offsets fit on one half beat argmax on the other by 0.02, averaged over 5 halves)
and today's rule (annotune.labelling.decision: bootstrap-smoothed offsets, applied when the
cross-fitted gain's lower 95% bound is above 0), on the same validation and test probabilities.

    .venv/bin/python bench/decision_rules.py                       # the 9 tasks' untuned SmolLM2 (~45 min)
    .venv/bin/python bench/decision_rules.py --tasks sst2,drug_reviews
    .venv/bin/python bench/decision_rules.py --adapter runs/demo/<time>/train/smollm2-135m-drug_reviews-epoch1 --tag demo
    .venv/bin/python bench/decision_rules.py --precisions --tasks sbic_offensive,ag_news   # base in bf16 and fp32
    .venv/bin/python bench/decision_rules.py --report              # the table of what is recorded

Rows and splits are bench/quality.py's (600 labelled rows, 120 of them validation, at most 400 test
rows, seed 42), so a task's row here is beside its row of the 9-task table. Each model scores its
validation and test rows once (evaluate.py --decision argmax, predictions.jsonl kept in --runs);
every rule is then fit on the validation probabilities and applied to the test probabilities in this
process. Reported per rule: test macro-F1 and balanced accuracy, the paired difference to argmax
with a 95% bootstrap CI over test rows, whether the rule was applied, and how many labels argmax
gives. With --adapter (a tuned model), or --precisions (the tasks' untuned base, after their first
run), the scoring runs twice, --cpu_bf16 on and off, and the table adds the share of test rows given
the same label when each precision fits its own rule.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

LEGACY_MIN_GAIN, LEGACY_SPLITS = 0.02, 5


def parse_args(argv=None):
    from quality import TASKS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated bench/quality.py tasks (default: all 9)")
    p.add_argument("--adapter", help="a tuned adapter instead of the untuned base: scored under --cpu_bf16 on and off")
    p.add_argument("--precisions", action="store_true",
                   help="the --tasks' untuned base scored under --cpu_bf16 on and off too (a record per task, key TASK-precisions)")
    p.add_argument("--tag", default="", help="name of the --adapter's record (default: the adapter's folder name)")
    p.add_argument("--runs", default="runs/bench/decision_rules", help="working folder (default: runs/bench/decision_rules)")
    p.add_argument("--out", default="bench/results/decision_rules.json", help="results (default: bench/results/decision_rules.json)")
    p.add_argument("--report", action="store_true", help="only print the table of the recorded results")
    return p.parse_args(argv)


def scored(argv: list, out: Path, log: Path) -> list:
    """predictions.jsonl of one evaluate.py call (--decision argmax), run once and kept."""
    from quality import run

    found = sorted(out.glob("*/*/predictions.jsonl"))
    if not found:
        run("evaluate.py", argv + ["--decision", "argmax", "--quiet", "--output_dir", out, "--baseline", "none"], log)
        found = sorted(out.glob("*/*/predictions.jsonl"))
    return [json.loads(line) for line in found[0].read_text().splitlines() if line.strip()]


def legacy_rule(probs, gold, labels):
    """The rule before issue 45: offsets fit on every row, applied when half-fit offsets beat argmax
    on the other half by LEGACY_MIN_GAIN, on average over LEGACY_SPLITS random halves (seed 0)."""
    import numpy as np

    from annotune.labelling.decision import fit_offsets
    from annotune.labelling.metrics import label_metric

    def score(g, logits):
        return label_metric("macro_f1").fn(list(g), [labels[i] for i in logits.argmax(1)], labels)

    logp, gold = np.log(np.clip(np.asarray(probs, float), 1e-12, 1)), list(gold)
    rng, gains = np.random.default_rng(0), []
    for _ in range(LEGACY_SPLITS):
        order = rng.permutation(len(gold))
        a, b = order[: len(gold) // 2], order[len(gold) // 2:]
        off = np.asarray(fit_offsets(logp[a], [gold[i] for i in a], labels, "macro_f1", smooth=0))
        held = [gold[i] for i in b]
        gains.append(score(held, logp[b] + off) - score(held, logp[b]))
    gain = float(np.mean(gains))
    offsets = fit_offsets(logp, gold, labels, "macro_f1", smooth=0)
    return offsets, gain, gain >= LEGACY_MIN_GAIN


def compare(val: list, test: list, labels: list) -> dict:
    """argmax, the legacy rule and today's rule on one model's validation and test predictions."""
    import numpy as np

    from annotune.labelling.decision import fit_rule, probs_matrix
    from annotune.labelling.metrics import paired_difference, label_metric

    pv, pt = np.asarray(probs_matrix(val, labels)), np.asarray(probs_matrix(test, labels))
    gv, gt = [r["gold"] for r in val], [r["gold"] for r in test]
    logt = np.log(np.clip(pt, 1e-12, 1))
    argmax = [labels[i] for i in logt.argmax(1)]
    off, gain, applied = legacy_rule(pv, gv, labels)
    legacy = [labels[i] for i in (logt + np.asarray(off)).argmax(1)] if applied else argmax
    rule = fit_rule(pv, gv, labels)
    today = rule.apply(pt)[1] if rule.fitted else argmax
    out = {"n_validation": len(gv), "n_test": len(gt), "argmax_labels_used": len(set(argmax))}
    for name, pred, info in (("argmax", argmax, {}),
                             ("legacy", legacy, {"applied": applied, "heldout_gain": round(gain, 4),
                                                 "offsets": off}),
                             ("rule", today, {"applied": rule.fitted, "note": rule.note, "offsets": rule.offsets,
                                              "gain_lower": rule.gain_lower, "heldout_gain": rule.heldout_gain})):
        row = dict(info)
        for metric in ("macro_f1", "balanced_accuracy"):
            row[metric] = round(label_metric(metric).fn(gt, pred, labels), 4)
            if name != "argmax":
                row[f"{metric}_vs_argmax"] = paired_difference(
                    gt, pred, argmax, lambda g, p, m=metric: label_metric(m).fn(g, p, labels))
        out[name] = row
    return out, {"argmax": argmax, "legacy": legacy, "rule": today}


def task_record(name: str, runs: Path, score_only: bool = False) -> dict:
    from quality import build_data

    folder = runs / name
    folder.mkdir(parents=True, exist_ok=True)
    budget = argparse.Namespace(train_rows=600, val_share=0.2, test_rows=400, max_words=256, seed=42, resplit=False)
    data = build_data(budget, name, folder)
    labels = json.loads((data / "manifest.json").read_text())["labels"]
    preds = {split: scored(["--base_only", "--dataset_name", data, "--split", split], folder / split, folder / "log.txt")
             for split in ("validation", "test")}
    if score_only:
        return {}
    return dict(compare(preds["validation"], preds["test"], labels)[0], task=name, model="SmolLM2-135M untuned")


def adapter_record(adapter: Path, runs: Path) -> dict:
    """A tuned adapter scored in bf16 and fp32; each precision fits its own rule."""
    from annotune.labelling.contract import read_adapter_info

    info = read_adapter_info(adapter)
    out = precisions(["--adapters_name", adapter], info.labels, runs / adapter.name)
    return dict(out, task=info.task, model=f"tuned {adapter.name}")


def base_precisions_record(name: str, runs: Path) -> dict:
    """The untuned base on a task's rows (task_record's) scored in bf16 and fp32."""
    data = runs / name / "data"
    labels = json.loads((data / "manifest.json").read_text())["labels"]
    return dict(precisions(["--base_only", "--dataset_name", data], labels, runs / name / "precisions"),
                task=name, model="SmolLM2-135M untuned")


def precisions(model_argv: list, labels: list, folder: Path) -> dict:
    """Validation and test scored under --cpu_bf16 on and off; each precision fits its own rules;
    the share of test rows each rule labels alike in both."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    out, given = {}, {}
    for cpu_bf16 in ("on", "off"):
        preds = {split: scored([*model_argv, "--split", split, "--cpu_bf16", cpu_bf16],
                               folder / f"{cpu_bf16}-{split}", folder / "log.txt") for split in ("validation", "test")}
        out[f"bf16_{cpu_bf16}"], given[cpu_bf16] = compare(preds["validation"], preds["test"], labels)
    for name in ("argmax", "legacy", "rule"):  # each precision with the rule it fits itself
        out[f"same_label_{name}"] = float(np.mean([a == b for a, b in zip(given["on"][name], given["off"][name])]))
    return out


def show(records: list) -> None:
    def delta(row, metric):
        d = row[f"{metric}_vs_argmax"]
        return f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"

    def rule(row):
        return (f"{'applied' if row['applied'] else 'not applied'} | {row['macro_f1']:.3f} "
                f"({delta(row, 'macro_f1')}) | {row['balanced_accuracy']:.3f} ({delta(row, 'balanced_accuracy')})")

    print("| task | model | val rows | labels argmax gives | argmax F1 | argmax bal. acc. | before-45 rule | F1 (vs argmax) "
          "| bal. acc. (vs argmax) | today's rule | F1 (vs argmax) | bal. acc. (vs argmax) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        for key, res in ([("", r)] if "argmax" in r else [(f", {k.replace('_', ' ')}", r[k]) for k in ("bf16_on", "bf16_off")]):
            a = res["argmax"]
            print(f"| {r['task']} | {r['model']}{key} | {res['n_validation']} | {res['argmax_labels_used']} | "
                  f"{a['macro_f1']:.3f} | {a['balanced_accuracy']:.3f} | {rule(res['legacy'])} | {rule(res['rule'])} |")
    for r in records:
        if "same_label_rule" in r:
            print(f"\n{r['model']}: test rows given the same label under bf16 and fp32, each precision fitting its "
                  f"own rule: today's {r['same_label_rule']:.4f}, before-45 {r['same_label_legacy']:.4f}, "
                  f"argmax in both {r['same_label_argmax']:.4f}")


def main(argv=None):
    from annotune.base.files import atomic_write_json

    args = parse_args(argv)
    out, runs = REPO / args.out, REPO / args.runs
    results = json.loads(out.read_text()) if out.exists() else {"records": []}
    if not args.report:
        if args.adapter:
            records = [dict(adapter_record(Path(args.adapter), runs), key=args.tag or Path(args.adapter).name)]
        elif args.precisions:
            records = [dict(base_precisions_record(name, runs), key=f"{name}-precisions") for name in args.tasks.split(",")]
        else:
            names = args.tasks.split(",")
            for name in names:  # every scoring first: the comparisons are seconds each
                task_record(name, runs, score_only=True)
            records = [dict(task_record(name, runs), key=name) for name in names]
        keys = {r["key"] for r in records}
        results["records"] = [r for r in results["records"] if r["key"] not in keys] + records
        atomic_write_json(out, results)
    show(results["records"])


if __name__ == "__main__":
    main()
