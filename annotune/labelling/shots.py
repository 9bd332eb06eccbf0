"""Few-shot prompting: which labelled rows are shown as examples before every text (evaluate.py
--few_shot K --shot_selector NAME). The selectors are one registry (SELECTORS); each takes the
training rows only, never a row of the split being evaluated (`choose_shots` refuses that).
- fixed: k training rows drawn with the seed;
- stratified: k rows spread over the labels as evenly as k allows (labels in the task's order take
  the remainder), each label's rows drawn with the seed; a label with too few rows gives what it has
  and the rest come from the others;
- similar: for each text its own k nearest training rows by the cosine of MiniLM-L6 sentence
  embeddings (mean-pooled), the nearest last, next to the text.
fixed and stratified give the same k rows to every text, so the examples sit in the prompts'
shared prefix, run once per batch; similar's differ per text, so each row's examples are scored
as its own tokens (k examples more per row: the cost evaluate.py's timing shows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..base.cli import UserError


@dataclass(frozen=True)
class ShotSelector:
    """name: --shot_selector NAME; choose(rows, k, labels, seed, texts) -> k of the rows in prompt
    order, or (per_text) a list of k rows for each of texts."""
    name: str
    help: str
    choose: Callable
    per_text: bool = False


def _fixed(rows, k: int, labels, seed: int, texts=()) -> list:
    rng = np.random.default_rng(seed)
    return [rows[i] for i in rng.choice(len(rows), size=k, replace=False)]


def _stratified(rows, k: int, labels, seed: int, texts=()) -> list:
    rng = np.random.default_rng(seed)
    pools = {label: [r for r in rows if r["label"] == label] for label in labels}
    pools = {label: [pool[i] for i in rng.permutation(len(pool))] for label, pool in pools.items() if pool}
    chosen, turn = [], 0
    while len(chosen) < k:  # one row of each label in turn: as even as the pools allow
        label = list(pools)[turn % len(pools)]
        if pools[label]:
            chosen.append(pools[label].pop(0))
        turn += 1
        if not any(pools.values()):
            break
    return chosen


def embed(texts, batch_size: int = 64) -> np.ndarray:
    """Unit-length MiniLM-L6 sentence embeddings (mean over tokens), [n, 384]."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from ..model.models import resolve_model_path

    path = resolve_model_path("minilm-l6")
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True, max_length=256,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
    vectors = np.concatenate(out) if out else np.zeros((0, 384))
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _similar(rows, k: int, labels, seed: int, texts=(), embed_fn=None) -> list:
    """Each text's k nearest training rows (cosine), ordered so the nearest comes last."""
    embed_fn = embed_fn or embed
    train, wanted = embed_fn([r["text"] for r in rows]), embed_fn(list(texts))
    nearest = np.argsort(-(wanted @ train.T), axis=1, kind="stable")[:, :k]
    return [[rows[j] for j in reversed(order)] for order in nearest]


SELECTORS = (
    ShotSelector("fixed", "k training rows drawn with the seed", _fixed),
    ShotSelector("stratified", "k training rows spread evenly over the labels, drawn with the seed", _stratified),
    ShotSelector("similar", "each text's k nearest training rows (MiniLM embeddings); no shared prefix", _similar,
                 per_text=True),
)


def shots_that_fit(shots, prompt_tokens, texts, limit: int) -> list:
    """The first k shots, k as large as lets every text's prompt fit `limit` tokens: k is lowered
    for all rows alike (the examples stay one shared prefix) before any text is cut for their sake.
    prompt_tokens(shots, text): the prompt's length in tokens. A text whose prompt does not fit
    even without examples is cut anyway, and does not lower k."""
    fitting = [t for t in texts if prompt_tokens([], t) <= limit]
    longest = sorted(fitting, key=len)[-3:]  # the longest by characters: the longest in tokens among them
    k = len(shots)
    while k > 0 and any(prompt_tokens(shots[:k], t) > limit for t in longest):
        k -= 1
    return shots[:k]


def selector_names() -> list:
    return [s.name for s in SELECTORS]


def shot_selector(name: str) -> ShotSelector:
    found = [s for s in SELECTORS if s.name == name]
    if not found:
        raise UserError(f"--shot_selector {name!r}: choose one of {', '.join(selector_names())}")
    return found[0]


def choose_shots(train_rows, k: int, selector: str, labels, seed: int, evaluated_ids=(), texts=()) -> list:
    """k examples from the training rows by the named selector (a per-text selector: a list of k
    for each of texts); refused when there are fewer than k training rows, or when an example is a
    row being evaluated."""
    chosen = shot_selector(selector)
    if k > len(train_rows):
        raise UserError(f"--few_shot {k}: the training split has {len(train_rows)} rows")
    picked = chosen.choose(list(train_rows), k, list(labels), seed, list(texts))
    lists = picked if chosen.per_text else [picked]
    leaked = {s["id"] for shots in lists for s in shots} & set(evaluated_ids)
    if leaked:
        raise UserError(f"--few_shot: row {sorted(leaked)[0]} is both an example and a row evaluated")
    lists = [[{"id": s["id"], "text": s["text"], "label": s["label"]} for s in shots] for shots in lists]
    return lists if chosen.per_text else lists[0]


def parse_grid(few_shot: str, selectors: str) -> list:
    """(k, selector) pairs of --few_shot K[,K...] and --shot_selector NAME[,NAME...], every k with every
    selector; k = 0 (zero-shot, the base's own row) is left out."""
    try:
        ks = [int(k) for k in str(few_shot).split(",")]
    except ValueError:
        raise UserError(f"--few_shot {few_shot}: a count of examples or comma-separated counts") from None
    if any(k < 0 for k in ks):
        raise UserError(f"--few_shot {few_shot}: counts are at least 0")
    names = [shot_selector(name).name for name in str(selectors).split(",")]
    return [(k, name) for k in dict.fromkeys(ks) if k for name in dict.fromkeys(names)]


def shot_labelling(labelling, base, splits: list, k: int, selector_name: str, seed: int) -> tuple:
    """The base's labelling with k examples in its prompt: one list for every row (in the shared
    prefix), or (a per-text selector) each evaluated row's own; k lowered where the examples and a
    text would not fit the base's context. splits: the splits evaluated (their rows, and the
    validation rows the rule is fit on, are never examples). Returns it and what metrics.json
    records (shots, shot_selector, shots_asked, shots_used, example_ids)."""
    from dataclasses import replace

    from ..data.prompts import encode_prompt

    base_labelling, selector = labelling.for_model(None), shot_selector(selector_name)
    names = list(dict.fromkeys([*splits, "validation"]))
    rows = {name: labelling.splits.get(name) or [] for name in names}
    texts = [r["text"] for name in names for r in rows[name]]

    def render(shots, text):
        return replace(base_labelling, prompt={**labelling.prompt, "shots": shots}).prompter(base.tokenizer).prompt(text)

    def tokens(shots, text):
        return len(encode_prompt(base.tokenizer, render(shots, text)))

    chosen = choose_shots(labelling.splits.get("train") or [], k, selector_name, labelling.reported.label_names,
                          seed, [r["id"] for name in names for r in rows[name]], texts)
    limit = base.prompt_limit(base.max_label_tokens() + 1)
    if selector.per_text:
        own = {text: shots_that_fit(shots, tokens, [text], limit) for text, shots in zip(texts, chosen)}
        summary = {"shots": f"each row's own ({selector_name})", "shot_selector": selector_name, "shots_asked": k,
                   "shots_used": min([len(s) for s in own.values()] or [0]),
                   "example_ids": sorted({s["id"] for v in own.values() for s in v})}
        prompt = labelling.prompt
    else:
        fitted = shots_that_fit(chosen, tokens, texts, limit)
        if len(fitted) < len(chosen):
            print(f"note: --few_shot {len(chosen)}: {len(fitted)} examples fit the context beside the longest "
                  f"texts; every row gets {len(fitted)}")
        own = {text: fitted for text in texts}
        summary = {"shots": fitted, "shot_selector": selector_name, "shots_asked": k, "shots_used": len(fitted),
                   "example_ids": [s["id"] for s in fitted]}
        prompt = {**labelling.prompt, "shots": fitted}
    # The rows' own rendered prompts (a dataset folder's) are replaced by prompts with the examples.
    prompted = {name: [dict(r, prompt=render(own[r["text"]], r["text"])) for r in rows[name]] for name in names}
    return replace(base_labelling, prompt=prompt, splits={**labelling.splits, **prompted}), summary
