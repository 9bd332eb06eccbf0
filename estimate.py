"""Estimate what a corpus says, with confidence intervals that stay valid although the model errs:
the model's labels on every row plus the human labels of a sample drawn by sample.py.

    python estimate.py --corpus labeled.csv --sheet labeled.sheet.csv --design labeled.design.json
    python estimate.py --corpus labeled.csv --sheet s1.csv s2.csv --design labeled.design.add100.json \\
        --by source --regress offensive --on source --alpha 0.05
    python estimate.py --corpus labeled.csv --sheet labeled.sheet.csv --design labeled.design.json --plan 0.02
    python estimate.py --corpus labeled.csv --crossfit runs/kfold --id_column id       # cross-fitted (below)

For each quantity (every label's share; with --by, its share in each group and the differences
between groups; with --regress, the coefficients of a logistic or linear regression of that label
on corpus columns) three estimates with (1 - alpha) intervals, side by side:
- naive: the model's labels as if they were gold (biased by its errors; the interval ignores them);
- classical: the human sample alone;
- ppi: prediction-powered (PPI++ with its weight lam tuned; inverse-probability weighted under an
  active design), valid whatever the model's quality, narrower than classical when the model is good.
The estimand is the value on this corpus, so the intervals carry the finite-population
correction (annotune/estimation/inference.py). "effective n" is how many human labels alone (a simple random
sample) would give ppi's interval. --plan H prints how many human labels reach a half-width of H
with and without the model. Writes estimates.json, estimates.md and forest.png to --output_dir
(default <corpus>.estimates/; never overwritten).

Assumptions: the sample was drawn from this corpus by the design file's draw (the evaluation split
of a training run is not such a sample); rows left unlabelled on the sheet are dropped, counted,
and assumed missing at random.

Cross-fitted (--crossfit RUN --id_column C): the labelled rows of a train.py --folds K run are the
human sample, with no fresh one: each is found in the corpus by its id in column C, and the model's
output on it is its out-of-fold probability (oof.csv), on every other row the fold models' mean
(the corpus labelled by evaluate.py --predict_file --ensemble RUN). It assumes the labelled rows
are a simple random sample of the corpus, and that the K fold models are alike (their corpus means'
spread is reported, and warned of when large against the interval). The first is tested: each fold
model's scores on its held-out rows against its scores on the unlabelled rows (Kolmogorov-Smirnov,
Bonferroni, alpha 0.01); a rejection is refused unless --assume_random_sample. A labelled set that is
not a random sample of this corpus (balanced per label, keyword-filtered, another period) needs a
fresh human sample (sample.py) instead (annotune/estimation/crossfit.py).
"""
import sys

import numpy as np

from annotune.base.cli import UserError, add_parameters, check_ranges, note_ignored, parser, run_cli
from annotune.estimation.estimators import describe, parameters


def parse_args(argv=None):
    p = parser(__doc__)
    g = p.add_argument_group("inputs")
    g.add_argument("--corpus", required=True, help="annotated corpus CSV (evaluate.py --predict_file's output)")
    g.add_argument("--sheet", nargs="+", help="returned annotation sheet(s) from sample.py")
    g.add_argument("--design", help="the design file of the draw (of the union, after a top-up)")
    g.add_argument("--label_column", default="label", help="sheet column holding the human label (default: label)")
    g = p.add_argument_group("cross-fitted (instead of --sheet and --design)")
    g.add_argument("--crossfit", metavar="RUN", help="a train.py --folds K run: its labelled rows and their "
                                                     "out-of-fold probabilities are the human sample")
    g.add_argument("--id_column", help="with --crossfit: the corpus column holding the labelled rows' ids")
    g.add_argument("--assume_random_sample", action="store_true",
                   help="with --crossfit: go on when the random-sample check rejects (default: refuse)")
    g = p.add_argument_group("quantities")
    g.add_argument("--by", help="corpus column: each label's share per group and the differences between groups")
    g.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"),
                   help="with --by: the difference A - B of each label's share (repeatable; default: every pair "
                        "for up to 4 groups, else each group against the largest)")
    g.add_argument("--regress", help="a label: regress its indicator on --on columns")
    g.add_argument("--on", nargs="+", help="corpus columns of the regression (numbers, or categories -> indicators)")
    g.add_argument("--link", choices=["logistic", "linear"], default="logistic", help="regression (default: logistic)")
    g.add_argument("--drop_blank", action="store_true",
                   help="regress on the rows whose every --on cell has a value: the estimand becomes the regression "
                        "in that part of the corpus (default: blank --on cells are refused)")
    g = p.add_argument_group("method", "estimators (annotune/estimation/estimators.py): " + describe().replace("%", "%%"))
    g.add_argument("--alpha", type=float, default=0.1, help="1 - confidence level (default: 0.1, 90%% intervals)")
    add_parameters(g, parameters())  # each estimator's own settings
    g.add_argument("--plan", type=float, metavar="HALF_WIDTH", help="human labels needed for this half-width")
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", help="results folder (default: <corpus>.estimates); never overwritten")
    args = p.parse_args(argv)
    check_ranges(p, vars(args), {"alpha": (1e-6, 0.5, "in (0, 0.5]"), "plan": (1e-6, 1e6, "> 0")})
    if args.crossfit and (args.sheet or args.design or not args.id_column):
        p.error("--crossfit RUN goes with --id_column COLUMN, instead of --sheet and --design")
    if not args.crossfit and not (args.sheet and args.design):
        p.error("give --sheet and --design (a sample.py draw), or --crossfit RUN --id_column COLUMN")
    if not args.crossfit:
        note_ignored(p, vars(args), ("id_column", "assume_random_sample"), "they go with --crossfit")
    if args.compare and not args.by:
        p.error("--compare needs --by COLUMN")
    if bool(args.regress) != bool(args.on):
        p.error("--regress LABEL and --on COLUMN [COLUMN ...] go together")
    if args.drop_blank and not args.regress:
        p.error("--drop_blank goes with --regress")
    return args


def read_sheets(paths, column: str, corpus, design) -> tuple:
    """{corpus position: human label index} of the labelled rows, and the count left unlabelled.
    A row id may be written 7, "7", " 7" or 7.0; anything else is refused."""
    from annotune.estimation.annotated import row_id
    from annotune.base.tables import read_frame

    drawn = set(design["drawn"])
    position = dict(zip(design["drawn"], corpus.positions(design["drawn"], "--design")))
    labelled, blank, seen = {}, 0, set()
    for path in paths:
        sheet = read_frame(path, "--sheet")
        for need in ("row", column):
            if need not in sheet.columns:
                raise UserError(f"--sheet {path} has no {need!r} column (columns: {list(sheet.columns)})")
        for number, (text, value) in enumerate(zip(sheet["row"], sheet[column]), start=2):
            row = row_id(text)
            if row is None:
                raise UserError(f"--sheet {path} line {number}: row {text!r} is not a row number") from None
            if row not in drawn:
                raise UserError(f"--sheet {path} line {number}: row {row} was not drawn by --design "
                                f"{design.get('corpus')}'s draw; estimates need the design's own rows")
            if row in seen:
                raise UserError(f"--sheet {path} line {number}: row {row} is labelled twice")
            seen.add(row)
            if not value.strip():
                blank += 1
                continue
            labelled[int(position[row])] = corpus.label_index(value, f"--sheet {path} line {number}")
    return labelled, blank + len(drawn - seen)


def plans(results, plan_n, corpus, half: float) -> dict:
    """Per quantity: the human labels that reach half-width `half` (plan_n(influence) -> n)."""
    out = {}
    for r in results:
        if r["method"] in ("classical", "ppi") and r["influence"] is not None:
            out.setdefault(r["quantity"].name, {})[r["method"]] = int(np.ceil(min(plan_n(r["influence"]), corpus.size)))
    return out


def drawn_sample(args, corpus) -> tuple:
    """sample.py's draw: (sample, gold, missing, summary entries, plan_n)."""
    from annotune.estimation.designs import read_design, sample_of, sampling_design

    design = read_design(args.design, corpus)
    labelled, missing = read_sheets(args.sheet, args.label_column, corpus, design)
    sample = sample_of(design, corpus, labelled)
    shape = np.array(design["pi"]) / max(design["expected_n"], 1e-12)
    plan = sampling_design(design["strategy"]).plan
    return (sample, np.array([labelled[i] for i in sample.rows]), missing,
            {"design": str(args.design), "strategy": design["strategy"]},
            lambda influence: plan(sample, influence, args.plan, args.alpha, shape))


def crossfit_sample(args, corpus) -> tuple:
    """--crossfit: (the cross-fitted corpus, sample, gold, summary entries, plan_n)."""
    from annotune.estimation import crossfit, inference
    from annotune.labelling.ensemble import read_run

    run = read_run(args.crossfit, "--crossfit")
    fits = crossfit.from_run(corpus, run, args.id_column)
    check = crossfit.check_random_sample(fits)
    if check["reject"] and not args.assume_random_sample:
        raise UserError(f"--crossfit {run.folder}: its labelled rows do not look like a random sample of this corpus "
                        f"({check['test']}: p = {check['p_value']:.2g} < {check['alpha']}); draw a human sample with "
                        "sample.py, or pass --assume_random_sample")
    sample = fits.sample()
    said = "rejected, assumed anyway (--assume_random_sample)" if check["reject"] else "not rejected (no proof)"
    notes = [f"Cross-fitted: the {len(fits.rows)} labelled rows of {run.folder} ({run.k} folds), each with its "
             "out-of-fold probability, the fold models' mean on the other rows. Assumed: the labelled rows are a "
             f"simple random sample of this corpus (checked: {check['test']}, p = {check['p_value']:.3g}: {said}), "
             "and the fold models are alike (their corpus means: estimates.json, crossfit.spread). ppi's 0/1 "
             "labels (--model_output labels) are the argmax of these outputs; naive counts the corpus file's labels."]
    info = {"design": None, "strategy": "cross-fitted", "notes": notes,
            "crossfit": {"run": str(run.folder), "fingerprint": run.fingerprint, "folds": run.k,
                         "random_sample_check": check, "spread": crossfit.spread(fits, corpus.labels)}}
    return (fits.corpus(corpus), sample, fits.gold, info,
            lambda influence: inference.plan_n(sample, influence, args.plan, args.alpha))


def warn_spread(results, spread: dict) -> None:
    """Cross-prediction assumes the fold models alike: warn where their corpus means lie further
    apart than the share's interval is wide (half-width)."""
    for r in results:
        q = r["quantity"]
        if r["method"] == "ppi" and q.kind == "share" and not q.group and q.label in spread and r["estimate"] is not None:
            half = (r["high"] - r["low"]) / 2
            if spread[q.label]["range"] > half:
                print(f"warning: the fold models' shares of {q.label} on the corpus range over "
                      f"{spread[q.label]['range']:.3f}, more than the interval's half-width {half:.3f}: they differ, "
                      "and cross-prediction assumes them alike (more rows per fold make them so); with probabilities "
                      "the estimate stays unbiased (the ensemble is their mean), with 0/1 labels it may not",
                      file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    from pathlib import Path

    from annotune.base.files import ensure_new_path
    from annotune.estimation.findings import Findings, effective_sizes, write_estimates
    from annotune.estimation.annotated import read_corpus

    corpus = read_corpus(args.corpus)
    out_dir = Path(args.output_dir or f"{Path(args.corpus).with_suffix('')}.estimates")
    inputs = [args.corpus, *(args.sheet or []), *filter(None, [args.design])]
    ensure_new_path(out_dir, what="--output_dir", inputs=inputs, can_overwrite=False, kind="dir")
    missing = 0
    if args.crossfit:
        corpus, sample, gold, info, plan_n = crossfit_sample(args, corpus)
    else:
        sample, gold, missing, info, plan_n = drawn_sample(args, corpus)
    by = corpus.categories(args.by, "--by") if args.by else None
    regress = (args.regress, {c: corpus.column(c, "--on") for c in args.on}) if args.regress else None
    options = {param.name: getattr(args, param.name) for param in parameters()}
    findings = Findings(corpus, options.get("model_output", "probs"), by, regress,
                        "identity" if args.link == "linear" else "logistic", args.compare, labelled=sample.rows,
                        drop_blank=args.drop_blank, options=options)
    if missing:
        print(f"warning: {missing} drawn rows have no human label and are left out; the intervals assume they "
              "are missing at random", file=sys.stderr)
    results = findings.run(sample, gold, alpha=args.alpha)
    if args.crossfit:
        warn_spread(results, info["crossfit"]["spread"])
    n_eff = effective_sizes(results, len(sample.rows), corpus.size)
    planned = plans(results, plan_n, corpus, args.plan) if args.plan else None
    summary = {"corpus": str(args.corpus), "corpus_sha256": corpus.sha256, "corpus_rows": corpus.size, **info,
               "labelled": len(sample.rows), "unlabelled_dropped": missing, "alpha": args.alpha,
               "model_output": findings.output, "options": findings.options,
               "link": args.link if regress else None, "plan_half_width": args.plan,
               "regression_rows": findings.regression_rows}
    write_estimates(out_dir, summary, results, n_eff, planned)
    print(f"{len(sample.rows)} human labels + the model's on {corpus.size} rows -> {out_dir}/estimates.md")
    for r in results:
        if r["method"] == "ppi" and r["quantity"].kind != "coefficient" and not r["quantity"].group:
            name = r["quantity"].name
            print(f"  {name}: {r['estimate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]  effective n {n_eff[name]:.0f}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
