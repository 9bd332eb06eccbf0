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
What it trains on is annotune.training.training_set's; what happens at an epoch's end (validation, adapters
kept, early stopping) is annotune.training.epoch_end's callback.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..model import prefix_attention
from ..base.cli import UserError
from ..base.files import read_jsonl
from ..model.lm import common_prefix_length, completion_loss, hidden_states, pad_batch, run_prefix
from ..model.models import cpu_autocast
from .training_set import epoch_size

MIN_SHARED_PREFIX = 16  # below this many tokens a shared prefix is not worth a separate forward
TRAINABLE_FILE = "trainable.safetensors"


# -------------------------------------------------------------------- batches
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


# -------------------------------------------------------------------- the loss
class LossModule(torch.nn.Module):
    """The model plus how its loss is computed. This is what the Trainer (and so DDP) wraps: the
    shared-prefix loss makes two forward passes, and both must run inside one DDP forward."""

    def __init__(self, model, kind, prefix_ids=None, weights=None, autocast: bool = False, checkpoint: bool = False):
        super().__init__()
        self.model, self.kind, self.autocast = model, kind, autocast
        self.checkpoint = checkpoint  # the causal path's layers checkpointed (annotune.model.checkpointing)
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
    causal path checkpoints its own way (annotune.model.checkpointing, keeping the shared prefix); the
    classification-head and seq2seq paths by transformers' (they have no prefix)."""
    from ..model.checkpointing import supported

    cuda = any(p.device.type == "cuda" for p in model.parameters())
    if mode == "off" or (mode == "auto" and not cuda):
        return False
    if kind == "causal":
        from ..model.lm import decoder_and_head

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

    def __init__(self, model, training_args, feats, tokenizer, options: LossOptions, callbacks=()):
        """training_args: transformers.TrainingArguments (trainer_arguments of a Schedule)."""
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
        super().__init__(model=loss, args=training_args,
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

    def save_model(self, output_dir=None, _internal_call=False):
        """What a checkpoint (and any save through the Trainer) holds: only the trainable weights
        (LoRA, a classification head); the model the Trainer holds is our LossModule, whose state
        would be the whole base. Adapters are train.py's own (adapters.save_adapter)."""
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            trainable = {n: p.detach().cpu().contiguous() for n, p in self.peft_model.named_parameters() if p.requires_grad}
            save_file(trainable, str(Path(output_dir) / TRAINABLE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """The trainable weights back from a checkpoint of save_model. The Trainer has no public hook
        for this (a callback runs after it has looked for a full model's weights file and refused)."""
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

    def on_log(self, training_args, state, control, logs=None, **kwargs):
        return control


# -------------------------------------------------------------------- the Trainer's arguments and the run's result
@dataclass(frozen=True)
class Schedule:
    """How train.py optimises (its training flags): micro-batch size per process, accumulation,
    AdamW's learning rate and weight decay, the scheduler after warmup (linear, cosine, constant),
    warmup as a fraction of the steps, gradient clipping (0 = off), epochs, or max_steps (> 0 ends
    the run there), the seed, a tracker ('none', wandb, ...) and progress bars."""
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    epochs: int = 3
    max_steps: int = -1
    seed: int = 42
    report_to: str = "none"
    progress: bool = True


def trainer_arguments(schedule: Schedule, out_dir: Path):
    """A Schedule as transformers.TrainingArguments; the Trainer's checkpoints go to <run>/checkpoints."""
    import os

    from transformers import TrainingArguments

    from ..model.models import cuda_compute_dtype, device_name

    fp16 = device_name() == "cuda" and cuda_compute_dtype() == torch.float16  # loss scaling on a card without bf16
    schedulers = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    return TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=schedule.batch_size,
        gradient_accumulation_steps=schedule.gradient_accumulation_steps, learning_rate=schedule.learning_rate,
        weight_decay=schedule.weight_decay, lr_scheduler_type=schedulers[schedule.lr_scheduler],
        warmup_steps=schedule.warmup_ratio, max_grad_norm=schedule.max_grad_norm, num_train_epochs=schedule.epochs,
        max_steps=schedule.max_steps, seed=schedule.seed,
        save_strategy="epoch", save_total_limit=1, eval_strategy="no", report_to=schedule.report_to,
        logging_strategy="no" if schedule.report_to == "none" else "steps", logging_steps=1,
        disable_tqdm=not schedule.progress or not os.isatty(2), use_cpu=device_name() == "cpu", remove_unused_columns=False,
        dataloader_num_workers=0, ddp_find_unused_parameters=False, fp16=fp16)


def run_result(trainer, callback, out_dir: Path, wall_seconds: float) -> dict:
    """What manifest.json records of a finished run: steps, speed, adapters, best epoch, history."""
    from ..model.adapters import adapters_in

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
