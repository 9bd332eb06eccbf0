"""Coverage benchmark of estimate.py's intervals on real corpora with real model outputs.

    .venv/bin/python bench/inference.py --label        # train (if missing) and label the corpora (~40 min, 2 cores)
    .venv/bin/python bench/inference.py                # the simulation from the committed corpora (minutes)
    .venv/bin/python bench/inference.py --tasks sst2 --reps 200
    .venv/bin/python bench/inference.py --report         # the tables of docs/results.md

--label trains a MiniLM-L6 classification head per task with train.py (LoRA, class weights,
3 epochs, 256 tokens; SBIC on 2,000 agg.dev rows, IMDB on 1,200 train rows, AG News 1 epoch on
2,000 rows) and labels the
corpus with evaluate.py --predict_file (its decision rule's calibrated probabilities). Each corpus
holds no row the adapter trained or validated on: SBIC agg.tst (groups from dataSource: r/* and
redditMicroagressions = reddit, t/* = twitter, Gab and Stormfront = other), SST-2 train_full
minus the 1,000 training sentences, the two IMDB samples and AG News test.csv minus the rows the
adapter trained or validated on (annotune.json's ids), the Drug Reviews test split. The annotated corpora (ids, gold, prediction,
probabilities) go to bench/results/inference/<task>.csv.gz, so the simulation reruns without them.

The simulation hides the gold labels and repeats --reps times per setting: draw n human labels
(uniform: simple random sample; active: sample.py's Poisson draw on all labels' uncertainty),
then estimate every label's share (SBIC: also per source group, the reddit - twitter difference
and a logistic regression of `offensive` on the group) by naive, classical and ppi, with the
model's probabilities and with its hard labels. Coverage is the share of repetitions whose 90%
interval holds the value on the whole corpus. Settings: n in {50, 100, 200, 400} with n <= N/5
(Drug Reviews: 50 and 100); n = 50 is reported, not judged. Also --plan's accuracy: from a pilot of
100, the n it recommends for a half-width, drawn and measured. Writes bench/results/inference.json
and prints the tables.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TASKS = ("sbic_offensive", "sst2", "imdb", "ag_news", "drug_reviews")
TRAIN_EXTRA = {"sbic_offensive": ["--max_train_samples", "2000"], "imdb": ["--max_train_samples", "1200"],
               "ag_news": ["--max_train_samples", "2000", "--epoch", "1"]}
RESULTS = REPO / "bench" / "results"
SIZES = (50, 100, 200, 400)
ALPHA = 0.1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated (default: all five)")
    p.add_argument("--label", action="store_true", help="train and label the corpora instead of simulating")
    p.add_argument("--report", action="store_true", help="print the markdown tables of the results file")
    p.add_argument("--reps", type=int, default=2000, help="repetitions per setting (default: 2000)")
    p.add_argument("--runs", default="runs/inference", help="where --label keeps adapters and corpora")
    p.add_argument("--out", default=str(RESULTS / "inference.json"), help="results file")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ---------------------------------------------------------------- building and labelling the corpora
def source_group(source: str) -> str:
    if source.startswith("r/") or source == "redditMicroagressions":
        return "reddit"
    return "twitter" if source.startswith("t/") else "other"


def corpus_rows(task: str, run: Path) -> list:
    """[{id, text, gold[, group]}]: the rows the adapter never saw."""
    import csv

    from annotune.data.examples import load_dataset_folder

    rows_by_split = load_dataset_folder(run / "dataset")[0]
    if task == "sst2":
        seen = {" ".join(r["text"].split()) for r in rows_by_split["train"]}
        out = []
        with open(REPO.parent / "shared/data/sst2/train_full.tsv", encoding="utf-8") as handle:
            for i, row in enumerate(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)):
                text = " ".join(row["sentence"].split())
                if text not in seen:
                    out.append({"id": f"train_full:{i}", "text": text,
                                "gold": {"0": "negative", "1": "positive"}[row["label"]]})
        return out
    if task in ("ag_news", "imdb"):  # every row of the task's files that the adapter did not train or validate on
        from annotune.labelling.contract import read_adapter_info
        from annotune.data.examples import build_examples
        from annotune.data.sources import load_source_rows
        from annotune.data.task import load_task

        record = read_adapter_info(sorted(p for p in run.iterdir() if (p / "annotune.json").exists())[0])
        seen = set(record.train_ids) | set(record.split_ids["validation"])
        examples = build_examples(load_task(task), load_source_rows(load_task(task)))[0]
        rows = [{"id": e["id"], "text": e["text"], "gold": e["label"]} for split in examples.values() for e in split
                if e["id"] not in seen]
        assert len(rows) == sum(map(len, examples.values())) - len(seen), "ids of the run and the task differ"
        return rows
    test = [{"id": r["id"], "text": r["text"], "gold": r["label"]} for r in rows_by_split["test"]]
    if task == "sbic_offensive":
        with open(REPO.parent / "shared/data/sbic/SBIC.v2.agg.tst.csv", encoding="utf-8") as handle:
            source = {f"test:{r['']}": r["dataSource"] for r in csv.DictReader(handle)}
        for r in test:
            r["group"] = source_group(source[r["id"]])
    return test


def label_task(task: str, runs: Path) -> None:
    import csv

    import pandas as pd

    run = runs / task
    py = str(REPO / ".venv" / "bin" / "python")
    if not run.is_dir():
        subprocess.run([py, "train.py", "--task", task, "--model_name", "minilm-l6", "--class_weights", "auto",
                        "--epoch", "3", "--max_seq_length", "256", "--output_dir", str(run), "--quiet",
                        *TRAIN_EXTRA.get(task, [])], cwd=REPO, check=True)
    adapter = sorted(p for p in run.iterdir() if (p / "annotune.json").exists())[0]
    corpus = runs / "corpora" / f"{task}.csv"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    rows = corpus_rows(task, run)
    with open(corpus, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    labelled = corpus.with_suffix(".labeled.csv")
    started = time.time()
    subprocess.run([py, "evaluate.py", "--adapters_name", str(adapter), "--predict_file", str(corpus),
                    "--output", str(labelled), "--batch_size", "64", "--quiet"], cwd=REPO, check=True)
    table = pd.read_csv(labelled, dtype=str, keep_default_na=False)
    keep = ["row", "id", "gold"] + (["group"] if "group" in table else []) + ["prediction"] + \
        [c for c in table.columns if c.startswith("prob_")]
    for c in keep:
        if c.startswith("prob_"):
            table[c] = table[c].astype(float).round(6)
    out = RESULTS / "inference" / f"{task}.csv.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    table[keep].to_csv(out, index=False, lineterminator="\n")
    print(f"{task}: {len(table)} rows labelled by {adapter.name} in {time.time() - started:.0f} s -> {out}")


# ---------------------------------------------------------------- the simulation
class Draws:
    """Seeded human samples of one corpus under one design."""

    def __init__(self, corpus, strategy: str, rng):
        from annotune.estimation.designs import inclusion_probabilities

        self.corpus, self.strategy, self.rng = corpus, strategy, rng
        self.strata = np.zeros(corpus.size, dtype=int)
        self._pi = {}
        self._inclusion = lambda n: inclusion_probabilities(corpus, "active", n, self.strata, {"target": "all", "uniform_share": 0.5})[0]

    def pi(self, n: int) -> np.ndarray:
        if n not in self._pi:
            self._pi[n] = self._inclusion(n) if self.strategy == "active" else np.full(self.corpus.size,
                                                                                       n / self.corpus.size)
        return self._pi[n]

    def sample(self, n: int):
        from annotune.estimation.inference import Sample

        size = self.corpus.size
        if self.strategy == "uniform":
            rows = np.sort(self.rng.choice(size, size=n, replace=False))
            return Sample(rows, np.full(n, n / size), "srs", size)
        pi = self.pi(n)
        rows = np.flatnonzero(self.rng.random(size) < pi)
        return Sample(rows, pi[rows], "poisson", size)


def load(task: str):
    from annotune.estimation.findings import Findings
    from annotune.estimation.annotated import read_corpus

    corpus = read_corpus(str(RESULTS / "inference" / f"{task}.csv.gz"))
    gold = np.array([corpus.label_index(v, f"{task} gold") for v in corpus.table["gold"]])
    by = corpus.table["group"].to_numpy() if "group" in corpus.table else None
    regress = ("offensive", {"group": by}) if task == "sbic_offensive" else None
    compare = [("reddit", "twitter")] if by is not None else None
    return corpus, gold, {out: Findings(corpus, out, by, regress, compare=compare) for out in ("probs", "labels")}


def judged(task: str, n: int, size: int) -> bool:
    return n >= 100 and (n <= size / 5 or task == "drug_reviews")


def simulate_setting(est, gold, draws, n, reps, truth, with_ppi_python: bool) -> dict:
    from annotune.estimation.inference import ppi_python_mean

    hits, widths, unknown = {}, {}, {}
    for _ in range(reps):
        sample = draws.sample(n)
        for r in est.run(sample, gold[sample.rows], methods=("classical", "ppi"), alpha=ALPHA):
            key = (r["quantity"].name, r["method"])
            if r["estimate"] is None:  # a group the sample left with under 2 labelled rows
                unknown[key] = unknown.get(key, 0) + 1
                continue
            hits[key] = hits.get(key, 0) + (r["low"] <= truth[key[0]] <= r["high"])
            widths[key] = widths.get(key, 0.0) + (r["high"] - r["low"])
        if with_ppi_python:  # ppi-python's infinite-population interval, overall shares only
            unlabelled = np.ones(est.corpus.size, dtype=bool)
            unlabelled[sample.rows] = False
            for j, label in enumerate(est.corpus.labels):
                y = (gold[sample.rows] == j).astype(float)
                _, (low, high), _ = ppi_python_mean(y, est.f[sample.rows, j], est.f[unlabelled, j], ALPHA)
                key = (f"share of {label}", "ppi_python")
                hits[key] = hits.get(key, 0) + (low <= truth[key[0]] <= high)
                widths[key] = widths.get(key, 0.0) + (high - low)
    out = {}
    for (name, method), h in hits.items():
        known = reps - unknown.get((name, method), 0)
        out.setdefault(name, {})[method] = {"coverage": h / known, "width": widths[(name, method)] / known,
                                            "not_estimable": unknown.get((name, method), 0)}
    return out


def naive_rows(est, truth) -> dict:
    out = {}
    for r in est.run(None, np.zeros(0, dtype=int), methods=("naive",), alpha=ALPHA):
        name = r["quantity"].name
        out[name] = {"covered": bool(r["low"] <= truth[name] <= r["high"]), "width": r["high"] - r["low"],
                     "estimate": r["estimate"], "truth": truth[name]}
    return out


def correlations(est, gold) -> dict:
    out = {}
    for j, label in enumerate(est.corpus.labels):
        out[f"share of {label}"] = float(np.corrcoef(est.f[:, j], (gold == j).astype(float))[0, 1])
    return out


def plan_check(est, gold, draws, truth, reps: int, pilot: int = 100) -> dict:
    """From pilots of `pilot` rows, --plan's n for a half-width 0.75x the pilot's mean ppi half-width;
    then a fresh draw of that n: the mean half-width reached, against the one asked for."""
    from annotune.estimation.inference import plan_n

    name = f"share of {est.corpus.labels[0]}"
    halves = []
    for _ in range(50):
        s = draws.sample(pilot)
        r = next(r for r in est.run(s, gold[s.rows], methods=("ppi",)) if r["quantity"].name == name)
        halves.append((r["high"] - r["low"]) / 2)
    target = 0.75 * float(np.mean(halves))
    out = {"quantity": name, "pilot_n": pilot, "half_width": target}
    for method in ("classical", "ppi"):
        planned, reached = [], []
        for _ in range(reps):
            s = draws.sample(pilot)
            r = next(r for r in est.run(s, gold[s.rows], methods=(method,)) if r["quantity"].name == name)
            n = int(np.ceil(plan_n(s, r["influence"], target, ALPHA, draws.pi(pilot) / pilot)))
            n = min(max(n, 2), est.corpus.size)
            s2 = draws.sample(n)
            r2 = next(r for r in est.run(s2, gold[s2.rows], methods=(method,)) if r["quantity"].name == name)
            planned.append(n)
            reached.append((r2["high"] - r2["low"]) / 2)
        out[method] = {"mean_n": float(np.mean(planned)), "mean_half_width": float(np.mean(reached)),
                       "ratio": float(np.mean(reached) / target)}
    return out


def simulate_task(task: str, reps: int, rng) -> dict:
    corpus, gold, findings = load(task)
    sizes = [n for n in SIZES if n <= corpus.size / 5 or (task == "drug_reviews" and n <= 100)]
    record = {"rows": corpus.size, "labels": corpus.labels, "rho": correlations(findings["probs"], gold),
              "rho_labels": correlations(findings["labels"], gold), "settings": [], "naive": {}}
    for output, est in findings.items():
        truth = est.truth(gold)
        record["truth"] = truth
        record["naive"][output] = naive_rows(est, truth)
        for strategy in ("uniform", "active"):
            draws = Draws(corpus, strategy, rng)
            for n in sizes:
                started = time.time()
                result = simulate_setting(est, gold, draws, n, reps, truth,
                                          with_ppi_python=(strategy == "uniform" and output == "probs"))
                record["settings"].append({"design": strategy, "n": n, "output": output,
                                           "judged": judged(task, n, corpus.size), "quantities": result})
                print(f"  {task} {strategy:7s} n={n:3d} {output:6s} {time.time() - started:5.1f} s", flush=True)
    record["plan"] = {s: plan_check(findings["probs"], gold, Draws(corpus, s, rng), record["truth"], max(reps // 10, 50))
                      for s in ("uniform", "active")}
    return record


def verdicts(results: dict) -> dict:
    """The issue's checks, computed from the records."""
    out = {"coverage_in_band": [], "coverage_out_of_band": []}
    for task, rec in results.items():
        for s in rec["settings"]:
            if not s["judged"]:
                continue
            for name, methods in s["quantities"].items():
                c = methods["ppi"]["coverage"]
                entry = f"{task} {s['design']} n={s['n']} {s['output']} {name}: {c:.3f}"
                out["coverage_in_band" if 0.87 <= c <= 0.93 else "coverage_out_of_band"].append(entry)
    out["coverage_in_band"] = len(out["coverage_in_band"])
    widths = {}
    for task, rec in results.items():
        shares = [q for q in rec["rho"]]
        at200 = [s for s in rec["settings"] if s["design"] == "uniform" and s["n"] == 200 and s["output"] == "probs"]
        if at200:
            q = at200[0]["quantities"]
            ratios = {name: q[name]["ppi"]["width"] / q[name]["classical"]["width"] for name in shares}
            bound = {name: float(np.sqrt(1 - rec["rho"][name] ** 2)) for name in shares}
            widths[task] = {"mean_ratio": float(np.mean(list(ratios.values()))), "ratios": ratios, "sqrt_1_rho2": bound,
                            "within_5pct": all(abs(ratios[k] / bound[k] - 1) <= 0.05 for k in shares)}
    out["width_n200"] = widths
    active = {}
    for task, rec in results.items():
        pairs = [(s, t) for s in rec["settings"] for t in rec["settings"] if s["design"] == "uniform"
                 and t["design"] == "active" and s["n"] == t["n"] and s["output"] == t["output"]]
        u = np.mean([s["quantities"][k]["ppi"]["width"] for s, t in pairs for k in s["quantities"]])
        a = np.mean([t["quantities"][k]["ppi"]["width"] for s, t in pairs for k in s["quantities"]])
        active[task] = {"uniform_mean_width": float(u), "active_mean_width": float(a), "active_not_wider": bool(a <= u)}
    out["active_vs_uniform"] = active
    out["plan"] = {task: {s: {m: rec["plan"][s][m]["ratio"] for m in ("classical", "ppi")} for s in rec["plan"]}
                   for task, rec in results.items()}
    return out


def report(record: dict) -> str:
    """The markdown tables of docs/results.md, from the results file."""
    level = round(100 * (1 - record["alpha"]))
    out = [f"Coverage of {level}% intervals ({record['tasks'][next(iter(record['tasks']))]['reps']} repetitions a "
           "setting) and mean width; ppi = PPI++ under a uniform design, active inference under an active one. "
           "judged: n >= 100 and n <= N/5 (Drug Reviews: n = 100).", "",
           "| corpus (N) | design | n | model output | judged | quantities | ppi coverage: mean [min, max] | "
           "classical coverage: mean [min, max] | ppi width / classical | naive covers |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for task, rec in record["tasks"].items():
        for s in rec["settings"]:
            q = s["quantities"]
            ppi = [m["ppi"]["coverage"] for m in q.values()]
            cla = [m["classical"]["coverage"] for m in q.values()]
            ratio = np.mean([m["ppi"]["width"] / m["classical"]["width"] for m in q.values()])
            naive = rec["naive"][s["output"]]
            covers = sum(naive[k]["covered"] for k in q)
            out.append(f"| {task} ({rec['rows']}) | {s['design']} | {s['n']} | {s['output']} | "
                       f"{'yes' if s['judged'] else 'no'} | {len(q)} | {np.mean(ppi):.3f} [{min(ppi):.3f}, "
                       f"{max(ppi):.3f}] | {np.mean(cla):.3f} [{min(cla):.3f}, {max(cla):.3f}] | {ratio:.2f} | "
                       f"{covers} of {len(q)} |")
    v = record["verdicts"]
    out += ["", "Width at n = 200 (uniform, probabilities): ppi / classical per label share, against "
            "sqrt(1 - rho^2) (rho: correlation of the model's probability with the gold label on the corpus).", "",
            "| corpus | share | rho | sqrt(1 - rho^2) | ppi / classical | ratio / bound |", "|---|---|---|---|---|---|"]
    for task, w in v["width_n200"].items():
        for name, r in w["ratios"].items():
            rho = record["tasks"][task]["rho"][name]
            out.append(f"| {task} | {name} | {rho:.3f} | {w['sqrt_1_rho2'][name]:.3f} | {r:.3f} | "
                       f"{r / w['sqrt_1_rho2'][name]:.3f} |")
    out += ["", "| corpus | mean width, uniform ppi | mean width, active | active not wider |", "|---|---|---|---|"]
    for task, a in v["active_vs_uniform"].items():
        out.append(f"| {task} | {a['uniform_mean_width']:.4f} | {a['active_mean_width']:.4f} | "
                   f"{'yes' if a['active_not_wider'] else 'no'} |")
    out += ["", "--plan from a pilot of 100: mean half-width reached at the recommended n, over the half-width asked.",
            "", "| corpus | design | asked | classical: mean n, reached / asked | ppi: mean n, reached / asked |",
            "|---|---|---|---|---|"]
    for task, rec in record["tasks"].items():
        for design, pl in rec["plan"].items():
            out.append(f"| {task} | {design} | {pl['half_width']:.4f} | {pl['classical']['mean_n']:.0f}, "
                       f"{pl['classical']['ratio']:.3f} | {pl['ppi']['mean_n']:.0f}, {pl['ppi']['ratio']:.3f} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    args = parse_args(argv)
    tasks = args.tasks.split(",")
    if args.report:
        print(report(json.loads(Path(args.out).read_text())))
        return
    if args.label:
        for task in tasks:
            label_task(task, REPO / args.runs)
        return
    from annotune.base.files import atomic_write_json

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results = results.get("tasks", results)
    rng = np.random.default_rng(args.seed)
    for task in tasks:
        started = time.time()
        results[task] = simulate_task(task, args.reps, rng)
        results[task]["seconds"] = round(time.time() - started, 1)
        results[task]["reps"] = args.reps
    summary = verdicts(results)
    record = {"alpha": ALPHA, "tasks": results, "verdicts": summary}
    atomic_write_json(out, record)
    print(report(record))


if __name__ == "__main__":
    main()
