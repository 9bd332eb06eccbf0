"""Your annotators: the best single label from their votes, how good each annotator is, how much they
agree, and where a fine-tuned model sits among them.

    python annotators.py --task tasks/sbic_offensive_votes.yaml --ordinal
    python annotators.py --task tasks/politosphere_votes.yaml
    python train.py --task tasks/sbic_offensive_votes.yaml --folds 5 --output_dir runs/sbic-votes-folds
    python annotators.py --task tasks/sbic_offensive_votes.yaml --oof runs/sbic-votes-folds --ordinal

The task's YAML describes the votes (data.annotations: docs/tasks.md, "Several annotators"). Written
to --output_dir (default runs/annotators-<task>; never overwritten):
- annotators.md / annotators.json: Krippendorff's alpha (nominal, --ordinal when the labels are in
  order, and per label, with bootstrap CIs over items); per annotator the items labelled, agreement
  with each method's consensus, leave-one-out agreement (with the majority of the OTHER annotators on
  the same items, CI over items), Dawid-Skene's accuracy and MACE's competence (CIs from --n_refit
  refits on item resamples); the consensus label counts of every method;
- items.csv: per item the votes and each method's consensus label and posterior per label;
- annotators.png: leave-one-out agreement with CIs of the annotators with at least --min_items items.
With --oof RUN (train.py --folds K's folder: out-of-fold probabilities only, whose provenance is
checked; a model's probabilities on rows it trained on are refused) the model is one more
annotator: scored against the same leave-one-out consensus on each annotator's items, paired (model
minus annotator, CI over items), ranked in the headline; and CROWDLAB (cleanlab) weighs it in.
Two annotators identify no latent-class model: their Dawid-Skene and MACE qualities are printed but
say little; read the agreement and alpha.
"""
import sys

from annotune.base.cli import parser, run_cli


def parse_args(argv=None):
    p = parser(__doc__)
    g = p.add_argument_group("input")
    g.add_argument("--task", required=True, help="a task name in tasks/ or a task YAML with data.annotations")
    g.add_argument("--oof", metavar="RUN", help="train.py --folds K's output folder: the model as one more "
                                                "annotator (default: annotators only)")
    g = p.add_argument_group("report")
    g.add_argument("--methods", default="majority,dawid_skene,mace",
                   help="aggregators, comma-separated (default: majority,dawid_skene,mace)")
    g.add_argument("--ordinal", action="store_true", help="the labels are ordered as the task lists them: report "
                                                          "ordinal alpha too (default: nominal only)")
    g.add_argument("--min_items", type=int, default=50, help="annotators ranked and plotted need this many items "
                                                             "that others labelled too (default: 50)")
    g.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples of items for CIs (default: 1000)")
    g.add_argument("--n_refit", type=int, default=30, help="refits of Dawid-Skene and MACE on item resamples for "
                                                           "their quality CIs; 0 = none (default: 30)")
    g.add_argument("--seed", type=int, default=0, help="seed of the resamples and of MACE (default: 0)")
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", help="folder to write (default: runs/annotators-<task>)")
    args = p.parse_args(argv)
    for name, low in (("min_items", 1), ("n_boot", 10), ("n_refit", 0)):
        if getattr(args, name) < low:
            p.error(f"--{name} must be at least {low}")
    return args


def main(argv=None):
    args = parse_args(argv)
    from pathlib import Path

    from annotune.base.cli import UserError
    from annotune.base.files import atomic_write_json, atomic_write_text, ensure_new_path, publish_dir, remove_dir, \
        run_manifest, staging_dir
    from annotune.base.tables import write_table
    from annotune.data.annotations import AGGREGATORS, settings
    from annotune.data.examples import task_votes
    from annotune.data.task import load_task
    from annotune.labelling import annotators as report_of
    from annotune.labelling.label_errors import oof_of

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in AGGREGATORS]
    if unknown or not methods:
        raise UserError(f"--methods: {unknown[0] if unknown else '(none)'} is not one of {', '.join(AGGREGATORS)}")
    spec = load_task(args.task)
    out_dir = Path(args.output_dir or f"runs/annotators-{spec.name}")
    ensure_new_path(out_dir, what="output folder", inputs=(args.task, args.oof), can_overwrite=False, kind="dir")
    triples, _ = task_votes(spec)
    oof = oof_of(args.oof) if args.oof else None
    labels = [label.name for label in spec.finest_labels]
    if oof is not None and oof.labels != labels:
        raise UserError(f"--oof {args.oof}: its labels {oof.labels} are not the task's {labels}")
    votes = report_of.Votes(triples, labels)
    rep = report_of.report(votes, methods, settings(spec)["tie"], args.ordinal, args.min_items, args.n_boot,
                           args.n_refit, args.seed, oof)
    items = rep.pop("items_table")
    tmp = staging_dir(out_dir)
    try:
        atomic_write_json(tmp / "annotators.json", dict(rep, manifest=run_manifest(vars(args), task=spec.name)))
        atomic_write_text(tmp / "annotators.md", report_of.markdown(rep, spec.name))
        write_table(tmp / "items.csv", items, list(items[0]))
        report_of.plot(rep, tmp / "annotators.png")
        publish_dir(tmp, out_dir)
    finally:
        remove_dir(tmp)
    print(rep["headline"])
    print(f"alpha (nominal) {rep['alpha']['nominal']['alpha']:.3f}; {rep['votes']} votes, {rep['annotators']} "
          f"annotators, {rep['items']} items")
    print(f"wrote {out_dir}/ (annotators.md, annotators.json, items.csv, annotators.png)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
