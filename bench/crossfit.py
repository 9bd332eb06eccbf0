"""Coverage and width of cross-prediction (annotune.estimation.crossfit) against split PPI++,
the labels alone and the naive estimate, on the corpora of bench/inference.py.

    .venv/bin/python bench/crossfit.py                           # every corpus, 1,000 repetitions a setting
    .venv/bin/python bench/crossfit.py --tasks sbic_offensive --reps 200
    .venv/bin/python bench/crossfit.py --report                  # the table of docs/results.md
    .venv/bin/python bench/crossfit.py --shift                   # evaluate.py's shift note: its two rates

Each repetition draws a labelled set of n rows uniformly from the corpus (n in 200, 400, 800;
run only where n <= N/5: not IMDB at 800, Drug Reviews never), hides every other row's gold label,
and estimates every label's share (SBIC also per source group, the reddit - twitter difference and a
logistic regression of `offensive` on the group) five ways, all aimed at the value on the whole
corpus (the gold of all N rows):
- crossfit: K = 5 stratified folds of the n rows, a model trained on each K-1, the labelled rows
  predicted out-of-fold and the rest by the 5 models' mean; PPI++ with lam tuned
  (crossfit.CrossFit + findings.Findings, what estimate.py --crossfit computes);
- crossfit_lam1: the same at lam = 1 (ppi-python's crossppi_*, here with the finite-population
  correction);
- split_<s>: a model trained on a uniform share s of the n rows (0.25, 0.5, 0.75), PPI++ on the
  other rows (a stratified design: the training rows taken with certainty and counted with their
  gold, the rest a simple random sample of the unlabelled corpus);
- classical: the n labels alone; naive: the fold models' argmax labels as if gold (out-of-fold on
  the labelled rows, the ensemble's elsewhere).
Thousands of trainings are only affordable with a cheap model: TF-IDF (word 1-2 grams, fit on the
corpus's texts, no labels) + multinomial logistic regression (C = 4). The texts are joined by id
from ../shared/data. Writes bench/results/crossfit.json (coverage of 90% intervals, mean width and
its Monte-Carlo standard error per setting, quantity and method) and prints the table.

--shift checks the test behind evaluate.py's shift note (labelling/annotation.py's shift_test: the model's scores on
its validation rows against its scores on the corpus): per seed a model is trained on 1,000 random
rows of AG News (SBIC), validated on 300 others, and the note's test run on the rest of the corpus
(a random split: it should stay quiet in at least 95% of seeds) and on the rest restricted to two
topics, World and Sports (SBIC: the twitter posts; a constructed shift: it should fire).
"""
import argparse
import csv
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from inference import RESULTS, load  # noqa: E402  (bench/inference.py: the committed corpora)

TASKS = ("sbic_offensive", "sst2", "imdb", "ag_news")  # Drug Reviews (379 rows) has no n <= N/5
SIZES, SHARES, FOLDS, ALPHA = (200, 400, 800), (0.25, 0.5, 0.75), 5, 0.1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated (default: all four)")
    p.add_argument("--reps", type=int, default=1000, help="repetitions per setting (default: 1000)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="labelled set sizes (default: 200,400,800)")
    p.add_argument("--report", action="store_true", help="print the markdown table of the results file")
    p.add_argument("--out", default=str(RESULTS / "crossfit.json"), help="results file (merged per task)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", help="comma-separated results files (runs side by side) joined into --out")
    p.add_argument("--shift", action="store_true", help="the shift note's rates (200 seeds a corpus) into --out")
    return p.parse_args(argv)


def texts_of(task: str, ids) -> list:
    """The corpus rows' texts, joined by id from ../shared/data."""
    data = REPO.parent / "shared" / "data"
    if task == "sbic_offensive":
        with open(data / "sbic" / "SBIC.v2.agg.tst.csv", encoding="utf-8") as handle:
            text = {f"test:{r['']}": r["post"] for r in csv.DictReader(handle)}
    elif task == "sst2":
        with open(data / "sst2" / "train_full.tsv", encoding="utf-8") as handle:
            rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            text = {f"train_full:{i}": r["sentence"] for i, r in enumerate(rows)}
    else:
        from annotune.data.examples import build_examples
        from annotune.data.sources import load_source_rows
        from annotune.data.task import load_task

        examples = build_examples(load_task(task), load_source_rows(load_task(task)))[0]
        text = {e["id"]: e["text"] for split in examples.values() for e in split}
    return [text[i] for i in ids]


def features(texts):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=10_000).fit_transform(texts)


def fit_predict(x, rows, gold, n_labels: int) -> np.ndarray:
    """A TF-IDF logistic regression trained on `rows`: its probabilities on every corpus row (N, L);
    a label absent from the rows gets probability 0."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=4.0, max_iter=200, tol=1e-3).fit(x[rows], gold[rows])
    out = np.zeros((x.shape[0], n_labels))
    out[:, model.classes_] = model.predict_proba(x)
    return out


def stratified_folds(gold_rows, k: int, rng) -> np.ndarray:
    """Fold of each labelled row: each label's rows shuffled and dealt round-robin from a random start."""
    fold = np.empty(len(gold_rows), dtype=int)
    for label in np.unique(gold_rows):
        where = rng.permutation(np.flatnonzero(gold_rows == label))
        fold[where] = (np.arange(len(where)) + rng.integers(k)) % k
    return fold


def split_sample(rows, train, size: int):
    """The split design: the training rows taken with certainty (stratum 1), the other labelled rows a
    simple random sample of the rest of the corpus (stratum 0)."""
    from annotune.estimation.inference import Sample

    strata = np.zeros(size, dtype=int)
    strata[rows[train]] = 1
    rest = len(rows) - int(train.sum())
    pi = np.where(train, 1.0, rest / (size - train.sum()))
    return Sample(rows, pi, "srs", size, strata)


def one_repetition(ctx, n: int, rng) -> dict:
    """{method: [result rows]} for one labelled set of n rows."""
    from dataclasses import replace

    from annotune.estimation.crossfit import CrossFit
    from annotune.estimation.findings import Findings
    from annotune.estimation.inference import Sample

    corpus, gold, x, base = ctx["corpus"], ctx["gold"], ctx["x"], ctx["findings"]
    size, n_labels = corpus.size, len(corpus.labels)
    rows = np.sort(rng.choice(size, n, replace=False))
    fold = stratified_folds(gold[rows], FOLDS, rng)
    per_fold = np.stack([fit_predict(x, rows[fold != k], gold, n_labels) for k in range(FOLDS)])
    oof = per_fold[fold, rows]
    fits = CrossFit(rows, gold[rows], oof, fold, per_fold.mean(axis=0), per_fold)
    # naive: the fold models' argmax labels as gold (out-of-fold on the labelled rows, the ensemble's elsewhere)
    crossed = fits.corpus(replace(corpus, prediction=fits.probs().argmax(axis=1)))
    make = lambda c, **o: Findings(c, "probs", base.by, base.regress, compare=base.compare, options=o)  # noqa: E731
    sample = fits.sample()
    out = {}
    for r in make(crossed).run(sample, gold[rows], methods=("naive", "classical", "ppi"), alpha=ALPHA):
        out.setdefault({"ppi": "crossfit"}.get(r["method"], r["method"]), []).append(r)
    out["crossfit_lam1"] = make(crossed, lam=1.0).run(sample, gold[rows], methods=("ppi",), alpha=ALPHA)
    for share in SHARES:
        # A uniform split: one stratified by the gold label would make the PPI rows' share track the
        # n rows' share, and the design variance (the rest a simple random sample) would overstate it.
        train = np.zeros(n, dtype=bool)
        train[rng.choice(n, round(share * n), replace=False)] = True
        probs = fit_predict(x, rows[train], gold, n_labels)
        split = replace(corpus, probs=probs, prediction=probs.argmax(axis=1))
        out[f"split_{share}"] = make(split).run(split_sample(rows, train, size), gold[rows], methods=("ppi",),
                                                alpha=ALPHA)
    return out


def simulate(task: str, sizes, reps: int, rng) -> dict:
    corpus, gold, findings = load(task)
    base = findings["probs"]
    base.by = corpus.table["group"].to_numpy() if "group" in corpus.table else None
    base.regress = ("offensive", {"group": base.by}) if base.by is not None else None
    started = time.time()
    x = features(texts_of(task, corpus.table["id"]))
    ctx = {"corpus": corpus, "gold": gold, "x": x, "findings": base}
    truth = base.truth(gold)
    record = {"rows": corpus.size, "labels": corpus.labels, "truth": truth, "features": x.shape[1],
              "feature_seconds": round(time.time() - started, 1), "settings": []}
    for n in sizes:
        if n > corpus.size / 5:  # the labelled set must be a small part of the corpus to judge anything
            continue
        started, tallies = time.time(), {}
        for _ in range(reps):
            for method, results in one_repetition(ctx, n, rng).items():
                for r in results:
                    if r["estimate"] is None:
                        continue
                    t = tallies.setdefault(r["quantity"].name, {}).setdefault(method, [0, 0, 0.0, 0.0])
                    width = r["high"] - r["low"]
                    t[0], t[1] = t[0] + 1, t[1] + int(r["low"] <= truth[r["quantity"].name] <= r["high"])
                    t[2], t[3] = t[2] + width, t[3] + width ** 2
        record["settings"].append({"n": n, "judged": n <= corpus.size / 5, "reps": reps,
                                   "seconds": round(time.time() - started, 1), "quantities": summarise(tallies)})
        print(f"  {task} n={n}: {time.time() - started:.0f} s", flush=True)
    return record


def summarise(tallies: dict) -> dict:
    out = {}
    for name, methods in tallies.items():
        for method, (runs, held, total, squares) in methods.items():
            mean = total / runs
            sd = np.sqrt(max(squares / runs - mean ** 2, 0.0))
            out.setdefault(name, {})[method] = {"coverage": held / runs, "width": mean,
                                                "width_mc_se": float(sd / np.sqrt(runs)), "runs": runs}
    return out


def shift_rates(task: str, seeds: int, rng) -> dict:
    """How often the shift note's test fires: corpus = a random rest, and a shifted rest."""
    from annotune.labelling.annotation import shift_test

    corpus, gold, _ = load(task)
    x = features(texts_of(task, corpus.table["id"]))
    shifted = np.isin(gold, [0, 1]) if task == "ag_news" else corpus.table["group"].to_numpy() == "twitter"
    fired = {"random": 0, "shifted": 0}
    for _ in range(seeds):
        order = rng.permutation(corpus.size)
        train, validation, rest = order[:1000], order[1000:1300], order[1300:]
        probs = fit_predict(x, train, gold, len(corpus.labels))
        for name, rows in (("random", rest), ("shifted", rest[shifted[rest]])):
            test = shift_test(probs[validation], np.zeros(len(validation), dtype=int), probs[rows][None])
            fired[name] += int(test["reject"])
    shift = "two of four topics (World, Sports)" if task == "ag_news" else "the twitter posts only"
    return {"seeds": seeds, "shift": shift, "random_rate": fired["random"] / seeds,
            "shifted_rate": fired["shifted"] / seeds}


METHODS = ("crossfit", "crossfit_lam1", "split_0.25", "split_0.5", "split_0.75", "classical", "naive")


def verdicts(record: dict) -> dict:
    """The issue's checks: cross-prediction's coverage in every judged setting, and its mean width
    (over a corpus's quantities) against split PPI++ at its best share and the labels alone."""
    out = {"coverage_below_0.87": [], "coverage_above_0.93": [], "width": {}}
    for task, rec in record["tasks"].items():
        for s in rec["settings"]:
            if not s["judged"]:
                continue
            q = s["quantities"]
            for name, m in q.items():
                c = m["crossfit"]["coverage"]
                if c < 0.87 or c > 0.93:
                    out["coverage_below_0.87" if c < 0.87 else "coverage_above_0.93"].append(
                        f"{task} n={s['n']} {name}: {c:.3f}")
            mean = {meth: float(np.mean([m[meth]["width"] for m in q.values()])) for meth in METHODS}
            mc = {meth: float(np.sqrt(np.mean([m[meth]["width_mc_se"] ** 2 for m in q.values()]))) for meth in METHODS}
            best = min((f"split_{sh}" for sh in SHARES), key=mean.get)
            out["width"][f"{task} n={s['n']}"] = {
                "crossfit": mean["crossfit"], "best_split": best, "best_split_width": mean[best],
                "classical": mean["classical"],
                "narrower_than_split": bool(mean["crossfit"] + 2 * mc["crossfit"] < mean[best] - 2 * mc[best]),
                "narrower_than_classical": bool(mean["crossfit"] + 2 * mc["crossfit"]
                                                < mean["classical"] - 2 * mc["classical"])}
    return out


def report(record: dict) -> str:
    lines = [f"Coverage of 90% intervals / mean width over each corpus's quantities, {FOLDS} folds, TF-IDF + "
             "logistic regression; judged: n <= N/5.", "",
             "| corpus (N) | n | judged | reps | quantities | " + " | ".join(METHODS) + " |",
             "|---|---|---|---|---|" + "---|" * len(METHODS)]
    for task, rec in record["tasks"].items():
        for s in rec["settings"]:
            q = s["quantities"]
            cells = []
            for meth in METHODS:
                cov = [m[meth]["coverage"] for m in q.values()]
                cells.append(f"{np.mean(cov):.3f} [{min(cov):.3f}] / {np.mean([m[meth]['width'] for m in q.values()]):.4f}")
            lines.append(f"| {task} ({rec['rows']}) | {s['n']} | {'yes' if s['judged'] else 'no'} | {s['reps']} | "
                         f"{len(q)} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: mean coverage [lowest quantity] / mean width. crossfit = cross-prediction, lam tuned; "
              "split_s: trained on a share s, PPI++ on the rest."]
    if record.get("shift"):
        lines += ["", "| corpus | seeds | the note fires: random rest | shifted rest | shift |", "|---|---|---|---|---|"]
        for task, r in record["shift"].items():
            lines.append(f"| {task} | {r['seeds']} | {r['random_rate']:.3f} | {r['shifted_rate']:.3f} | {r['shift']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if args.report:
        print(report(json.loads(out.read_text())))
        return
    from annotune.base.files import atomic_write_json

    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge.split(",")]
        record = {"alpha": ALPHA, "folds": FOLDS, "tasks": {t: r for part in parts for t, r in part["tasks"].items()}}
        record.update({k: part[k] for part in parts for k in ("shift",) if k in part})
        record["verdicts"] = verdicts(record)
        atomic_write_json(out, record)
        print(report(record))
        return
    warnings.filterwarnings("ignore")  # sklearn's convergence notes on a few folds
    record = json.loads(out.read_text()) if out.exists() else {"alpha": ALPHA, "folds": FOLDS, "tasks": {}}
    if args.shift:
        rng = np.random.default_rng(args.seed)
        record["shift"] = {task: shift_rates(task, 200, rng) for task in ("ag_news", "sbic_offensive")}
        atomic_write_json(out, record)
        print(json.dumps(record["shift"], indent=1))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    for task in args.tasks.split(","):
        rng = np.random.default_rng([args.seed, TASKS.index(task)])
        record["tasks"][task] = simulate(task, sizes, args.reps, rng)
        record["verdicts"] = verdicts(record)
        atomic_write_json(out, record)  # after each corpus: a long run keeps what it finished
    print(report(record))
    print(json.dumps(record["verdicts"], indent=1))


if __name__ == "__main__":
    main()
