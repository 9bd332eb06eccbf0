"""How many labels does the annotator need, and does it need tuning? Quality against the number of
labelled rows, with 95% bands, for TF-IDF, a MiniLM classification head and the tuned LLM, beside
the untuned LLM with examples in its prompt (a flat line), on the same test rows.

    python learning_curve.py --task drug_reviews --sizes 50,100,200,400,600 --seeds 3 --models tfidf,head
    python learning_curve.py --task sbic_offensive --sizes 100,200,400 --seeds 2 --models tuned \\
        --output_dir runs/curve-sbic_offensive                    # the same folder: the cells are added
    python learning_curve.py --task sbic_offensive --sizes 100,200,400,800 --models fewshot \\
        --output_dir runs/curve-sbic_offensive                    # + the few-shot line, chosen on validation
    python learning_curve.py --task drug_reviews --sizes 50,100 --seeds 1 --models tuned --train_args "--epoch 1"

Each seed orders the task's labelled rows (its train and validation splits) so that every prefix is
stratified by label; a size takes the first rows of that order (each size a superset of the
smaller ones), holds a stratified --validation_share of them for validation (the epoch kept and
the decision rule) and trains on the rest: a size counts every labelled row used. Every cell is
scored on the same test rows (the task's test split, at most --max_test, seeded). Arms:
- tfidf: TF-IDF + logistic regression (annotune/labelling/baseline.py; seconds);
- head: train.py --mode classifier on --head_model (minilm-l6; a minute or two a cell on a CPU);
- tuned: train.py on --model_name (smollm2-135m; the default --epoch gives at least 150 optimizer
  steps: minutes a cell on a CPU);
- fewshot: a flat reference, not a curve: the untuned --model_name prompted with examples drawn from
  the largest cell's training rows; each (k, selector) of --few_shot and --shot_selector is scored
  by evaluate.py on that cell's validation rows, and the one best there (--metric) on the test rows
  (its decision rule fit on validation), for --few_shot_seeds seeds (scoring is the slow part:
  similar examples are each row's own, not a shared prefix).
The head and tuned cells are ordinary train.py run folders (<output_dir>/<arm>/seed<k>/n<size>/run),
each then scored by evaluate.py --split test. A killed curve resumes: finished cells are kept.

Writes curve.json, curve.md and curve.png to --output_dir (default runs/curve-<task>): per arm and
size the metric (--metric, macro-F1 by default; any of the label metric registry) with a 95% band
(test rows and seeds resampled together), the paired difference to TF-IDF at the same size, and
where more labels stop paying: the smallest size not worse than the arm's largest by more than
--margin at the lower 95% end, or "not resolvable" when the test rows are too few to tell.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

from annotune.base.cli import UserError, check_ranges, parser, run_cli
from annotune.data.task import DEFAULT_TASK
from annotune.labelling.metrics import LABEL_METRICS

ARMS = ("tfidf", "head", "tuned", "fewshot")
FLAT = "fewshot"  # one cell a seed, drawn as a flat reference
HERE = Path(__file__).resolve().parent
PLAN = "curve_plan.json"


def parse_args(argv=None):
    p = parser(__doc__)
    g = p.add_argument_group("data")
    g.add_argument("--task", default=DEFAULT_TASK, help=f"task name or YAML, or a preprocess.py folder (default: {DEFAULT_TASK})")
    g.add_argument("--sizes", default="50,100,200,400", help="labelled rows per cell, increasing (default: 50,100,200,400)")
    g.add_argument("--seeds", type=int, default=3, help="orders of the labelled rows: one curve each (default: 3)")
    g.add_argument("--validation_share", type=float, default=0.2,
                   help="share of a cell's rows held for its validation (default: 0.2)")
    g.add_argument("--max_test", type=int, default=1000, help="test rows scored, a seeded sample (default: 1000)")
    g = p.add_argument_group("arms")
    g.add_argument("--models", default="tfidf,head", help=f"arms, comma-separated from {', '.join(ARMS)} (default: tfidf,head)")
    g.add_argument("--head_model", default="minilm-l6", help="the head arm's encoder (default: minilm-l6)")
    g.add_argument("--model_name", default=None, help="the tuned arm's base model (default: train.py's)")
    g.add_argument("--train_args", default="", help="more train.py flags for the head and tuned arms, quoted (default: none)")
    g.add_argument("--few_shot", default="4,8", help="the fewshot arm's example counts, comma-separated (default: 4,8)")
    g.add_argument("--shot_selector", default="fixed,stratified,similar",
                   help="the fewshot arm's selectors, comma-separated (default: fixed,stratified,similar)")
    g.add_argument("--few_shot_seeds", type=int, default=1, help="the fewshot arm's seeds (default: 1)")
    g = p.add_argument_group("report")
    g.add_argument("--metric", choices=[m.key for m in LABEL_METRICS], default="macro_f1", help="(default: macro_f1)")
    g.add_argument("--margin", type=float, default=0.02, help="non-inferiority margin of the metric (default: 0.02)")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws of the bands (default: 1000)")
    g.add_argument("--output_dir", help="curve folder (default: runs/curve-<task>); cells already in it are kept")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    check_ranges(p, vars(args), {"seeds": (1, None, "at least 1"), "validation_share": (0.05, 0.5, "in [0.05, 0.5]"),
                                 "max_test": (10, None, "at least 10"), "margin": (0, 1, "in [0, 1]"),
                                 "bootstrap": (10, None, "at least 10"),
                                 "few_shot_seeds": (1, None, "at least 1")})
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes {args.sizes}: comma-separated whole numbers")
    args.models = args.models.split(",")
    if any(m not in ARMS for m in args.models):
        p.error(f"--models {','.join(args.models)}: arms are {', '.join(ARMS)}")
    if FLAT in args.models:
        from annotune.labelling.shots import parse_grid

        try:
            if not parse_grid(args.few_shot, args.shot_selector):
                p.error(f"--few_shot {args.few_shot}: the fewshot arm needs at least one example")
        except UserError as e:
            p.error(str(e))
    return args


def run_step(script: str, argv: list) -> None:
    """A top-level script in its own process (a cell's memory is freed with it); an error stops the curve."""
    subprocess.run([sys.executable, str(HERE / script), *map(str, argv)], check=True)


def task_rows(args) -> tuple:
    """(labelling, labelled rows, test rows) of the task."""
    from annotune.data.examples import sample_rows
    from annotune.labelling.contract import from_source
    from annotune.model.models import DEFAULT_CAUSAL_LM, load_tokenizer

    labelling = from_source(args.task, None, {"template": "auto"}, load_tokenizer(args.model_name or DEFAULT_CAUSAL_LM),
                            lambda task_type: "causal")
    if labelling.reported.type != "classification":
        raise UserError(f"--task {args.task}: learning curves need a classification task")
    labelled = labelling.splits.get("train", []) + labelling.splits.get("validation", [])
    test = sample_rows(labelling.splits.get("test") or [], args.max_test, 0)
    if not test:
        raise UserError(f"--task {args.task} has no test split to score the cells on")
    return labelling, labelled, test


def settle_plan(out: Path, plan: dict) -> None:
    """The curve's plan: written when new, else the folder's, which must agree (cells are comparable)."""
    from annotune.base.files import atomic_write_json

    path = out / PLAN
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        differ = [k for k in plan if k != "sizes" and old.get(k) != plan[k]]
        if differ:
            raise UserError(f"{out} holds a curve with other {', '.join(differ)}; give another --output_dir")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, plan)


def cell_splits(labelled: list, order: list, size: int, share: float, seed: int, test: list) -> dict:
    from annotune.data.examples import stratified_split

    by_id = {r["id"]: r for r in labelled}
    train, validation = stratified_split([by_id[i] for i in order[:size]], share, seed)
    return {"train": train, "validation": validation, "test": test}


def run_tfidf(labelling, splits: dict, seed: int) -> list:
    from annotune.labelling.baseline import TfidfBaseline

    labels = labelling.reported.label_names
    probs = TfidfBaseline(labels, seed).fit(splits["train"], splits["validation"]).probs(splits["test"])
    return [labels[i] for i in probs.argmax(1)]


def cell_data(args, labelling, splits: dict, cell: Path) -> Path:
    """The cell's rows as a dataset folder (written once)."""
    from annotune.base.files import run_manifest
    from annotune.data.examples import split_summary, write_dataset_folder

    data = cell / "data"
    if not (data / "manifest.json").exists():
        write_dataset_folder(data, splits, dict(run_manifest({"task": args.task}, **labelling.source),
                                                splits=split_summary(splits)), num_preview=1)
    return data


def run_fewshot(args, labelling, splits: dict, cell: Path, seed: int) -> tuple:
    """evaluate.py --base_only with every (k, selector) on the cell's validation rows (argmax), then
    the one best on validation on the test rows (its rule fit on validation): its test predictions
    and its name. Scoring the test rows once, not once per (k, selector), is most of the cost."""
    from annotune.base.files import read_jsonl, remove_dir

    data = cell_data(args, labelling, splits, cell)

    def score(stage: str, few_shot: str, selectors: str, *flags) -> Path:
        if not (cell / stage / "comparison.md").exists():  # killed while scoring: scored again
            remove_dir(cell / stage)
            run_step("evaluate.py", ["--base_only", "--dataset_name", data, "--few_shot", few_shot, "--shot_selector",
                                     selectors, *flags, "--baseline", "none", "--bootstrap", 0, "--seed", seed, "--quiet",
                                     *(["--model_name", args.model_name] if args.model_name else []),
                                     "--output_dir", cell / stage])
        return cell / stage

    chosen = score("choose", args.few_shot, args.shot_selector, "--split", "validation", "--decision", "argmax")
    found = [json.loads(m.read_text(encoding="utf-8")) for m in chosen.glob("*/validation/metrics.json")]
    # the best on validation; a tie goes to fewer examples (cheaper to score)
    _, k, selector = min((-m[args.metric], m["shots_asked"], m["shot_selector"]) for m in found if "shots_used" in m)
    score("eval", str(k), selector, "--split", "test")
    scored = next(p.parent for p in (cell / "eval").glob("*/test/metrics.json")
                  if "shots_used" in json.loads(p.read_text(encoding="utf-8")))
    predictions = {r["id"]: r["prediction"] for r in read_jsonl(scored / "predictions.jsonl")}
    return [predictions[r["id"]] for r in splits["test"]], scored.parent.name


def run_trained(args, arm: str, labelling, splits: dict, cell: Path, seed: int) -> list:
    """train.py on the cell's dataset folder, then evaluate.py --split test: the test predictions."""
    from annotune.base.files import read_jsonl, remove_dir

    data = cell_data(args, labelling, splits, cell)
    model = ["--model_name", args.head_model, "--mode", "classifier"] if arm == "head" else \
        (["--model_name", args.model_name] if args.model_name else [])
    manifest = cell / "run" / "manifest.json"
    finished = manifest.exists() and json.loads(manifest.read_text(encoding="utf-8")).get("result")
    scored = list((cell / "eval").rglob("predictions.jsonl")) if finished else []
    if not scored:  # else killed after its evaluation: nothing to redo
        run_step("train.py", ["--dataset_name", data, "--output_dir", cell / "run", "--seed", seed, "--quiet", *model,
                              *args.train_args.split(), *(["--resume_from_checkpoint"] if manifest.exists() else [])])
        adapter = sorted(p for p in (cell / "run").iterdir() if (p / "annotune.json").exists())[-1]
        remove_dir(cell / "eval")
        run_step("evaluate.py", ["--adapters_name", adapter, "--split", "test", "--baseline", "none", "--bootstrap", 0,
                                 "--quiet", "--output_dir", cell / "eval"])
        scored = list((cell / "eval").rglob("predictions.jsonl"))
    predictions = {r["id"]: r["prediction"] for r in read_jsonl(scored[0])}
    return [predictions[r["id"]] for r in splits["test"]]


def run_cell(args, arm: str, labelling, splits: dict, cell: Path, seed: int) -> dict:
    """One cell's test predictions (and, for the fewshot arm, the (k, selector) chosen)."""
    if arm == "tfidf":
        return {"predictions": run_tfidf(labelling, splits, seed)}
    if arm == FLAT:
        predictions, chosen = run_fewshot(args, labelling, splits, cell, seed)
        return {"predictions": predictions, "chosen": chosen}
    return {"predictions": run_trained(args, arm, labelling, splits, cell, seed)}


def run_cells(args, out: Path, labelling, labelled: list, test: list) -> None:
    """Every asked (arm, seed, size) cell not finished yet: its result.json."""
    from annotune.base.files import atomic_write_json
    from annotune.labelling.curves import nested_order

    for arm in args.models:
        flat = arm == FLAT  # one cell a seed, on the largest size's rows
        for seed in range(args.few_shot_seeds if flat else args.seeds):
            order = nested_order(labelled, seed)
            for size in args.sizes[-1:] if flat else args.sizes:
                cell = out / arm / f"seed{seed}" / f"n{size}"
                if (cell / "result.json").exists():
                    continue
                started = time.time()
                splits = cell_splits(labelled, order, size, args.validation_share, seed, test)
                result = run_cell(args, arm, labelling, splits, cell, seed)
                atomic_write_json(cell / "result.json", {
                    "arm": arm, "seed": seed, "size": size, "seconds": time.time() - started,
                    "rows": [r["id"] for r in splits["train"] + splits["validation"]], **result})
                if not args.quiet:
                    print(f"{arm} seed {seed} n={size}: {time.time() - started:.0f} s", flush=True)


def finished_cells(out: Path) -> tuple:
    """Every finished cell in the curve folder (earlier calls' arms and seeds too), per arm only the
    seeds finished at every size of that arm: ({(arm, size): [predictions per seed]}, {arm: {size:
    mean seconds}}, {arm: seeds}, {fewshot seed: the row chosen on validation})."""
    cells = {}
    for path in sorted(out.glob("*/seed*/n*/result.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        cells.setdefault(r["arm"], {}).setdefault(r["seed"], {})[r["size"]] = r
    series, seconds, seeds, chosen = {}, {}, {}, {}
    for arm, by_seed in sorted(cells.items(), key=lambda kv: ARMS.index(kv[0])):
        sizes = sorted({size for done in by_seed.values() for size in done})
        complete = sorted(seed for seed, done in by_seed.items() if set(done) == set(sizes))
        seeds[arm] = len(complete)
        for size in sizes if complete else []:
            series[arm, size] = [by_seed[seed][size]["predictions"] for seed in complete]
            seconds.setdefault(arm, {})[size] = sum(by_seed[k][size]["seconds"] for k in complete) / len(complete)
        chosen.update({seed: by_seed[seed][sizes[-1]]["chosen"] for seed in complete if arm == FLAT})
    return series, seconds, seeds, chosen


def main(argv=None):
    args = parse_args(argv)
    from annotune.base.files import atomic_write_json, atomic_write_text
    from annotune.labelling import curves

    labelling, labelled, test = task_rows(args)
    curves.check_sizes(args.sizes, len(labelled))
    out = Path(args.output_dir or f"runs/curve-{labelling.reported.name}")
    settle_plan(out, {"task": labelling.reported.name, "labels": labelling.reported.label_names,
                      "test_ids": [r["id"] for r in test], "validation_share": args.validation_share})
    run_cells(args, out, labelling, labelled, test)
    series, seconds, seeds, chosen = finished_cells(out)
    gold, labels = [r["label"] for r in test], labelling.reported.label_names
    curve = curves.summarise(curves.resample(series, gold, labels, args.metric, args.bootstrap), flat=FLAT)
    enough = {arm: curves.enough_at(sizes, args.margin) for arm, sizes in curve.items() if arm != FLAT}
    notes = {arm: f"{n} seed{'s' * (n != 1)}" for arm, n in seeds.items()}
    if chosen:
        notes[FLAT] += f"; chosen on validation: {', '.join(chosen[k] for k in sorted(chosen))} (a flat reference)"
    atomic_write_json(out / "curve.json", {"task": labelling.reported.name, "metric": args.metric, "test_rows": len(test),
                                           "seeds": seeds, "curve": {a: {str(s): c for s, c in v.items()}
                                                                     for a, v in curve.items()},
                                           "enough": enough, "seconds": seconds, "fewshot_chosen": chosen})
    table = curves.markdown(curve, enough, args.metric, seconds=seconds, notes=notes, flat=FLAT)
    atomic_write_text(out / "curve.md", table)
    curves.plot(curve, out / "curve.png", args.metric, flat=FLAT,
                flat_label=f"{FLAT}: {', '.join(sorted(set(chosen.values())))}" if chosen else None)
    print(table)
    print(f"-> {out}/curve.json, curve.md, curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
