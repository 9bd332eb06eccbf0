"""Choose the corpus rows that humans label, for estimate.py: a seeded draw from an annotated
corpus (evaluate.py --predict_file's output), written as a sheet for annotators and a design file.

    python sample.py --corpus labeled.csv --n 200                           # simple random sample
    python sample.py --corpus labeled.csv --n 200 --stratify_by source      # stratified, proportional
    python sample.py --corpus labeled.csv --n 200 --strategy active --target offensive
    python sample.py --corpus labeled.csv --add 100 --design labeled.design.json   # top up a draw

uniform draws n rows without replacement. active draws each row independently with a probability
that grows with the model's uncertainty about --target (or about all labels), mixed with a uniform
floor (--uniform_share), so the same number of human labels gives narrower intervals where the
model is unsure (annotune/designs.py has the formulas). The sheet (default <corpus>.sheet.csv) has
the row id, the text and an empty `label` column to fill in, in random order; the model's label is
left out unless --show_prediction (seeing it anchors annotators). The design file (default
<corpus>.design.json) holds the strategy, the seed, every row's inclusion probability and the
corpus file's SHA-256; estimate.py needs it. --add N draws N more rows (expected, for active) that
no earlier phase drew, and writes a sheet of the new rows and a new design of the union. Nothing
is ever overwritten.
"""
import json
import sys

import numpy as np

from annotune.cli import UserError, check_ranges, parser, run_cli


def parse_args(argv=None):
    p = parser(__doc__)
    g = p.add_argument_group("input")
    g.add_argument("--corpus", required=True, help="annotated corpus CSV (evaluate.py --predict_file --output)")
    g.add_argument("--text_column", default="text", help="corpus column shown to annotators (default: text)")
    g = p.add_argument_group("the draw")
    g.add_argument("--n", type=int, help="rows to draw (active: the expected number)")
    g.add_argument("--strategy", choices=["uniform", "active"], default="uniform",
                   help="uniform: simple random sample; active: Poisson draw weighted by the model's "
                        "uncertainty (default: uniform)")
    g.add_argument("--target", default="all", help="active: the label whose share matters most, or 'all' (default: all)")
    g.add_argument("--uniform_share", type=float, default=0.5,
                   help="active: share of the inclusion probability spread uniformly, a floor for every row; "
                        "0 < value <= 1 (default: 0.5)")
    g.add_argument("--stratify_by", help="corpus column: draw within each of its values, in proportion to its rows")
    g.add_argument("--seed", type=int, default=0, help="seed of the draw (default: 0)")
    g.add_argument("--add", type=int, help="top up: draw this many more rows than --design's (same strategy)")
    g = p.add_argument_group("output")
    g.add_argument("--design", help="design file to write (default: <corpus>.design.json); with --add, the design "
                                    "to top up")
    g.add_argument("--sheet", help="annotation sheet to write (default: <corpus>.sheet.csv, <design>.add<N>.sheet.csv "
                                   "with --add)")
    g.add_argument("--new_design", help="with --add: the design of the union (default: <design>.add<N>.json)")
    g.add_argument("--show_prediction", action="store_true", help="put the model's label on the sheet (anchors "
                                                                   "annotators; off by default)")
    args = p.parse_args(argv)
    check_ranges(p, args, {"n": (1, None, "at least 1"), "add": (1, None, "at least 1"),
                           "uniform_share": (1e-9, 1, "in (0, 1]")})
    if (args.n is None) == (args.add is None):
        p.error("give --n N for a new draw, or --add N --design OLD.json to top one up")
    if args.add and not args.design:
        p.error("--add needs --design: the design file of the draw to top up")
    if args.new_design and not args.add:
        p.error("--new_design goes with --add (a new draw writes --design)")
    return args


def output_paths(args):
    from pathlib import Path

    stem = Path(args.corpus)
    if args.add:
        old = Path(args.design)
        base = old.with_name(old.name.removesuffix(".json"))
        return (Path(args.new_design or f"{base}.add{args.add}.json"),
                Path(args.sheet or f"{base}.add{args.add}.sheet.csv"))
    base = stem.with_name(stem.name.removesuffix(".csv"))
    return Path(args.design or f"{base}.design.json"), Path(args.sheet or f"{base}.sheet.csv")


def previous(args, settings, corpus):
    """(already-drawn positions in their drawn order, the earlier design or None) of a top-up,
    checked against the flags."""
    from annotune.designs import read_design

    if not args.add:
        return np.zeros(0, dtype=int), None
    design = read_design(args.design, corpus)
    for key in ("strategy", "target", "uniform_share", "stratify_by"):
        if design[key] != settings[key]:
            raise UserError(f"--add keeps the design's {key} ({design[key]!r}); pass --{key} {design[key]} "
                            f"(got {settings[key]!r})")
    return corpus.positions(design["drawn"], f"--design {args.design}"), design


def write_sheet(path, corpus, rows, text_column, show_prediction):
    import pandas as pd

    from annotune.files import atomic_write_text

    sheet = pd.DataFrame({"row": corpus.ids[rows], text_column: corpus.table[text_column].to_numpy()[rows],
                          "label": ""})
    if show_prediction:
        sheet["prediction"] = [corpus.labels[k] for k in corpus.prediction[rows]]
    atomic_write_text(path, sheet.to_csv(index=False, lineterminator="\n"))


def main(argv=None):
    args = parse_args(argv)
    from annotune.files import atomic_write_text, distinct_outputs, ensure_new_path
    from annotune.designs import (check_strata, design_record, draw, inclusion_probabilities, read_corpus,
                                   strata_of)

    active = args.strategy == "active"
    settings = {"strategy": args.strategy, "target": args.target if active else None,
                "uniform_share": args.uniform_share if active else None, "stratify_by": args.stratify_by}
    corpus = read_corpus(args.corpus)
    corpus.column(args.text_column, "--text_column")
    design_path, sheet_path = output_paths(args)
    distinct_outputs({"design": design_path, "sheet": sheet_path})
    for path, what in ((design_path, "design"), (sheet_path, "sheet")):
        ensure_new_path(path, what=what, inputs=(args.corpus, args.design), can_overwrite=False, kind="file")
    before, old = previous(args, settings, corpus)
    already = np.zeros(corpus.size, dtype=bool)
    already[before] = True
    old_pi, phases = (np.array(old["pi"]), old["phases"]) if old else (None, [])
    total = int(round(old["expected_n"])) + args.add if old else args.n
    if total > corpus.size:
        raise UserError(f"--n {total} is more rows than the corpus has ({corpus.size})")
    strata, names = strata_of(corpus, args.stratify_by)
    pi, per_stratum = inclusion_probabilities(corpus, args.strategy, total, strata, settings["target"],
                                              settings["uniform_share"])
    check_strata(per_stratum, np.bincount(strata), names, args.stratify_by)
    if old_pi is not None:
        pi = np.maximum(pi, old_pi)  # a row's chance never falls: the union keeps every earlier row's pi
    rng = np.random.default_rng([args.seed, len(phases)])
    new = draw(args.strategy, pi, strata, per_stratum, already, old_pi, rng)
    new = new[rng.permutation(len(new))] if active else new
    order = np.concatenate([before, new]).astype(int)  # the earlier phases' rows stay in the order drawn
    if not active:  # a stratum's pi is the share of its rows drawn so far
        pi = (np.bincount(strata[order], minlength=len(names)) / np.bincount(strata))[strata]
    phases = phases + [{"seed": args.seed, "requested": args.add or args.n, "drawn": int(len(new))}]
    design = design_record(corpus, settings, pi, strata, names, order, phases)
    design_text = json.dumps(design, indent=1) + "\n"  # serialised first: the two renames follow each other
    write_sheet(sheet_path, corpus, new, args.text_column, args.show_prediction)
    atomic_write_text(design_path, design_text)
    print(f"drew {len(new)} rows ({args.strategy}; {design['drawn_n']} in all, expected {design['expected_n']:.1f}) "
          f"-> {sheet_path}, design {design_path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
