"""Which aggregator should turn several annotators' votes into one label? A semi-synthetic referee
on SBIC's real annotation pattern.

    .venv/bin/python bench/annotators.py                 # 20 seeds x 3 scenarios, ~25 min on 2 cores
    .venv/bin/python bench/annotators.py --seeds 3       # a quick look
    .venv/bin/python bench/annotators.py --report        # the table of docs/results.md

SBIC's own label (the mean vote binned) is a rule of its own, so it cannot referee the methods.
Instead: truth = sbic_offensive's label of each SBIC dev post (the binned mean vote); every real
(post, worker) pair of SBIC.v2.dev.csv (tasks/sbic_offensive_votes.yaml: 12,325 votes, 198 workers)
gets a simulated vote drawn from that worker's confusion matrix, fitted on the worker's real votes
against the truth (counts plus 2 pseudo-votes spread as the pooled confusion row). Scenarios:
- clean: the simulated votes only;
- random: workers drawn at random until they hold 20% of the votes are replaced by spammers who
  vote uniformly at random;
- systematic: the same workers always vote "offensive".
Per seed and scenario: consensus accuracy against the truth of majority (ties broken at random,
seeded), Dawid-Skene, MACE and CROWDLAB (cleanlab; the model: TF-IDF + logistic regression
trained on the majority labels, 5-fold out-of-fold probabilities), and the AUC of each method's
worker quality at ranking the planted workers below the others. Also, on the real votes: each
method's agreement with SBIC's own aggregated label (described, not judged). Writes
bench/results/annotators.json.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
OUT = HERE / "results" / "annotators.json"
METHODS = ("majority", "dawid_skene", "mace", "crowdlab")


def load():
    """(real votes [(item, worker, label)], truth {item: label}, texts {item: text}, labels)."""
    from annotune.data.annotations import text_key
    from annotune.data.examples import build_examples, task_votes
    from annotune.data.sources import load_source_rows
    from annotune.data.task import load_task

    votes, texts = task_votes(load_task("sbic_offensive_votes"))
    agg = load_task("sbic_offensive")
    examples = build_examples(agg, load_source_rows(agg))[0]
    truth = {text_key(e["text"]): e["label"] for e in examples["train"]}
    votes = [v for v in votes if v[0] in truth]
    return votes, truth, texts, agg.label_names


def confusions(votes, truth, labels):
    k = {l: i for i, l in enumerate(labels)}
    pooled = np.ones((len(labels), len(labels)))
    per = {}
    for item, worker, label in votes:
        per.setdefault(worker, np.zeros_like(pooled))[k[truth[item]], k[label]] += 1
        pooled[k[truth[item]], k[label]] += 1
    pooled /= pooled.sum(1, keepdims=True)
    return {w: (c + 2 * pooled) / (c + 2 * pooled).sum(1, keepdims=True) for w, c in per.items()}


def simulate(votes, truth, labels, conf, scenario, rng):
    """Simulated votes on the real pattern, and the planted workers."""
    k = {l: i for i, l in enumerate(labels)}
    workers = sorted(conf)
    planted = set()
    if scenario != "clean":
        share = {w: 0 for w in workers}
        for _, w, _ in votes:
            share[w] += 1
        total, held = len(votes), 0
        for w in rng.permutation(workers):
            if held >= 0.2 * total:
                break
            planted.add(w)
            held += share[w]
    out = []
    for item, worker, _ in votes:
        if worker in planted:
            label = labels[rng.integers(len(labels))] if scenario == "random" else "offensive"
        else:
            label = labels[rng.choice(len(labels), p=conf[worker][k[truth[item]]])]
        out.append((item, worker, label))
    return out, planted


def oof_model(items, texts, labels_of, labels, seed):
    """5-fold out-of-fold probabilities of TF-IDF + logistic regression trained on `labels_of`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit_transform([texts[i] for i in items])
    y = np.array([labels.index(labels_of[i]) for i in items])
    probs = np.zeros((len(items), len(labels)))
    for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
        model = LogisticRegression(C=4, max_iter=2000).fit(x[train], y[train])
        probs[np.ix_(test, model.classes_)] = model.predict_proba(x[test])
    return probs


def auc(quality: dict, planted: set):
    from sklearn.metrics import roc_auc_score

    workers = [w for w in quality if np.isfinite(quality[w])]
    if not planted:
        return None
    return float(roc_auc_score([w in planted for w in workers], [-quality[w] for w in workers]))


def one_run(votes, truth, texts, labels, conf, scenario, seed):
    from annotune.data.annotations import aggregate, votes_frame
    from annotune.labelling.annotators import Votes, crowdlab

    rng = np.random.default_rng(seed)
    sim, planted = simulate(votes, truth, labels, conf, scenario, rng)
    frame = votes_frame(sim)
    result = {}
    for method in ("majority", "dawid_skene", "mace"):
        cons = aggregate(frame, labels, method, "random", seed)
        result[method] = {"accuracy": float(np.mean([cons.labels[i] == truth[i] for i in cons.labels])),
                          "auc": auc(cons.quality, planted)}
        if method == "majority":
            majority = cons.labels
    items = sorted(majority)
    lab = crowdlab(Votes(sim, labels), items, oof_model(items, texts, majority, labels, seed))
    result["crowdlab"] = {"accuracy": float(np.mean([lab["consensus"][i] == truth[i] for i in items])),
                          "auc": auc(lab["annotator_quality"], planted)}
    return result


def real_votes(votes, truth, labels):
    from annotune.data.annotations import aggregate, votes_frame

    out = {}
    for method in ("majority", "dawid_skene", "mace"):
        cons = aggregate(votes_frame(votes), labels, method, "random", 0)
        out[method] = {"agrees_with_sbic_label": float(np.mean([cons.labels[i] == truth[i] for i in cons.labels])),
                       "offensive_share": float(np.mean([cons.labels[i] == "offensive" for i in cons.labels]))}
    out["sbic_label"] = {"offensive_share": float(np.mean([truth[i] == "offensive" for i in {v[0] for v in votes}]))}
    return out


def summarise(runs):
    out = {}
    for scenario in {r["scenario"] for r in runs}:
        rows = [r for r in runs if r["scenario"] == scenario]
        out[scenario] = {}
        for m in METHODS:
            acc = [r["result"][m]["accuracy"] for r in rows]
            aucs = [r["result"][m]["auc"] for r in rows if r["result"][m]["auc"] is not None]
            out[scenario][m] = {"accuracy_mean": float(np.mean(acc)), "accuracy_sd": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
                                "auc_mean": float(np.mean(aucs)) if aucs else None, "seeds": len(rows)}
    return out


def report(result):
    lines = ["| scenario | " + " | ".join(f"{m} accuracy" for m in METHODS) + " | " + " | ".join(
        f"{m} AUC" for m in METHODS) + " |", "|---|" + "---|" * 2 * len(METHODS)]
    for scenario in ("clean", "random", "systematic"):
        s = result["summary"].get(scenario)
        if not s:
            continue
        cells = [f"{s[m]['accuracy_mean']:.3f} ± {s[m]['accuracy_sd']:.3f}" for m in METHODS]
        cells += ["-" if s[m]["auc_mean"] is None else f"{s[m]['auc_mean']:.3f}" for m in METHODS]
        lines.append(f"| {scenario} ({s[METHODS[0]]['seeds']} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=20, help="seeds per scenario (default: 20)")
    p.add_argument("--report", action="store_true", help="print the table of the saved results")
    args = p.parse_args(argv)
    if args.report:
        print(report(json.loads(OUT.read_text())))
        return
    started = time.time()
    votes, truth, texts, labels = load()
    conf = confusions(votes, truth, labels)
    runs = []
    for seed in range(args.seeds):
        for scenario in ("clean", "random", "systematic"):
            runs.append({"scenario": scenario, "seed": seed,
                         "result": one_run(votes, truth, texts, labels, conf, scenario, seed)})
        print(f"seed {seed}: {time.time() - started:.0f} s", flush=True)
    result = {"votes": len(votes), "items": len({v[0] for v in votes}), "workers": len(conf),
              "real_votes": real_votes(votes, truth, labels), "summary": summarise(runs), "runs": runs,
              "seconds": time.time() - started, "command": " ".join(["bench/annotators.py"] + (argv or sys.argv[1:]))}
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(report(result))


if __name__ == "__main__":
    main()
