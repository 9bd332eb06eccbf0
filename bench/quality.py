"""Quality against the cheap alternatives: on each task, with one fixed budget of labelled rows, does
the project's own recipe beat a majority-class guess and TF-IDF + logistic regression, and does it
avoid collapsing to the majority label?

    .venv/bin/python bench/quality.py                                   # the full table (hours on 2 cores)
    .venv/bin/python bench/quality.py --tasks drug_reviews,sst2 --train_rows 300 --test_rows 200
    .venv/bin/python bench/quality.py --tasks drug_reviews --resplit --train_rows 300 --tag lr5e-4 \\
        --recipes tuned --train_args "--learning_rate 5e-4 --epoch 3"      # one setting, test set untouched
    .venv/bin/python bench/quality.py --report                          # print the table of what is recorded

Budget per task (seeded): --train_rows labelled rows to learn from, of which --val_share is the
validation split (epoch choice, decision rule, TF-IDF's C), and at most --test_rows test rows;
texts cut to their first --max_words words for every recipe. Tasks without a test split carve
one (stratified, as their recipes do). --resplit carves validation and test from the train rows,
so settings can be chosen without the official test split.

Rows: majority class; TF-IDF + LogReg (class-balanced, C on validation); SmolLM2-135M untuned, zero-
shot, raw (argmax) and with a decision rule fit on the validation rows; SmolLM2 tuned with train.py's
defaults (or --train_args), raw and with its decision rule; a MiniLM-L6 classification head with
class weights. Every row is scored on the same test rows: macro-F1 and balanced accuracy with 95%
bootstrap CIs (evaluate.py's own metrics.json), and the wall time of its training + evaluation;
a tuned or head row also records its difference to TF-IDF on those rows with a paired CI
(vs_tfidf), which the verdict quotes.
Results accumulate in --out (one record per task, data budget, recipe and tag); a rerun skips the
records it has, and resumes a stopped train.py run from its last checkpoint (every 20 steps), so an
interrupted run continues where it stopped.
"""
import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# name: (task, merge, test_ratio for tasks without a test split)
TASKS = {
    "drug_reviews": ("drug_reviews", None, 0.0),
    "drug_neutral": ("drug_reviews", "neutral_vs_rest", 0.0),
    "sbic_offensive": ("sbic_offensive", None, 0.0),
    "sbic_biased": ("sbic_biased", None, 0.0),
    "sst2": ("sst2", None, 0.0),
    "imdb": ("imdb", None, 0.0),
    "bbc_news": ("bbc_news", None, 0.2),
    "ag_news": ("ag_news", None, 0.2),
    "politosphere": ("politosphere", "pol_unpol_oth", 0.3),
}
RECIPES = ("baselines", "base", "tuned", "head")
SAVE_EVERY = 20  # train.py checkpoints every this many steps, so a stopped tuned run loses little
HEAD_ARGS = "--model_name minilm-l6 --class_weights auto --epoch 3 --max_seq_length 512"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of: {', '.join(TASKS)} (default: all)")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    p.add_argument("--train_rows", type=int, default=600, help="labelled rows to learn from, validation included (default: 600)")
    p.add_argument("--val_share", type=float, default=0.2, help="share of --train_rows held out for validation (default: 0.2)")
    p.add_argument("--test_rows", type=int, default=400, help="test rows at most (default: 400)")
    p.add_argument("--max_words", type=int, default=256, help="texts cut to this many words (default: 256)")
    p.add_argument("--resplit", action="store_true", help="validation and test carved from the train rows")
    p.add_argument("--seed", type=int, default=42, help="seed of the samples and splits (default: 42)")
    p.add_argument("--train_args", default="", help="extra train.py flags for the tuned recipe (default: none)")
    p.add_argument("--head_args", default=HEAD_ARGS, help=f"train.py flags of the head recipe (default: {HEAD_ARGS})")
    p.add_argument("--tag", default="defaults", help="name of this tuned/head setting in the results; with --report, 'all' shows every setting (default: defaults)")
    p.add_argument("--out", default="bench/results/quality.json", help="results file (default: bench/results/quality.json)")
    p.add_argument("--runs", default="runs/bench/quality", help="working folder (default: runs/bench/quality)")
    p.add_argument("--report", action="store_true", help="only print the table of the recorded results")
    args = p.parse_args(argv)
    for name in args.tasks.split(","):
        if name not in TASKS:
            p.error(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    for name in args.recipes.split(","):
        if name not in RECIPES:
            p.error(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return args


def data_key(args, name) -> str:
    return (f"{name}-n{args.train_rows}-v{args.val_share:g}-t{args.test_rows}-w{args.max_words}-s{args.seed}"
            + ("-resplit" if args.resplit else ""))


def run(script, argv, log: Path) -> float:
    """One of the project's scripts in its own process; its wall time in seconds. Its CPU seconds
    (user + system) are added to CPU_S: unlike wall time, they do not grow while the run is paused."""
    start, cpu = time.time(), children_cpu_s()
    with open(log, "a") as handle:
        code = subprocess.run([sys.executable, script] + [str(a) for a in argv], cwd=REPO, stdout=handle,
                              stderr=subprocess.STDOUT).returncode
    if code:
        raise SystemExit(f"{script} {' '.join(map(str, argv))} failed (exit {code}); see {log}")
    CPU_S[0] += children_cpu_s() - cpu
    return time.time() - start


CPU_S = [0.0]  # CPU seconds of the scripts run for the current record


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_data(args, name, folder: Path) -> Path:
    task, merge, test_ratio = TASKS[name]
    data = folder / "data"
    if (data / "manifest.json").exists():
        return data
    n_val = round(args.train_rows * args.val_share)
    argv = ["--task", task, "--val_ratio", args.val_share, "--test_ratio", test_ratio if not args.resplit else 0.3,
            "--max_samples", f"{args.train_rows - n_val},{n_val},{args.test_rows}", "--max_words", args.max_words,
            "--seed", args.seed, "--num_preview", 0, "--output_dir", data, "--overwrite"]
    run("preprocess.py", argv + (["--merge", merge] if merge else []) + (["--resplit"] if args.resplit else []),
        folder / "log.txt")
    return data


def scores_of(m: dict, per_class: bool = True) -> dict:
    """The scores a row keeps of one set of labels in evaluate.py's metrics.json (the labels as given,
    or its "argmax" entry)."""
    row = {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1", "ci95", "ranking_auc") if k in m}
    if per_class:
        row["per_class_f1"] = {k: round(v["f1"], 4) for k, v in m.get("per_class", {}).items()}
    return row


def metrics_of(path: Path) -> dict:
    """A row of the table from evaluate.py's metrics.json: what the user gets (decision rule
    applied where evaluate.py applies it) and the argmax labels."""
    m = json.loads(path.read_text())
    row = scores_of(m)
    row["argmax"] = scores_of(m.get("argmax", m), per_class=False)
    row["rule"] = (m.get("decision_rule") or {}).get("note")
    if m.get("vs_tfidf"):  # evaluate.py's paired difference to TF-IDF on the same rows
        row["vs_tfidf"] = m["vs_tfidf"]
    return row


def baseline_rows(data: Path) -> dict:
    """Majority and TF-IDF, trained on the dataset's training rows, timed in this process."""
    from annotune.labelling.baseline import baseline_results
    from annotune.data.examples import load_dataset_folder

    rows_by_split, _, spec = load_dataset_folder(data)
    start = time.time()
    entries = baseline_results(rows_by_split, None, "test", rows_by_split["test"], spec.label_names)
    wall = time.time() - start
    out = {}
    for entry, key in zip(entries, ("majority", "tfidf")):
        m = entry["metrics"]
        out[key] = {"n": m["n"], "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
                    "macro_f1": m["macro_f1"], "ci95": m["ci95"], "ranking_auc": m.get("ranking_auc"),
                    "how": m["baseline"], "wall_s": round(wall, 1),
                    "train_rows": m["train_rows"], "labels": spec.label_names}
    return out


def train_and_score(args, data: Path, folder: Path, name: str, train_argv: list) -> dict:
    """train.py with these flags, then evaluate.py on the test rows: the row of the adapter train.py
    keeps (its best validation epoch; raw and with its decision rule). With --save_epochs in the
    flags every saved epoch is scored too (per_epoch), for choosing the number of epochs."""
    from annotune.model.adapters import adapters_in
    from annotune.labelling.contract import read_adapter_info

    run_dir, eval_dir = folder / name, folder / f"{name}-eval"
    # train.py was stopped mid-run: continue it. A finished run without a record is trained afresh (its
    # record was dropped, e.g. by bench/studies/rule_change.py, because train.py would now keep another epoch).
    manifest = run_dir / "manifest.json"
    resumed = manifest.exists() and not json.loads(manifest.read_text()).get("result")
    for path in ([] if resumed else [run_dir]) + [eval_dir]:
        remove(path)
    # Paths relative to the repository, so that a run resumes from another checkout with the same arguments.
    # --long_examples drop: the documented rows were trained before train.py cut long texts to fit.
    t_train = run("train.py", ["--dataset_name", relative(data), "--max_eval_samples", 0, "--quiet", "--output_dir",
                               relative(run_dir), "--save_every_steps", SAVE_EVERY, "--long_examples", "drop"] + train_argv
                  + (["--resume_from_checkpoint"] if resumed else []), folder / "log.txt")
    adapters = adapters_in(run_dir)
    # evaluate.py's TF-IDF trains on the adapter's own training rows, as the baselines recipe does: it is
    # there for the paired difference (vs_tfidf); its few seconds count in eval_s.
    t_eval = run("evaluate.py", ["--adapters_name", *adapters, "--split", "test", "--quiet",
                                 "--output_dir", eval_dir], folder / "log.txt")
    result = json.loads((run_dir / "manifest.json").read_text())["result"]
    per_epoch = {read_adapter_info(a).epoch: metrics_of(eval_dir / a.name / "test" / "metrics.json") for a in adapters}
    kept = result["best"].get("epoch") or max(per_epoch)
    row = dict(per_epoch[kept], wall_s=round(t_train + t_eval / len(adapters), 1), train_s=round(t_train, 1),
               eval_s=round(t_eval / len(adapters), 1), epoch_kept=kept, train_args=" ".join(map(str, train_argv)),
               resumed=resumed,  # wall and CPU seconds then count only the part after the stop
               history=[{k: h.get(k) for k in ("epoch", "macro_f1", "balanced_accuracy", "selection_score", "collapsed")}
                        for h in result["history"]])
    if len(per_epoch) > 1:
        row["per_epoch"] = {str(e): {k: m[k] for k in ("macro_f1", "balanced_accuracy", "argmax")}
                            for e, m in sorted(per_epoch.items())}
    return row


def relative(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def base_row(data: Path, folder: Path) -> dict:
    eval_dir = folder / "base-eval"
    remove(eval_dir)
    wall = run("evaluate.py", ["--base_only", "--dataset_name", data, "--split", "test", "--baseline", "none",
                               "--quiet", "--output_dir", eval_dir], folder / "log.txt")
    found = list(eval_dir.glob("base_*/test/metrics.json"))
    return dict(metrics_of(found[0]), wall_s=round(wall, 1))


def remove(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"records": []}


def save_record(path: Path, record: dict) -> None:
    from annotune.base.files import atomic_write_json

    results = load_results(path)
    results["records"] = [r for r in results["records"] if r["key"] != record["key"]] + [record]
    atomic_write_json(path, results)


def recipes_for(args, name, data: Path, folder: Path):
    """(recipe, tag, function giving its rows) for the requested recipes."""
    recipes = args.recipes.split(",")  # a list: "base" is not in ["baselines"], though it is in "baselines"
    if "baselines" in recipes:
        yield "baselines", "", lambda: baseline_rows(data)
    if "base" in recipes:
        yield "base", "", lambda: {"base": base_row(data, folder)}
    if "tuned" in recipes:
        yield "tuned", args.tag, lambda: {"tuned": train_and_score(args, data, folder, f"tuned-{args.tag}",
                                                                   shlex.split(args.train_args))}
    if "head" in recipes:
        yield "head", args.tag if args.head_args != HEAD_ARGS else "", lambda: {
            "head": train_and_score(args, data, folder, "head", shlex.split(args.head_args))}


def main(argv=None):
    args = parse_args(argv)
    out = REPO / args.out
    if not args.report:
        for name in args.tasks.split(","):
            key = data_key(args, name)
            folder = REPO / args.runs / key
            folder.mkdir(parents=True, exist_ok=True)
            data = build_data(args, name, folder)
            done = {r["key"] for r in load_results(out)["records"]}
            for recipe, tag, rows in recipes_for(args, name, data, folder):
                record_key = f"{key}|{recipe}|{tag}"
                if record_key in done:
                    continue
                print(f"{key}: {recipe} {tag}".rstrip(), flush=True)
                CPU_S[0] = 0.0
                record_rows = rows()
                save_record(out, {"key": record_key, "data": key, "task": name, "recipe": recipe, "tag": tag,
                                  "rows": record_rows, "machine": platform.node(),
                                  "cpu_s": round(CPU_S[0], 1) if recipe != "baselines" else None,
                                  "finished": time.strftime("%Y-%m-%d %H:%M")})
    print(report(load_results(out), args))
    return 0


def report(results: dict, args) -> str:
    """A markdown table per data budget (one line per row of the benchmark) and a verdict line."""
    by_data = {}
    for record in results["records"]:
        if args.tag == "all" or record["tag"] in ("", args.tag):  # all: every tag, each its own line
            tag = f":{record['tag']}" if record["tag"] and args.tag == "all" else ""
            by_data.setdefault(record["data"], {}).update(
                {k + tag: dict(v, cpu_s=record.get("cpu_s")) for k, v in record["rows"].items()})
    parts = []
    for key, rows in by_data.items():
        lines = [f"### {key}", "", "| row | n | macro-F1 [95% CI] | balanced acc. [95% CI] | ranking AUC | wall s "
                 "| CPU s |", "|---|---|---|---|---|---|---|"]
        for label, row in table_rows(rows):
            auc = f"{row['ranking_auc']:.3f}" if row.get("ranking_auc") is not None else "-"
            wall = f"{row.get('wall_s', '-')}{' (resumed)' if row.get('resumed') else ''}"
            lines.append(f"| {label} | {row.get('n', '-')} | {cell(row, 'macro_f1')} | {cell(row, 'balanced_accuracy')} "
                         f"| {auc} | {wall} | {row.get('cpu_s') or '-'} |")
        lines += ["", verdict(rows)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def table_rows(rows: dict):
    names = {"majority": "majority class", "tfidf": "TF-IDF + LogReg", "base": "SmolLM2 untuned",
             "tuned": "SmolLM2 tuned", "head": "MiniLM head, class weights"}
    for kind in ("majority", "tfidf", "base", "tuned", "head"):
        for key in sorted(k for k in rows if k.split(":")[0] == kind):
            row, tag = rows[key], key.partition(":")[2]
            name = names[kind] + (f" ({tag})" if tag else "")
            if kind in ("base", "tuned"):
                yield f"{name}, argmax", dict(row["argmax"], wall_s=row.get("wall_s"), cpu_s=row.get("cpu_s"),
                                              resumed=row.get("resumed"))
                yield f"{name}, decision rule", row
            else:
                yield name, row


def cell(row: dict, metric: str) -> str:
    if metric not in row:
        return "-"
    ci = row.get("ci95", {}).get(metric)
    return f"{row[metric]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def verdict(rows: dict) -> str:
    """Best own recipe against TF-IDF, and the majority-collapse check of the tuned model."""
    if "tfidf" not in rows:
        return ""
    k = len(rows["tfidf"]["labels"])
    own = {name: rows[name]["macro_f1"] for name in rows if name.split(":")[0] in ("tuned", "head")}
    words = [f"TF-IDF macro-F1 {rows['tfidf']['macro_f1']:.3f}"]
    if own:
        best = max(own, key=own.get)
        mark = ">=" if own[best] >= rows["tfidf"]["macro_f1"] else "<"
        words.append(f"best own ({best}) {own[best]:.3f} {mark} TF-IDF")
        paired = (rows[best].get("vs_tfidf") or {}).get("macro_f1")
        if paired:  # the sharper test: the difference on the same rows, with its own interval
            from annotune.labelling.report import difference_word

            lo, hi = paired["ci95"]
            words[-1] += f" (paired difference {paired['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]: {difference_word((lo, hi))})"
        if abs(rows[best]["balanced_accuracy"] - 1 / k) < 1e-9:  # what answering one label for every row scores
            words[-1] += " (its balanced accuracy is 1/K: the majority guess's score, not a pass)"
    tuned = [name for name in own if name.split(":")[0] == "tuned"]
    if tuned:
        name = max(tuned, key=own.get)
        bal, floor = rows[name]["balanced_accuracy"], 1 / k + 0.10
        words.append(f"{name} balanced acc. {bal:.3f} {'>' if bal > floor else '<='} 1/K + 0.10 = {floor:.3f}")
        auc = rows[name].get("ranking_auc")
        if bal <= floor and auc is not None:  # a rule problem, or nothing to rank?
            words.append(f"its ranking AUC {auc:.3f}: " + ("it ranks the rows; the decision rule fails to use it"
                                                         if auc >= 0.6 else "little signal to rank (0.5 = none)"))
    return "; ".join(words) + "."


if __name__ == "__main__":
    sys.exit(main())
