"""Cross-fitting end to end through the commands: a labelled set of 800 posts drawn uniformly from
SBIC's agg.tst (4,691 posts), trained into 5 fold models, the corpus labelled by their ensemble,
and estimate.py's cross-fitted estimates against the naive ones and the corpus's true values (the
gold of all 4,691 posts). Also the cost: the K-fold training against one training on the same 800
rows, and the ensemble's labelling against one adapter's (examples/s), measured in this one run.

    .venv/bin/python bench/crossfit_e2e.py                       # MiniLM-L6 head (~15 min on 2 cores)
    .venv/bin/python bench/crossfit_e2e.py --model_name smollm2-135m --extra "--max_seq_length 256"
    .venv/bin/python bench/crossfit_e2e.py --estimate_only    # estimate.py again, the costs kept

The commands it runs (printed as they run), with RUN = runs/crossfit_e2e/<model>:
    python preprocess.py --data_path RUN/labelled.csv --text_column text --label_column label \\
        --id_column id --val_ratio 0 --output_dir RUN/ds
    python train.py --dataset_name RUN/ds --model_name minilm-l6 --folds 5 --class_weights auto \\
        --epoch 3 --max_seq_length 256 --output_dir RUN/kfold --quiet
    python evaluate.py --ensemble RUN/kfold --predict_file RUN/corpus.csv --output RUN/labelled_corpus.csv
    python estimate.py --corpus RUN/labelled_corpus.csv --crossfit RUN/kfold --id_column id --by group \\
        --compare reddit twitter --regress offensive --on group --output_dir RUN/estimates
Writes bench/results/crossfit_e2e_<model>.json and prints the table of docs/results.md.
"""
import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from inference import RESULTS, load  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name", default="minilm-l6", help="base model (default: minilm-l6, a classification head)")
    p.add_argument("--extra", default="--class_weights auto --epoch 3 --max_seq_length 256",
                   help="train.py flags (default: as bench/inference.py trains its MiniLM heads)")
    p.add_argument("--n", type=int, default=800, help="labelled posts (default: 800)")
    p.add_argument("--seed", type=int, default=0, help="the labelled set's draw (default: 0)")
    p.add_argument("--runs", default="runs/crossfit_e2e", help="where the runs go")
    p.add_argument("--estimate_only", action="store_true",
                   help="run estimate.py again on the finished run and refresh the table, keeping the measured costs")
    return p.parse_args(argv)


def run(argv: list) -> float:
    """Run one command from the repository root; its wall time in seconds."""
    print("$ " + " ".join(shlex.quote(str(a)) for a in argv), flush=True)
    started = time.time()
    subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, check=True)
    return time.time() - started


def write_inputs(folder: Path, n: int, seed: int) -> tuple:
    """corpus.csv (id, text, group: every agg.tst post) and labelled.csv (id, text, label: n of them)."""
    import pandas as pd

    from crossfit import texts_of

    corpus, gold, _ = load("sbic_offensive")
    table = pd.DataFrame({"id": corpus.table["id"], "text": texts_of("sbic_offensive", corpus.table["id"]),
                          "group": corpus.table["group"]})
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "corpus.csv", index=False)
    rows = np.sort(np.random.default_rng(seed).choice(len(table), n, replace=False))
    labelled = table.iloc[rows][["id", "text"]].assign(label=[corpus.labels[g] for g in gold[rows]])
    labelled.to_csv(folder / "labelled.csv", index=False)
    return corpus, gold


def main(argv=None):
    args = parse_args(argv)
    from annotune.base.files import atomic_write_json, remove_dir
    from annotune.estimation.findings import Findings, Quantity

    folder = REPO / args.runs / Path(args.model_name).name
    out = RESULTS / f"crossfit_e2e_{Path(args.model_name).name}.json"
    corpus, gold = write_inputs(folder, args.n, args.seed)
    if args.estimate_only:
        record = json.loads(out.read_text())
        seconds = record["seconds"]
    else:
        seconds = measure(args, folder)
    remove_dir(folder / "estimates")
    run(["estimate.py", "--corpus", folder / "labelled_corpus.csv", "--crossfit", folder / "kfold", "--id_column", "id",
         "--by", "group", "--compare", "reddit", "twitter", "--regress", "offensive", "--on", "group",
         "--output_dir", folder / "estimates"])
    estimates = json.loads((folder / "estimates" / "estimates.json").read_text())
    by = corpus.table["group"].to_numpy()
    true = Findings(corpus, "probs", by, ("offensive", {"group": by}), compare=[("reddit", "twitter")]).truth(gold)
    rows = []
    for entry in estimates["estimates"]:
        name = Quantity(**entry["quantity"]).name
        rows.append({"quantity": name, "truth": true.get(name), **{m: entry[m] for m in ("naive", "classical", "ppi")}})
    record = {"model": args.model_name, "n": args.n, "corpus_rows": corpus.size, "seconds": seconds,
              "rows_per_s": {"ensemble": corpus.size / seconds["ensemble_labelling"],
                             "one_adapter": corpus.size / seconds["one_adapter_labelling"]},
              "crossfit": estimates["crossfit"], "oof_metrics": json.loads((folder / "kfold" / "oof_metrics.json").read_text()),
              "rows": rows}
    atomic_write_json(out, record)
    print(report(record))


def measure(args, folder: Path) -> dict:
    """The four timed commands: K-fold and one training, the ensemble's and one adapter's labelling."""
    extra = args.extra.split()
    seconds = {}
    if not (folder / "ds").exists():
        run(["preprocess.py", "--data_path", folder / "labelled.csv", "--text_column", "text", "--label_column", "label",
             "--id_column", "id", "--val_ratio", 0, "--output_dir", folder / "ds"])
    seconds["kfold_training"] = run(["train.py", "--dataset_name", folder / "ds", "--model_name", args.model_name,
                                     "--folds", 5, *extra, "--output_dir", folder / "kfold", "--quiet"])
    seconds["one_training"] = run(["train.py", "--dataset_name", folder / "ds", "--model_name", args.model_name,
                                   *extra, "--output_dir", folder / "one", "--quiet", "--overwrite_output_dir"])
    seconds["ensemble_labelling"] = run(["evaluate.py", "--ensemble", folder / "kfold", "--predict_file",
                                         folder / "corpus.csv", "--output", folder / "labelled_corpus.csv",
                                         "--overwrite", "--quiet", "--batch_size", 64])
    adapter = sorted(p for p in (folder / "one").iterdir() if (p / "annotune.json").exists())[0]
    seconds["one_adapter_labelling"] = run(["evaluate.py", "--adapters_name", adapter, "--predict_file",
                                            folder / "corpus.csv", "--output", folder / "one_corpus.csv",
                                            "--overwrite", "--quiet", "--batch_size", 64])
    return seconds


def report(record: dict) -> str:
    cell = lambda m: "n/a" if m.get("estimate") is None else f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"  # noqa: E731
    lines = ["| quantity | corpus value | naive | classical (800 labels) | cross-fitted ppi | ppi covers |",
             "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        covers = "" if r["truth"] is None or r["ppi"].get("low") is None else \
            ("yes" if r["ppi"]["low"] <= r["truth"] <= r["ppi"]["high"] else "no")
        truth = "" if r["truth"] is None else f"{r['truth']:.3f}"
        lines.append(f"| {r['quantity']} | {truth} | {cell(r['naive'])} | {cell(r['classical'])} | {cell(r['ppi'])} "
                     f"| {covers} |")
    s, rate = record["seconds"], record["rows_per_s"]
    lines += ["", f"K-fold training {s['kfold_training']:.0f} s vs one training on the same rows "
                  f"{s['one_training']:.0f} s ({s['kfold_training'] / s['one_training']:.1f}x); corpus labelling "
                  f"{rate['ensemble']:.1f} rows/s by the 5-model ensemble vs {rate['one_adapter']:.1f} by one adapter."]
    spread = record["crossfit"]["spread"]
    lines += ["", "Fold models' corpus means: " + "; ".join(
        f"{label} {', '.join(f'{m:.3f}' for m in v['fold_means'])} (range {v['range']:.3f})" for label, v in spread.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
