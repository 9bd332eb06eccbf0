"""Labelling in bf16 against fp32 on this CPU: speed of a 2,000-row corpus, agreement, and quality.

    .venv/bin/python bench/label_precision.py             # trains 4 adapters if missing (~25 min), then measures
    .venv/bin/python bench/label_precision.py --report    # the tables of bench/results/label_precision.json

Adapters: SmolLM2-135M tuned by train.py's defaults on a budget per task (TASKS: sbic_offensive
1,000 rows and drug_reviews 600 rows for 2 epochs, sst2 and imdb 240 rows for 1; examples longer
than 256 tokens left out, --long_examples drop, as the documented adapters were trained), kept in --runs. They train under train.py's --cpu_bf16 auto, so each adapter's own decision
rule records the precision it was fit in.

Speed: a 2,000-row corpus of short posts (SBIC agg.tst) and one of reviews (drug_reviews' rows,
repeated to 2,000), each labelled by corpus.annotate_file exactly as `evaluate.py --predict_file`
does (chunks, parts), with --cpu_bf16 off and on, in this process, one after the other, after a
warm-up. bf16 labels with the adapter's rule, its near ties rescored in fp32 (annotator.TIE_MARGIN);
fp32 without a rule, so its file keeps the raw probabilities any rule is applied to exactly (a rule
is one small matrix operation). Reported: examples/s of each, the share of rows bf16 rescored in
fp32, the share of rows given the same label (the adapter's rule for both; and the rule refit on
200 validation rows in each precision, what evaluate.py does, with one more untimed bf16 call), the
largest difference of the file's probabilities, and seed-style generation (greedy, stops at EOS,
fp32, the seeds' way) on the first 200 rows for the ratio. On the posts, one more call per
precision under cProfile: the share of its time outside the model's forwards.

Quality: on each task's test rows (at most --test_rows), macro-F1 in fp32 and in bf16 from the same
adapter (rule refit in each precision), with the paired bootstrap difference bf16 - fp32 and its
95% CI. Writes bench/results/label_precision.json and prints the tables.
"""
import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# training rows, epochs and validation rows of each task's adapter: the two speed corpora's adapters
# trained enough to be sure of most rows (a weak adapter's near ties are many), the others small
TASKS = {"sbic_offensive": (1000, 2, 200), "drug_reviews": (600, 2, 200), "sst2": (240, 1, 120), "imdb": (240, 1, 120)}
SPEED = {"sbic posts": "sbic_offensive", "drug reviews": "drug_reviews"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)} (default: all)")
    p.add_argument("--test_rows", type=int, default=400, help="test rows per task for quality (default: 400)")
    p.add_argument("--corpus_rows", type=int, default=2000, help="rows of each speed corpus (default: 2000)")
    p.add_argument("--runs", default="runs/bench/label_precision", help="adapters and corpora (default: %(default)s)")
    p.add_argument("--out", default="bench/results/label_precision.json", help="results (default: %(default)s)")
    p.add_argument("--parts", default="speed,quality", help="what to measure (default: both); the other part's "
                                                            "results already in --out are kept")
    p.add_argument("--report", action="store_true", help="print the tables of --out")
    return p.parse_args(argv)


def adapter_for(task: str, runs: Path) -> Path:
    from annotune.model.adapters import adapters_in

    run, (rows, epochs, val) = runs / task, TASKS[task]
    if not run.is_dir():
        subprocess.run([sys.executable, "train.py", "--task", task, "--max_train_samples", str(rows), "--epoch",
                        str(epochs), "--max_seq_length", "256", "--long_examples", "drop", "--max_eval_samples", str(val), "--quiet",
                        "--output_dir", str(run)], cwd=REPO, check=True)
    return adapters_in(run)[0]


def annotator_for(adapter: Path, cpu_bf16: str):
    from annotune.labelling.annotator import load_annotator
    from annotune.labelling.contract import from_adapter

    return load_annotator(from_adapter(adapter), cpu_bf16=cpu_bf16)


def rows_of(adapter: Path):
    from annotune.labelling.contract import read_adapter_info
    from annotune.data.examples import load_dataset_folder

    return load_dataset_folder(read_adapter_info(adapter).dataset)[0]


def refit(annotator, rows_by_split):
    from annotune.labelling.decision import fit_rule, probs_matrix
    from annotune.data.examples import sample_rows

    val = sample_rows(rows_by_split["validation"], 200, 42)
    preds = annotator.predict(val, "score", 16)
    return fit_rule(probs_matrix(preds, annotator.spec.label_names), [r["label"] for r in val],
                    annotator.spec.label_names, precision=annotator.precision)


# ---------------------------------------------------------------- speed on a corpus
def write_corpus(path: Path, source: str, n: int) -> None:
    from annotune.data.examples import build_examples
    from annotune.data.sources import load_source_rows
    from annotune.data.task import load_task

    if source == "sbic posts":
        with open(REPO.parent / "shared/data/sbic/SBIC.v2.agg.tst.csv", encoding="utf-8") as handle:
            texts = [r["post"] for r in csv.DictReader(handle)]
    else:
        spec = load_task("drug_reviews")
        texts = [e["text"] for rows in build_examples(spec, load_source_rows(spec))[0].values() for e in rows]
    texts = [texts[i % len(texts)] for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["post_id", "body"])
        writer.writerows([[f"r{i}", t] for i, t in enumerate(texts)])


def label_corpus(annotator, corpus: Path, out: Path, rule) -> tuple:
    """(seconds, rows) of corpus.annotate_file with this annotator and rule, as evaluate.py runs it."""
    from annotune.labelling.corpus import PartStore, annotate_file
    from annotune.base.files import remove_dir
    from annotune.labelling.contract import of_spec

    for stale in (out, out.with_name(out.name + ".parts")):
        remove_dir(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    store = PartStore(out, {"bench": annotator.precision})
    store.open()
    started = time.perf_counter()
    result = annotate_file(of_spec(annotator.spec, rule=rule), annotator, str(corpus), "body", store, 16, "score", 256,
                           0, 1, 0, progress=False)
    store.join(out, result["columns"], result["total"])
    seconds = time.perf_counter() - started
    with open(out, newline="", encoding="utf-8") as handle:
        return seconds, list(csv.DictReader(handle))


def profiled(annotator, corpus: Path, out: Path, rule) -> dict:
    """One labelling call under cProfile: the share of its time outside the model's forwards
    (lm.score_completions' batches: tokenising, prompts, the rule, parts and the join)."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    seconds, _ = label_corpus(annotator, corpus, out, rule)
    profile.disable()
    stats = pstats.Stats(profile)
    model = sum(v[3] for k, v in stats.stats.items() if k[2] in ("_score_batch_packed", "_score_batch_stepwise",
                                                                  "run_prefix"))
    rest = sorted(((v[3], f"{Path(k[0]).name}:{k[2]}") for k, v in stats.stats.items()
                   if "annotune" in k[0] and k[2] not in ("_score_batch_packed", "_score_batch_stepwise", "run_prefix",
                                                          "score_completions", "score", "predict", "annotate_file",
                                                          "label_corpus", "_labelled")), reverse=True)[:6]
    return {"seconds": round(seconds, 1), "model_s": round(model, 1),
            "non_model_share": round(1 - model / seconds, 3), "top_annotune_cumulative_s": [(n, round(t, 2)) for t, n in rest]}


def speed(source: str, adapter: Path, runs: Path, n: int, profile: bool) -> dict:
    import numpy as np

    from annotune.labelling.decision import DecisionRule
    from annotune.labelling.contract import read_adapter_info

    corpus = runs / "corpora" / f"{source.replace(' ', '_')}.csv"
    write_corpus(corpus, source, n)
    rows_by_split, out, files, rules = rows_of(adapter), {}, {}, {}
    for cpu_bf16 in ("off", "on"):
        annotator = counting_ties(annotator_for(adapter, cpu_bf16))
        labels = annotator.spec.label_names
        own = DecisionRule.from_dict(read_adapter_info(adapter).decision_rule, labels)
        annotator.predict([{"text": "warm-up"}] * 16, "score", 16)
        # fp32 without a rule: its file keeps the raw probabilities any rule is applied to exactly
        # below. bf16 with the adapter's rule, as evaluate.py labels: its near ties are judged under it.
        rule = own if cpu_bf16 == "on" else None
        annotator.rechecked = 0
        seconds, files[cpu_bf16] = label_corpus(annotator, corpus, runs / "labelled" / f"{source}-{cpu_bf16}.csv", rule)
        out[cpu_bf16] = {"seconds": round(seconds, 1), "examples_per_s": round(n / seconds, 2),
                         "precision": annotator.precision, "rescored_in_fp32": annotator.rechecked / n}
        rules[cpu_bf16] = refit(annotator, rows_by_split)
        if profile:
            out[cpu_bf16]["profile"] = profiled(annotator, corpus, runs / "labelled" / f"{source}-{cpu_bf16}-p.csv", rule)
    # bf16 once more under the rule refit on bf16 validation scores (evaluate.py's refit), untimed
    _, files["refit"] = label_corpus(annotator, corpus, runs / "labelled" / f"{source}-on-refit.csv", rules["on"])
    fp32 = np.array([[float(r[f"prob_{l}"]) for l in labels] for r in files["off"]])

    def fp32_under(rule):
        return rule.apply(fp32) if rule.fitted else (fp32, [labels[i] for i in fp32.argmax(axis=1)])

    def agree(rule, rows):
        return float(np.mean([a == r["prediction"] for a, r in zip(fp32_under(rule)[1], rows)]))

    bf16 = np.array([[float(r[f"prob_{l}"]) for l in labels] for r in files["on"]])
    generation = seed_style(annotator_for(adapter, "off"), corpus, min(200, n))
    return {"rows": n, "adapter": adapter.name, "trained": training_budget(adapter), "labels": labels,
            "own_rule": own.to_dict(), "fp32": out["off"], "bf16": out["on"],
            "speedup": round(out["off"]["seconds"] / out["on"]["seconds"], 2),
            "same_label_one_rule": agree(own, files["on"]), "same_label_rule_refit": agree(rules["off"], files["refit"]),
            "refit_rules_applied": [rules["off"].fitted, rules["on"].fitted],
            "max_prob_diff": float(np.abs(fp32_under(own)[0] - bf16).max()), "generate_eos_fp32": generation,
            "bf16_over_generation": round(out["on"]["examples_per_s"] / generation["examples_per_s"], 1)}


def counting_ties(annotator):
    """The annotator, counting the rows it rescored in fp32 as near ties (Annotator.near_ties)."""
    inner = getattr(annotator, "inner", annotator)
    find = inner.near_ties

    def counted(scores, offsets=None):
        ties = find(scores, offsets)
        inner.rechecked += len(ties)
        return ties

    inner.near_ties, inner.rechecked = counted, 0
    return inner


def training_budget(adapter: Path) -> dict:
    """The examples and epochs the adapter trained on (annotune.json), its validation macro-F1."""
    from annotune.labelling.contract import read_adapter_info

    record = read_adapter_info(adapter)
    return {"examples": len(record.train_ids or []), "epochs": record.epoch,
            "validation_macro_f1": (record.validation_metrics or {}).get("macro_f1")}


def seed_style(annotator, corpus: Path, n: int) -> dict:
    with open(corpus, newline="", encoding="utf-8") as handle:
        texts = [r["body"] for r in csv.DictReader(handle)][:n]
    prompts, _ = annotator.fit_prompts([{"text": t} for t in texts], 80)
    annotator.generate(prompts[:16], 80, 16)  # warm-up
    started = time.perf_counter()
    annotator.generate(prompts, 80, 16)
    seconds = time.perf_counter() - started
    return {"rows": n, "seconds": round(seconds, 1), "examples_per_s": round(n / seconds, 2)}


# ---------------------------------------------------------------- quality on test rows
def quality(task: str, adapter: Path, test_rows: int) -> dict:
    from annotune.labelling.annotator import evaluate_rows
    from annotune.data.examples import pick_split
    from annotune.labelling.contract import of_spec
    from annotune.labelling.metrics import macro_f1, paired_difference

    rows_by_split = rows_of(adapter)
    rows = pick_split(rows_by_split, "test", test_rows, 42)
    preds, out = {}, {}
    for cpu_bf16 in ("off", "on"):
        annotator = annotator_for(adapter, cpu_bf16)
        labelling = of_spec(annotator.spec, rule=refit(annotator, rows_by_split))  # the tasks here have no merge
        metrics, records = evaluate_rows(labelling, annotator, rows, "score", 16, n_boot=0)
        preds[cpu_bf16] = [r["prediction"] for r in records]
        out[annotator.precision] = round(metrics["macro_f1"], 4)
    gold, labels = [r["label"] for r in rows], annotator.spec.label_names
    diff = paired_difference(gold, preds["on"], preds["off"], lambda g, p: macro_f1(g, p, labels), 2000, 0)
    return {"test_rows": len(rows), "macro_f1": out, "bf16_minus_fp32": diff,
            "same_label": sum(a == b for a, b in zip(preds["on"], preds["off"])) / len(rows)}


def report(record: dict) -> str:
    out = [f"Machine: {record['machine']}.", "",
           "| corpus (rows) | adapter trained on | fp32 examples/s | bf16 examples/s | bf16 / fp32 | bf16 rows "
           "rescored in fp32 | same label, one rule | same label, rule refit in each | max probability difference | "
           "seed-style generate (EOS, fp32) examples/s | bf16 / generate |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for source, s in record["speed"].items():
        trained = s.get("trained", {})
        out.append(f"| {source} ({s['rows']}) | {trained.get('examples')} examples x {trained.get('epochs')} "
                   f"epochs | {s['fp32']['examples_per_s']:.2f} | {s['bf16']['examples_per_s']:.2f} | "
                   f"{s['speedup']:.2f}x | {s['bf16'].get('rescored_in_fp32', 0):.1%} | "
                   f"{s['same_label_one_rule']:.4f} | {s['same_label_rule_refit']:.4f} | "
                   f"{s['max_prob_diff']:.4f} | {s['generate_eos_fp32']['examples_per_s']:.2f} | "
                   f"{s['bf16_over_generation']:.1f}x |")
    out += ["", "A labelling call under cProfile (the posts): time in the model's forwards and the share outside them.", "",
            "| corpus | precision | seconds (profiled) | in the model's forwards | outside them | largest annotune "
            "cumulative times |", "|---|---|---|---|---|---|"]
    for source, s in record["speed"].items():
        for key in ("fp32", "bf16"):
            prof = s[key].get("profile")
            if prof:
                top = ", ".join(f"{n} {t:.1f} s" for n, t in prof["top_annotune_cumulative_s"][:4])
                out.append(f"| {source} | {s[key]['precision']} | {prof['seconds']:.1f} | {prof['model_s']:.1f} s | "
                           f"{prof['non_model_share']:.1%} | {top} |")
    out += ["", "| task | test rows | macro-F1 fp32 | macro-F1 bf16 | bf16 - fp32 [95% CI] | same label |",
            "|---|---|---|---|---|---|"]
    for task, q in record["quality"].items():
        d = q["bf16_minus_fp32"]
        out.append(f"| {task} | {q['test_rows']} | {q['macro_f1']['fp32']:.4f} | {q['macro_f1']['bf16-autocast']:.4f} | "
                   f"{d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] | {q['same_label']:.4f} |")
    return "\n".join(out) + "\n"


def cpu_name() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None):
    args = parse_args(argv)
    out = REPO / args.out
    if args.report:
        print(report(json.loads(out.read_text())))
        return 0
    from annotune.base.cli import quiet_libraries
    from annotune.base.files import atomic_write_json
    from annotune.model.models import native_bf16_cpu

    quiet_libraries()
    runs = REPO / args.runs
    adapters = {t: adapter_for(t, runs) for t in args.tasks.split(",")}
    record = json.loads(out.read_text()) if out.exists() else {"speed": {}, "quality": {}}
    record.update(machine=f"{cpu_name()}, {os.cpu_count()} cores, native bf16: {native_bf16_cpu()}")
    parts = args.parts.split(",")
    for source, task in SPEED.items():
        if task in adapters and "speed" in parts:
            record["speed"][source] = speed(source, adapters[task], runs, args.corpus_rows, source == "sbic posts")
            record["speed"][source]["command"] = " ".join(sys.argv)
            atomic_write_json(out, record)  # each result kept as it comes
            print(f"speed {source}: {record['speed'][source]['speedup']}x", flush=True)
    for task, adapter in adapters.items():
        if "quality" in parts:
            record["quality"][task] = dict(quality(task, adapter, args.test_rows), command=" ".join(sys.argv))
            atomic_write_json(out, record)
            print(f"quality {task}: {record['quality'][task]['bf16_minus_fp32']}", flush=True)
    print(report(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
