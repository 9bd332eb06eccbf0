"""A model ready to label: one `Annotator` per model (base or adapter), used by evaluate.py, by
train.py's in-training evaluation (so the metric seen during training is the real one) and by
corpus labelling.

Modes:
- score (classification with a causal LM, default): every label is scored as a continuation of
  the prompt; the argmax is the prediction, softmax over the label set gives probabilities. There
  is no invalid output by construction.
- generate (the seeds' way): greedy decoding, then labels.parse_label; anything else is invalid
  (counted, listed, scored as wrong).
- head: a sequence-classification head's logits.
- Generation tasks: greedy decoding scored with ROUGE (and BERTScore in evaluate.py).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from pathlib import Path

import torch

from ..base.cli import UserError
from .decision import probs_matrix
from ..data.labels import INVALID, parse_label
from .metrics import classification_metrics, generation_metrics
from ..data.prompts import cut_text_to_fit, encode_label_after, encode_prompt


MAX_PROMPT_TOKENS = 2048  # longest prompt sent to a model when labelling; longer texts are cut and flagged
# Under bf16 autocast a row whose two best labels are closer than this (summed log-likelihood, after
# the decision rule's offsets) is scored again in fp32: bf16's rounding moves a label's score by about
# 0.025 on SmolLM2-135M (at most 0.05 for a flipped label; docs/benchmarks.md), so it decides no label.
TIE_MARGIN = 0.05


class Annotator:
    """A model ready to label: base model or adapter, its tokenizer, task spec and prompter."""

    def __init__(self, model, tokenizer, spec, prompter, kind: str, name: str, autocast: bool = False,
                 tie_margin: float = TIE_MARGIN):
        # spec: the labels it scores (contract.Labelling.scored); which labels are given is the labelling's
        self.model, self.tokenizer, self.spec, self.prompter = model, tokenizer, spec, prompter
        self.kind, self.name = kind, name
        self.autocast = autocast  # bf16 autocast on the CPU (models.cpu_autocast)
        self.tie_margin = tie_margin if autocast else 0.0  # near ties rescored in fp32 (TIE_MARGIN)
        self._completion_cache = {}

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def precision(self) -> str:
        """What its scores are computed in (models.compute_precision); a decision rule records it."""
        from ..model.models import compute_precision

        return compute_precision(self.model, self.autocast)

    def _arithmetic(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast)

    # ---------------------------------------------------------------- classification
    def label_completions(self, prompt: str, prompt_ids: list) -> list:
        # The label tokens depend on the text just before them (the leading-space trap), never on
        # the example: key the cache on the prompt's tail.
        key = prompt[-64:]
        if key not in self._completion_cache:
            eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
            self._completion_cache[key] = [
                encode_label_after(self.tokenizer, prompt, self.prompter.completion(label), prompt_ids) + eos
                for label in self.spec.label_names]
        return self._completion_cache[key]

    def score(self, prompts, batch_size: int = 16, length_norm: bool = False, progress: bool = False,
              offsets=None):
        """Per-label probabilities [n, n_labels] from label log-likelihoods (score mode). Under bf16
        autocast the near ties (`tie_margin`, judged after a decision rule's `offsets`) are fp32's."""
        from ..model import lm

        prompt_ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        completions = [self.label_completions(p, ids) for p, ids in zip(prompts, prompt_ids)]
        bar = _bar(len(prompts) * len(self.spec.label_names), "scoring labels", progress)
        self.model.eval()
        with self._arithmetic():
            scores = lm.score_completions(self.model, prompt_ids, completions, batch_size, length_norm, progress=bar)
        if bar is not None:
            bar.close()
        ties = self.near_ties(scores, offsets)
        if ties:
            scores[ties] = lm.score_completions(self.model, [prompt_ids[i] for i in ties],
                                                [completions[i] for i in ties], batch_size, length_norm)
        return torch.softmax(scores, dim=-1)

    def near_ties(self, scores, offsets=None) -> list:
        """Rows whose best two labels (log-likelihoods plus the rule's offsets) are within tie_margin."""
        if not self.tie_margin or scores.shape[1] < 2 or not len(scores):
            return []
        if offsets is not None and len(offsets) == scores.shape[1]:
            scores = scores + torch.as_tensor(offsets, dtype=scores.dtype)
        best = scores.topk(2, dim=-1).values
        return (best[:, 0] - best[:, 1] < self.tie_margin).nonzero().flatten().tolist()

    @torch.no_grad()
    def head_probs(self, texts, batch_size: int = 16, max_length: int = 512, progress: bool = False):
        self.model.eval()
        out = []
        bar = _bar(len(texts), "classifying", progress)
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            with self._arithmetic():
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
            out.append(torch.softmax(logits, dim=-1).cpu())
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return torch.cat(out) if out else torch.zeros(0, len(self.spec.label_names))

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens: int, batch_size: int = 8, progress: bool = False,
                 do_sample: bool = False, temperature: float = 1.0, min_new_tokens: int = 0):
        """Batched decoding with left padding (greedy unless do_sample); returns the new text.
        min_new_tokens > 0 keeps decoding past EOS (benchmarks: the cost of answers that never end)."""
        self.model.eval()
        tok = self.tokenizer
        tok.padding_side = "left"
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        texts = [""] * len(prompts)
        bar = _bar(len(prompts), "generating", progress)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if self.kind == "seq2seq":
                enc = tok([prompts[i] for i in idx], padding=True, truncation=True, max_length=1024, return_tensors="pt")
            else:
                from ..model.lm import pad_batch

                ids, mask = pad_batch([encode_prompt(tok, prompts[i]) for i in idx], tok.pad_token_id, "left")
                enc = {"input_ids": ids, "attention_mask": mask}
            enc = {k: v.to(self.device) for k, v in enc.items()}
            kwargs = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "pad_token_id": tok.pad_token_id,
                      "eos_token_id": tok.eos_token_id, "min_new_tokens": min_new_tokens}
            if do_sample:
                kwargs["temperature"] = temperature
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with self._arithmetic():
                out = self.model.generate(**enc, **kwargs)
            new = out if self.kind == "seq2seq" else out[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                texts[i] = tok.decode(row, skip_special_tokens=True).strip()
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        return texts

    def max_label_tokens(self) -> int:
        return max(len(self.tokenizer(self.prompter.completion(l), add_special_tokens=False)["input_ids"])
                   for l in self.spec.label_names)

    # ---------------------------------------------------------------- one call for every mode
    def predict(self, rows, mode: str = "score", batch_size: int = 16, length_norm: bool = False,
                max_new_tokens: int | None = None, progress: bool = False, max_length: int = 512,
                sampling: dict | None = None, offsets=None):
        """Predictions for rows (dicts with 'text' and optionally 'prompt'): a list of dicts with
        'prediction', and 'probs' (score/head) or 'raw' (generate); 'truncated' where the text was
        cut to fit (fit_prompts). Decoding is greedy unless sampling = {"do_sample": True,
        "temperature": t} is asked for. offsets: the decision rule's to be applied (near ties)."""
        sampling, labels = sampling or {}, self.spec.label_names
        if self.kind == "classifier":
            probs = self.head_probs([row["text"] for row in rows], batch_size, max_length, progress)
            return self._labelled(probs, [False] * len(rows))
        generating = self.spec.type == "generation" or mode == "generate"
        budget = (max_new_tokens or (128 if self.spec.type == "generation" else self.max_label_tokens() + 8)) \
            if generating else self.max_label_tokens() + 1
        prompts, cut = self.fit_prompts(rows, budget)
        if generating:
            outputs = self.generate(prompts, budget, batch_size, progress, **sampling)
            parse = (lambda t: t) if self.spec.type == "generation" else (lambda t: parse_label(t, labels))
            return [dict({"prediction": parse(t), "raw": t}, **({"truncated": True} if c else {}))
                    for t, c in zip(outputs, cut)]
        if mode != "score":
            raise UserError(f"unknown mode {mode!r} (score, generate)")
        return self._labelled(self.score(prompts, batch_size, length_norm, progress, offsets), cut)

    def _labelled(self, probs, cut) -> list:
        if len(probs) and not np.isfinite(np.asarray(probs, dtype=float)).all():
            raise UserError(f"{self.name} gives NaN or inf label scores (are its weights finite?): no labels from it")
        labels = self.spec.label_names
        return [dict({"prediction": labels[int(p.argmax())], "probs": {l: round(float(v), 6) for l, v in zip(labels, p)}},
                     **({"truncated": True} if c else {})) for p, c in zip(probs, cut)]

    def prompt_limit(self, reserve: int) -> int:
        """The longest prompt in tokens that leaves `reserve` tokens of the model's context (at most
        MAX_PROMPT_TOKENS)."""
        context = min(getattr(self.model.config, "max_position_embeddings", None) or MAX_PROMPT_TOKENS,
                      MAX_PROMPT_TOKENS)
        return max(context - reserve, 16)

    def fit_prompts(self, rows, reserve: int) -> tuple:
        """(prompts, cut flags): a prompt that would leave fewer than `reserve` tokens of the model's
        context (at most MAX_PROMPT_TOKENS) gets its text cut from the end, so a pasted article or a
        long thread is labelled from its beginning instead of exhausting memory."""
        limit = self.prompt_limit(reserve)
        prompts = [row.get("prompt") or self.prompter.prompt(row["text"]) for row in rows]
        cut = [False] * len(rows)

        def length(text):
            return len(encode_prompt(self.tokenizer, self.prompter.prompt(text)))

        for i, row in enumerate(rows):
            if len(prompts[i]) <= limit:  # a token is at least one character: it fits
                continue
            if len(encode_prompt(self.tokenizer, prompts[i])) <= limit:
                continue
            text, cut[i] = cut_text_to_fit(self.tokenizer, row["text"], length, limit)
            prompts[i] = self.prompter.prompt(text)
        return prompts, cut


def evaluate_rows(labelling, annotator, rows, mode: str = "score", batch_size: int = 16, length_norm: bool = False,
                  max_new_tokens: int | None = None, progress: bool = False, n_boot: int = 1000, seed: int = 0,
                  bertscore_model: str | None = None, bertscore_layers: int | None = None,
                  sampling: dict | None = None):
    """(metrics, predictions) of an annotator on labelled rows, labelled through `labelling`
    (contract.Labelling.label: scored, merged, then its rule). Under a fitted rule the predictions
    and metrics are the rule's; the argmax ones are kept beside them."""
    if not rows:
        raise UserError("the split to evaluate is empty")
    started = time.perf_counter()
    preds = labelling.label(annotator, rows, mode, batch_size, length_norm, max_new_tokens, progress, sampling=sampling)
    scoring_s = time.perf_counter() - started  # the rows' labelling alone (a rule's validation scoring apart)
    records = [dict({"id": row["id"], "text": row["text"], "gold": row.get("label", row.get("target"))}, **pred)
               for row, pred in zip(rows, preds)]
    if labelling.reported.type == "classification":
        metrics = label_metrics(records, labelling.reported.label_names, labelling.rule, n_boot, seed)
    else:
        refs = [row.get("references") or [row.get("target", "")] for row in rows]
        metrics, per_example = generation_metrics([r["prediction"] for r in records], refs, bertscore_model,
                                                  bertscore_layers, n_boot, seed)
        for record, scores in zip(records, per_example):
            record["scores"] = {k: round(v, 6) for k, v in scores.items()}
    metrics["mode"] = "generate" if labelling.reported.type == "generation" else (
        "head" if annotator.kind == "classifier" else mode)
    metrics["truncated"] = sum(1 for r in records if r.get("truncated"))  # texts cut to fit (fit_prompts)
    metrics.update(scoring_s=round(scoring_s, 3), scoring_ms_per_row=round(1000 * scoring_s / len(rows), 2))
    return metrics, records


def label_metrics(records, labels, rule, n_boot, seed) -> dict:
    """Classification metrics of labelled records: of their argmax labels, and where a fitted rule
    gave the labels (argmax_prediction kept) of the rule's, with the argmax ones under "argmax"."""
    for record in records:
        if record["gold"] not in labels:
            raise UserError(f"gold label {record['gold']!r} of {record['id']} is not in the label set {labels}")
    gold = [r["gold"] for r in records]
    probs = probs_matrix(records, labels) if "probs" in records[0] else None
    metrics = classification_metrics(gold, [r.get("argmax_prediction", r["prediction"]) for r in records], labels,
                                     probs, n_boot, seed)
    metrics["invalid_examples"] = [{"id": r["id"], "raw": r.get("raw")} for r in records
                                   if r["prediction"] == INVALID][:50]
    if "argmax_prediction" in records[0]:  # the rule decided: its labels and calibrated probabilities
        argmax = metrics
        calibrated = [[r["calibrated_probs"][l] for l in labels] for r in records]
        metrics = classification_metrics(gold, [r["prediction"] for r in records], labels, calibrated, n_boot, seed)
        metrics.update(invalid_examples=[], argmax={k: argmax[k] for k in argmax_keys() if k in argmax},
                       decision_rule=rule.to_dict())
    elif rule is not None:
        metrics["decision_rule"] = rule.to_dict()  # consulted, not applied: its note says why
    return metrics


def argmax_keys() -> tuple:
    """What metrics.json keeps of the argmax labels beside a fitted rule's."""
    from .metrics import LABEL_METRICS

    return ("n", *(m.key for m in LABEL_METRICS), "invalid", "ece", "ci95", "per_class", "ranking_auc")


def _bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


# -------------------------------------------------------------------- loading models to evaluate
class BaseModels:
    """Each base model is loaded once per evaluate.py call; adapters are attached to it and detached."""

    def __init__(self, quantization: str):
        self.quantization, self.loaded = quantization, {}

    def get(self, name: str, kind: str, labels):
        from ..model.models import load_model

        key = (name, kind, tuple(labels) if kind == "classifier" else None)
        if key not in self.loaded:
            self.loaded[key] = load_model(name, kind, self.quantization, num_labels=len(labels) or None,
                                          label_names=labels or None)
        return self.loaded[key]


def fold_lora(model):
    """Fold an attached LoRA into its base weights for inference (undo with unfold_lora): the
    adapter's extra thin matmuls cost ~30% of score mode on a CPU. A quantized base is left as it is
    (folding would round the 4-bit weights)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else None
    if base is not None and not (getattr(base, "is_quantized", False) or getattr(base, "quantization_method", None)):
        model.merge_adapter()
    return model


def unfold_lora(model):
    """The base weights back as they were loaded (before the next adapter is attached)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(getattr(m, "merged", False) for m in model.modules() if isinstance(m, BaseTunerLayer)):
        model.unmerge_adapter()


def load_annotator(labelling, base_model: str | None = None, quantization: str = "auto", model=None, tokenizer=None,
                   cpu_bf16: str = "off", tie_margin: float = TIE_MARGIN):
    """An Annotator of a labelling's scored labels, prompted as it says: the adapter's
    (labelling.adapter, on its recorded base model) or, without one, base_model's (the zero-shot
    baseline). `model` may be given already loaded (a base model, or a base with the adapter
    attached). cpu_bf16: evaluate.py's --cpu_bf16 (auto, on, off; models.cpu_autocast); tie_margin:
    its --bf16_tie_margin (TIE_MARGIN)."""
    from ..model.models import cpu_autocast, load_config, load_model, load_tokenizer, resolve_kind

    adapter, spec = labelling.adapter, labelling.scored
    if adapter:
        if base_model and base_model != labelling.record.base_model:
            raise UserError(f"adapter {adapter} was trained on {labelling.record.base_model}, not on {base_model}")
        base_model = labelling.record.base_model
    if labelling.kind is None:
        labelling = dataclasses.replace(labelling, kind=resolve_kind(load_config(base_model), "auto", spec.type))
    kind = labelling.kind
    if tokenizer is None:
        from ..model.adapters import tokenizer_source

        tokenizer = load_tokenizer(tokenizer_source(adapter, labelling.record.tokenizer_files, base_model) if adapter
                                   else base_model)
    if model is None:
        model = load_model(base_model, kind, quantization, num_labels=len(spec.label_names) or None,
                           label_names=spec.label_names or None)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
    if adapter:
        fold_lora(model)
    if kind == "classifier" and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    name = Path(adapter).name if adapter else f"base:{Path(str(base_model).rstrip('/')).name}"
    return Annotator(model, tokenizer, spec, labelling.prompter(tokenizer), kind, name, autocast=cpu_autocast(cpu_bf16, model), tie_margin=tie_margin)
