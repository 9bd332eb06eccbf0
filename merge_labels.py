"""Merge fine-grained labels into coarser ones (e.g. Politosphere's 7 labels into 3) in a labelled
JSONL/JSON/CSV file, writing a new file; the original is never touched.

    # a named merge from the task spec (tasks/politosphere.yaml)
    python merge_labels.py --input_file ../shared/data/politosphere/daccord_yifei_v2_leo.json \\
        --merge pol_unpol_oth --output_file daccord_pol_unpol_oth.json
    # the source project's flags, over the task's label numbering (1 = its first label)
    python merge_labels.py --input_file ../shared/data/politosphere/daccord_yifei_v2_leo.json \\
        --merged_labels "{1:[1,4],2:[2,5],3:[3,6,7]}" \\
        --new_labels "{1:'polarized',2:'unpolarized',3:'other'}" --output_file merged.json

Labels are matched case- and whitespace-insensitively ("Not relevant" = "Not Relevant"). A label
mapped twice or not at all, or a row whose label is not in the task's label set, is an error that
names it. Counts before and after are printed. The flag values are parsed as literals, never run.
"""
import sys

from annotune.base.cli import UserError, parser, run_cli


def parse_args(argv=None):
    p = parser(__doc__)
    g = p.add_argument_group("input and output")
    g.add_argument("--input_file", "--data_path", dest="input_file",
                   default="../shared/data/politosphere/daccord_yifei_v2_leo.json",
                   help="labelled file: JSONL, JSON list or CSV (default: the Politosphere gold file)")
    g.add_argument("--output_file", help="file to write (default: <input>_<merge>.<ext> beside the input)")
    g.add_argument("--label_column", default="User label", help="column holding the label (default: 'User label')")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    g = p.add_argument_group("the merge: a named one, or the source project's numbered flags")
    g.add_argument("--task", default="politosphere", help="task spec whose labels and merges apply (default: politosphere)")
    g.add_argument("--merge", help="a named merge of the task, e.g. pol_unpol_oth or supp_anti_oth")
    g.add_argument("--merged_labels", help="new label number -> old label numbers, e.g. \"{1:[1,4],2:[2,5],3:[3,6,7]}\"")
    g.add_argument("--new_labels", help="new label number -> name, e.g. \"{1:'polarized',2:'unpolarized',3:'other'}\"")
    args = p.parse_args(argv)
    if bool(args.merge) == bool(args.merged_labels or args.new_labels):
        p.error("give either --merge NAME or both --merged_labels and --new_labels")
    if not args.merge and not (args.merged_labels and args.new_labels):
        p.error("--merged_labels and --new_labels go together")
    return args


def parse_literal(text, flag):
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserError(f"{flag} is not a literal dict: {text!r}") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag} must be a dict, got {type(value).__name__}")
    return value


def numbered_groups(spec, merged_labels, new_labels):
    """The source project's numbered merge as [{name, from}] over the spec's label order."""
    names = spec.label_names
    groups = []
    for key, old_numbers in merged_labels.items():
        if key not in new_labels:
            raise UserError(f"--merged_labels has group {key!r} that --new_labels does not name")
        if not isinstance(old_numbers, (list, tuple)):
            old_numbers = [old_numbers]
        old = []
        for number in old_numbers:
            if not isinstance(number, int) or not 1 <= number <= len(names):
                raise UserError(f"--merged_labels: label number {number!r} is not in 1..{len(names)} ({names})")
            old.append(names[number - 1])
        groups.append({"name": str(new_labels[key]), "from": old})
    extra = sorted(set(new_labels) - set(merged_labels), key=str)
    if extra:
        raise UserError(f"--new_labels names group(s) {extra} that --merged_labels does not define")
    return groups


def main(argv=None):
    args = parse_args(argv)
    from collections import Counter
    from pathlib import Path

    from annotune.base.files import ensure_new_path
    from annotune.base.tables import infer_format, read_table, write_table
    from annotune.data.task import load_task

    spec = load_task(args.task)
    if args.merge:
        merged = spec.merged(args.merge)
    else:
        groups = numbered_groups(spec, parse_literal(args.merged_labels, "--merged_labels"),
                                 parse_literal(args.new_labels, "--new_labels"))
        merged = spec.with_merge("custom", groups)

    source = Path(args.input_file)
    fmt = infer_format(str(source))
    output = Path(args.output_file or source.with_name(f"{source.stem}_{merged.merge}{source.suffix}"))
    ensure_new_path(output, args.overwrite, what="output file", inputs=(source,), kind="file")
    rows = read_table(str(source), fmt)
    if not rows:
        raise UserError(f"{source} has no rows")
    before, after = Counter(), Counter()
    for number, row in enumerate(rows):
        if args.label_column not in row:
            raise UserError(f"{source}: row {number} has no column {args.label_column!r}")
        old = spec.task_label(row[args.label_column], f" (row {number} of {source})")
        new = merged.task_label(old)
        before[old] += 1
        after[new] += 1
        row[args.label_column] = new

    if fmt == "json" and not source.read_text(encoding="utf-8").lstrip().startswith("["):
        fmt = "jsonl"  # a ".json" file of JSON Lines (Politosphere's) is written back as it was
    write_table(output, rows, list(dict.fromkeys(key for row in rows for key in row)), fmt)

    width = max(len(n) for n in list(before) + list(after))
    print(f"merge {merged.merge} of task {spec.name} over {len(rows)} rows")
    print("before:")
    for name in spec.label_names:
        print(f"  {name:<{width}} {before.get(name, 0):>5}")
    print("after:")
    for name in merged.label_names:
        print(f"  {name:<{width}} {after.get(name, 0):>5}")
    print(f"wrote {output}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
