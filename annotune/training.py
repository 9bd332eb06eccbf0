"""What train.py does, step by step: prepare_run (data, model, run folder), log_start, fit (the loop
with per-epoch evaluation and adapter saving), finish (manifest, learning curve)."""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .io import UserError, atomic_write_json, publish_dir, remove_dir, run_manifest, staging_dir
from .tasks import TASKS_DIR

RUNS_DIR = Path("runs")


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    args: object
    spec: object
    prompter: object
    kind: str
    splits: dict
    data_info: dict
    out_dir: Path
    model: object = None
    tokenizer: object = None
    accelerator: object = None
    feats: list = field(default_factory=list)
    feat_stats: dict = field(default_factory=dict)
    eval_rows: list = field(default_factory=list)
    run_name: str = ""
    manifest: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    saved: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    save_epochs: set = field(default_factory=set)
    started: float = field(default_factory=time.time)


def short_model_name(name: str) -> str:
    return Path(name.rstrip("/")).name


def resolve_kind(mode: str, config, spec) -> str:
    from .models import is_encoder_only, is_seq2seq_model

    kind = mode
    if mode == "auto":
        kind = "seq2seq" if is_seq2seq_model(config) else ("classifier" if is_encoder_only(config) else "causal")
    if kind == "classifier" and spec.type != "classification":
        raise UserError(f"task {spec.name} is a generation task; a classification head cannot learn it")
    if kind == "causal" and (is_seq2seq_model(config) or is_encoder_only(config)):
        raise UserError(f"--mode causal needs a decoder-only model; {config.model_type} is not one")
    return kind


def load_data(args, tokenizer, is_seq2seq: bool):
    """(spec, prompter, splits, info) from a preprocess.py folder, a task name or a hub dataset."""
    from .data import load_dataset_folder, prepare_splits
    from .prompts import Prompter
    from .tasks import load_task

    name = args.dataset_name
    if name and Path(name).is_dir():
        dsdict, manifest, spec = load_dataset_folder(name)
        if args.merge and args.merge != manifest.get("merge"):
            raise UserError(f"{name} was built with merge {manifest.get('merge')}; rebuild it with --merge {args.merge}")
        prompt = manifest["prompt"]
        prompter = Prompter(spec, prompt["template"], prompt["with_definitions"], tokenizer, is_seq2seq)
        splits = {split: [dict(row) for row in dsdict[split]] for split in dsdict}
        info = {k: manifest.get(k) for k in ("task", "merge", "labels", "prompt", "splits", "task_spec")}
        info["dataset_folder"] = str(Path(name).resolve())
        return spec, prompter, splits, info
    task = args.task or name or "drug_reviews"
    if name and not (TASKS_DIR / f"{name}.yaml").exists() and not name.endswith((".yaml", ".yml")):
        return load_hub_data(args, name, tokenizer, is_seq2seq)
    spec = load_task(task, args.merge)
    prompter = Prompter(spec, args.template, not args.without_definitions, tokenizer, is_seq2seq)
    splits, info = prepare_splits(spec, prompter, seed=args.seed)
    return spec, prompter, splits, info


def load_hub_data(args, name, tokenizer, is_seq2seq: bool):
    """A hub dataset with 'text' and 'label' columns (labels sorted for determinism)."""
    from .data import load_hub_rows, split_examples, split_summary
    from .prompts import Prompter
    from .tasks import TaskSpec

    if "/" not in name:
        raise UserError(f"--dataset_name {name!r} is neither a dataset folder, a task ({TASKS_DIR}) nor a hub id")
    rows = load_hub_rows({"path": name, "splits": {"train": "train"}})
    if not rows["train"] or not {"text", "label"} <= set(rows["train"][0]):
        raise UserError(f"hub dataset {name} needs 'text' and 'label' columns")
    labels = sorted({str(r["label"]) for r in rows["train"]})
    spec = TaskSpec.from_dict({"name": name.split("/")[-1], "type": "classification",
                               "data": {"hub": {"path": name}, "text": "{text}", "label_column": "label"},
                               "labels": labels, "prompt": {"instruction": "Classify the text into one of: {label_list}.",
                                                            "input": "Text: {text}\nLabel:"}}, source=f"hub:{name}")
    examples = {"train": [{"id": f"train-{i}", "text": r["text"], "label": str(r["label"])} for i, r in enumerate(rows["train"])]}
    splits = split_examples(examples, 0.2, 0.0, args.seed)
    prompter = Prompter(spec, args.template, not args.without_definitions, tokenizer, is_seq2seq)
    for split_rows in splits.values():
        for ex in split_rows:
            ex.update(prompter.render(ex))
    return spec, prompter, splits, {"task": spec.name, "splits": split_summary(splits), "task_spec": spec.to_dict()}


def prepare_output_dir(args, default_name: str) -> Path:
    out = Path(args.output_dir or RUNS_DIR / default_name)
    if args.resume_from_checkpoint:
        if not out.exists():
            raise UserError(f"--resume_from_checkpoint: {out} does not exist")
        return out
    if out.exists() and any(out.iterdir()):
        if not args.overwrite_output_dir:
            raise UserError(f"{out} already holds a run; pass --overwrite_output_dir, --resume_from_checkpoint "
                            "or another --output_dir")
    return out


def build_model(args, kind, spec, tokenizer):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from .models import load_model

    labels = spec.label_names if kind == "classifier" else None
    model = load_model(args.model_name, kind, args.quantization, num_labels=len(labels) if labels else None,
                       label_names=labels)
    if kind == "classifier" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "is_quantized", False) or getattr(model, "quantization_method", None):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = args.target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    task_type = {"causal": "CAUSAL_LM", "classifier": "SEQ_CLS", "seq2seq": "SEQ_2_SEQ_LM"}[kind]
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=targets, task_type=task_type)
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"LoRA: {str(err).splitlines()[0][:200]}") from None
    return model


def prepare_run(args) -> Run:
    from accelerate import Accelerator

    from .models import device_name, load_config, load_tokenizer
    from .trainer import build_features

    config = load_config(args.model_name)
    tokenizer = load_tokenizer(args.model_name, for_generation=False)
    # The kind depends on the task type too, so the spec is read (through the data) first.
    is_seq2seq = args.mode == "seq2seq" or (args.mode == "auto" and getattr(config, "is_encoder_decoder", False))
    spec, prompter, splits, info = load_data(args, tokenizer, is_seq2seq)
    kind = resolve_kind(args.mode, config, spec)
    if not splits.get("train"):
        raise UserError("the train split is empty")
    run_name = f"{short_model_name(args.model_name)}-{spec.name}"
    out_dir = prepare_output_dir(args, run_name)
    # cpu=True on a CPU machine lets torchrun / accelerate launch run data-parallel with gloo.
    accelerator = Accelerator(cpu=device_name() == "cpu", log_with=None if args.report_to == "none" else args.report_to)

    train_rows = splits["train"]
    if args.max_train_samples and len(train_rows) > args.max_train_samples:
        train_rows = random.Random(args.seed).sample(train_rows, args.max_train_samples)
    feats, stats = build_features(kind, tokenizer, train_rows, spec.label_names, args.max_seq_length)
    if not feats:
        raise UserError(f"no training example fits --max_seq_length {args.max_seq_length}")
    eval_rows = splits.get("validation") or []
    if args.max_eval_samples and len(eval_rows) > args.max_eval_samples:
        eval_rows = random.Random(args.seed).sample(eval_rows, args.max_eval_samples)
    if spec.type == "classification":
        for row in list(train_rows) + list(eval_rows):
            if row["label"] not in spec.label_names:
                raise UserError(f"gold label {row['label']!r} of {row['id']} is not in the label set {spec.label_names}")

    run = Run(args=args, spec=spec, prompter=prompter, kind=kind, splits=splits, data_info=info, out_dir=out_dir,
              tokenizer=tokenizer, accelerator=accelerator, feats=feats, feat_stats=stats, eval_rows=eval_rows,
              run_name=run_name)
    last = args.epochs if args.stop_condition == "epochs" else None
    run.save_epochs = parse_save_epochs(args.save_epochs, last)
    if accelerator.is_main_process and not args.resume_from_checkpoint:
        if out_dir.exists() and args.overwrite_output_dir:
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    run.model = build_model(args, kind, spec, tokenizer)
    lengths = [len(f["input_ids"]) for f in feats]
    run.feat_stats.update(longest=max(lengths), mean_length=sum(lengths) / len(lengths))
    run.manifest = run_manifest(args, task=spec.name, merge=spec.merge, kind=kind, labels=spec.label_names,
                                prompt=prompter.describe(), device=str(accelerator.device),
                                num_processes=accelerator.num_processes, quantization=args.quantization,
                                features=run.feat_stats, train_examples=len(feats),
                                eval_examples=[r["id"] for r in eval_rows], data=info)
    if accelerator.is_main_process:
        atomic_write_json(out_dir / "manifest.json", run.manifest)
        if "dataset_folder" not in info and not (out_dir / "dataset").exists():
            from .data import write_dataset_folder

            manifest = run_manifest(args, **info)
            write_dataset_folder(out_dir / "dataset", splits, manifest, num_preview=3)
    return run


def parse_save_epochs(text, last):
    if not text:
        return {last} if last else set()
    try:
        epochs = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise UserError(f"--save_epochs takes comma-separated epochs, got {text!r}") from None
    if last and max(epochs) > last:
        raise UserError(f"--save_epochs {text}: the run has only {last} epochs")
    return epochs | ({last} if last else set())


def log_start(run: Run) -> None:
    """One rendered example with the loss span marked, trainable parameters, dropped examples."""
    if not run.accelerator.is_main_process:
        return
    from .prompts import encode_example, mark_loss_span

    args, stats = run.args, run.feat_stats
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in run.model.parameters())
    print(f"task {run.spec.name} ({run.kind}), model {args.model_name}, template {run.prompter.template}, "
          f"{len(run.feats)} training examples, {len(run.eval_rows)} validation examples")
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    if stats["dropped_too_long"]:
        print(f"dropped {stats['dropped_too_long']} examples longer than --max_seq_length {args.max_seq_length}")
    if stats["truncated"]:
        print(f"truncated {stats['truncated']} texts to --max_seq_length {args.max_seq_length} (classifier input)")
    if args.max_seq_length > 2 * stats["longest"] and args.max_seq_length > 256:
        print(f"note: --max_seq_length {args.max_seq_length} but the longest example has {stats['longest']} tokens "
              "(nothing is padded to it; it only caps)")
    row = run.splits["train"][0]
    if run.kind == "causal":
        print("example (loss on >>> <<<):\n" + mark_loss_span(run.tokenizer, encode_example(run.tokenizer, row["prompt"], row["completion"])))
    elif run.kind == "seq2seq":
        print(f"example input:\n{row['prompt']}\ntarget (loss): {row['completion']}")
    else:
        print(f"example text: {row['text'][:300]}\nlabel: {row['label']}")


def evaluate_now(run: Run, n_boot: int = 200) -> dict:
    from .evaluation import Annotator, evaluate_rows

    if not run.eval_rows:
        return {}
    annotator = Annotator(run.accelerator.unwrap_model(run.model), run.tokenizer, run.spec, run.prompter,
                          run.kind, run.run_name)
    metrics, _ = evaluate_rows(annotator, run.eval_rows, "score", run.args.eval_batch_size, n_boot=n_boot,
                               max_new_tokens=128)
    run.model.train()
    keep = ("n", "accuracy", "balanced_accuracy", "macro_f1", "invalid", "rouge1", "rouge2", "rougeL", "exact_match",
            "ci95", "mode")
    return {k: v for k, v in metrics.items() if k in keep}


def save_adapter(run: Run, name: str, epoch, step: int, metrics: dict) -> Path:
    """The adapter, its tokenizer and annotune.json (task spec, labels, prompt, metrics), atomically."""
    from .evaluation import ADAPTER_INFO

    final = run.out_dir / name
    tmp = staging_dir(final)
    try:
        run.accelerator.unwrap_model(run.model).save_pretrained(str(tmp))
        run.tokenizer.save_pretrained(str(tmp))
        spec_dict, merge = run.spec.saved_form()
        info = {"base_model": run.args.model_name, "kind": run.kind, "task": run.spec.name, "merge": merge,
                "labels": run.spec.label_names, "prompt": run.prompter.describe(), "task_spec": spec_dict,
                "epoch": epoch, "step": step, "validation_metrics": metrics,
                "dataset": run.data_info.get("dataset_folder") or str((run.out_dir / "dataset").resolve()),
                "run_dir": str(run.out_dir.resolve()), "git_commit": run.manifest.get("git_commit")}
        atomic_write_json(tmp / ADAPTER_INFO, info)
        if final.exists():
            remove_dir(final)  # a resumed run re-saving the same epoch
        publish_dir(tmp, final)
    finally:
        remove_dir(tmp)
    return final


def fit(run: Run) -> dict:
    from .metrics import primary_metric
    from .trainer import append_jsonl, latest_checkpoint, train_loop

    args, acc = run.args, run.accelerator
    log_path = run.out_dir / "log.jsonl"
    checkpoint_dir = run.out_dir / "checkpoints"
    resume_path = None
    if args.resume_from_checkpoint:
        resume_path = latest_checkpoint(checkpoint_dir) if args.resume_from_checkpoint == "latest" \
            else Path(args.resume_from_checkpoint)
        if resume_path is None or not resume_path.exists():
            raise UserError(f"no checkpoint to resume from in {checkpoint_dir}")
    metric_name = primary_metric(run.spec.type)
    patience = {"bad": 0}

    def on_step(row):
        if acc.is_main_process:
            append_jsonl(log_path, {"type": "step", **row})
            if args.eval_strategy == "steps" and row["step"] % args.eval_steps == 0:
                metrics = evaluate_now(run)
                append_jsonl(log_path, {"type": "eval", "epoch": round(row["epoch"], 3), "step": row["step"], **metrics})
                if metrics:
                    print(f"step {row['step']}: validation {metric_name} {metrics[metric_name]:.3f}")

    def on_epoch_end(epoch, step, done):
        metrics = evaluate_now(run) if args.eval_strategy == "epoch" and acc.is_main_process else {}
        if acc.is_main_process:
            if metrics:
                append_jsonl(log_path, {"type": "eval", "epoch": epoch, "step": step, **metrics})
                ci = metrics.get("ci95", {}).get(metric_name)
                print(f"epoch {epoch}: validation {metric_name} {metrics[metric_name]:.3f}"
                      + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                      + (f", accuracy {metrics['accuracy']:.3f}" if "accuracy" in metrics else ""))
            run.history.append({"epoch": epoch, "step": step, **metrics})
            last = args.stop_condition == "steps" and done
            if epoch in run.save_epochs or last:
                suffix = f"epoch{epoch}" if args.stop_condition == "epochs" else f"step{step}"
                run.saved.append(str(save_adapter(run, f"{run.run_name}-{suffix}", epoch, step, metrics)))
            value = metrics.get(metric_name)
            if value is not None and (not run.best or value > run.best["value"]):
                run.best = {"epoch": epoch, "step": step, "value": value, "metric": metric_name}
                patience["bad"] = 0
                if args.keep_best:
                    run.saved.append(str(save_adapter(run, f"{run.run_name}-best", epoch, step, metrics)))
            elif value is not None:
                patience["bad"] += 1
        acc.wait_for_everyone()
        stop = bool(args.early_stopping_patience) and patience["bad"] >= args.early_stopping_patience
        if stop and acc.is_main_process:
            print(f"early stopping: no better validation {metric_name} for {patience['bad']} epochs")
        return stop

    cfg = {"kind": run.kind, "shared_prefix": args.shared_prefix, "class_weights": args.class_weights,
           "n_labels": len(run.spec.label_names), "learning_rate": args.learning_rate,
           "weight_decay": args.weight_decay, "batch_size": args.train_batch_size,
           "gradient_accumulation_steps": args.gradient_accumulation_steps, "stop_condition": args.stop_condition,
           "steps": args.steps, "epochs": args.epochs, "lr_scheduler": args.lr_scheduler,
           "warmup_ratio": args.warmup_ratio, "max_grad_norm": args.max_grad_norm, "seed": args.seed,
           "save_every_steps": args.save_every_steps, "checkpoint_dir": checkpoint_dir, "resume_path": resume_path,
           "progress": not args.quiet and os.isatty(2), "record_examples": args.record_examples}
    stop_after = args.stop_after_steps
    result = train_loop(cfg, acc, run.model, run.tokenizer, run.feats, on_epoch_end, on_step,
                        lambda step: bool(stop_after) and step >= stop_after)
    if args.record_examples:
        atomic_write_json(run.out_dir / f"examples_seen.rank{acc.process_index}.json", result["examples_seen"])
    return result


def finish(run: Run, result: dict) -> None:
    acc = run.accelerator
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return
    rows = [json.loads(line) for line in (run.out_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r["type"] == "step"]
    speed = [r["tokens_per_s"] for r in steps[1:] if r.get("tokens_per_s")] or \
            [r["tokens_per_s"] for r in steps if r.get("tokens_per_s")]
    seconds = result["train_seconds"] or float("nan")
    summary = {"steps": result["step"], "shared_prefix_tokens": result["prefix_tokens"],
               "tokens_per_s_mean": sum(speed) / len(speed) if speed else None,
               "train_seconds": round(result["train_seconds"], 2), "useful_tokens": result["useful_tokens"],
               "processed_tokens": result["processed_tokens"],
               "useful_tokens_per_s": result["useful_tokens"] / seconds,
               "wall_time_s": round(time.time() - run.started, 1), "adapters": run.saved, "best": run.best,
               "history": run.history}
    run.manifest["result"] = summary
    atomic_write_json(run.out_dir / "manifest.json", run.manifest)
    plot_learning_curve(rows, run.out_dir / "learning_curve.png", run.spec.type)
    print(f"trained {result['step']} steps in {summary['train_seconds']:.0f} s of optimisation "
          f"({summary['useful_tokens_per_s']:.0f} useful tokens/s; shared prefix {result['prefix_tokens']} tokens); "
          f"{summary['wall_time_s']:.0f} s in all")
    for path in run.saved:
        print(f"saved adapter {path}")
    print(f"run folder {run.out_dir} (manifest.json, log.jsonl, learning_curve.png)")


def plot_learning_curve(rows, path: Path, task_type: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import primary_metric

    steps = [r for r in rows if r["type"] == "step"]
    evals = [r for r in rows if r["type"] == "eval" and primary_metric(task_type) in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="tab:blue", lw=1, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        metric = primary_metric(task_type)
        ax2.plot([r["step"] for r in evals], [r[metric] for r in evals], "o-", color="tab:red",
                 label=f"validation {metric}")
        ax2.set_ylabel(f"validation {metric}", color="tab:red")
        ax2.set_ylim(0, 1)
    ax.set_title("learning curve")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)

