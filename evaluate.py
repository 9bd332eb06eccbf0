"""Evaluate annotators against gold labels, against the untuned base model and against human
annotators; or label a new file.

    python evaluate.py --adapters_name runs/smollm2-135m-drug_reviews/smollm2-135m-drug_reviews-epoch1 --base_only
    python evaluate.py --adapters_name smollm2-135m-politosphere-pol_unpol_oth-epoch3   # a name under runs/
    python evaluate.py --base_only --task sbic_offensive --split test --max_samples 300
    python evaluate.py --adapters_name A B C --table                  # the per-epoch table (train and val)
    python evaluate.py --adapters_name A --mode generate              # the seeds' way, invalid outputs counted
    python evaluate.py --adapters_name A --annotations ../shared/data/politosphere/annotated_data_leo.json \\
        ../shared/data/politosphere/annotated_data_yifei_v2.json     # kappa model-vs-human, human-vs-human
    python evaluate.py --adapters_name A --predict_file posts.csv --text_column body --output labeled.csv

An adapter brings its base model, task, label merge, prompt template and dataset, so none of them can
be paired wrongly by a flag. Classification uses --mode score (every label scored as a continuation:
no invalid outputs, a probability per label) unless --mode generate. Results go to a new folder
(--output_dir, default runs/eval/<task>-<time>): per model metrics.json, predictions.jsonl,
confusion_matrix.csv/.png, reliability.png; comparison.md for all models of the call.
"""
import argparse
import sys

from annotune.io import UserError, quiet_libraries, run_cli


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--adapters_name", nargs="+", default=[], help="adapter folders, or adapter names under runs/")
    g.add_argument("--base_only", action="store_true", help="also (or only) evaluate the untuned base model")
    g.add_argument("--model_name", "--base_model_name", dest="model_name",
                   help="base model without adapters (default: the adapters' base, else smollm2-135m)")
    g.add_argument("--task", help="task for a base-only run (default: drug_reviews)")
    g.add_argument("--merge", help="label merge for a base-only run")
    g.add_argument("--dataset_name", help="a dataset folder from preprocess.py for a base-only run")
    g.add_argument("--template", default="auto", help="prompt template for a base-only run (default: auto)")
    g.add_argument("--without_definitions", action="store_true", help="base-only run: no label definitions")
    g.add_argument("--label_name", help="expected label list (JSON or Python literal); checked against the task")
    g = p.add_argument_group("data")
    g.add_argument("--split", default="validation", help="split to evaluate (default: validation)")
    g.add_argument("--max_samples", type=int, help="evaluate a seeded sample of this many rows (default: all)")
    g.add_argument("--seed", type=int, default=42, help="seed of samples and bootstrap (default: 42)")
    g = p.add_argument_group("method")
    g.add_argument("--mode", choices=["score", "generate"], default="score",
                   help="classification: score labels (default) or generate and parse")
    g.add_argument("--length_norm", action="store_true", help="score mode: mean instead of sum of token log-probs")
    g.add_argument("--batch_size", type=int, default=16, help="examples (score: pairs) per forward (default: 16)")
    g.add_argument("--max_new_tokens", type=int, help="generation budget (default: longest label + 8; 128 for text)")
    g.add_argument("--do_sample", action="store_true",
                   help="generation: sample instead of greedy decoding (default: greedy, do_sample=False)")
    g.add_argument("--temperature", type=float, default=1.0, help="with --do_sample (default: 1.0)")
    g.add_argument("--quantization", choices=["auto", "4bit", "8bit", "none"], default="auto",
                   help="auto = 4-bit on CUDA, none on CPU (default: auto)")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (default: 1000)")
    g.add_argument("--bertscore_model", default="minilm-l6", help="BERTScore model, 'none' to skip (default: minilm-l6)")
    g.add_argument("--bertscore_layers", type=int, default=6, help="BERTScore layer (default: 6, MiniLM's last)")
    g = p.add_argument_group("reports")
    g.add_argument("--table", action="store_true", help="per-epoch table: accuracy/F1 on train and validation")
    g.add_argument("--annotations", nargs="+", help="other annotators' label files for kappa model-vs-human")
    g.add_argument("--annotation_label_column", default="User label", help="label column in --annotations")
    g.add_argument("--annotation_id_column", default="id", help="id column in --annotations (default: id)")
    g.add_argument("--output_dir", help="results folder (default: runs/eval/<task>-<time>); never overwritten")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("annotating new data")
    g.add_argument("--predict_file", help="unlabelled CSV/TSV/JSONL to label")
    g.add_argument("--text_column", default="text", help="column of --predict_file holding the text (default: text)")
    g.add_argument("--output", help="labelled CSV to write (default: <predict_file>.labeled.csv)")
    g.add_argument("--chunk_rows", type=int, default=256, help="rows per written chunk (default: 256)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    g.add_argument("--stop_after_chunks", type=int, default=0, help=argparse.SUPPRESS)  # tests: simulate a crash
    args = p.parse_args(argv)
    if not args.adapters_name and not args.base_only:
        p.error("give --adapters_name NAME [NAME ...] and/or --base_only")
    return args


def main(argv=None):
    args = parse_args(argv)
    quiet_libraries()
    from annotune import evaluating as E

    adapters = E.natural_order(E.find_adapter(name) for name in args.adapters_name)
    bases = E.BaseModels(args.quantization)  # each base model loaded once, adapters attached in turn
    base = E.base_annotator(args, adapters, bases)  # None unless --base_only
    if args.predict_file:
        return E.annotate(args, adapters, base)
    spec, rows_by_split, info = E.evaluation_data(args, adapters, base)
    E.check_label_name(args.label_name, spec)
    out_dir = E.new_results_dir(args, spec)
    results = E.evaluate_models(args, adapters, base, rows_by_split, out_dir, bases)
    E.report(args, spec, results, out_dir, info)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
