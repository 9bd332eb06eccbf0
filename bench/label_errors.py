"""Can the out-of-fold probabilities find planted label errors? cleanlab's confident learning on
the K-fold path, with the MiniLM head's and TF-IDF's out-of-fold probabilities side by side.

    .venv/bin/python bench/label_errors.py                                  # sst2, ag_news, sbic_offensive
    .venv/bin/python bench/label_errors.py --tasks sst2 --model_name smollm2-135m \\
        --extra "--epoch 1 --max_seq_length 128"                            # the LLM arm on one task
    .venv/bin/python bench/label_errors.py --report

Per task: 1,000 rows drawn (seed 0) from the corpus of bench/inference.py; 5% and 10% of their
labels flipped to another label chosen uniformly (seeded; the flipped ids are recorded). The
flipped set goes through the commands (RUN = runs/label_errors/<task>-<rate>):
    python preprocess.py --data_path RUN/labelled.csv --text_column text --label_column label \\
        --id_column id --val_ratio 0 --output_dir RUN/ds
    python train.py --dataset_name RUN/ds --model_name minilm-l6 --folds 5 --class_weights auto \\
        --epoch 3 --max_seq_length 256 --output_dir RUN/kfold-minilm-l6 --quiet
    python review.py --oof RUN/kfold-minilm-l6 --all --output RUN/review-minilm-l6.csv
TF-IDF (word 1-2 grams + logistic regression, C = 4) is trained on the same 5 folds (folds.json's
held-out ids) for its out-of-fold probabilities. Reported per arm: precision of the k rows of lowest
label quality (k = number flipped), and the precision and recall of cleanlab's flags
(find_label_issues), with the wall time of the K-fold training. Writes bench/results/label_errors.json.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from crossfit_e2e import run  # noqa: E402

OUT = REPO / "bench" / "results" / "label_errors.json"


def write_flipped(folder: Path, task: str, n: int, rate: float) -> list:
    """labelled.csv with `rate` of the labels flipped; returns the flipped ids."""
    import pandas as pd

    from crossfit import texts_of
    from inference import load

    corpus, gold, _ = load(task)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(corpus.size, min(n, corpus.size), replace=False))
    labels = [corpus.labels[g] for g in gold[rows]]
    flip_rng = np.random.default_rng([1, int(rate * 1000)])
    flipped = flip_rng.choice(len(rows), int(round(rate * len(rows))), replace=False)
    for i in flipped:
        others = [l for l in corpus.labels if l != labels[i]]
        labels[i] = others[flip_rng.integers(len(others))]
    ids = corpus.table["id"].to_numpy()[rows]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "text": texts_of(task, ids), "label": labels}).to_csv(folder / "labelled.csv", index=False)
    return sorted(str(ids[i]) for i in flipped)


def tfidf_oof(kfold: Path, oof) -> np.ndarray:
    """TF-IDF + logistic regression trained on each fold's other rows, scored on its held-out rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    plan = json.loads((kfold / "folds.json").read_text())
    pos = {i: k for k, i in enumerate(oof.ids)}
    x = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit_transform(oof.texts)
    y = np.array([oof.labels.index(g) for g in oof.given])
    probs = np.zeros_like(oof.probs)
    for fold in plan["folds"]:
        held = np.array([pos[str(i)] for i in fold["heldout_ids"]])
        train = np.setdiff1d(np.arange(len(y)), held)
        model = LogisticRegression(C=4, max_iter=2000).fit(x[train], y[train])
        probs[np.ix_(held, model.classes_)] = model.predict_proba(x[held])
    return probs


def one_setting(args, task: str, rate: float) -> dict:
    from annotune.labelling.label_errors import label_issues, oof_of, ranking_quality

    folder = REPO / args.runs / f"{task}-{int(rate * 100)}"
    flipped = write_flipped(folder, task, args.n, rate)
    name = Path(args.model_name).name
    kfold = folder / f"kfold-{name}"
    if not (folder / "ds").exists():
        run(["preprocess.py", "--data_path", folder / "labelled.csv", "--text_column", "text", "--label_column",
             "label", "--id_column", "id", "--val_ratio", 0, "--output_dir", folder / "ds"])
    seconds = None
    if not (kfold / "oof.csv").exists():
        seconds = run(["train.py", "--dataset_name", folder / "ds", "--model_name", args.model_name, "--folds", 5,
                       *args.extra.split(), "--output_dir", kfold, "--quiet"])
    oof = oof_of(kfold)
    mask = np.isin(np.array(oof.ids), flipped)
    out = {"task": task, "rate": rate, "rows": len(oof.ids), "flipped_ids": flipped, "arms": {}}
    for arm, probs in ((name, oof.probs), ("tfidf", tfidf_oof(kfold, oof))):
        issues = label_issues(oof.given, probs, oof.labels)
        acc = float(np.mean(np.array([oof.labels[k] for k in probs.argmax(1)]) == np.array(oof.given)))
        out["arms"][arm] = dict(ranking_quality(mask, issues["quality"], issues["flagged"]), oof_accuracy=acc,
                                kfold_seconds=seconds if arm == name else None)
    return out


def report(results: list) -> str:
    lines = ["| task | flipped | arm | out-of-fold accuracy (vs given) | precision at k | flags | flag precision | "
             "flag recall | K-fold training |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for arm, a in r["arms"].items():
            secs = f"{a['kfold_seconds']:.0f} s" if a.get("kfold_seconds") else ""
            lines.append(f"| {r['task']} | {a['flipped']} of {r['rows']} ({r['rate']:.0%}) | {arm} | "
                         f"{a['oof_accuracy']:.3f} | {a['precision_at_k']:.3f} | {a['flagged']} | "
                         f"{a['flag_precision']:.3f} | {a['flag_recall']:.3f} | {secs} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="sst2,ag_news,sbic_offensive")
    p.add_argument("--rates", default="0.05,0.10")
    p.add_argument("--n", type=int, default=1000, help="labelled rows per task (default: 1000)")
    p.add_argument("--model_name", default="minilm-l6")
    p.add_argument("--extra", default="--class_weights auto --epoch 3 --max_seq_length 256")
    p.add_argument("--runs", default="runs/label_errors")
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    saved = json.loads(OUT.read_text()) if OUT.exists() else []
    if args.report:
        print(report(saved))
        return
    for task in args.tasks.split(","):
        for rate in map(float, args.rates.split(",")):
            result = one_setting(args, task, rate)
            old = next((r for r in saved if r["task"] == task and r["rate"] == rate), None)
            if old:  # arms of other models kept
                kept = {k: v for k, v in result["arms"].items() if v.get("kfold_seconds") or k not in old["arms"]}
                old["arms"].update(kept)
            else:
                saved.append(result)
            OUT.write_text(json.dumps(saved, indent=1) + "\n")
    print(report(saved))


if __name__ == "__main__":
    main()
