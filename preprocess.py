"""Build an instruction dataset for one annotation task: examples, seeded stratified splits,
rendered prompts, and a manifest of every split's row ids (train.py and evaluate.py read it, so all
scripts see the same rows).

    python preprocess.py                                    # the embedded default (drug_reviews)
    python preprocess.py --task politosphere --merge pol_unpol_oth --template llama2-chat
    python preprocess.py --task sbic_offensive --without_definitions --max_samples 2000
    python preprocess.py --task ag_news --balance_per_label 1000,200,200
    python preprocess.py --data_path posts.csv --text_column post --label_column label
    python preprocess.py --task sbic_offensive --corrections corrections.csv   # review.py --fold_back's file

Writes <output_dir>/ : the DatasetDict (save_to_disk; columns id, text, label or target/references,
prompt, completion), manifest.json (task spec, template, seed, split ids and label counts),
preview.jsonl (a few rendered examples) and task.yaml. An existing output is never replaced unless
--overwrite is given. --push_to_hub REPO pushes with the token in $HF_TOKEN.
"""
import sys
from pathlib import Path

from annotune.base.cli import UserError, parser, quiet_libraries, run_cli
from annotune.data.examples import parse_caps
from annotune.model.models import DEFAULT_CAUSAL_LM
from annotune.data.prompts import template_names
from annotune.data.task import DEFAULT_TASK



def parse_args(argv=None):
    p = parser(__doc__)
    g = p.add_argument_group("task (a spec in tasks/, or ad-hoc columns of your own file)")
    g.add_argument("--task", help=f"task name in tasks/ or path of a task YAML (default: {DEFAULT_TASK})")
    g.add_argument("--merge", help="a named label merge of the task, e.g. pol_unpol_oth")
    g.add_argument("--data_path", help="ad-hoc: a CSV/TSV/JSONL/JSON file of labelled rows")
    g.add_argument("--test_path", help="ad-hoc: a separate test file with the same columns")
    g.add_argument("--text_column", help="ad-hoc: column holding the text")
    g.add_argument("--label_column", help="ad-hoc: column holding the gold label (or target text)")
    g.add_argument("--id_column", help="ad-hoc: column holding a row id (default: row number)")
    g.add_argument("--task_type", choices=["classification", "generation"], default="classification",
                   help="ad-hoc: kind of task (default: classification)")
    g.add_argument("--system_prompt", help="ad-hoc: system prompt text")
    g.add_argument("--instruction", help="ad-hoc: instruction; {label_list} becomes the quoted labels")
    g.add_argument("--write_task", metavar="YAML", help="ad-hoc: write a starter task spec (the labels found in "
                                                        "the data, definitions to fill in) to this file and stop")
    g = p.add_argument_group("prompt")
    g.add_argument("--template", default="auto", choices=template_names(),
                   help="prompt layout (default: auto = the tokenizer's chat template if it has one, "
                        "seq2seq for encoder-decoder models, else llama2-chat)")
    g.add_argument("--with_definitions", dest="with_definitions", action="store_true", default=True,
                   help="put the label definitions in the system prompt (default)")
    g.add_argument("--without_definitions", dest="with_definitions", action="store_false",
                   help="leave the label definitions out")
    g.add_argument("--model_name", "--base_model_name", default=DEFAULT_CAUSAL_LM,
                   help=f"model whose tokenizer renders the chat template (default: {DEFAULT_CAUSAL_LM})")
    g = p.add_argument_group("splits")
    g.add_argument("--val_ratio", type=float,
                   help="fraction held out for validation when the data has no validation split (default: the "
                        "task's data.split_ratios, else 0.2)")
    g.add_argument("--test_ratio", type=float,
                   help="fraction held out for test when the data has no test split (default: the task's "
                        "data.split_ratios, else 0.0)")
    g.add_argument("--keep_empty", action="store_true", help="keep rows whose text is empty (default: drop, counted)")
    g.add_argument("--seed", type=int, default=42, help="seed of the splits and samples (default: 42)")
    g.add_argument("--balance_per_label", help="examples per label: N for train, or N_train,N_val,N_test "
                                               "(default: the task spec's, else no balancing)")
    g.add_argument("--max_samples", help="seeded sample of N rows per split, or N_train,N_val,N_test "
                                         "(0 = all; default: no cap)")
    g.add_argument("--resplit", action="store_true",
                   help="carve validation and test from the train rows, leaving the data's own validation and test "
                        "splits unread (to choose settings without the test set)")
    g.add_argument("--max_words", type=int, help="cut each text to its first N words (default: no cut)")
    g.add_argument("--corrections", metavar="CSV", help="relabel rows by id (review.py --fold_back's file), recorded")
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", help="folder to write (default: data/<task>[-<merge>]-<template>[-nodefs])")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g.add_argument("--num_preview", type=int, default=3, help="rendered examples printed and saved (default: 3)")
    g.add_argument("--push_to_hub", metavar="REPO", help="also push the dataset to this hub repo ($HF_TOKEN)")
    args = p.parse_args(argv)
    for name in ("val_ratio", "test_ratio"):
        if getattr(args, name) is not None and not 0.0 <= getattr(args, name) < 1.0:
            p.error(f"--{name} must be in [0, 1)")
    try:
        parse_caps(args.max_samples)
    except UserError as err:
        p.error(str(err))
    if args.max_words is not None and args.max_words < 1:
        p.error("--max_words must be at least 1")
    if (args.val_ratio or 0.0) + (args.test_ratio or 0.0) >= 1.0:
        p.error("--val_ratio + --test_ratio must leave some training data")
    return args


def main(argv=None):
    args = parse_args(argv)
    quiet_libraries()
    from annotune.labelling.contract import from_task, task_spec
    from annotune.data.examples import data_report, write_dataset_folder
    from annotune.base.hub import push_dataset_to_hub
    from annotune.base.files import ensure_new_path, run_manifest
    from annotune.model.models import is_seq2seq_model, load_config, load_tokenizer
    from annotune.data.prompts import prompt_template, resolve_template
    from annotune.data.task import task_from_file

    if args.data_path:
        if args.task:
            raise UserError("give either --task or --data_path, not both")
        spec = task_from_file(args.data_path, args.text_column, args.label_column, args.test_path, args.id_column,
                          args.task_type, args.system_prompt, args.instruction)
    else:
        spec = task_spec(args.task or DEFAULT_TASK)  # a task name, a YAML file or a hub dataset id
    if args.write_task:
        return write_starter(args, spec)
    spec = spec.merged(args.merge)
    if args.keep_empty:
        spec.data["keep_empty"] = True

    tokenizer, is_seq2seq = None, False
    if args.template == "auto" or prompt_template(args.template).needs_chat_template:
        is_seq2seq = is_seq2seq_model(load_config(args.model_name))
        tokenizer = load_tokenizer(args.model_name)
    suffix = "" if args.with_definitions or spec.type != "classification" else "-nodefs"
    template = resolve_template(args.template, tokenizer, is_seq2seq)
    out_dir = Path(args.output_dir or f"data/{spec.name}-{template}{suffix}")
    ensure_new_path(out_dir, args.overwrite, what="dataset folder", inputs=(args.data_path, args.task),
                    kind="dir")  # fail before the work

    labelling = from_task(spec, {"template": args.template, "with_definitions": args.with_definitions}, tokenizer,
                    lambda task_type: "seq2seq" if is_seq2seq else "causal", args.seed, val_ratio=args.val_ratio,
                    test_ratio=args.test_ratio, balance=args.balance_per_label, max_samples=args.max_samples,
                    max_words=args.max_words, resplit=args.resplit,
                    corrections=read_corrections(args.corrections, spec) if args.corrections else None)
    splits, info = labelling.splits, labelling.source
    manifest = run_manifest(vars(args), model_name_for_template=args.model_name if tokenizer else None, **info)
    preview = write_dataset_folder(out_dir, splits, manifest, args.overwrite, args.num_preview)

    print(f"task {spec.name} ({spec.type}), template {template}, "
          f"definitions {'on' if args.with_definitions else 'off'}")
    for name, rows in splits.items():
        extra = manifest["splits"][name].get("label_counts", "")
        print(f"  {name:<10} {len(rows):>6} rows  {extra}")
    if info.get("corrections"):
        print(f"  corrections: {len(info['corrections']['changed'])} rows relabelled from {args.corrections}")
    for line in data_report(info):
        print(f"  note: {line}")
    for ex in preview:
        print(f"--- example {ex['id']} ({ex['split']})\n{ex['prompt']}{ex['completion']}")
    print(f"wrote {out_dir}/ (dataset, manifest.json, preview.jsonl, task.yaml)")
    if args.push_to_hub:
        push_dataset_to_hub(out_dir, args.push_to_hub)
        print(f"pushed to the hub: {args.push_to_hub}")


def read_corrections(path: str, spec) -> dict:
    from annotune.base.files import file_sha256
    from annotune.data.corrections import read_corrections as read

    if not Path(path).is_file():
        raise UserError(f"--corrections {path} not found")
    return {"path": path, "sha256": file_sha256(path), "labels": read(path, spec.label_names)}


def write_starter(args, spec) -> int:
    from annotune.base.files import atomic_write_text, ensure_new_path
    from annotune.data.task import starter_yaml

    if not args.data_path:
        raise UserError("--write_task needs --data_path with --text_column and --label_column")
    ensure_new_path(args.write_task, args.overwrite, what="task file", inputs=(args.data_path,), kind="file")
    atomic_write_text(args.write_task, starter_yaml(spec))
    print(f"wrote {args.write_task} ({len(spec.labels)} labels: {', '.join(spec.label_names)}); edit its TODOs, "
          f"then: python train.py --task {args.write_task}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
