"""Likely label errors in front of a reviewer, and the reviewer's answers back into the data.

    python train.py --task sbic_offensive --folds 5 --output_dir runs/sbic-folds
    python review.py --oof runs/sbic-folds --output review.csv               # flagged rows, worst first
    python review.py --oof runs/sbic-folds --task sbic_offensive_votes --output review.csv   # with the votes
    # fill the `corrected` column of the rows you judge mislabelled, then:
    python review.py --fold_back review.csv --oof runs/sbic-folds --output corrections.csv
    python preprocess.py --task sbic_offensive --corrections corrections.csv

The sheet lists the rows cleanlab's confident learning flags (find_label_issues on the K-fold run's
out-of-fold probabilities: every row scored by the fold model that never saw it; --all lists every
row), ranked by label quality (the out-of-fold probability of the given label), with the given
label, the model's label and probability, the annotators' votes where --task has data.annotations,
and an empty `corrected` column. --fold_back reads a returned sheet: the filled `corrected` cells
(a label of the run, any case) that differ from the given label become the corrections file (id,
label, was) that preprocess.py --corrections applies by id and records in its manifest. Only a
K-fold run's out-of-fold file is read: probabilities of a model that trained on the rows make every
label look right, so anything else is refused. Nothing is overwritten.
"""
import sys

from annotune.base.cli import parser, run_cli


def parse_args(argv=None):
    p = parser(__doc__)
    g = p.add_argument_group("input")
    g.add_argument("--oof", metavar="RUN", required=True, help="train.py --folds K's output folder")
    g.add_argument("--task", help="a task with data.annotations: put each row's votes on the sheet (default: none)")
    g.add_argument("--fold_back", metavar="SHEET", help="a returned review sheet: write its corrections instead")
    g = p.add_argument_group("sheet")
    g.add_argument("--all", action="store_true", help="every row, not only the flagged ones (default: flagged)")
    g = p.add_argument_group("output")
    g.add_argument("--output", required=True, help="the review sheet (or with --fold_back the corrections file) "
                                                   "to write: .csv, .tsv or .jsonl")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from annotune.base.files import ensure_new_path
    from annotune.base.tables import write_table
    from annotune.labelling import label_errors

    ensure_new_path(args.output, what="output", inputs=(args.oof, args.fold_back, args.task), can_overwrite=False,
                    kind="file")
    oof = label_errors.oof_of(args.oof)
    if args.fold_back:
        return fold_back(args, oof)
    issues = label_errors.label_issues(oof.given, oof.probs, oof.labels)
    rows = label_errors.review_rows(oof, issues, votes_of(args.task), args.all)
    write_table(args.output, rows, list(label_errors.SHEET_COLUMNS))
    print(f"{int(issues['flagged'].sum())} of {len(oof.ids)} rows flagged as likely label errors "
          f"({issues['flagged'].mean():.1%}); wrote {len(rows)} rows to {args.output}, lowest label quality first")


def votes_of(task):
    """item -> {annotator: label} of a task with several annotators, or None."""
    if not task:
        return None
    from annotune.data.examples import task_votes
    from annotune.data.task import load_task

    out = {}
    for item, annotator, label in task_votes(load_task(task))[0]:
        out.setdefault(item, {})[annotator] = label
    return out


def fold_back(args, oof):
    from pathlib import Path

    from annotune.base.cli import UserError
    from annotune.base.tables import read_table, write_table
    from annotune.labelling.label_errors import CORRECTIONS_COLUMNS, corrections_from_sheet

    if not Path(args.fold_back).is_file():
        raise UserError(f"--fold_back {args.fold_back} not found")
    sheet = read_table(args.fold_back)
    known = set(oof.ids)
    stray = [str(r.get("id")) for r in sheet if str(r.get("id")) not in known]
    if stray:
        raise UserError(f"--fold_back {args.fold_back}: id {stray[0]!r} is not a row of --oof {args.oof}")
    rows = corrections_from_sheet(sheet, oof.labels, args.fold_back)
    write_table(args.output, rows, list(CORRECTIONS_COLUMNS))
    print(f"{len(rows)} corrections from {args.fold_back} -> {args.output}; apply with "
          f"preprocess.py --corrections {args.output}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
