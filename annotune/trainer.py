"""The training loop behind train.py: (Q)LoRA for a causal LM (instruction SFT, loss on the
completion only), a sequence-classification head (class-weighted cross-entropy), or a seq2seq LM.

Speed: dynamic padding with length-grouped batches, logits only where the loss is, and the prompts'
shared prefix (system prompt, definitions) run once per batch with gradients through its cache.
Data parallel through accelerate (`accelerate launch` / `torchrun`): each process takes every
world_size-th batch. Checkpoints hold the trainable weights, optimizer, scheduler, RNG and position,
so a resumed run ends with the same adapter as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from .io import UserError
from .lm import common_prefix_length, completion_loss, pad_batch, run_prefix
from .prompts import encode_example, encode_prompt

MIN_SHARED_PREFIX = 16  # below this many tokens a shared prefix is not worth a separate forward


# -------------------------------------------------------------------- features
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
    return feats, {"dropped_too_long": dropped, "truncated": truncated}


def class_weights(spec_value: str, labels_index, n_labels):
    """`auto` = inverse frequency (mean 1), `none`, or explicit comma-separated weights."""
    if spec_value in (None, "none"):
        return None
    if spec_value == "auto":
        counts = torch.bincount(torch.as_tensor(labels_index), minlength=n_labels).float()
        weights = torch.where(counts > 0, counts.sum() / (n_labels * counts.clamp(min=1)), torch.zeros_like(counts))
        return weights
    try:
        weights = torch.tensor([float(x) for x in spec_value.split(",")])
    except ValueError:
        raise UserError(f"--class_weights takes auto, none or {n_labels} numbers, got {spec_value!r}") from None
    if len(weights) != n_labels or (weights < 0).any():
        raise UserError(f"--class_weights needs {n_labels} non-negative numbers, got {spec_value!r}")
    return weights


def length_grouped_batches(lengths, batch_size: int, seed: int, epoch: int):
    """Batches of similar length in a seeded random order (the same for every process and resume)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * 32
    batches = []
    for start in range(0, len(order), mega):
        group = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        batches.extend(group[i:i + batch_size] for i in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def collate(kind, feats, pad_id):
    if kind == "causal":
        ids, mask, labels = pad_batch([f["input_ids"] for f in feats], pad_id, "right", [f["labels"] for f in feats])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if kind == "classifier":
        ids, mask = pad_batch([f["input_ids"] for f in feats], pad_id, "right")
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["label"] for f in feats])}
    ids, mask = pad_batch([f["input_ids"] for f in feats], pad_id, "right")
    tgt = [f["labels"] for f in feats]
    _, _, labels = pad_batch(tgt, pad_id, "right", tgt)  # padding is -100, never the pad id
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class LossModule(torch.nn.Module):
    """The model plus how its loss is computed; this is what DDP wraps, so gradient sync sees it."""

    def __init__(self, model, kind, prefix_ids=None, weights=None):
        super().__init__()
        self.model, self.kind = model, kind
        self.prefix_ids = list(prefix_ids or [])
        self.register_buffer("weights", weights if weights is not None else torch.empty(0), persistent=False)

    def forward(self, input_ids, attention_mask, labels):
        if self.kind == "causal":
            plen = len(self.prefix_ids)
            if plen:
                prefix_kv = run_prefix(self.model, self.prefix_ids)
                return completion_loss(self.model, input_ids[:, plen:], attention_mask[:, plen:], labels[:, plen:], prefix_kv)
            return completion_loss(self.model, input_ids, attention_mask, labels)
        if self.kind == "classifier":
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
            weight = self.weights if self.weights.numel() else None
            return torch.nn.functional.cross_entropy(logits, labels, weight=weight)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


def real_tokens(kind, batch, prefix_len):
    """Non-pad tokens the step processed (the shared prefix counts once per batch)."""
    n = int(batch["attention_mask"].sum())
    if kind == "causal" and prefix_len:
        n -= prefix_len * (batch["input_ids"].shape[0] - 1)
    if kind == "seq2seq":
        n += int((batch["labels"] != -100).sum())
    return n


# -------------------------------------------------------------------- checkpoints
def trainable_state(model):
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model, optimizer, scheduler, progress: dict):
    """Write a resumable checkpoint atomically, then remove older ones (one is enough to resume)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "progress": progress,
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}, tmp)
    tmp.replace(path)
    for older in path.parent.glob("checkpoint-step*.pt"):
        if older != path:
            older.unlink(missing_ok=True)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state["progress"]


def latest_checkpoint(folder: Path):
    found = sorted(folder.glob("checkpoint-step*.pt"), key=lambda p: int(p.stem.split("step")[-1]))
    return found[-1] if found else None


# -------------------------------------------------------------------- the loop
def make_scheduler(optimizer, name, total_steps, warmup_steps):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if name == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if name == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def shared_prefix_ids(kind, feats, mode):
    if kind != "causal" or mode == "off":
        return []
    plen = common_prefix_length([f["input_ids"] for f in feats], keep=1)
    # Never let the prefix reach a loss-carrying token.
    plen = min([plen] + [next(i for i, l in enumerate(f["labels"]) if l != -100) for f in feats])
    if mode == "auto" and plen < MIN_SHARED_PREFIX:
        return []
    return feats[0]["input_ids"][:plen]


def train_loop(cfg, accelerator, model, tokenizer, feats, on_epoch_end, on_step_log, should_stop):
    """Run the optimisation. cfg: dict of the train.py arguments that matter here."""
    kind = cfg["kind"]
    prefix = shared_prefix_ids(kind, feats, cfg["shared_prefix"])
    weights = None
    if kind == "classifier":
        weights = class_weights(cfg["class_weights"], [f["label"] for f in feats], cfg["n_labels"])
    module = LossModule(model, kind, prefix, weights)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch_batches = len(length_grouped_batches([len(f["input_ids"]) for f in feats], cfg["batch_size"], 0, 0))
    micro_per_epoch = per_epoch_batches // world
    if micro_per_epoch == 0:
        raise UserError(f"{len(feats)} training examples make no batch per process "
                        f"(batch size {cfg['batch_size']} x {world} processes)")
    accum = cfg["gradient_accumulation_steps"]
    steps_per_epoch = max(1, micro_per_epoch // accum)
    total_steps = cfg["steps"] if cfg["stop_condition"] == "steps" else steps_per_epoch * cfg["epochs"]
    scheduler = make_scheduler(optimizer, cfg["lr_scheduler"], total_steps, int(cfg["warmup_ratio"] * total_steps))
    module, optimizer = accelerator.prepare(module, optimizer)
    raw_model = model

    progress = {"epoch": 0, "micro_in_epoch": 0, "step": 0, "examples_seen": []}
    if cfg.get("resume_path"):
        progress = load_checkpoint(cfg["resume_path"], raw_model, optimizer, scheduler)
    lengths = [len(f["input_ids"]) for f in feats]
    seen_ids = progress.get("examples_seen", [])
    # Throughput over this process's optimisation only (no evaluation, no checkpoint writing):
    # useful tokens = every example's full length (prompt with its prefix + answer); processed
    # tokens = what the forward passes really ran (a shared prefix once per batch).
    totals = {"train_seconds": 0.0, "useful_tokens": 0, "processed_tokens": 0}
    n_epochs = cfg["epochs"] if cfg["stop_condition"] == "epochs" else math.ceil(total_steps / steps_per_epoch) + 1
    for epoch in range(progress["epoch"], n_epochs):
        batches = length_grouped_batches(lengths, cfg["batch_size"], cfg["seed"], epoch)
        mine = batches[rank::world][:micro_per_epoch]
        # Drop the tail that does not fill an accumulation group, so every optimizer step is whole.
        mine = mine[: steps_per_epoch * accum]
        module.train()
        start_micro = progress["micro_in_epoch"] if epoch == progress["epoch"] else 0
        window_tokens, window_start, window_loss, window_n = 0, time.perf_counter(), 0.0, 0
        bar = None
        if cfg["progress"] and accelerator.is_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(mine) // accum, initial=start_micro // accum, desc=f"epoch {epoch + 1}", leave=False)
        for micro, batch_idx in enumerate(mine):
            if micro < start_micro:
                continue
            batch = collate(kind, [feats[i] for i in batch_idx], tokenizer.pad_token_id)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            if cfg.get("record_examples"):
                seen_ids.extend(feats[i]["id"] for i in batch_idx)
            loss = module(**batch) / accum
            accelerator.backward(loss)
            processed = real_tokens(kind, batch, len(prefix))
            window_tokens += processed
            totals["processed_tokens"] += processed
            totals["useful_tokens"] += sum(lengths[i] for i in batch_idx) + (
                int((batch["labels"] != -100).sum()) if kind == "seq2seq" else 0)
            window_loss += float(loss.detach()) * accum
            window_n += 1
            if (micro + 1) % accum:
                continue
            if cfg["max_grad_norm"]:
                accelerator.clip_grad_norm_(params, cfg["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress["step"] += 1
            progress["micro_in_epoch"] = micro + 1
            progress["epoch"] = epoch
            elapsed = time.perf_counter() - window_start
            totals["train_seconds"] += elapsed
            on_step_log({"step": progress["step"], "epoch": epoch + (micro + 1) / len(mine),
                         "loss": window_loss / window_n, "lr": scheduler.get_last_lr()[0],
                         "tokens_per_s": window_tokens / elapsed if elapsed else None, "tokens": window_tokens})
            window_tokens, window_start, window_loss, window_n = 0, time.perf_counter(), 0.0, 0
            if bar is not None:
                bar.update(1)
            interrupted = should_stop(progress["step"])
            if interrupted or (cfg["save_every_steps"] and progress["step"] % cfg["save_every_steps"] == 0):
                progress["examples_seen"] = seen_ids
                if accelerator.is_main_process:
                    save_checkpoint(cfg["checkpoint_dir"] / f"checkpoint-step{progress['step']}.pt", raw_model,
                                    optimizer, scheduler, progress)
            if interrupted:
                if bar is not None:
                    bar.close()
                return {"interrupted": True, "step": progress["step"], "prefix_tokens": len(prefix),
                        "examples_seen": seen_ids, **totals}
            if cfg["stop_condition"] == "steps" and progress["step"] >= total_steps:
                break
        if bar is not None:
            bar.close()
        progress.update(epoch=epoch + 1, micro_in_epoch=0, examples_seen=seen_ids)
        done = cfg["stop_condition"] == "steps" and progress["step"] >= total_steps
        if accelerator.is_main_process:
            save_checkpoint(cfg["checkpoint_dir"] / f"checkpoint-step{progress['step']}.pt", raw_model, optimizer,
                            scheduler, progress)
        stop_early = on_epoch_end(epoch + 1, progress["step"], done)
        if done or stop_early:
            break
    return {"interrupted": False, "step": progress["step"], "prefix_tokens": len(prefix), "examples_seen": seen_ids,
            "total_steps": total_steps, "steps_per_epoch": steps_per_epoch, **totals}


def append_jsonl(path, row):
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, default=str) + "\n")
