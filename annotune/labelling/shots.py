"""Few-shot prompting: which labelled rows are shown as examples before every text (evaluate.py
--few_shot K --shot_selector NAME). The selectors are one registry (SELECTORS); each takes the
training rows only, never a row of the split being evaluated (`choose_shots` refuses that), and
gives the same k rows for every text, so the examples sit in the prompts' shared prefix that runs
once per batch.
- fixed: k training rows drawn with the seed;
- stratified: k rows spread over the labels as evenly as k allows (labels in the task's order take
  the remainder), each label's rows drawn with the seed; a label with too few rows gives what it has
  and the rest come from the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..base.cli import UserError


@dataclass(frozen=True)
class ShotSelector:
    """name: --shot_selector NAME; choose(rows, k, labels, seed) -> k of the rows, in prompt order."""
    name: str
    help: str
    choose: Callable


def _fixed(rows, k: int, labels, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [rows[i] for i in rng.choice(len(rows), size=k, replace=False)]


def _stratified(rows, k: int, labels, seed: int) -> list:
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


SELECTORS = (
    ShotSelector("fixed", "k training rows drawn with the seed", _fixed),
    ShotSelector("stratified", "k training rows spread evenly over the labels, drawn with the seed", _stratified),
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


def choose_shots(train_rows, k: int, selector: str, labels, seed: int, evaluated_ids=()) -> list:
    """k examples from the training rows by the named selector; refused when there are fewer than
    k training rows, or when one of them is a row being evaluated."""
    found = [s for s in SELECTORS if s.name == selector]
    if not found:
        raise UserError(f"--shot_selector {selector!r}: choose one of {', '.join(selector_names())}")
    if k > len(train_rows):
        raise UserError(f"--few_shot {k}: the training split has {len(train_rows)} rows")
    shots = found[0].choose(list(train_rows), k, list(labels), seed)
    leaked = {s["id"] for s in shots} & set(evaluated_ids)
    if leaked:
        raise UserError(f"--few_shot: row {sorted(leaked)[0]} is both an example and a row evaluated")
    return [{"id": s["id"], "text": s["text"], "label": s["label"]} for s in shots]
