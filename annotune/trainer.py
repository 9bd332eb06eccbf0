"""The training loop behind train.py: a `transformers.Trainer` whose `compute_loss` runs our loss
for (Q)LoRA on a causal LM (instruction SFT, loss on the completion only), a sequence-
classification head (class-weighted cross-entropy) or a seq2seq LM, fed by a batch sampler that
groups examples of similar length.

Speed: dynamic padding with length-grouped batches, logits only where the loss is (lm.py), and the
prompts' shared prefix (system prompt, definitions) run once per batch with gradients through its
cache. Everything else is the Trainer's: optimizer, scheduler, gradient accumulation, clipping,
mixed precision, DDP / FSDP / DeepSpeed through accelerate, `--report_to` trackers, and
checkpoints that hold the trainable weights, optimizer, scheduler, trainer state and every RNG
state (Python, NumPy, torch CPU and CUDA), so a resumed run continues where it stopped.
`EvaluateAndSave` runs train.py's validation, adapter saving and early stopping at epoch ends (or
every N steps), before the Trainer writes that point's checkpoint.
"""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from . import prefix_attention
from .cli import UserError
from .faults import crash_point
from .files import append_jsonl, read_jsonl
from .lm import common_prefix_length, completion_loss, hidden_states, pad_batch, run_prefix
from .models import cpu_autocast
from .prompts import encode_example, encode_prompt

MIN_SHARED_PREFIX = 16  # below this many tokens a shared prefix is not worth a separate forward
DEFAULT_EPOCHS, MIN_STEPS, MAX_DEFAULT_EPOCHS = 3, 150, 50  # train.py's --epoch default (see default_epochs)
TRAINABLE_FILE = "trainable.safetensors"


# -------------------------------------------------------------------- features and batches
def build_features(kind, tokenizer, rows, label_names, max_seq_length, max_target_length=256):
    """Tokenised training examples and counts of what was dropped or truncated."""
    feats, dropped, truncated = [], 0, 0
    index = {name: i for i, name in enumerate(label_names or [])}
    eos = tokenizer.eos_token_id
    for row in rows:
        if kind == "causal":
            enc = encode_example(tokenizer, row["prompt"], row["completion"])
            if len(enc["input_ids"]) > max_seq_length:
                dropped += 1  # never truncate: that would cut the answer away
                continue
            feats.append({"input_ids": enc["input_ids"], "labels": enc["labels"], "id": row["id"]})
            if row.get("label") in index:  # which label the answer is (for --balance)
                feats[-1]["label"] = index[row["label"]]
        elif kind == "classifier":
            ids = tokenizer(row["text"], truncation=False)["input_ids"]
            if len(ids) > max_seq_length:
                truncated += 1  # a head reads the text, not an answer: truncating loses no label
                ids = ids[: max_seq_length - 1] + ids[-1:]
            feats.append({"input_ids": ids, "label": index[row["label"]], "id": row["id"]})
        else:  # seq2seq
            src = encode_prompt(tokenizer, row["prompt"])
            tgt = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
            if len(src) > max_seq_length or len(tgt) > max_target_length:
                dropped += 1
                continue
            feats.append({"input_ids": src, "labels": tgt, "id": row["id"]})
            if row.get("label") in index:
                feats[-1]["label"] = index[row["label"]]
    return feats, {"dropped_too_long": dropped, "truncated": truncated}


def class_weights(spec_value: str, labels_index, n_labels):
    """`auto` = inverse frequency (mean 1), `none`, or explicit comma-separated weights."""
    if spec_value in (None, "none"):
        return None
    if spec_value == "auto":
        counts = torch.bincount(torch.as_tensor(labels_index), minlength=n_labels).float()
        return torch.where(counts > 0, counts.sum() / (n_labels * counts.clamp(min=1)), torch.zeros_like(counts))
    try:
        weights = torch.tensor([float(x) for x in spec_value.split(",")])
    except ValueError:
        raise UserError(f"--class_weights takes auto, none or {n_labels} numbers, got {spec_value!r}") from None
    if len(weights) != n_labels or (weights < 0).any():
        raise UserError(f"--class_weights needs {n_labels} non-negative numbers, got {spec_value!r}")
    return weights


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of similar length in a seeded random order that depends only on (seed, epoch), so
    every process and every resume sees the same epoch. Each process takes every world-th batch,
    and all take the same number (the few left over are dropped that epoch)."""

    def __init__(self, lengths, batch_size: int, seed: int, world: int = 1, rank: int = 0, oversample_labels=None):
        # Named `per_batch`, not `batch_size`: accelerate's shard wrapper would otherwise hold back
        # every batch shorter than batch_size (the last, smaller one).
        self.lengths, self.per_batch, self.seed, self.world, self.rank = list(lengths), batch_size, seed, world, rank
        self.epoch = 0
        # --balance oversample: each epoch, every label's examples plus a fresh seeded draw of
        # repeats up to the largest label's count.
        self.by_label = None
        if oversample_labels is not None:
            self.by_label = {}
            for i, label in enumerate(oversample_labels):
                self.by_label.setdefault(label, []).append(i)
        self.epoch_size = epoch_size(len(self.lengths), oversample_labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_batches(self, epoch: int) -> list:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        if self.by_label:
            largest = self.epoch_size // len(self.by_label)
            order = [i for label in sorted(self.by_label) for i in
                     self.by_label[label] + rng.choices(self.by_label[label], k=largest - len(self.by_label[label]))]
        rng.shuffle(order)
        mega = self.per_batch * 32
        batches = []
        for start in range(0, len(order), mega):
            group = sorted(order[start:start + mega], key=lambda i: -self.lengths[i])
            batches.extend(group[i:i + self.per_batch] for i in range(0, len(group), self.per_batch))
        rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        return math.ceil(self.epoch_size / self.per_batch) // self.world

    def __iter__(self):
        yield from self.epoch_batches(self.epoch)[self.rank::self.world][: len(self)]


def collate(kind, feats, pad_id):
    if kind == "causal":
        ids, mask, labels = pad_batch([f["input_ids"] for f in feats], pad_id, "right", [f["labels"] for f in feats])
    elif kind == "classifier":
        ids, mask = pad_batch([f["input_ids"] for f in feats], pad_id, "right")
        labels = torch.tensor([f["label"] for f in feats])
    else:
        ids, mask = pad_batch([f["input_ids"] for f in feats], pad_id, "right")
        tgt = [f["labels"] for f in feats]
        _, _, labels = pad_batch(tgt, pad_id, "right", tgt)  # padding is -100, never the pad id
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "ids": [f.get("id") for f in feats]}
    if kind != "classifier" and all("label" in f for f in feats):
        batch["answer_label"] = torch.tensor([f["label"] for f in feats])
    return batch


def shared_prefix_ids(kind, feats, mode):
    if kind != "causal" or mode == "off":
        return []
    plen = common_prefix_length([f["input_ids"] for f in feats], keep=1)
    # Never let the prefix reach a loss-carrying token.
    plen = min([plen] + [next(i for i, l in enumerate(f["labels"]) if l != -100) for f in feats])
    if mode == "auto" and plen < MIN_SHARED_PREFIX:
        return []
    return feats[0]["input_ids"][:plen]


def describe_start(data, model, tokenizer, model_name: str, max_seq_length: int) -> None:
    """Print one rendered example with the loss span marked, trainable parameters, dropped examples
    (data: train.py's TrainingData)."""
    from .examples import data_report
    from .prompts import mark_loss_span

    spec, kind, prompter, stats, example = data.reported, data.kind, data.prompter, data.stats, data.train_rows[0]

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"task {spec.name} ({kind}), model {model_name}, template {prompter.template}, "
          f"{len(data.feats)} training examples, {len(data.eval_rows)} validation examples")
    if data.merge_after:
        print(f"learning the {len(data.spec.labels)} labels before the merge ({', '.join(data.spec.label_names)}); "
              f"validation and the labels given are the merge's ({', '.join(spec.label_names)})")
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    for line in data_report(data.data_info):
        print(f"note: {line}")
    if stats["dropped_too_long"]:
        print(f"dropped {stats['dropped_too_long']} examples longer than --max_seq_length {max_seq_length}")
    if stats["truncated"]:
        print(f"truncated {stats['truncated']} texts to --max_seq_length {max_seq_length} (classifier input)")
    if max_seq_length > 2 * stats["longest"] and max_seq_length > 256:
        print(f"note: --max_seq_length {max_seq_length} but the longest example has {stats['longest']} tokens "
              "(nothing is padded to it; it only caps)")
    if kind == "causal":
        encoded = encode_example(tokenizer, example["prompt"], example["completion"])
        print("example (loss on >>> <<<):\n" + mark_loss_span(tokenizer, encoded))
    elif kind == "seq2seq":
        print(f"example input:\n{example['prompt']}\ntarget (loss): {example['completion']}")
    else:
        print(f"example text: {example['text'][:300]}\nlabel: {example['label']}")


# -------------------------------------------------------------------- what train.py trains on
def epoch_size(n: int, oversample_labels=None) -> int:
    """Examples per epoch: n, or with oversampling every label repeated up to the largest one's count."""
    if not oversample_labels:
        return n
    counts = {}
    for label in oversample_labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) * len(counts)


def default_epochs(feats, balance: str, examples_per_step: int) -> int:
    """--epoch's default: DEFAULT_EPOCHS, raised on small data so that training takes at least
    MIN_STEPS optimizer steps (at most MAX_DEFAULT_EPOCHS epochs). The defaults were chosen where 3
    epochs are 90-270 steps (bench/choose_defaults.sh, bench/quality.py); on Politosphere's 56
    training rows they were 36 steps and the model learned nothing (test ranking AUC 0.52); 13
    epochs (156 steps) gave AUC 0.61 and balanced accuracy 0.47 (docs/results.md)."""
    labels = [f["label"] for f in feats] if balance == "oversample" else None
    steps = max(1, math.ceil(epoch_size(len(feats), labels) / examples_per_step))
    return min(MAX_DEFAULT_EPOCHS, max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / steps)))


@dataclass
class TrainingData:
    """What train.py trains and validates on, with how it was read (data_info goes to the manifest)."""
    spec: object  # task.TaskSpec
    kind: str  # causal, classifier or seq2seq
    prompter: object  # prompts.Prompter
    splits: dict  # split name -> rendered rows (as written to the dataset folder)
    data_info: dict
    train_rows: list = field(default_factory=list)
    eval_rows: list = field(default_factory=list)
    feats: list = field(default_factory=list)  # tokenised training examples
    stats: dict = field(default_factory=dict)  # dropped / truncated counts, lengths
    merge_after: object = None  # --merge_at prediction: the merged spec reported (spec is then the finer one)

    @property
    def reported(self):
        """The spec of the labels validation scores and the adapter gives."""
        return self.merge_after or self.spec


def load_training_data(args, tokenizer, config, default_task: str) -> TrainingData:
    """The task (from a preprocess.py folder, a task spec or a hub dataset), its splits, the
    sampled training and validation rows, and the tokenised training examples (args: train.py's)."""
    from .examples import sample_rows

    data = read_task_data(args, tokenizer, config, default_task)
    if not data.splits.get("train"):
        raise UserError("the train split is empty")
    args.merge_at = merge_at(getattr(args, "merge_at", "training"), data)  # resolved: the manifest records it
    if args.merge_at == "prediction":
        learn_finer_labels(data, tokenizer)
    data.train_rows = sample_rows(data.splits["train"], args.max_train_samples, args.seed)
    data.eval_rows = sample_rows(data.splits.get("validation") or [], args.max_eval_samples, args.seed)
    if data.merge_after:  # the same rows, answered with their finer labels
        data.train_rows = [dict(row, label=row["fine_label"], **data.prompter.render(dict(row, label=row["fine_label"])))
                           for row in data.train_rows]
    if data.spec.type == "classification":
        for row, labels in [(r, data.spec.label_names) for r in data.train_rows] + \
                [(r, data.reported.label_names) for r in data.eval_rows]:
            if row["label"] not in labels:
                raise UserError(f"gold label {row['label']!r} of {row['id']} is not in the label set {labels}")
    data.feats, data.stats = build_features(data.kind, tokenizer, data.train_rows, data.spec.label_names,
                                            args.max_seq_length)
    if not data.feats:
        raise UserError(f"no training example fits --max_seq_length {args.max_seq_length}")
    lengths = [len(f["input_ids"]) for f in data.feats]
    data.stats.update(longest=max(lengths), mean_length=sum(lengths) / len(lengths))
    return data


def merge_at(asked: str, data: TrainingData) -> str:
    """--merge_at auto: instruction tuning learns a merge's finer labels where the rows keep them.
    Measured on both merged tasks of bench/quality.py (docs/results.md): drug_reviews' neutral vs
    the rest, test macro-F1 0.526 -> 0.601 and balanced accuracy 0.523 -> 0.616; Politosphere's
    pol/unpol/oth 0.393 -> 0.426 (balanced accuracy 0.474 -> 0.463, on 34 rows). A MiniLM head
    gained nothing it could rank (drug_neutral 0.475 -> 0.522 with ranking AUC 0.49; Politosphere
    one label either way), so a head trains on the merged labels."""
    if asked != "auto":
        return asked
    if not data.spec.merge_map or data.kind == "classifier":
        return "training"  # nothing is merged (the same either way), or a head (no gain measured)
    if any("fine_label" not in r for rows in data.splits.values() for r in rows):
        print(f"note: {data.data_info.get('dataset_folder')} keeps no labels from before the merge (an older "
              "preprocess.py): training on the merged labels; build it again to learn the finer ones")
        return "training"
    return "prediction"


def learn_finer_labels(data: TrainingData, tokenizer) -> None:
    """--merge_at prediction: the model learns the task's labels before the merge (prompt, answers,
    balance), on the same rows; validation, the decision rule and the epoch kept use the merge."""
    from .prompts import Prompter

    if not data.spec.merge_map:
        raise UserError("--merge_at prediction needs a merge of the task's labels: give --merge NAME")
    unknown = [r["id"] for rows in data.splits.values() for r in rows if "fine_label" not in r]
    if unknown:
        raise UserError(f"{data.data_info.get('dataset_folder')}: row {unknown[0]} has no label from before the merge "
                        "(a folder of an older preprocess.py): build it again for --merge_at prediction")
    data.merge_after, data.spec = data.spec, data.spec.unmerged
    data.prompter = Prompter(data.spec, data.prompter.template, data.prompter.with_definitions, tokenizer,
                             data.kind == "seq2seq")


def read_task_data(args, tokenizer, config, default_task: str) -> TrainingData:
    from .examples import hub_task, load_dataset_folder, prepare_splits
    from .models import resolve_kind
    from .prompts import Prompter
    from .task import TASKS_DIR, load_task

    name = args.dataset_name
    if name and Path(name).is_dir():
        splits, manifest, spec = load_dataset_folder(name)
        if args.merge and args.merge != manifest.get("merge"):
            raise UserError(f"{name} was built with merge {manifest.get('merge')}; rebuild it with --merge {args.merge}")
        kind = resolve_kind(config, args.mode, spec.type)
        prompt = manifest["prompt"]
        # A head reads the text, not the prompt: a folder rendered with a chat template still trains one.
        template = "auto" if kind == "classifier" else prompt["template"]
        prompter = Prompter(spec, template, prompt["with_definitions"], tokenizer, kind == "seq2seq")
        info = {k: manifest.get(k) for k in ("task", "merge", "labels", "prompt", "splits", "task_spec", "max_words",
                                             "dropped_rows", "duplicate_texts_across_given_splits")}
        return TrainingData(spec, kind, prompter, splits, dict(info, dataset_folder=str(Path(name).resolve())))
    if name and not (TASKS_DIR / f"{name}.yaml").exists() and not name.endswith((".yaml", ".yml")):
        if "/" not in name:
            raise UserError(f"--dataset_name {name!r} is neither a dataset folder, a task ({TASKS_DIR}) nor a hub id")
        spec = hub_task(name)
    else:
        spec = load_task(args.task or name or default_task, args.merge)
    kind = resolve_kind(config, args.mode, spec.type)
    prompter = Prompter(spec, args.template, not args.without_definitions, tokenizer, kind == "seq2seq")
    splits, info = prepare_splits(spec, prompter, seed=args.seed)
    return TrainingData(spec, kind, prompter, splits, info)


# -------------------------------------------------------------------- the loss
class LossModule(torch.nn.Module):
    """The model plus how its loss is computed. This is what the Trainer (and so DDP) wraps: the
    shared-prefix loss makes two forward passes, and both must run inside one DDP forward."""

    def __init__(self, model, kind, prefix_ids=None, weights=None, autocast: bool = False, checkpoint: bool = False):
        super().__init__()
        self.model, self.kind, self.autocast = model, kind, autocast
        self.checkpoint = checkpoint  # the causal path's layers checkpointed (annotune.checkpointing)
        self.prefix_ids = list(prefix_ids or [])
        self.register_buffer("weights", weights if weights is not None else torch.empty(0), persistent=False)
        # The Trainer must not move a bitsandbytes model (it is placed at load time).
        self.quantization_method = getattr(model, "quantization_method", None)

    def forward(self, input_ids, attention_mask, labels, answer_label=None):
        # bf16 autocast (--cpu_bf16): matmuls in bf16; the fp32 weights get fp32 gradients
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return self._loss(input_ids, attention_mask, labels, answer_label)

    def _loss(self, input_ids, attention_mask, labels, answer_label):
        weighted = bool(self.weights.numel()) and answer_label is not None
        if self.kind == "causal":
            plen = len(self.prefix_ids)
            ids, mask, labels = input_ids[:, plen:], attention_mask[:, plen:], labels[:, plen:]
            split = bool(plen) and self._split_prefix(ids, mask)
            prefix_kv = run_prefix(self.model, self.prefix_ids, self.checkpoint) if plen else None
            if not weighted:
                return completion_loss(self.model, ids, mask, labels, prefix_kv, split=split, checkpoint=self.checkpoint)
            per_token = completion_loss(self.model, ids, mask, labels, prefix_kv, reduction="none", split=split,
                                        checkpoint=self.checkpoint)
            return self._weighted(per_token, labels[:, 1:] != -100, answer_label)
        if self.kind == "classifier":
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
            weight = self.weights if self.weights.numel() else None
            return torch.nn.functional.cross_entropy(logits, labels, weight=weight)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        if not weighted:
            return out.loss
        where = labels != -100
        per_token = torch.nn.functional.cross_entropy(out.logits.float()[where], labels[where], reduction="none")
        return self._weighted(per_token, where, answer_label)

    def _split_prefix(self, ids, mask) -> bool:
        """Whether the prefix is attended to without per-example copies (checked once per model)."""
        config = self.model.config
        if not prefix_attention.supported(self.model, config):
            return False

        def run_both():
            kv = run_prefix(self.model, self.prefix_ids)
            return tuple(hidden_states(self.model, ids[:2], mask[:2], kv, split=split)[mask[:2].bool()]
                         for split in (True, False))
        return prefix_attention.agrees(self.model, run_both)

    def _weighted(self, per_token, where, answer_label):
        """Each answer's token losses weighted by its label's weight (--balance weights)."""
        w = self.weights[answer_label][where.nonzero()[:, 0]]
        return (w * per_token).sum() / w.sum()


@dataclass
class LossOptions:
    kind: str  # causal, classifier or seq2seq
    shared_prefix: str = "auto"  # auto, on, off
    class_weights: str = "none"  # classifier: auto, none or w1,w2,...
    n_labels: int = 0
    record_examples: bool = False  # tests: keep the ids each process trained on
    balance: str = "none"  # none, oversample (minority labels repeated each epoch), weights (inverse frequency)
    cpu_bf16: str = "off"  # auto, on, off: bf16 autocast on the CPU (models.cpu_autocast)
    gradient_checkpointing: str = "off"  # auto, on, off (gradient_checkpointing())


def gradient_checkpointing(mode: str, model, kind: str) -> bool:
    """Whether the layers' activations are recomputed in the backward (train.py --gradient_checkpointing):
    auto = on for a model on CUDA (memory is what is short there), off on the CPU (speed is). The
    causal path checkpoints its own way (annotune.checkpointing, keeping the shared prefix); the
    classification-head and seq2seq paths by transformers' (they have no prefix)."""
    from .checkpointing import supported

    cuda = any(p.device.type == "cuda" for p in model.parameters())
    if mode == "off" or (mode == "auto" and not cuda):
        return False
    if kind == "causal":
        from .lm import decoder_and_head

        if supported(decoder_and_head(model)[0]):
            return True
    elif getattr(model, "supports_gradient_checkpointing", False) or getattr(
            getattr(model, "base_model", None), "supports_gradient_checkpointing", False):
        kwargs = {"use_reentrant": False}  # non-reentrant: LoRA's inputs need no requires_grad trick
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return True
    if mode == "on":
        raise UserError(f"--gradient_checkpointing on: this {kind} model's layers cannot be checkpointed here; "
                        "pass --gradient_checkpointing off")
    return False


class AnnotuneTrainer(Trainer):
    """Trainer with our loss, our batches, checkpoints of the trainable weights only, and an
    account of the tokens trained on (useful: every example's full length; processed: what the
    forwards ran, a shared prefix once per batch)."""

    def __init__(self, model, args, feats, tokenizer, options: LossOptions, callbacks=()):
        self.options = options
        self.prefix = shared_prefix_ids(options.kind, feats, options.shared_prefix)
        weights = None
        if options.balance != "none" or options.class_weights != "none":
            if any("label" not in f for f in feats):
                raise UserError("--balance and --class_weights need a classification task")  # train.py checks first
            spec = "auto" if options.balance == "weights" else options.class_weights
            weights = class_weights(spec, [f["label"] for f in feats], options.n_labels)
        self.peft_model = model
        self.totals = {"train_seconds": 0.0, "useful_tokens": 0, "processed_tokens": 0}
        self.window = {"loss": 0.0, "batches": 0, "tokens": 0}
        self.examples_seen = []
        self.autocast = cpu_autocast(options.cpu_bf16, model)
        self.checkpoint = gradient_checkpointing(options.gradient_checkpointing, model, options.kind)
        loss = LossModule(model, options.kind, self.prefix, weights, self.autocast,
                          checkpoint=self.checkpoint and options.kind == "causal")
        super().__init__(model=loss, args=args,
                         train_dataset=feats,
                         data_collator=lambda batch: collate(options.kind, batch, tokenizer.pad_token_id),
                         callbacks=list(callbacks))
        self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by the accumulation steps
        # Our own log (log.jsonl, EvaluateAndSave) is the console record; the Trainer's log dicts go
        # only to trackers, not to the console.
        self.remove_callback(PrinterCallback)
        if self.pop_callback(ProgressCallback):
            self.add_callback(QuietProgress)

    def get_train_dataloader(self):
        world, rank = self.args.world_size, self.args.process_index
        oversample = [f["label"] for f in self.train_dataset] if self.options.balance == "oversample" else None
        sampler = LengthGroupedBatches([len(f["input_ids"]) for f in self.train_dataset],
                                       self.args.per_device_train_batch_size, self.args.seed, world, rank, oversample)
        if len(sampler) == 0:
            raise UserError(f"{len(self.train_dataset)} training examples make no batch per process "
                            f"(batch size {self.args.per_device_train_batch_size} x {world} processes)")
        loader = torch.utils.data.DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator)
        loader = self.accelerator.prepare(loader)
        shard = getattr(loader, "batch_sampler", None)
        if getattr(shard, "batch_sampler", None) is sampler:  # already one share per process: no re-sharding
            shard.num_processes, shard.process_index = 1, 0
        return loader

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids = inputs.pop("ids")
        loss = model(**inputs)
        if not torch.isfinite(loss.detach()):
            raise UserError(f"the training loss is {float(loss.detach())} at step {self.state.global_step + 1}: "
                            f"training stopped (lower --learning_rate, now {self.args.learning_rate:g}); adapters of "
                            "earlier epochs, if any, were saved with finite weights")
        useful = int(inputs["attention_mask"].sum())
        if self.options.kind == "seq2seq":
            useful += int((inputs["labels"] != -100).sum())
        processed = useful - len(self.prefix) * (inputs["input_ids"].shape[0] - 1) if self.prefix else useful
        self.totals["useful_tokens"] += useful
        self.totals["processed_tokens"] += processed
        self.window["tokens"] += processed
        self.window["loss"] += float(loss.detach())
        self.window["batches"] += 1
        if self.options.record_examples:
            self.examples_seen.extend(ids)
        return (loss, None) if return_outputs else loss

    def _save(self, output_dir=None, state_dict=None):
        """A checkpoint holds only the trainable weights (LoRA, a classification head)."""
        from safetensors.torch import save_file

        if self.args.should_save:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            trainable = {n: p.detach().cpu().contiguous() for n, p in self.peft_model.named_parameters() if p.requires_grad}
            save_file(trainable, str(Path(output_dir) / TRAINABLE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from safetensors.torch import load_file

        path = Path(resume_from_checkpoint) / TRAINABLE_FILE
        if not path.exists():
            raise UserError(f"{resume_from_checkpoint} is not a checkpoint of train.py (no {TRAINABLE_FILE})")
        params = dict(self.peft_model.named_parameters())
        with torch.no_grad():
            for name, value in load_file(str(path)).items():
                params[name].copy_(value)


class QuietProgress(ProgressCallback):
    """The Trainer's progress bar without its log dicts printed under it."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return control


# -------------------------------------------------------------------- evaluation, adapters, early stopping
def trainer_arguments(args, out_dir: Path):
    """train.py's flags (an argparse namespace) as transformers.TrainingArguments; the Trainer's
    checkpoints go to <run>/checkpoints."""
    import os

    from transformers import TrainingArguments

    from .models import cuda_compute_dtype, device_name

    fp16 = device_name() == "cuda" and cuda_compute_dtype() == torch.float16  # loss scaling on a card without bf16
    schedulers = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=args.train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, lr_scheduler_type=schedulers[args.lr_scheduler],
        warmup_steps=args.warmup_ratio, max_grad_norm=args.max_grad_norm, num_train_epochs=args.epochs,
        max_steps=args.steps if args.stop_condition == "steps" else -1, seed=args.seed,
        save_strategy="epoch", save_total_limit=1, eval_strategy="no", report_to=args.report_to,
        logging_strategy="no" if args.report_to == "none" else "steps", logging_steps=1,
        disable_tqdm=args.quiet or not os.isatty(2), use_cpu=device_name() == "cpu", remove_unused_columns=False,
        dataloader_num_workers=0, ddp_find_unused_parameters=False, fp16=fp16)


def run_result(trainer, callback, out_dir: Path, wall_seconds: float) -> dict:
    """What manifest.json records of a finished run: steps, speed, adapters, best epoch, history."""
    from .adapters import adapters_in

    totals, rows = trainer.totals, read_jsonl(out_dir / "log.jsonl")
    speed = [r["tokens_per_s"] for r in rows if r["type"] == "step" and r.get("tokens_per_s")]
    speed = speed[1:] or speed  # the first step pays for warm-up
    return {"steps": trainer.state.global_step, "shared_prefix_tokens": len(trainer.prefix),
            "bf16_autocast": trainer.autocast,
            "tokens_per_s_mean": sum(speed) / len(speed) if speed else None,
            "train_seconds": round(totals["train_seconds"], 2), "useful_tokens": totals["useful_tokens"],
            "processed_tokens": totals["processed_tokens"],
            "useful_tokens_per_s": totals["useful_tokens"] / (totals["train_seconds"] or float("nan")),
            "wall_time_s": round(wall_seconds, 1), "adapters": [str(p) for p in adapters_in(out_dir)],
            "best": callback.best, "history": callback.history}


def parse_save_epochs(text, last) -> tuple:
    """--save_epochs as (epochs to save, what else to keep). Default: nothing fixed, keep 'best' (the
    epoch with the best validation score). '1,2,3' saves those and keeps the best too; 'last' and
    'all' keep the last or every epoch."""
    keep = "best"
    if not text or not text.strip():
        return set(), keep
    epochs = set()
    for part in (x.strip() for x in text.split(",") if x.strip()):
        if part in ("best", "last", "all"):
            keep = part if part != "best" else keep
            continue
        try:
            epochs.add(int(part))
        except ValueError:
            raise UserError(f"--save_epochs takes comma-separated epochs, best, last or all; got {text!r}") from None
    if epochs and min(epochs) < 1:
        raise UserError(f"--save_epochs {text}: epochs count from 1")
    if last and epochs and max(epochs) > last:
        raise UserError(f"--save_epochs {text}: the run has only {last} epochs")
    return epochs, keep


@dataclass
class SavePlan:
    """When to evaluate, checkpoint and save adapters, and when to stop early."""
    metric: str  # the validation metric that decides the best epoch (macro_f1, rougeL)
    eval_strategy: str = "epoch"  # epoch, steps, no
    eval_steps: int = 0
    save_epochs: set = field(default_factory=set)  # epochs whose adapter is saved whatever their score
    keep: str = "best"  # best: also the epoch with the best validation score (the last one without
    #                     validation); last: also the last epoch; all: every epoch
    last_epoch: int | None = None  # --epoch N (None with --stop_condition steps)
    select: str = ""  # the validation value that picks the best epoch (default: metric)
    by_steps: bool = False  # --stop_condition steps: the adapter is saved at the last step
    keep_best: bool = False
    patience: int = 0
    save_every_steps: int = 0
    stop_after_steps: int = 0  # tests: simulate a crash after this many steps (a checkpoint is written)


@contextmanager
def stop_on_ctrl_c(callback, report=print):
    """While training: the first Ctrl-C finishes the current step, writes a checkpoint and stops (so
    --resume_from_checkpoint continues exactly there); a second one stops at once."""
    import signal

    def handler(signum, frame):
        if callback.stop_requested:
            raise KeyboardInterrupt
        callback.stop_requested = True
        report("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again to quit at once)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C as it is
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class EvaluateAndSave(TrainerCallback):
    """train.py's side of the loop: per-step log rows, validation with the real evaluation
    (`evaluate()` -> metrics), adapters saved at the planned epochs (`save(name_suffix, epoch, step,
    metrics)`), best-epoch tracking, early stopping. Only the main process evaluates and writes."""

    def __init__(self, plan: SavePlan, evaluate, save, log_path: Path, is_main: bool, report=print, discard=None):
        self.plan, self.evaluate, self.save, self.log_path, self.is_main = plan, evaluate, save, log_path, is_main
        self.report, self.discard = report, discard  # discard(name_suffix): remove an adapter no longer kept
        self.trainer = None  # set by attach()
        self.history, self.best, self.bad_epochs = [], {}, 0
        self.interrupted, self._start = False, None
        self.stop_requested = False  # Ctrl-C (or the tests' stop_after_steps): checkpoint and stop

    def attach(self, trainer) -> None:
        self.trainer = trainer

    def restore(self, step: int) -> None:
        """On resume: the log keeps rows up to the checkpoint's step, and history, best and patience
        are rebuilt from its evaluations (so they equal the uninterrupted run's)."""
        if not (self.is_main and self.log_path.exists()):
            return
        rows = [r for r in read_jsonl(self.log_path, torn_tail=True) if r["step"] <= step]
        self.log_path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        for row in rows:
            if row["type"] == "eval" and row.get("at") == "epoch":
                self._track(row["epoch"], row["step"], row)

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = time.perf_counter() - self._start
        t, window = self.trainer, self.trainer.window
        t.totals["train_seconds"] += elapsed
        if self.is_main:
            append_jsonl(self.log_path, {"type": "step", "step": state.global_step, "epoch": state.epoch,
                                         "loss": window["loss"] / max(window["batches"], 1),
                                         "lr": t.lr_scheduler.get_last_lr()[0], "tokens": window["tokens"],
                                         "tokens_per_s": window["tokens"] / elapsed if elapsed else None})
        t.window = {"loss": 0.0, "batches": 0, "tokens": 0}
        crash_point("train.step")
        plan = self.plan
        if plan.eval_strategy == "steps" and state.global_step % plan.eval_steps == 0 and self.is_main:
            metrics = self.evaluate()
            self._log_eval(state.epoch, state.global_step, metrics, "steps")
            self.report(f"step {state.global_step}: validation {plan.metric} {metrics.get(plan.metric, float('nan')):.3f}")
        if plan.save_every_steps and state.global_step % plan.save_every_steps == 0:
            control.should_save = True
        if plan.stop_after_steps and state.global_step >= plan.stop_after_steps:
            self.stop_requested = True
        if self.stop_requested and abs(state.epoch - round(state.epoch)) > 1e-6:
            # Mid-epoch: checkpoint this step and stop. At an epoch's last step on_epoch_end stops
            # instead, after the epoch's evaluation and adapters, so none of them is skipped.
            control.should_save, control.should_training_stop, self.interrupted = True, True, True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = False  # the checkpoint of the interruption is written already
            return control
        epoch, step = math.ceil(state.epoch - 1e-9), state.global_step
        done = self.plan.by_steps and step >= state.max_steps
        stop = False
        if self.is_main:
            metrics = self.evaluate() if self.plan.eval_strategy == "epoch" else {}
            if metrics:
                self._log_eval(epoch, step, metrics, "epoch")
                self._print_epoch(epoch, metrics)
            previous = self.best.get("epoch")
            best = self._track(epoch, step, metrics)
            stop = bool(self.plan.patience) and self.bad_epochs >= self.plan.patience
            last = done or stop or epoch >= (self.plan.last_epoch or float("inf"))
            self._keep(epoch, step, metrics, best, last, previous)
            crash_point("train.after_save")
            if stop:
                self.report(f"early stopping: no better validation {self._select} for {self.bad_epochs} epochs")
            if self.stop_requested and not last:
                control.should_save, stop, self.interrupted = True, True, True
        if self.trainer.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            stop = broadcast_object_list([stop], from_process=0)[0]
        self.trainer.accelerator.wait_for_everyone()
        control.should_training_stop = control.should_training_stop or stop
        return control

    def _keep(self, epoch, step, metrics, best, last, previous) -> None:
        """Save this epoch's adapter if the plan wants it; a best epoch replaces the previous best
        unless that one was asked for by number. Runs before the Trainer writes this epoch's
        checkpoint, so a crash in here repeats the whole epoch end on resume."""
        plan = self.plan
        # With no validation score at any epoch, "best" means the last.
        wanted = (epoch in plan.save_epochs or plan.keep == "all" or (last and plan.by_steps)
                  or (plan.keep == "best" and best) or (last and (plan.keep == "last" or not self.best)))
        if wanted:
            self.save(f"step{step}" if plan.by_steps else f"epoch{epoch}", epoch, step, metrics)
        if best and plan.keep_best:
            self.save("best", epoch, step, metrics)
        if (best and plan.keep == "best" and previous is not None and previous != epoch
                and previous not in plan.save_epochs and self.discard):
            self.discard(f"epoch{previous}")

    @property
    def _select(self) -> str:
        return self.plan.select or self.plan.metric

    def _track(self, epoch, step, metrics) -> bool:
        """Record an epoch's evaluation; True when it is the best so far (ties keep the earlier).
        An epoch that gives every validation row the same label ('collapsed') ranks below every
        epoch that does not: on imbalanced data, always answering the majority scores a macro-F1
        near 0.5 for free, above an epoch that is learning the minority."""
        self.history.append({"epoch": epoch, "step": step, **{k: v for k, v in metrics.items() if k not in ("type", "at")}})
        value = metrics.get(self._select)
        if not _finite(value):
            return False
        rank = (not metrics.get("collapsed", False), value)
        if not self.best or rank > (not self.best.get("collapsed", False), self.best["value"]):
            self.best, self.bad_epochs = {"epoch": epoch, "step": step, "value": value, "metric": self._select,
                                          "collapsed": bool(metrics.get("collapsed", False))}, 0
            return True
        self.bad_epochs += 1
        return False

    def _log_eval(self, epoch, step, metrics, at):
        if metrics:
            append_jsonl(self.log_path, {"type": "eval", "at": at, "epoch": round(epoch, 3), "step": step, **metrics})
            if self.trainer.args.report_to:  # a tracker (--report_to) gets the validation metrics too
                self.trainer.log({f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})

    def _print_epoch(self, epoch, metrics):
        name = self.plan.metric
        ci = metrics.get("ci95", {}).get(name)
        self.report(f"epoch {epoch}: validation {name} {metrics[name]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                    + (f", accuracy {metrics['accuracy']:.3f}" if "accuracy" in metrics else "")
                    + (" (collapsed: one label for every row)" if metrics.get("collapsed") else ""))
