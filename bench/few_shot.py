"""Do I need to fine-tune? The untuned SmolLM2-135M zero-shot and with 4 and 8 examples by each
selector, beside a tuned adapter, TF-IDF and majority, on the same test rows: macro-F1 with 95% CIs,
paired differences to the zero-shot base and to the tuned model, and the scoring cost per row.

    .venv/bin/python bench/few_shot.py --tasks sbic_offensive     # the curve's tuned n400 seed-0 adapter
    .venv/bin/python bench/few_shot.py --tasks sst2 --adapter sst2=runs/curve-sst2/tuned/seed0/n400/run/ADAPTER
    .venv/bin/python bench/few_shot.py --report                   # the table of what is recorded

Each task is one evaluate.py call: --adapters_name ADAPTER --base_only --split test --max_samples N
--few_shot 4,8 --shot_selector fixed,stratified,similar. The adapter brings its rows (its dataset
folder: the labelled rows it was trained and validated on, the test rows): the examples are drawn
from its training rows, so prompting and tuning are given the same labelled rows; every row's
decision rule is fit on its validation rows. The default adapter is learning_curve.py's tuned cell
with 400 labelled rows, seed 0 (runs/curve-<task>/tuned/seed0/n400). Scoring seconds per row come
from each row's metrics.json (the rows' labelling alone, one process, one machine).
"""
import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="sbic_offensive,drug_reviews,sst2", help="comma-separated (default: the issue's 3)")
    p.add_argument("--adapter", default="", help="TASK=ADAPTER,... (default: runs/curve-TASK/tuned/seed0/n400/run/*)")
    p.add_argument("--max_samples", type=int, default=400, help="test rows, a seeded sample (default: 400)")
    p.add_argument("--few_shot", default="4,8", help="(default: 4,8)")
    p.add_argument("--shot_selector", default="fixed,stratified,similar", help="(default: fixed,stratified,similar)")
    p.add_argument("--runs", default="runs/bench/few_shot", help="working folder (default: runs/bench/few_shot)")
    p.add_argument("--out", default="bench/results/few_shot.json", help="results (default: bench/results/few_shot.json)")
    p.add_argument("--report", action="store_true", help="only print the table of the recorded results")
    return p.parse_args(argv)


def default_adapter(task: str) -> Path:
    run = REPO / "runs" / f"curve-{task}" / "tuned" / "seed0" / "n400" / "run"
    found = sorted(p for p in run.glob("*-epoch*") if (p / "annotune.json").exists())
    if not found:
        raise SystemExit(f"{task}: no adapter in {run}; run learning_curve.py --task {task} --models tuned "
                         "--sizes 400 --seeds 1, or give --adapter")
    return found[-1]


def record(folder: Path) -> dict:
    """Each model's test row of one evaluate.py output folder."""
    rows = []
    for path in sorted(folder.glob("*/test/metrics.json")):
        m = json.loads(path.read_text())
        diff = lambda key: m[key]["macro_f1"] if m.get(key) else None  # noqa: E731
        rows.append({"model": path.parent.parent.name, "n": m["n"], "macro_f1": m["macro_f1"],
                     "ci95": m["ci95"]["macro_f1"], "balanced_accuracy": m["balanced_accuracy"],
                     "shots_used": m.get("shots_used"), "ms_per_row": m.get("scoring_ms_per_row"),
                     "vs_base": diff("vs_base"), "vs_tuned": diff("vs_first_adapter"), "vs_tfidf": diff("vs_tfidf"),
                     "rule": (m.get("decision_rule") or {}).get("note", "")})
    return {"rows": rows}


def table(task: str, rec: dict) -> str:
    fmt = lambda d: "" if not d else f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"  # noqa: E731
    lines = [f"{task} ({rec['rows'][0]['n']} test rows; adapter {rec['adapter']})", "",
             "| model | macro-F1 [95% CI] | balanced acc. | vs zero-shot base [95% CI] | vs tuned [95% CI] | "
             "vs TF-IDF [95% CI] | ms a row |", "|---|---|---|---|---|---|---|"]
    for r in rec["rows"]:
        lines.append(f"| {r['model']} | {r['macro_f1']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | "
                     f"{r['balanced_accuracy']:.3f} | {fmt(r['vs_base'])} | {fmt(r['vs_tuned'])} | {fmt(r['vs_tfidf'])} | "
                     f"{'' if r['ms_per_row'] is None else round(r['ms_per_row'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    from quality import run

    out = REPO / args.out
    results = json.loads(out.read_text()) if out.exists() else {}
    given = dict(kv.split("=", 1) for kv in args.adapter.split(",") if kv)
    for task in args.tasks.split(","):
        if not args.report:
            adapter = Path(given[task]) if task in given else default_adapter(task)
            folder = REPO / args.runs / task
            if not (folder / "comparison.md").exists():
                folder.parent.mkdir(parents=True, exist_ok=True)
                run("evaluate.py", ["--adapters_name", adapter, "--base_only", "--split", "test", "--max_samples",
                                    args.max_samples, "--few_shot", args.few_shot, "--shot_selector", args.shot_selector,
                                    "--quiet", "--output_dir", folder], folder.parent / f"{task}.log")
            results[task] = dict(record(folder), adapter=os.path.relpath(adapter))
            out.write_text(json.dumps(results, indent=1) + "\n")
        if task in results:
            print(table(task, results[task]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
