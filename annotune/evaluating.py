"""What evaluate.py does, step by step: find adapters, load the base once, pick the evaluation rows
(the adapters' own dataset and split), evaluate every model, and write the reports."""
from __future__ import annotations

import ast
import json
import random
import time
from pathlib import Path

from .evaluation import load_annotator, read_adapter_info
from .io import UserError, atomic_write_json, atomic_write_text, publish_dir, remove_dir, run_manifest, staging_dir
from .tasks import norm_label

RUNS_DIR = Path("runs")


def find_adapter(name: str) -> Path:
    """An adapter folder by path, or by its name under runs/ (the seeds' --adapters_name NAME)."""
    path = Path(name)
    if path.is_dir():
        read_adapter_info(path)  # a clear error when it is not an adapter
        return path
    matches = sorted(RUNS_DIR.glob(f"*/{name}"))
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"adapter name {name!r} matches several folders: {[str(m) for m in matches]}; give a path")
    raise UserError(f"adapter {name!r} not found (neither a folder nor a name under {RUNS_DIR}/)")


def natural_order(paths) -> list:
    """Paths with their numbers compared as numbers: a shell glob's ...-epoch10 before ...-epoch5 is undone."""
    import re

    def key(path):
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]

    return sorted(paths, key=key)


class BaseModels:
    """Each base model is loaded once per evaluate.py call; adapters are attached to it and detached."""

    def __init__(self, quantization: str):
        self.quantization, self.loaded = quantization, {}

    def get(self, name: str, kind: str, labels):
        from .models import load_model

        key = (name, kind, tuple(labels) if kind == "classifier" else None)
        if key not in self.loaded:
            self.loaded[key] = load_model(name, kind, self.quantization, num_labels=len(labels) or None,
                                          label_names=labels or None)
        return self.loaded[key]


def base_annotator(args, adapters, bases: BaseModels):
    """The untuned base model as an annotator (with --base_only), on the adapters' task and prompt."""
    for adapter in adapters:
        trained_on = read_adapter_info(adapter)["base_model"]
        if args.model_name and args.model_name != trained_on:
            raise UserError(f"adapter {adapter} was trained on {trained_on}, not on --model_name {args.model_name}")
    if not args.base_only:
        return None
    from .data import load_dataset_folder
    from .models import DEFAULT_CAUSAL_LM, load_config, model_kind
    from .tasks import TaskSpec, load_task

    if adapters:
        info = read_adapter_info(adapters[0])
        spec = TaskSpec.from_dict(info["task_spec"], source=str(adapters[0])).merged(info.get("merge"))
        name, prompt = args.model_name or info["base_model"], info["prompt"]
    elif args.dataset_name:
        _, manifest, spec = load_dataset_folder(args.dataset_name)
        name, prompt = args.model_name or DEFAULT_CAUSAL_LM, manifest["prompt"]
    else:
        spec = load_task(args.task or "drug_reviews", args.merge)
        name = args.model_name or DEFAULT_CAUSAL_LM
        prompt = {"template": args.template, "with_definitions": not args.without_definitions}
    kind = model_kind(load_config(name))
    model = bases.get(name, kind, spec.label_names)
    return load_annotator(base_model=name, spec=spec, prompt=prompt, model=model)


def check_label_name(text, spec):
    """--label_name (the seeds' flag) must name the task's labels: parsed as JSON or a literal, never run."""
    if not text:
        return
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        try:
            names = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise UserError(f"--label_name is neither JSON nor a literal list: {text!r}") from None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UserError("--label_name must be a list of strings")
    if sorted(map(norm_label, names)) != sorted(map(norm_label, spec.label_names)):
        raise UserError(f"--label_name {list(names)} differs from the task's labels {spec.label_names}")


def evaluation_data(args, adapters, base):
    """(spec, {split: rows}, info): the adapters' own dataset, or the base run's task."""
    from .data import load_dataset_folder, prepare_splits

    if adapters:
        infos = [read_adapter_info(a) for a in adapters]
        tasks = {(i["task"], tuple(i["labels"])) for i in infos}
        if len(tasks) > 1:
            raise UserError(f"the adapters were trained on different tasks or label sets: {sorted(tasks)}")
        folder = infos[0]["dataset"]
        if not Path(folder).is_dir():
            raise UserError(f"the dataset of adapter {adapters[0]} is gone ({folder})")
        dsdict, manifest, spec = load_dataset_folder(folder)
        rows = {split: [dict(r) for r in dsdict[split]] for split in dsdict}
        return spec, rows, {"dataset": folder, "splits": manifest.get("splits")}
    if args.dataset_name:
        dsdict, manifest, spec = load_dataset_folder(args.dataset_name)
        rows = {split: [dict(r) for r in dsdict[split]] for split in dsdict}
        return spec, rows, {"dataset": args.dataset_name, "splits": manifest.get("splits")}
    splits, info = prepare_splits(base.spec, base.prompter, seed=args.seed)
    return base.spec, splits, {"dataset": f"task {base.spec.name}", "splits": info["splits"]}


def pick_rows(rows_by_split, split, max_samples, seed):
    if split not in rows_by_split:
        raise UserError(f"split {split!r} is not in the dataset (it has: {', '.join(rows_by_split)})")
    rows = rows_by_split[split]
    if not rows:
        raise UserError(f"split {split!r} is empty")
    if max_samples and len(rows) > max_samples:
        keep = set(r["id"] for r in random.Random(seed).sample(rows, max_samples))
        rows = [r for r in rows if r["id"] in keep]
    return rows


def new_results_dir(args, spec) -> Path:
    out = Path(args.output_dir or RUNS_DIR / "eval" / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already holds results; choose another --output_dir")
    return out


def evaluate_models(args, adapters, base, rows_by_split, out_dir, bases: BaseModels):
    """Evaluate the base (if any) and every adapter on the chosen split(s); write per-model results
    into a staging folder that report() publishes."""
    from peft import PeftModel

    from .evaluation import evaluate_rows
    from .models import resolve_model_path
    from .report import write_model_results

    staging = staging_dir(out_dir)
    splits = ["train", "validation"] if args.table else [args.split]
    bert = None if args.bertscore_model == "none" else resolve_model_path(args.bertscore_model)
    results = []
    for annotator_or_adapter in ([base] if base else []) + list(adapters):
        adapter = None if annotator_or_adapter is base else annotator_or_adapter
        if adapter is None:
            annotator = base
        else:
            info = read_adapter_info(adapter)
            base_model = bases.get(info["base_model"], info.get("kind", "causal"), info["labels"])
            annotator = load_annotator(adapter=str(adapter), model=PeftModel.from_pretrained(base_model, str(adapter)))
        name = annotator.name
        for split in splits:
            rows = pick_rows(rows_by_split, split, args.max_samples, args.seed)
            metrics, records = evaluate_rows(annotator, rows, args.mode, args.batch_size, args.length_norm,
                                             args.max_new_tokens, progress=not args.quiet, n_boot=args.bootstrap,
                                             seed=args.seed, bertscore_model=bert,
                                             bertscore_layers=args.bertscore_layers, sampling=sampling(args))
            write_model_results(staging / safe_name(name) / split, metrics, records, f"{name} on {split}")
            results.append({"name": name, "split": split, "metrics": metrics, "records": records,
                            "epoch": annotator.info.get("epoch"), "adapter": str(adapter) if adapter else None})
        if args.annotations:
            results[-1]["agreement"] = human_agreement(args, annotator, rows_by_split)
        if adapter is not None:
            annotator.model.unload()  # detach the adapter; the base model serves the next one
    return results, staging


def sampling(args) -> dict:
    """Greedy unless --do_sample (then seeded, so a sampled evaluation can be repeated)."""
    if not args.do_sample:
        return {}
    import torch

    torch.manual_seed(args.seed)
    return {"do_sample": True, "temperature": args.temperature}


def safe_name(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


def human_agreement(args, annotator, rows_by_split):
    from .agreement import agreement_rows, agreement_table, load_annotations

    humans, texts = load_annotations(args.annotations, annotator.spec, args.annotation_id_column,
                                     args.annotation_label_column)
    train_ids = [r["id"] for r in rows_by_split.get("train", [])]
    ids = agreement_rows(humans, train_ids)
    if not ids:
        raise UserError("no row is annotated by every --annotations file outside the training split")
    preds = annotator.predict([{"id": i, "text": texts[i]} for i in ids], args.mode, args.batch_size)
    predictions = {i: p["prediction"] for i, p in zip(ids, preds)}
    return agreement_table(annotator.name, predictions, humans, ids, annotator.spec.label_names)


def report(args, spec, evaluated, out_dir, info):
    from .agreement import agreement_markdown
    from .report import comparison_table, epoch_table, paired_win_rate, plot_boxplots

    results, staging = evaluated
    try:
        parts = [f"# {spec.name}: {', '.join(sorted({r['split'] for r in results}))} split\n",
                 comparison_table(results, spec.type)]
        if args.table:
            by_model = {}
            for r in results:
                by_model.setdefault(r["name"], {"epoch": r["epoch"], "train": {}, "val": {}})
                by_model[r["name"]]["train" if r["split"] == "train" else "val"] = r["metrics"]
            parts.append("\n" + epoch_table(list(by_model.values())))
        for r in results:
            if r.get("agreement"):
                parts.append(f"\n{r['name']}: " + agreement_markdown(r["agreement"]))
                atomic_write_json(staging / safe_name(r["name"]) / "agreement.json", r["agreement"])
        if spec.type == "generation":
            per_model = {r["name"]: [rec["scores"] for rec in r["records"]] for r in results}
            plot_boxplots(staging / "scores_boxplot.png", per_model, ["rouge1", "rouge2", "rougeL", "bertscore_f1"])
            base = next((r for r in results if r["name"].startswith("base:")), None)
            for r in results:
                if base and r is not base and len(r["records"]) == len(base["records"]):
                    for key in ("rougeL", "bertscore_f1"):
                        if key in r["records"][0]["scores"]:
                            share = paired_win_rate(base["records"], r["records"], key)
                            parts.append(f"\n{r['name']} beats the base on {key} for {100 * share:.1f}% of examples.")
        text = "\n".join(parts) + "\n"
        atomic_write_text(staging / "comparison.md", text)
        manifest = run_manifest(args, task=spec.name, data=info,
                                models=[{"name": r["name"], "split": r["split"], "adapter": r["adapter"],
                                         "ids": [rec["id"] for rec in r["records"]]} for r in results])
        atomic_write_json(staging / "manifest.json", manifest)
        publish_dir(staging, out_dir)
    finally:
        remove_dir(staging)
    print(text)
    print(f"results in {out_dir}/")


def annotate(args, adapters, base):
    """Label --predict_file with one model, resumably; shards across accelerate processes."""
    from accelerate import PartialState

    from .annotate import annotate_file, check_input, merge_shards

    if len(adapters) + (1 if base else 0) != 1:
        raise UserError("--predict_file labels with one model: one adapter, or --base_only")
    output = Path(args.output or f"{args.predict_file}.labeled.csv")
    if output.exists() and not args.overwrite:
        raise UserError(f"{output} already exists; pass --overwrite or choose another --output")
    check_input(args.predict_file, args.text_column)
    annotator = base or load_annotator(adapter=str(adapters[0]), quantization=args.quantization)
    from .models import device_name

    state = PartialState(cpu=device_name() == "cpu")
    result = annotate_file(annotator, args.predict_file, args.text_column, str(output), args.batch_size, args.mode,
                           args.chunk_rows, state.process_index, state.num_processes, args.stop_after_chunks,
                           progress=not args.quiet, max_new_tokens=args.max_new_tokens)
    if result["interrupted"]:
        print(f"stopped after {result['labelled']} rows; run the same command again to resume")
        return 0
    state.wait_for_everyone()
    if state.is_main_process:
        count = merge_shards(str(output), state.num_processes, result["columns"])
        print(f"labelled {count} rows -> {output}")
    return 0
