"""Evaluate annotators against gold labels, against the untuned base model and against human
annotators; or label a new file.

    python evaluate.py --adapters_name runs/smollm2-135m-drug_reviews/smollm2-135m-drug_reviews-epoch1 --base_only
    python evaluate.py --adapters_name smollm2-135m-politosphere-pol_unpol_oth-epoch3   # a name under runs/
    python evaluate.py --base_only --task sbic_offensive --split test --max_samples 300
    python evaluate.py --adapters_name A B C --table                  # the per-epoch table (train and val)
    python evaluate.py --adapters_name A --mode generate              # the seeds' way, invalid outputs counted
    python evaluate.py --adapters_name A B --split test              # B against A on the same rows, paired CIs
    python evaluate.py --adapters_name A --merge neutral_vs_rest      # A of drug_reviews' 3 labels, merged after
    python evaluate.py --adapters_name A --annotations ../shared/data/politosphere/annotated_data_leo.json \\
        ../shared/data/politosphere/annotated_data_yifei_v2.json     # kappa model-vs-human, human-vs-human
    python evaluate.py --adapters_name A --predict_file posts.csv --text_column body --output labeled.csv
    python evaluate.py --ensemble runs/kfold --predict_file posts.csv --output labeled.csv   # train.py --folds K's

An adapter brings its base model, task, label merge, prompt template and dataset, so none of them can
be paired wrongly by a flag. Classification uses --mode score (every label scored as a continuation:
no invalid outputs, a probability per label) unless --mode generate. Results go to a new folder
(--output_dir, default runs/eval/<task>-<time>): per model metrics.json, predictions.jsonl,
confusion_matrix.csv/.png, reliability.png; comparison.md for all models of the call, with each
model's difference to TF-IDF, an adapter's to the untuned base and every later adapter's to the
first one, on the same rows (paired bootstrap CIs; vs_tfidf, vs_base, vs_first_adapter in metrics.json).
"""
import argparse
import sys
import time
from pathlib import Path

from annotune.base.cli import UserError, check_ranges, note_ignored, parser, quiet_libraries, run_cli
from annotune.labelling.metrics import decision_objectives
from annotune.model.models import DEFAULT_CAUSAL_LM
from annotune.data.prompts import template_names
from annotune.data.task import DEFAULT_TASK



def parse_args(argv=None):
    p = parser(__doc__)
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--adapters_name", nargs="+", default=[], help="adapter folders, or adapter names under runs/")
    g.add_argument("--base_only", action="store_true", help="also (or only) evaluate the untuned base model")
    g.add_argument("--model_name", "--base_model_name", dest="model_name",
                   help=f"base model without adapters (default: the adapters' base, else {DEFAULT_CAUSAL_LM})")
    g.add_argument("--task", help=f"task for a base-only run (default: {DEFAULT_TASK})")
    g.add_argument("--merge", help="a named label merge of the task: a base-only run's labels; with adapters of the "
                                   "finer labels, their predictions merged (a merged label's probability: the sum)")
    g.add_argument("--dataset_name", help="a dataset folder from preprocess.py for a base-only run")
    g.add_argument("--template", default="auto", choices=template_names(), help="base-only prompt (default: auto)")
    g.add_argument("--without_definitions", action="store_true", help="base-only run: no label definitions")
    g.add_argument("--label_name", help="expected label list (JSON or Python literal); checked against the task")
    g = p.add_argument_group("data")
    g.add_argument("--split", default="validation", help="split(s) to evaluate, comma-separated (default: validation)")
    g.add_argument("--max_samples", type=int, help="evaluate a seeded sample of this many rows (default: all)")
    g.add_argument("--seed", type=int, default=42, help="seed of samples and bootstrap (default: 42)")
    g = p.add_argument_group("method")
    g.add_argument("--mode", choices=["score", "generate"], default="score",
                   help="classification: score labels (default) or generate and parse")
    g.add_argument("--length_norm", action="store_true", help="score mode: mean instead of sum of token log-probs")
    g.add_argument("--decision", choices=["fitted", "argmax"], default="fitted",
                   help="classification: the decision rule fit on the validation split (the adapter's own, else fit "
                        "now), or the most probable label (default: fitted; the validation split itself is argmax)")
    g.add_argument("--decision_objective", choices=decision_objectives(), default="macro_f1",
                   help="what a rule fit now maximises (default: macro_f1)")
    g.add_argument("--baseline", choices=["tfidf", "none"], default="tfidf",
                   help="classification: also score a majority-class and a TF-IDF + logistic-regression baseline "
                        "trained on the adapter's training rows (default: tfidf)")
    g.add_argument("--batch_size", type=int, default=16, help="examples (score: pairs) per forward (default: 16)")
    g.add_argument("--max_new_tokens", type=int, help="generation budget (default: longest label + 8; 128 for text)")
    g.add_argument("--do_sample", action="store_true",
                   help="generation: sample instead of greedy decoding (default: greedy, do_sample=False)")
    g.add_argument("--temperature", type=float, default=1.0, help="with --do_sample (default: 1.0)")
    g.add_argument("--quantization", choices=["auto", "4bit", "8bit", "none"], default="auto",
                   help="auto = 4-bit on CUDA, none on CPU (default: auto)")
    g.add_argument("--cpu_bf16", choices=["auto", "on", "off"], default="auto", help="CPU scoring under bf16 "
                   "autocast, ~2x faster: auto = where the CPU has bf16 instructions (default: auto; a rule fit "
                   "in another precision is refit)")
    g.add_argument("--bf16_tie_margin", type=float, default=0.05, help="under --cpu_bf16: rows whose best two "
                   "labels are within this log-likelihood (after the rule's offsets) rescored in fp32 (default: 0.05)")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (default: 1000)")
    g.add_argument("--bertscore_model", default="minilm-l6", help="BERTScore model, 'none' to skip (default: minilm-l6)")
    g.add_argument("--bertscore_layers", type=int, default=6, help="BERTScore layer (default: 6, MiniLM's last)")
    add_report_flags(p)
    add_annotation_flags(p)
    add_few_shot_flags(p)
    args = p.parse_args(argv)
    check_ranges(p, vars(args), {"max_samples": (0, None, "at least 0 (0 = all)"), "batch_size": (1, None, "at least 1"),
                           "bootstrap": (0, None, "at least 0"), "chunk_rows": (1, None, "at least 1"),
                           "max_new_tokens": (1, None, "at least 1"), "temperature": (1e-6, None, "> 0"),
                           "bf16_tie_margin": (0, None, "at least 0")})
    if args.ensemble and (args.adapters_name or args.base_only or not args.predict_file or args.mode != "score"):
        p.error("--ensemble RUN labels --predict_file in score mode with the run's fold models, without "
                "--adapters_name or --base_only")
    if not args.adapters_name and not args.base_only and not args.ensemble:
        p.error("give --adapters_name NAME [NAME ...] and/or --base_only")
    args.few_shot_grid = few_shot_grid(p, args)
    note_unused(p, args)
    return args


def add_report_flags(p) -> None:
    g = p.add_argument_group("reports")
    g.add_argument("--table", action="store_true", help="per-epoch table: accuracy/F1 on train and validation")
    g.add_argument("--annotations", nargs="+", help="other annotators' label files for kappa model-vs-human")
    g.add_argument("--annotation_label_column", default="User label", help="label column in --annotations")
    g.add_argument("--annotation_id_column", default="id", help="id column in --annotations (default: id)")
    g.add_argument("--output_dir", help="results folder (default: runs/eval/<task>-<time>); never overwritten")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def add_annotation_flags(p) -> None:
    g = p.add_argument_group("annotating new data")
    g.add_argument("--predict_file", help="unlabelled CSV/TSV/JSONL to label")
    g.add_argument("--text_column", default="text", help="column of --predict_file holding the text (default: text)")
    g.add_argument("--output", help="labelled CSV to write (default: <predict_file>.labeled.csv)")
    g.add_argument("--chunk_rows", type=int, default=256, help="rows per written chunk (default: 256)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    g.add_argument("--ensemble", metavar="RUN",
                   help="label --predict_file with the K fold models of a train.py --folds K run (the base model "
                        "loaded once): fold<k>_prob_<label> per model, prob_<label> and prediction the ensemble's "
                        "(their mean; a decision rule fit on the run's out-of-fold probabilities); for estimate.py "
                        "--crossfit (default: one adapter)")
    g.add_argument("--stop_after_chunks", type=int, default=0, help=argparse.SUPPRESS)  # tests: simulate a crash


def add_few_shot_flags(p) -> None:
    from annotune.labelling.shots import selector_names

    g = p.add_argument_group("few-shot (with --base_only)")
    g.add_argument("--few_shot", default="0",
                   help="also score the untuned base with K training rows as examples before every text, a row "
                        "beside its zero-shot one; comma-separated counts give a row each (default: 0, none)")
    g.add_argument("--shot_selector", default="stratified",
                   help=f"which training rows, comma-separated for a row each: {', '.join(selector_names())} "
                        "(stratified: spread over the labels; fixed: drawn; both seeded by --seed and shared by every "
                        "row; similar: each row's nearest by MiniLM) (default: stratified)")


def few_shot_grid(p, args) -> list:
    """The (k, selector) rows --few_shot and --shot_selector ask for; bad values end in one line."""
    from annotune.labelling.shots import parse_grid

    try:
        return parse_grid(args.few_shot, args.shot_selector)
    except UserError as e:
        p.error(str(e))


def note_unused(p, args) -> None:
    """A flag given that this call does not use is named, not silently dropped (refused where
    dropping it would give another result than asked for)."""
    if args.few_shot_grid and not args.base_only:
        p.error("--few_shot scores the untuned base: give --base_only")
    if args.predict_file:
        note_ignored(p, vars(args), ("few_shot", "shot_selector"), "--predict_file labels with one model, zero-shot")
    if args.adapters_name and not args.base_only:
        note_ignored(p, vars(args), ("task", "dataset_name", "template", "without_definitions"),
                     "an adapter brings its own task, data and prompt (they apply to --base_only)")
    if not args.predict_file:
        note_ignored(p, vars(args), ("output", "chunk_rows", "overwrite", "text_column"), "they go with --predict_file")
    if args.mode == "score":
        note_ignored(p, vars(args), ("max_new_tokens", "do_sample", "temperature"), "they go with --mode generate")


def labelling_of(args, adapters, rows: bool = True):
    """The labelling evaluated (contract.py): the adapters' (their rows and labels given; --merge
    on adapters of the finer labels merges their predictions), or a base-only run's --dataset_name
    or --task, prompted by --template and --without_definitions."""
    from annotune.labelling.contract import from_adapters, from_source
    from annotune.model.models import load_config, load_tokenizer, resolve_kind

    if adapters:
        labelling = from_adapters(adapters, args.merge, rows)
        if args.model_name and args.model_name != labelling.record.base_model:
            raise UserError(f"adapter {adapters[0]} was trained on {labelling.record.base_model}, not on --model_name "
                            f"{args.model_name}")
        return labelling
    name = args.model_name or DEFAULT_CAUSAL_LM
    config = load_config(name)
    prompt = {"template": args.template, "with_definitions": not args.without_definitions}
    return from_source(args.dataset_name or args.task or DEFAULT_TASK, args.merge, prompt, load_tokenizer(name),
                       lambda task_type: resolve_kind(config, "auto", task_type), seed=args.seed)


def base_annotator(args, labelling, bases):
    """The untuned base model (with --base_only) prompted as the labelling says: as the adapters are."""
    from annotune.labelling.annotator import load_annotator

    if not args.base_only:
        return None
    name = args.model_name or (labelling.record.base_model if labelling.record else DEFAULT_CAUSAL_LM)
    model = bases.get(name, labelling.kind, labelling.scored.label_names)
    return load_annotator(labelling.for_model(None), base_model=name, model=model, cpu_bf16=args.cpu_bf16,
                          tie_margin=args.bf16_tie_margin)


def evaluate_models(args, labelling, adapters, base, staging, bases):
    """Evaluate the base (if any) and every adapter on the chosen split(s) of the labelling's rows;
    per-model result files go into the staging folder that write_comparison publishes."""
    from peft import PeftModel

    from annotune.model.adapters import distinct_names
    from annotune.labelling.annotator import load_annotator, unfold_lora
    from annotune.model.models import resolve_model_path
    from annotune.labelling.report import add_baseline_differences, safe_name, write_model_results

    spec, splits = labelling.reported, ["train", "validation"] if args.table else list(dict.fromkeys(args.split.split(",")))
    # BERTScore is for summaries only: a classification run needs no BERTScore model installed
    bert = None if args.bertscore_model == "none" or spec.type != "generation" else resolve_model_path(
        args.bertscore_model)
    results = baselines(args, labelling, splits)
    names = distinct_names(adapters)  # results of two adapters with one name must not share a folder
    for adapter in ([None] if base else []) + list(adapters):
        model_labelling, annotator = labelling.for_model(adapter), base
        if adapter is not None:
            record = model_labelling.record
            base_model = bases.get(record.base_model, record.kind, record.labels)
            annotator = load_annotator(model_labelling, model=PeftModel.from_pretrained(base_model, str(adapter)),
                                       cpu_bf16=args.cpu_bf16, tie_margin=args.bf16_tie_margin)
        name = base.name if adapter is None else names[Path(adapter)]
        for split in splits:
            result, split_labelling = evaluate_split(args, model_labelling, annotator, name, split, adapters, bert)
            results.append(result)
        if args.annotations:  # the labels of the last split's rule
            from annotune.labelling.agreement import human_agreement

            results[-1]["agreement"] = human_agreement(
                split_labelling, annotator, args.annotations, args.annotation_id_column,
                args.annotation_label_column, [r["id"] for r in labelling.splits.get("train", [])], args.mode,
                args.batch_size)
        if adapter is not None:
            unfold_lora(annotator.model)
            annotator.model.unload()  # detach the adapter; the base model serves the next one
    if base is not None and args.few_shot_grid:
        results += few_shot_results(args, labelling, base, splits, adapters, bert)
    if spec.type == "classification":
        add_baseline_differences(results, spec.label_names, args.bootstrap, args.seed)
    for r in results:
        write_model_results(staging / safe_name(r["name"]) / r["split"], r["metrics"], r["records"],
                            f"{r['name']} on {r['split']}")
    return results


def evaluate_split(args, model_labelling, annotator, name: str, split: str, adapters, bert) -> tuple:
    """One model's results on one split, and its labelling with the split's rule (bert: the
    BERTScore model's path for a summary task, else None)."""
    from dataclasses import replace

    from annotune.labelling.annotator import evaluate_rows
    from annotune.labelling.contract import settle_rule
    from annotune.data.examples import pick_split

    rows = pick_split(model_labelling.splits, split, args.max_samples, args.seed)
    rule = settle_rule(rule_settings(args), model_labelling, annotator, split, lambda: validation_rows(args, adapters))
    split_labelling = replace(model_labelling, rule=rule)
    metrics, records = evaluate_rows(split_labelling, annotator, rows, args.mode, args.batch_size, args.length_norm,
                                     args.max_new_tokens, progress=not args.quiet, n_boot=args.bootstrap,
                                     seed=args.seed, bertscore_model=bert, bertscore_layers=args.bertscore_layers,
                                     sampling=sampling(args))
    if metrics.get("truncated"):
        print(f"note: {metrics['truncated']} {split} texts were cut to fit {name}'s context "
              f"(flagged 'truncated' in predictions.jsonl)")
    return {"name": name, "split": split, "metrics": metrics, "records": records,
            "epoch": model_labelling.record and model_labelling.record.epoch, "adapter": model_labelling.adapter}, split_labelling


def few_shot_results(args, labelling, base, splits, adapters, bert) -> list:
    """The untuned base with k training rows as examples before every text (labelling/shots.py), one
    more model for each (k, selector) of --few_shot and --shot_selector, on each split: its rule fit
    on validation rows as the zero-shot base's is."""
    import copy

    from annotune.labelling.shots import shot_labelling

    results = []
    for k, selector in args.few_shot_grid:
        labelled, summary = shot_labelling(labelling, base, splits, k, selector, args.seed)
        annotator = copy.copy(base)
        annotator.prompter, annotator._completion_cache = labelled.prompter(base.tokenizer), {}
        annotator.name = f"{base.name} {k}-shot {selector}"
        for split in splits:  # shot_labelling refused any example that is a row of these splits
            result, _ = evaluate_split(args, labelled, annotator, annotator.name, split, adapters, bert)
            result["metrics"].update(summary)
            results.append(result)
    return results


def baselines(args, labelling, splits) -> list:
    """Majority and TF-IDF + LogReg rows, trained on exactly the rows the (first) adapter trained on
    (the whole train split for a base-only run)."""
    from annotune.labelling.baseline import baseline_results
    from annotune.data.examples import pick_split

    if args.baseline == "none" or labelling.reported.type != "classification" or not labelling.splits.get("train"):
        return []
    train_ids = labelling.record.train_ids if labelling.record else None
    results = []
    for split in splits:
        rows = pick_split(labelling.splits, split, args.max_samples, args.seed)
        results += baseline_results(labelling.splits, train_ids, split, rows, labelling.reported.label_names, args.bootstrap,
                                    args.seed)
    return results


def validation_rows(args, adapters) -> list:
    """The adapters' validation rows, from their dataset folder or rebuilt by their recorded ids;
    none when neither is left."""
    if not adapters:
        return []
    try:
        return labelling_of(args, adapters).splits.get("validation") or []
    except UserError:
        return []


def rule_settings(args):
    """How this run settles each model's decision rule (contract.settle_rule)."""
    from annotune.labelling.contract import RuleSettings

    return RuleSettings(decision=args.decision, objective=args.decision_objective, seed=args.seed, mode=args.mode,
                        batch_size=args.batch_size, length_norm=args.length_norm)


def sampling(args) -> dict:
    """Greedy unless --do_sample (then seeded, so a sampled evaluation can be repeated)."""
    if not args.do_sample:
        return {}
    import torch

    torch.manual_seed(args.seed)
    return {"do_sample": True, "temperature": args.temperature}


def annotation_job(args):
    """What --predict_file asks for, as the package's value (labelling/annotation.py)."""
    from annotune.labelling.annotation import AnnotationJob

    return AnnotationJob(
        predict_file=args.predict_file, text_column=args.text_column,
        output=Path(args.output or f"{args.predict_file}.labeled.csv"), overwrite=args.overwrite,
        chunk_rows=args.chunk_rows, stop_after_chunks=args.stop_after_chunks, batch_size=args.batch_size,
        mode=args.mode, length_norm=args.length_norm, max_new_tokens=args.max_new_tokens, sampling=sampling(args),
        seed=args.seed, quiet=args.quiet, quantization=args.quantization, cpu_bf16=args.cpu_bf16,
        tie_margin=args.bf16_tie_margin)


def annotate(args, labelling, adapters, base) -> int:
    """Label --predict_file with one model, resumably; chunks dealt across accelerate processes."""
    from annotune.labelling.annotation import annotate as annotate_corpus
    from annotune.labelling.contract import settle_rule

    return annotate_corpus(annotation_job(args), labelling, adapters, base,
                           lambda labelling, annotator: settle_rule(rule_settings(args), labelling, annotator, "predict",
                                                                    lambda: validation_rows(args, adapters)),
                           lambda: validation_rows(args, adapters))


def main(argv=None):
    args = parse_args(argv)
    quiet_libraries()
    from annotune.model.adapters import find_adapter, natural_order
    from annotune.labelling.agreement import load_annotations
    from annotune.labelling.annotator import BaseModels
    from annotune.base.files import ensure_new_path, remove_dir, staging_dir
    from annotune.data.labels import check_label_list
    from annotune.labelling.report import write_comparison

    if args.ensemble:
        from annotune.labelling.annotation import annotate_ensemble

        return annotate_ensemble(annotation_job(args), args.ensemble, BaseModels(args.quantization),
                                 lambda adapter: labelling_of(args, [adapter], rows=False), args.decision,
                                 args.decision_objective)
    found = {}
    for name in args.adapters_name:  # one adapter given twice (by name and by path) is evaluated once
        path = find_adapter(name)
        found.setdefault(path.resolve(), path)
    # The first given stays first (the reference of vs_first_adapter); the rest in natural order (a glob's epoch10 last).
    given = list(found.values())
    adapters = given[:1] + [a for a in natural_order(given) if a not in given[:1]]
    bases = BaseModels(args.quantization)  # each base model loaded once, adapters attached in turn
    labelling = labelling_of(args, adapters, rows=not args.predict_file)
    base = base_annotator(args, labelling, bases)  # None unless --base_only
    if args.predict_file:
        return annotate(args, labelling, adapters, base)
    spec = labelling.reported
    check_label_list(args.label_name, spec.label_names)
    if args.annotations:  # read them now: a bad file fails before the evaluation, not after it
        load_annotations(args.annotations, spec, args.annotation_id_column, args.annotation_label_column)
    out_dir = Path(args.output_dir or Path("runs") / "eval" / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    ensure_new_path(out_dir, False, what="--output_dir", kind="dir", can_overwrite=False)
    staging = staging_dir(out_dir)
    try:
        results = evaluate_models(args, labelling, adapters, base, staging, bases)
        print(write_comparison(vars(args), spec, results, staging, out_dir, labelling.source, args.table))
    finally:
        remove_dir(staging)  # gone already when published; removed on any error
    print(f"results in {out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
