"""Fine-tune a base model into an annotator with (Q)LoRA.

    python train.py                                           # tiny run: drug_reviews, smollm2-135m
    python train.py --task politosphere --merge pol_unpol_oth --epoch 3 --save_epochs 1,2,3
    python train.py --task drug_reviews --merge neutral_vs_rest     # learns the 3 labels, gives the 2 merged ones
    python train.py --task politosphere --stop_condition steps --steps 3
    python train.py --dataset_name data/sbic_offensive-chat --epoch 2     # a folder from preprocess.py
    python train.py --task imdb --model_name minilm-l6 --mode classifier --class_weights auto
    python train.py --task dialogsum --model_name google/flan-t5-base    # seq2seq (hub)
    python train.py --epoch 50 --max_seq_length 512 --base_model_name meta-llama/Llama-2-13b-chat-hf
    accelerate launch --config_file configs/accelerate_ddp.yaml train.py --task sst2
    python train.py --task sbic_offensive --model_name minilm-l6 --folds 5 --output_dir runs/kfold   # cross-fitting
    python train.py --task sbic_offensive --model_name minilm-l6 --folds 5 --output_dir runs/kfold --fold 2  # one fold

Modes (picked from the task and the model, --mode overrides): causal = instruction SFT with the loss
on the answer tokens (and EOS) only; classifier = a sequence-classification head (class-weighted
cross-entropy); seq2seq = an encoder-decoder LM. Quantization `auto` is 4-bit NF4 on CUDA, none on CPU.
A training example longer than --max_seq_length has its text cut from the end, the answer kept whole,
as labelling cuts a long text (--long_examples drop leaves it out instead; counted in manifest.json).
The loop is transformers.Trainer (annotune/training/trainer.py): checkpoints, resume, accumulation, DDP and
trackers (--report_to) are the library's.

Writes to --output_dir (default runs/<model>-<task>): the adapter of the epoch with the best
validation score, <model>-<task>-epochN/ (adapter, tokenizer, annotune.json with task spec, labels,
prompt, decision rule and validation metrics; --epoch is the most epochs trained, --save_epochs keeps
more), manifest.json (arguments, versions, git commit, split ids), log.jsonl (loss,
tokens/s per step; eval per epoch), learning_curve.png, dataset/ (the exact rows trained on) and
checkpoints/ (for --resume_from_checkpoint).

--folds K trains K such runs instead, one per stratified fold of the labelled rows (the source's
train + validation), each holding its fold out and validating on a share of the others; the same
command again resumes; the folds can run side by side, one `--fold k` per machine or GPU on a
shared --output_dir, the last to finish gathering oof.csv (every labelled row's out-of-fold
probabilities), oof_metrics.json and folds.json (annotune/training/folds.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from annotune.base.cli import UserError, check_ranges, note_ignored, parser, quiet_libraries, run_cli
from annotune.labelling.metrics import decision_objectives
from annotune.model.models import DEFAULT_CAUSAL_LM
from annotune.data.prompts import template_names
from annotune.data.task import DEFAULT_TASK
from annotune.training.training_set import LONG_EXAMPLES

if TYPE_CHECKING:
    from annotune.training.training_set import TrainingData

# what log.jsonl and annotune.json keep of a validation pass (and every metric of metrics.LABEL_METRICS)
EPOCH_METRICS = ("n", "invalid", "rouge1", "rouge2", "rougeL", "exact_match", "ci95", "mode", "decision_rule",
                 "selection_score", "collapsed")
# Flags added after runs were made: a resumed run whose manifest lacks one was trained as this says.
ADDED_LATER = {"merge_at": "training", "lora_speedups": "on", "long_examples": "drop"}


def build_parser():
    p = parser(__doc__)
    add_data_and_model_flags(p)
    add_training_flags(p)
    add_saving_flags(p)
    add_fold_flags(p)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    tiny = 1e-12  # "greater than 0" for floats
    check_ranges(p, vars(args), {
        "epochs": (1, None, "at least 1"), "learning_rate": (tiny, None, "a number > 0"),
        "train_batch_size": (1, None, "at least 1"), "eval_batch_size": (1, None, "at least 1"),
        "gradient_accumulation_steps": (1, None, "at least 1"), "max_seq_length": (8, None, "at least 8"),
        "weight_decay": (0, None, "a number >= 0"), "warmup_ratio": (0, 0.99, "in [0, 1)"),
        "max_grad_norm": (0, None, "a number >= 0"), "lora_r": (1, None, "at least 1"),
        "lora_alpha": (tiny, None, "> 0"), "lora_dropout": (0, 0.99, "in [0, 1)"),
        "max_train_samples": (1, None, "at least 1"), "max_eval_samples": (0, None, "at least 0 (0 = all)"),
        "early_stopping_patience": (0, None, "at least 0"), "save_every_steps": (0, None, "at least 0"),
        "steps": (0, None, "at least 0")})
    if args.stop_condition == "steps" and args.steps <= 0:
        p.error("--stop_condition steps needs --steps N > 0")
    if args.eval_strategy == "steps" and args.eval_steps <= 0:
        p.error("--eval_strategy steps needs --eval_steps N > 0")
    if args.task and args.dataset_name:
        p.error("give --task or --dataset_name, not both")
    if args.stop_condition != "steps":
        note_ignored(p, vars(args), ("steps",), "it goes with --stop_condition steps")
    if args.eval_strategy != "steps":
        note_ignored(p, vars(args), ("eval_steps",), "it goes with --eval_strategy steps")
    check_fold_flags(p, args)
    return args


def check_fold_flags(p, args) -> None:
    if not args.folds:
        if args.fold is not None:
            p.error("--fold k goes with --folds K")
        note_ignored(p, vars(args), ("fold_validation_share",), "it goes with --folds")
        return
    if args.folds < 2:
        p.error(f"--folds {args.folds}: K-fold training needs K >= 2")
    if args.fold is not None and not 0 <= args.fold < args.folds:
        p.error(f"--fold {args.fold}: folds are numbered 0 to {args.folds - 1}")
    if not 0 < args.fold_validation_share < 0.9:
        p.error(f"--fold_validation_share {args.fold_validation_share}: a share in (0, 0.9)")
    for flag, why in (("resume_from_checkpoint", "a K-fold run resumes when the same command is given again"),
                      ("max_train_samples", "the folds cover every labelled row: sample the labelled set with "
                                            "preprocess.py first")):
        if getattr(args, flag) is not None:
            p.error(f"--{flag} cannot go with --folds: {why}")


def add_data_and_model_flags(p):
    g = p.add_argument_group("data")
    g.add_argument("--task", help=f"task spec name or YAML path (default: {DEFAULT_TASK} unless --dataset_name)")
    g.add_argument("--merge", help="a named label merge of the task (e.g. pol_unpol_oth)")
    g.add_argument("--merge_at", choices=["auto", "prediction", "training"], default="auto",
                   help="with --merge: train on the task's finer labels and merge after prediction (a merged label's "
                        "probability is the sum of its finer labels'), or train on the merged labels; validation, the "
                        "decision rule and the epoch kept use the merge either way; auto = prediction in causal and "
                        "seq2seq mode where the rows keep their finer labels (folders of this preprocess.py do), "
                        "training for a classification head, where it measured no gain (default: auto)")
    g.add_argument("--dataset_name", help="a dataset folder from preprocess.py, a task name, or a hub dataset id")
    g.add_argument("--template", default="auto", choices=template_names(),
                   help="prompt template when building from a task (default: auto)")
    g.add_argument("--without_definitions", action="store_true", help="leave label definitions out of the prompt")
    g.add_argument("--max_train_samples", type=int, help="use a seeded sample of this many training examples (default: all)")
    g.add_argument("--max_eval_samples", type=int,
                   help="validation examples evaluated per epoch, a seeded sample; 0 = all (default: classification "
                        "all up to 2,000, the rows its decision rule is fit on (with fewer, evaluate.py fits the rule); "
                        "generation 200)")
    g = p.add_argument_group("model")
    g.add_argument("--model_name", "--base_model_name", dest="model_name", default=DEFAULT_CAUSAL_LM,
                   help=f"hub id, local folder or alias: {DEFAULT_CAUSAL_LM} (default), minilm-l6")
    g.add_argument("--mode", choices=["auto", "causal", "classifier", "seq2seq"], default="auto",
                   help="what to train (default: auto, from the task and the model)")
    g.add_argument("--quantization", choices=["auto", "4bit", "8bit", "none"], default="auto",
                   help="auto = 4-bit NF4 on CUDA, none on CPU (default: auto)")
    g.add_argument("--lora_r", type=int, default=16, help="LoRA rank (default: 16)")
    g.add_argument("--lora_alpha", type=int, default=32, help="LoRA alpha (default: 32)")
    g.add_argument("--lora_dropout", type=float, default=0.05,
                   help="LoRA dropout probability (default: 0.05; rounded to a multiple of 1/65536 under --lora_speedups on)")
    g.add_argument("--lora_speedups", choices=["on", "off"], default="on",
                   help="on: LoRA's dropout mask drawn 4 elements per 64-bit random number (p rounded: 0.05 -> "
                        "0.050003) and one dropped-out input shared by the layers that read it (q, k, v; gate, up), "
                        "and LoRA's update added inside the base layer's matmul (same arithmetic); off: PEFT's own "
                        "forward and nn.Dropout, independent masks, slower on a CPU (default: on)")
    g.add_argument("--target_modules", default="all-linear",
                   help="comma-separated module names, or all-linear (default: all-linear)")


def add_training_flags(p):
    g = p.add_argument_group("training")
    g.add_argument("--epoch", "--epochs", dest="epochs", type=int, default=None,
                   help="epochs at most; the best one on validation is kept (default: 3, from bench/choose_defaults.sh; "
                        "more on small data, so that training takes at least 150 optimizer steps, at most 50 epochs)")
    g.add_argument("--stop_condition", choices=["epochs", "steps"], default="epochs",
                   help="stop after --epoch epochs or --steps optimizer steps (default: epochs)")
    g.add_argument("--steps", type=int, default=0, help="optimizer steps with --stop_condition steps")
    g.add_argument("--train_batch_size", type=int, default=8, help="examples per micro-batch per process (default: 8)")
    g.add_argument("--eval_batch_size", type=int, default=16, help="examples per evaluation batch (default: 16)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per step (default: 1)")
    g.add_argument("--learning_rate", type=float, default=2e-4, help="peak learning rate (default: 2e-4)")
    g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    g.add_argument("--lr_scheduler", choices=["linear", "cosine", "constant"], default="linear",
                   help="decay after warmup (default: linear)")
    g.add_argument("--warmup_ratio", type=float, default=0.03, help="fraction of steps warming up (default: 0.03)")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping, 0 = off (default: 1.0)")
    g.add_argument("--max_seq_length", type=int, default=1024,
                   help="longest example in tokens, prompt and answer (default: 1024)")
    g.add_argument("--long_examples", choices=LONG_EXAMPLES, default="cut",
                   help="an example longer than --max_seq_length: cut its text from the end, the answer kept whole "
                        "(as labelling cuts a long text), or leave it out (runs before this flag did); counted "
                        "either way (default: cut)")
    g.add_argument("--class_weights", default="none",
                   help="per-label loss weights: auto (inverse frequency), none, or w1,w2,...; in causal and seq2seq "
                        "mode they weight each answer's tokens (default: none)")
    g.add_argument("--balance", choices=["auto", "none", "oversample", "weights"], default="auto",
                   help="imbalanced labels: oversample minority labels each epoch, or weight each answer's loss by "
                        "inverse label frequency (= --class_weights auto); auto = oversample for classification "
                        "tasks in causal or seq2seq mode, none otherwise (default: auto)")
    g.add_argument("--shared_prefix", choices=["auto", "on", "off"], default="auto",
                   help="run the prompts' common prefix once per batch (default: auto, when >= 16 tokens)")
    g.add_argument("--cpu_bf16", choices=["auto", "on", "off"], default="auto",
                   help="CPU training (and its validation scoring) under bf16 autocast: matmuls in bf16, weights, "
                        "optimizer and loss in fp32; "
                        "auto = on where the CPU has bf16 instructions (AVX512-BF16, AMX), 4x its fp32 matmuls "
                        "there; CUDA trains in bf16 anyway (default: auto)")
    g.add_argument("--gradient_checkpointing", choices=["auto", "on", "off"], default="auto",
                   help="recompute each decoder layer's activations in the backward instead of keeping them: a "
                        "layer keeps only its input (at 7B, batch 8: ~12 GiB less), for ~30%% more step time; the "
                        "shared prefix still runs once per batch; auto = on for CUDA, off on the CPU (default: auto)")
    g.add_argument("--seed", type=int, default=42, help="seed of model init, data order and splits (default: 42)")


def add_saving_flags(p):
    g = p.add_argument_group("evaluation and saving")
    g.add_argument("--eval_strategy", choices=["epoch", "steps", "no"], default="epoch",
                   help="evaluate on the validation split after each epoch, or every --eval_steps (default: epoch)")
    g.add_argument("--eval_steps", type=int, default=0, help="with --eval_strategy steps: every N steps")
    g.add_argument("--early_stopping_patience", type=int, default=0,
                   help="stop after this many epochs without a better validation metric (default: 0 = off)")
    g.add_argument("--keep_best", action="store_true", help="also save the best epoch under the name <run>-best")
    g.add_argument("--decision_objective", choices=decision_objectives(), default="macro_f1",
                   help="what the decision rule saved with each adapter maximises on validation (default: macro_f1)")
    g.add_argument("--save_epochs", help="epochs whose adapter is saved: comma-separated numbers, and/or 'last' or "
                                         "'all' (default: only the epoch with the best validation score, as "
                                         "<run>-epochN; the last epoch when there is no validation)")
    g.add_argument("--save_every_steps", type=int, default=0, help="also checkpoint every N steps (default: 0)")
    g.add_argument("--output_dir", help="run folder (default: runs/<model>-<task>)")
    g.add_argument("--overwrite_output_dir", action="store_true", help="replace a run folder that holds results")
    g.add_argument("--resume_from_checkpoint", nargs="?", const="latest",
                   help="continue the run in --output_dir from its latest (or the given) checkpoint")
    g.add_argument("--report_to", default="none", help="experiment tracker, e.g. wandb or tensorboard (default: none)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--stop_after_steps", type=int, default=0, help=argparse.SUPPRESS)  # tests: simulate a crash
    g.add_argument("--record_examples", action="store_true", help=argparse.SUPPRESS)  # tests: ids seen per process


def add_fold_flags(p):
    g = p.add_argument_group("K-fold training (cross-fitting)")
    g.add_argument("--folds", type=int, default=0,
                   help="train K models on the labelled rows (the source's train + validation; its test split is "
                        "left alone), each holding out one stratified fold: <output_dir>/fold_k/run/ are ordinary "
                        "runs, oof.csv every labelled row's out-of-fold probabilities (for evaluate.py --ensemble "
                        "and estimate.py --crossfit); the same command again resumes (default: 0 = off)")
    g.add_argument("--fold", type=int, help="with --folds: train only fold k (0-based), to run the folds side by side "
                                            "on several machines or GPUs; the run that finds all K done gathers "
                                            "oof.csv (default: every fold in turn)")
    g.add_argument("--fold_validation_share", type=float, default=0.15,
                   help="with --folds: the share of each fold's training rows held for its validation (epoch kept, "
                        "decision rule); never a row of the fold it predicts (default: 0.15)")


def build_model(args, data: TrainingData, tokenizer):
    from annotune.model.models import add_lora, load_model

    labels = data.labelling.scored.label_names if data.labelling.kind == "classifier" else None
    model = load_model(args.model_name, data.labelling.kind, args.quantization, num_labels=len(labels) if labels else None,
                       label_names=labels)
    if data.labelling.kind == "classifier" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return add_lora(model, data.labelling.kind, args.lora_r, args.lora_alpha, args.lora_dropout, args.target_modules,
                    args.lora_speedups == "on")


def schedule_of(args):
    from annotune.training.trainer import Schedule

    return Schedule(batch_size=args.train_batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
                    learning_rate=args.learning_rate, weight_decay=args.weight_decay, lr_scheduler=args.lr_scheduler,
                    warmup_ratio=args.warmup_ratio, max_grad_norm=args.max_grad_norm, epochs=args.epochs,
                    max_steps=args.steps if args.stop_condition == "steps" else -1, seed=args.seed,
                    report_to=args.report_to, progress=not args.quiet)


def loss_options(args, data: TrainingData):
    from annotune.training.trainer import LossOptions

    return LossOptions(kind=data.labelling.kind, shared_prefix=args.shared_prefix, class_weights=args.class_weights,
                       n_labels=len(data.labelling.scored.label_names), record_examples=args.record_examples,
                       balance=args.balance, cpu_bf16=args.cpu_bf16, gradient_checkpointing=args.gradient_checkpointing)


def resolved_arguments(args, data: TrainingData) -> argparse.Namespace:
    """The flags with the defaults that depend on the data resolved (before the run folder is
    opened, so that a resume compares the values used): where a merge applies
    (contract.resolved_flags), --balance auto, and --epoch's default (3, more on small data)."""
    from annotune.labelling.contract import resolved_flags
    from annotune.training.training_set import DEFAULT_EPOCHS, MIN_STEPS, default_epochs

    resolved = resolved_flags(data.labelling)
    if args.balance == "auto":
        scored = data.labelling.scored
        resolved["balance"] = "oversample" if scored.type == "classification" and data.labelling.kind != "classifier" \
            else "none"
    balance = resolved.get("balance", args.balance)
    if args.epochs is None and args.stop_condition == "steps":
        resolved["epochs"] = DEFAULT_EPOCHS  # unused: --steps ends the run
    elif args.epochs is None:
        per_step = args.train_batch_size * args.gradient_accumulation_steps * int(os.environ.get("WORLD_SIZE", 1))
        resolved["epochs"] = default_epochs(data.feats, balance, per_step)
        if resolved["epochs"] > DEFAULT_EPOCHS:
            print(f"{len(data.feats)} training examples: up to {resolved['epochs']} epochs, so that training takes at "
                  f"least {MIN_STEPS} optimizer steps (--epoch sets it)")
    return argparse.Namespace(**{**vars(args), **resolved})


def save_plan(args, data: TrainingData):
    """When to evaluate, save adapters and stop, from the flags (checked before anything is written).
    By default the adapter kept is the epoch with the best validation score: for classification the
    macro-F1 of the labels it will give (with its decision rule where that is applied)."""
    from annotune.labelling.metrics import primary_metric
    from annotune.training.epoch_end import SavePlan, parse_save_epochs

    last = args.epochs if args.stop_condition == "epochs" else None
    epochs, keep = parse_save_epochs(args.save_epochs, last)
    classify = data.labelling.scored.type == "classification"
    return SavePlan(metric=primary_metric(data.labelling.scored.type), eval_strategy=args.eval_strategy, eval_steps=args.eval_steps,
                    save_epochs=epochs, keep="last" if last is None else keep, last_epoch=last,
                    select="selection_score" if classify else "", by_steps=last is None,
                    keep_best=args.keep_best, patience=args.early_stopping_patience,
                    save_every_steps=args.save_every_steps, stop_after_steps=args.stop_after_steps)


def callback_for(args, data: TrainingData, plan, model, tokenizer, out_dir: Path, manifest: dict, run_name: str,
                 is_main):
    """EvaluateAndSave with the real evaluation (annotator.evaluate_rows on the validation rows) and
    the adapter writer (annotune.json: base model, task spec, prompt, metrics)."""
    from annotune.model.adapters import save_adapter
    from annotune.labelling.annotator import Annotator, evaluate_rows
    from annotune.labelling.decision import epoch_rule
    from annotune.training.epoch_end import EvaluateAndSave
    from annotune.base.faults import crash_point
    from annotune.base.files import remove_dir
    from annotune.labelling.metrics import LABEL_METRICS
    from annotune.model.models import base_identity, cpu_autocast, resolved_quantization

    labelling = data.labelling

    def evaluate_now():
        if not data.eval_rows:
            return {}
        # Validation scores in the arithmetic training runs in (bf16 autocast on a CPU with bf16
        # instructions): the decision rule saved with the adapter records it (evaluate.py checks).
        annotator = Annotator(model, tokenizer, labelling.scored, data.prompter, labelling.kind, run_name,
                              autocast=cpu_autocast(args.cpu_bf16, model))
        crash_point("train.evaluate")
        metrics, records = evaluate_rows(labelling, annotator, data.eval_rows, "score", args.eval_batch_size, n_boot=200,
                                         max_new_tokens=128)
        model.train()
        if labelling.reported.type == "classification":  # the decision rule saved with this epoch's adapter
            metrics.update(epoch_rule(records, labelling.reported.label_names, args.decision_objective,
                                      annotator.precision, metrics, data.rule_fit))
        kept = EPOCH_METRICS + tuple(m.key for m in LABEL_METRICS)
        return {k: v for k, v in metrics.items() if k in kept}

    base, quantization = base_identity(args.model_name), resolved_quantization(args.quantization)
    split_ids = {name: [r["id"] for r in rows] for name, rows in labelling.splits.items()}

    def save(suffix, epoch, step, metrics):
        record = labelling.adapter_record(
            base_model=args.model_name, base=base, epoch=epoch, step=step, validation_metrics=metrics,
            decision_rule=metrics.get("decision_rule"), train_ids=[f["id"] for f in data.feats], split_ids=split_ids,
            max_words=labelling.source.get("max_words"), quantization=quantization,
            dataset=labelling.source.get("dataset_folder") or str(out_dir / "dataset"), run_dir=str(out_dir),
            git_commit=manifest.get("git_commit"))
        save_adapter(model, tokenizer, out_dir / f"{run_name}-{suffix}", record)

    def discard(suffix):
        remove_dir(out_dir / f"{run_name}-{suffix}")

    return EvaluateAndSave(plan, evaluate_now, save, out_dir / "log.jsonl", is_main, discard=discard)


def finish(trainer, callback, out_dir: Path, manifest: dict, started: float) -> None:
    """The result summary into manifest.json, the learning curve, and what was written."""
    from annotune.base.faults import crash_point
    from annotune.base.files import atomic_write_json, read_jsonl
    from annotune.labelling.report import plot_learning_curve
    from annotune.training.trainer import run_result

    crash_point("train.finish")
    result = manifest["result"] = run_result(trainer, callback, out_dir, time.time() - started)
    atomic_write_json(out_dir / "manifest.json", manifest)
    plot_learning_curve(read_jsonl(out_dir / "log.jsonl"), out_dir / "learning_curve.png", callback.plan.metric)
    print(f"trained {result['steps']} steps in {result['train_seconds']:.0f} s of optimisation "
          f"({result['useful_tokens_per_s']:.0f} useful tokens/s; shared prefix {result['shared_prefix_tokens']} "
          f"tokens); {result['wall_time_s']:.0f} s in all")
    if callback.best and len(callback.history) > 1:
        print(f"best validation epoch {callback.best['epoch']} of {len(callback.history)} "
              f"({callback.best['metric']} {callback.best['value']:.3f})")
    if callback.best and callback.best.get("collapsed"):
        print("warning: the adapter kept gives every validation row the same label (majority collapse); "
              f"try --balance {'weights' if manifest['args'].get('balance') == 'oversample' else 'oversample'}, "
              "more epochs or rows; a "
              "ranking AUC near 0.5 in evaluate.py's metrics.json means the model has nothing to rank")
    for path in result["adapters"]:
        print(f"saved adapter {path}")
    print(f"run folder {out_dir} (manifest.json, log.jsonl, learning_curve.png)")


def main(argv=None):
    args = parse_args(argv)
    quiet_libraries()
    if args.folds:
        return train_folds(args)  # K ordinary runs, each calling main
    from transformers import set_seed

    from annotune.base.files import atomic_write_json
    from annotune.model.models import load_config, load_tokenizer
    from annotune.training.resume import check_same_precision, checkpoint_step, open_run_folder
    from annotune.training.epoch_end import stop_on_ctrl_c
    from annotune.training.trainer import AnnotuneTrainer, trainer_arguments
    from annotune.labelling.contract import TrainingSource
    from annotune.training.training_set import load_training_data

    started = time.time()
    set_seed(args.seed)
    tokenizer = load_tokenizer(args.model_name, for_generation=False)
    data = load_training_data(TrainingSource.from_flags(vars(args)), tokenizer, load_config(args.model_name), DEFAULT_TASK)
    args = resolved_arguments(args, data)
    if (args.balance != "none" or args.class_weights != "none") and data.labelling.scored.type != "classification":
        raise UserError("--balance and --class_weights need a classification task")
    run_name = f"{Path(args.model_name.rstrip('/')).name}-{data.labelling.reported.name}{'-at_prediction' * data.labelling.merges}"
    plan = save_plan(args, data)
    out_dir = Path(args.output_dir or Path("runs") / run_name)
    targs = trainer_arguments(schedule_of(args), out_dir)
    is_main = targs.process_index == 0
    folder = open_run_folder(out_dir, vars(args), Path(targs.output_dir), args.overwrite_output_dir,
                             args.resume_from_checkpoint, (args.dataset_name, args.model_name, args.task), ADDED_LATER)
    if folder.finished:
        print(f"{folder.path} finished already ({folder.finished['steps']} steps; adapters: "
              f"{', '.join(Path(a).name for a in folder.finished['adapters'])}): nothing to resume")
        return 0
    out_dir, resume = folder.path, folder.checkpoint
    model = build_model(args, data, tokenizer)
    manifest = run_manifest_of(args, data, targs, folder)
    callback = callback_for(args, data, plan, model, tokenizer, out_dir, manifest, run_name, is_main)
    trainer = AnnotuneTrainer(model, targs, data.feats, tokenizer, loss_options(args, data), [callback])
    if folder.resuming:
        check_same_precision(folder.manifest, trainer.autocast)
    manifest.setdefault("bf16_autocast", trainer.autocast)  # a resumed run's stays its first
    if trainer.autocast and is_main:
        print("note: training runs under bf16 autocast (this CPU's bf16 matmuls; weights, optimizer and loss in fp32; "
              "--cpu_bf16 off for fp32)")
    callback.attach(trainer)
    if is_main:  # every check has passed: only now is the run folder written
        start_folder(args, folder, manifest, data, model, tokenizer)
    if folder.resuming:
        callback.restore(checkpoint_step(resume))
    if args.stop_condition == "steps" and checkpoint_step(resume) >= args.steps:
        trainer.state.global_step = args.steps  # trained and saved; killed before the summary (the Trainer would step on)
    else:
        with stop_on_ctrl_c(callback):
            trainer.train(resume_from_checkpoint=resume)
    if args.record_examples:
        atomic_write_json(out_dir / f"examples_seen.rank{targs.process_index}.json", trainer.examples_seen)
    if callback.interrupted:
        print(f"stopped at step {trainer.state.global_step} with a checkpoint; resume with --resume_from_checkpoint")
        return 0 if args.stop_after_steps else 130
    if is_main:
        finish(trainer, callback, out_dir, manifest, started)
    return 0


def run_manifest_of(args, data: TrainingData, targs, folder) -> dict:
    """manifest.json: arguments, versions, data and split ids; a resumed run keeps its first one."""
    from annotune.base.files import run_manifest
    from annotune.training.resume import resumed_manifest

    labelling = data.labelling
    manifest = run_manifest(vars(args), task=labelling.reported.name, merge=labelling.reported.merge, kind=labelling.kind,
                            labels=labelling.reported.label_names, prompt=data.prompter.describe(), device=str(targs.device),
                            num_processes=targs.world_size, quantization=args.quantization, features=data.stats,
                            train_examples=len(data.feats), eval_examples=[r["id"] for r in data.eval_rows],
                            data=labelling.source)
    return resumed_manifest(folder.manifest, manifest, folder.checkpoint) if folder.resuming else manifest


def start_folder(args, folder, manifest: dict, data: TrainingData, model, tokenizer) -> None:
    from annotune.data.examples import write_dataset_folder
    from annotune.base.files import atomic_write_json, run_manifest
    from annotune.training.training_set import describe_start

    folder.create(args.overwrite_output_dir)
    atomic_write_json(folder.path / "manifest.json", manifest)
    labelling = data.labelling
    if "dataset_folder" not in labelling.source and not (folder.path / "dataset").exists():
        write_dataset_folder(folder.path / "dataset", labelling.splits, run_manifest(vars(args), **labelling.source), num_preview=3)
    if folder.resuming and not folder.checkpoint:
        print(f"no checkpoint in {folder.path} yet: training again from the start")
    describe_start(data, model, tokenizer, args.model_name, args.max_seq_length)


# ---------------------------------------------------------------- K-fold training (--folds)
def fold_argv(args, data: Path, out: Path, resolved: dict, resume: bool) -> list:
    """train.py's flags for one fold's ordinary run on the fold's dataset folder: the user's model,
    training and saving flags and --max_eval_samples; of the other data flags the values the
    labelling resolved (the folder has its prompt and merge built in)."""
    p = build_parser()
    own = {a.dest for g in p._action_groups if g.title in ("data", "K-fold training (cross-fitting)")
           for a in g._group_actions} - {"max_eval_samples"}
    own |= {"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "help"}
    argv = ["--dataset_name", str(data), "--output_dir", str(out)]
    argv += [x for flag, value in resolved.items() for x in (f"--{flag}", str(value))]
    for action in p._actions:
        value = getattr(args, action.dest, None)
        if action.dest in own or not action.option_strings or value == action.default:
            continue
        argv += [action.option_strings[0]] if action.nargs == 0 else [action.option_strings[0], str(value)]
    return argv + (["--resume_from_checkpoint"] if resume else [])


def train_folds(args) -> int:
    """--folds K: K ordinary runs, each on a fold's dataset folder, then the held-out rows scored and
    oof.csv gathered (annotune/training/folds.py)."""
    from annotune.base.files import remove_dir, run_manifest
    from annotune.labelling.contract import TrainingSource, for_training, resolved_flags
    from annotune.model.models import load_config, load_tokenizer
    from annotune.training import folds

    labelling = for_training(TrainingSource.from_flags(vars(args)), load_tokenizer(args.model_name, for_generation=False),
                             load_config(args.model_name), DEFAULT_TASK)
    if labelling.reported.type != "classification":
        raise UserError("--folds needs a classification task (out-of-fold probabilities of its labels)")
    run = Path(args.output_dir or Path("runs") / f"{Path(args.model_name.rstrip('/')).name}-"
                                                  f"{labelling.reported.name}-folds{args.folds}")
    if run.exists() and any(run.iterdir()) and not (run / folds.FOLDS_FILE).exists() and not args.overwrite_output_dir:
        raise UserError(f"{run} holds something other than a K-fold run; pass another --output_dir")
    if args.overwrite_output_dir and run.exists():
        remove_dir(run)
    plan = folds.plan_folds(labelling, args.folds, args.seed, args.fold_validation_share)
    plan = folds.settle_plan(run, dict(plan, manifest=run_manifest(vars(args), task=labelling.reported.name)))
    resolved = resolved_flags(labelling)
    return folds.run_folds(run, plan, labelling, run_manifest(vars(args), **labelling.source),
                           [args.fold] if args.fold is not None else range(args.folds),
                           lambda data, out, resume: main(fold_argv(args, data, out, resolved, resume)),
                           args.eval_batch_size, args.cpu_bf16)


if __name__ == "__main__":
    sys.exit(run_cli(main))
