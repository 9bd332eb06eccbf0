"""Choose the corpus rows that humans label, for estimate.py: a seeded draw from an annotated
corpus (evaluate.py --predict_file's output), written as a sheet for annotators and a design file.

    python sample.py --corpus labeled.csv --n 200                           # simple random sample
    python sample.py --corpus labeled.csv --n 200 --stratify_by source      # stratified, proportional
    python sample.py --corpus labeled.csv --n 200 --strategy active --target offensive
    python sample.py --corpus labeled.csv --add 100 --design labeled.design.json   # top up a draw

uniform draws n rows without replacement. active draws each row independently with a probability
that grows with the model's uncertainty about --target (or about all labels), mixed with a uniform
floor (--uniform_share), so the same number of human labels gives narrower intervals where the
model is unsure (annotune/estimation/designs.py has the formulas). The sheet (default <corpus>.sheet.csv) has
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

from annotune.base.cli import UserError, add_parameters, check_ranges, parameter_limits, parser, run_cli
from annotune.estimation import designs


def parse_args(argv=None):
    p = parser(__doc__)
    g = p.add_argument_group("input")
    g.add_argument("--corpus", required=True, help="annotated corpus CSV (evaluate.py --predict_file --output)")
    g.add_argument("--text_column", default="text", help="corpus column shown to annotators (default: text)")
    g = p.add_argument_group("the draw")
    g.add_argument("--n", type=int, help="rows to draw (active: the expected number)")
    g.add_argument("--strategy", choices=[d.name for d in designs.DESIGNS], default="uniform",
                   help="; ".join(f"{d.name}: {d.help}" for d in designs.DESIGNS).replace("%", "%%")
                   + " (default: uniform)")
    add_parameters(g, designs.design_parameters())  # each design's own settings
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
    check_ranges(p, vars(args), {"n": (1, None, "at least 1"), "add": (1, None, "at least 1"),
                           **parameter_limits(designs.design_parameters())})
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
    base = stem.with_suffix("")  # labeled.csv, labeled.jsonl -> labeled
    return Path(args.design or f"{base}.design.json"), Path(args.sheet or f"{base}.sheet.csv")


def previous(args, settings, corpus):
    """(already-drawn positions in their drawn order, the earlier design or None) of a top-up,
    checked against the flags."""
    from annotune.estimation.designs import read_design

    if not args.add:
        return np.zeros(0, dtype=int), None
    design = read_design(args.design, corpus)
    for key in settings:
        if design.get(key) != settings[key]:
            raise UserError(f"--add keeps the design's {key} ({design[key]!r}); pass --{key} {design[key]} "
                            f"(got {settings[key]!r})")
    return corpus.positions(design["drawn"], f"--design {args.design}"), design


def write_sheet(path, corpus, rows, text_column, show_prediction):
    """The sheet in the format its name says (tables.py): row id, text, an empty label."""
    from annotune.base.tables import write_table

    texts = corpus.table[text_column].to_numpy()
    sheet = [{"row": int(corpus.ids[i]), text_column: texts[i], "label": ""} for i in rows]
    if show_prediction:
        for entry, i in zip(sheet, rows):
            entry["prediction"] = corpus.labels[corpus.prediction[i]]
    write_table(path, sheet, ["row", text_column, "label"] + (["prediction"] if show_prediction else []))


def main(argv=None):
    args = parse_args(argv)
    from annotune.base.files import atomic_write_text, distinct_outputs, ensure_new_path
    from annotune.estimation.annotated import read_corpus
    from annotune.estimation.designs import check_strata, design_record, design_settings, sampling_design, strata_of
    from annotune.base.tables import infer_format, table_format

    design = sampling_design(args.strategy)
    settings = design_settings(args.strategy, args.stratify_by, vars(args))
    corpus = read_corpus(args.corpus)
    corpus.column(args.text_column, "--text_column")
    design_path, sheet_path = output_paths(args)
    distinct_outputs({"design": design_path, "sheet": sheet_path})
    for path, what in ((design_path, "design"), (sheet_path, "sheet")):
        ensure_new_path(path, what=what, inputs=(args.corpus, args.design), can_overwrite=False, kind="file")
    table_format(infer_format(str(sheet_path)), f"--sheet {sheet_path}")  # a sheet is a table file
    before, old = previous(args, settings, corpus)
    already = np.zeros(corpus.size, dtype=bool)
    already[before] = True
    old_pi, phases = (np.array(old["pi"]), old["phases"]) if old else (None, [])
    total = int(round(old["expected_n"])) + args.add if old else args.n
    if total > corpus.size:
        raise UserError(f"--n {total} is more rows than the corpus has ({corpus.size})")
    strata, names = strata_of(corpus, args.stratify_by)
    pi, per_stratum = design.inclusion(corpus, total, strata, settings)
    check_strata(per_stratum, np.bincount(strata), names, args.stratify_by)
    if old_pi is not None:
        pi = np.maximum(pi, old_pi)  # a row's chance never falls: the union keeps every earlier row's pi
    rng = np.random.default_rng([args.seed, len(phases)])
    new = design.draw(pi, strata, per_stratum, already, old_pi, rng)
    order = np.concatenate([before, new]).astype(int)  # the earlier phases' rows stay in the order drawn
    pi = design.realised(pi, strata, order)
    phases = phases + [{"seed": args.seed, "requested": args.add or args.n, "drawn": int(len(new))}]
    record = design_record(corpus, settings, pi, strata, names, order, phases)
    design_text = json.dumps(record, indent=1) + "\n"  # serialised first: the two renames follow each other
    write_sheet(sheet_path, corpus, new, args.text_column, args.show_prediction)
    atomic_write_text(design_path, design_text)
    print(f"drew {len(new)} rows ({args.strategy}; {record['drawn_n']} in all, expected {record['expected_n']:.1f}) "
          f"-> {sheet_path}, design {design_path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
