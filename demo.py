"""The main job on the embedded default, end to end: can a small fine-tuned LLM annotate the
sentiment of patients' drug reviews (3 imbalanced classes) better than the untuned model, and what
does a corpus it labels say, with intervals that hold although the model errs?

    python demo.py                       # what `make demo` runs (README 'Demo result': time and CPU)
    python demo.py --train_samples 160 --test_samples 100                 # a shorter version

Steps, each through a script's own main as a user would call it (the demo prints the commands):
1. preprocess.py builds the instruction dataset (chat template, label definitions, seeded
   stratified validation split, manifest of ids);
2. train.py fine-tunes SmolLM2-135M-Instruct with LoRA;
3. evaluate.py scores the untuned base and the tuned adapter on the same held-out test rows (score
   mode: every label scored, no invalid outputs): one table with 95% bootstrap CIs;
4. the corpus estimate: the test reviews (never trained or validated on) become an unlabelled
   corpus that evaluate.py --predict_file labels with the tuned adapter; sample.py draws a uniform
   sample of --human_labels rows; its sheet is filled from the gold labels (a stand-in for human
   annotators); estimate.py gives each label's share naive (the model's labels as gold), classical
   (the sample alone) and prediction-powered, 95% intervals; the demo prints them beside the true
   share of the corpus (from the gold labels of the corpus rows only) in corpus_estimate.md.
Each run goes to a new folder runs/demo/<time>/; nothing earlier is touched.
"""
import sys
import time

from annotune.base.cli import parser, quiet_libraries, run_cli
from annotune.model.models import DEFAULT_CAUSAL_LM
from annotune.data.task import DEFAULT_TASK


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--task", default=DEFAULT_TASK, help=f"task spec (default: {DEFAULT_TASK}, shipped in a wheel)")
    p.add_argument("--model_name", default=DEFAULT_CAUSAL_LM, help=f"base model (default: {DEFAULT_CAUSAL_LM})")
    p.add_argument("--train_samples", type=int, default=0,
                   help="training examples, a seeded sample of the 480 (default: 0 = all)")
    p.add_argument("--epochs", type=int, default=1,
                   help="epochs at most, the best on validation kept (default: 1: the demo in a quarter of an hour "
                        "on 2 cores; 3 take about twice as long, README 'Demo result')")
    p.add_argument("--test_samples", type=int, default=0,
                   help="test rows scored for each model, a seeded sample of the 379 (default: 0 = all)")
    p.add_argument("--max_seq_length", type=int, default=320,
                   help="longest training example in tokens; a longer review is cut from its end to fit (default: 320)")
    p.add_argument("--human_labels", type=int, default=100,
                   help="corpus rows drawn for (simulated) human labelling in step 4 (default: 100)")
    p.add_argument("--coverage_draws", type=int, default=1000,
                   help="step 4: seeded draws of --human_labels rows over which each interval's coverage of the "
                        "true share is counted (default: 1000)")
    p.add_argument("--output_dir", help="demo folder (default: runs/demo/<time>)")
    return p.parse_args(argv)


def step(stage: str, module, argv: list, times: dict) -> int:
    """Run one script's main as `python <script>.py ARGS` would, print the command, time it."""
    import shlex

    print(f"$ python {module.__name__}.py {' '.join(shlex.quote(str(a)) for a in argv)}")
    started = time.time()
    code = run_cli(module.main, [str(a) for a in argv])
    times[stage] = times.get(stage, 0.0) + time.time() - started
    return code


def main(argv=None):
    args = parse_args(argv)
    quiet_libraries()
    from pathlib import Path

    import evaluate  # this repository's evaluate.py (the hub's `evaluate` package is not a dependency)
    import preprocess
    import train
    from annotune.model.adapters import adapters_in

    start, times = time.time(), {}
    out = Path(args.output_dir or f"runs/demo/{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"[1/4] preprocess {args.task}")
    code = step("preprocess", preprocess, ["--task", args.task, "--model_name", args.model_name, "--num_preview", "1",
                                           "--output_dir", out / "dataset"], times)
    if code:
        return code
    print(f"\n[2/4] fine-tune {args.model_name} with LoRA, {args.epochs} epoch(s)")
    sample = ["--max_train_samples", args.train_samples] if args.train_samples else []  # 0 = all
    code = step("train", train, ["--dataset_name", out / "dataset", "--model_name", args.model_name,
                                 "--epoch", args.epochs, *sample, "--max_seq_length", args.max_seq_length,
                                 "--output_dir", out / "train"], times)
    if code:
        return code
    adapter = adapters_in(out / "train")[0]  # the best validation epoch, the only one kept
    print("\n[3/4] evaluate the base model and the tuned adapter on the same test rows")
    code = step("evaluate", evaluate, ["--adapters_name", adapter, "--base_only", "--split", "test",
                                       "--max_samples", args.test_samples, "--output_dir", out / "eval"], times)
    if code:
        return code
    print("\n[4/4] label the test reviews as a corpus, draw human labels, estimate each label's share")
    code = corpus_estimate(args, out, adapter, times)
    if code:
        return code
    minutes = (time.time() - start) / 60
    sampled = [f"{n} {what}" for n, what in ((args.train_samples, "training examples"), (args.test_samples, "test rows")) if n]
    print(f"\ndemo finished in {minutes:.1f} min (up to {args.epochs} epochs; training reviews over "
          f"{args.max_seq_length} tokens cut to fit{'; subsampled: ' + ', '.join(sampled) if sampled else ''}); everything is in {out}/")
    print("stage times: " + ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in times.items()))
    return 0


def corpus_estimate(args, out, adapter, times: dict) -> int:
    """Step 4: the test split as an unlabelled corpus, labelled, sampled, estimated, beside the truth."""
    import estimate
    import evaluate
    import sample

    folder = out / "corpus"
    gold = write_corpus(out / "dataset", folder / "reviews.csv", args.test_samples)
    code = step("label corpus", evaluate, ["--adapters_name", adapter, "--predict_file", folder / "reviews.csv",
                                           "--text_column", "text", "--output", folder / "reviews.labeled.csv",
                                           "--quiet"], times)
    if code:
        return code
    n = min(args.human_labels, max(len(gold) // 2, 2))
    code = step("sample + estimate", sample, ["--corpus", folder / "reviews.labeled.csv", "--n", n, "--seed", 0,
                                              "--sheet", folder / "sheet.csv", "--design", folder / "design.json"],
                times)
    if code:
        return code
    print(f"filling the sheet's {n} rows from the gold labels: a stand-in for human annotators")
    fill_sheet(folder / "sheet.csv", folder / "reviews.labeled.csv", gold, folder / "sheet.filled.csv")
    code = step("sample + estimate", estimate, ["--corpus", folder / "reviews.labeled.csv", "--sheet",
                                                folder / "sheet.filled.csv", "--design", folder / "design.json",
                                                "--alpha", "0.05", "--output_dir", folder / "estimates"], times)
    if code:
        return code
    table = estimate_table(folder / "estimates" / "estimates.json", gold)
    table += "\n" + coverage_table(folder / "reviews.labeled.csv", gold, n, args.coverage_draws)
    (out / "corpus_estimate.md").write_text(table, encoding="utf-8")
    print("\n" + table + f"\n(forest plot: {folder / 'estimates' / 'forest.png'})")
    return 0


def write_corpus(dataset_dir, path, limit: int) -> dict:
    """The dataset's test split as a corpus file (id, text; no label); returns {id: gold label}."""
    import csv

    from datasets import load_from_disk

    test = load_from_disk(str(dataset_dir))["test"]
    names = getattr(test.features.get("label"), "names", None)
    rows = [(str(r["id"]), r["text"], names[r["label"]] if names else str(r["label"])) for r in test]
    rows = rows[:limit] if limit else rows
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows((i, text) for i, text, _ in rows)
    return {i: label for i, _, label in rows}


def fill_sheet(sheet, corpus, gold: dict, filled) -> None:
    """The sheet with each drawn row's gold label, found through the corpus row's id."""
    import csv

    with open(corpus, newline="", encoding="utf-8") as handle:
        id_of = {r["row"]: r["id"] for r in csv.DictReader(handle)}
    with open(sheet, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for r in rows:
        r["label"] = gold[id_of[r["row"]]]
    with open(filled, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def coverage_table(corpus_csv, gold: dict, n: int, draws: int) -> str:
    """One draw can miss (a 95% interval does, 1 time in 20): how often each method's interval holds
    the true share over many seeded draws of n human labels from this corpus, labelled by its gold."""
    import csv

    import numpy as np

    from annotune.estimation.annotated import read_corpus
    from annotune.estimation.findings import Findings, coverage

    corpus = read_corpus(str(corpus_csv))
    with open(corpus_csv, newline="", encoding="utf-8") as handle:
        gold_all = np.array([corpus.label_index(gold[r["id"]], "gold") for r in csv.DictReader(handle)])
    rates = coverage(Findings(corpus, "probs"), gold_all, n, draws, alpha=0.05)
    lines = [f"Over {draws} seeded draws of {n} human labels from this corpus, how often each interval held the true "
             "share (95% nominal; naive: one answer, no draw)", "",
             "| label | naive | classical | prediction-powered |", "|---|---|---|---|"]
    for label in corpus.labels:
        name = f"share of {label}"
        lines.append(f"| {label} | {'holds' if rates[name, 'naive'] else 'misses'} | {rates[name, 'classical']:.1%} | "
                     f"{rates[name, 'ppi']:.1%} |")
    return "\n".join(lines) + "\n"


def estimate_table(estimates_json, gold: dict) -> str:
    """Each label's share naive / classical / prediction-powered (95% intervals) beside the true
    share of the corpus, computed from the gold labels of the corpus rows only."""
    import json
    from collections import Counter

    from annotune.data.labels import norm_label

    result = json.loads(estimates_json.read_text(encoding="utf-8"))
    counts = Counter(norm_label(label) for label in gold.values())
    lines = [f"Corpus of {result['corpus_rows']} reviews, {result['labelled']} human labels (stand-ins: gold), "
             "95% intervals; each interval marked by whether it holds the true share", "",
             "| label | naive (model's labels as gold) | classical (human sample alone) | prediction-powered | "
             "true share |", "|---|---|---|---|---|"]
    for e in result["estimates"]:
        q = e["quantity"]
        if q["kind"] != "share" or q["group"]:
            continue
        truth = counts[norm_label(q["label"])] / len(gold)
        cells = [f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}] "
                 f"{'holds' if m['low'] <= truth <= m['high'] else 'misses'}"
                 for m in (e["naive"], e["classical"], e["ppi"])]
        lines.append(f"| {q['label']} | {' | '.join(cells)} | {truth:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(run_cli(main))
