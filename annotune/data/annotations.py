"""Several annotators a row: the task YAML's `data.annotations` (docs/tasks.md, "Several
annotators"), read into votes (item, annotator, label) and aggregated into one label per item.

Two layouts:
- one row per annotation (`annotator_column`; SBIC's raw file): the rows of one item share
  `item_column` (default data.id_column; without one, the text is the key and the id is a hash of
  it). A (item, annotator) pair given twice with the same vote is one vote (SBIC repeats a pair
  once per stereotype); with two different votes it is refused.
- one column per annotator (`annotators`: name -> a column of the rows, or a file joined by id;
  Politosphere's per-annotator files).

A blank label cell is no vote (counted); an item whose every vote is blank is dropped (counted); an
item with no annotation at all, a vote outside the label set, a missing annotator column: refused.
Votes go through data.bins / label_map / skip_values as a single label would, and are aggregated on
the task's labels before any merge. The aggregators (AGGREGATORS) are crowd-kit's; a new one is one
entry here.
"""
from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from ..base.cli import UserError
from ..base.files import resolve_path
from ..base.tables import read_table
from .labels import find_label

ITEM_ID, ITEM_LABEL = "_annotune_item", "_annotune_label"  # reserved keys of an aggregated item row
TIES = ("drop", "first", "random")
DEFAULT_AGGREGATE = "dawid_skene"  # chosen on bench/annotators.py (docs/results.md, "Aggregating annotators")


@dataclass
class Consensus:
    """One method's answer: per item the label (None: a tie it dropped) and the posterior per label
    (items x labels DataFrame, the task's label order), per annotator its estimated quality."""
    method: str
    labels: dict
    probas: object
    quality: dict
    quality_name: str


def _probas(frame, labels):
    return frame.reindex(columns=labels, fill_value=0.0).fillna(0.0)


def _majority(votes, labels, tie: str, seed: int) -> Consensus:
    from crowdkit.aggregation import MajorityVote

    model = MajorityVote().fit(votes)
    probas = _probas(model.probas_, labels)
    out = {}
    for item, row in probas.iterrows():
        top = [l for l in labels if math.isclose(row[l], row.max())]
        if len(top) == 1 or tie == "first":
            out[item] = top[0]
        elif tie == "random":  # seeded by the item, so a label never depends on the other items
            out[item] = random.Random(f"{seed}:{item}").choice(top)
        else:
            out[item] = None
    return Consensus("majority", out, probas, {str(w): float(s) for w, s in model.skills_.items()},
                     "agreement with the majority")


def _dawid_skene(votes, labels, tie: str, seed: int) -> Consensus:
    from crowdkit.aggregation import DawidSkene

    model = DawidSkene(n_iter=100).fit(votes)
    probas = _probas(model.probas_, labels)
    errors, priors = model.errors_, model.priors_  # errors_: P(vote | true) indexed (worker, vote) x true
    quality = {}
    for worker in votes["worker"].unique():
        block = errors.loc[worker]
        quality[str(worker)] = float(sum(priors.get(l, 0.0) * (block.loc[l, l] if l in block.index and l in block.columns
                                                              else 0.0) for l in priors.index))
    return Consensus("dawid_skene", _argmax(probas, labels), probas, quality, "accuracy (Dawid-Skene confusion diagonal)")


def _mace(votes, labels, tie: str, seed: int) -> Consensus:
    import pandas as pd
    from crowdkit.aggregation import MACE

    model = MACE(n_restarts=5, n_iter=50, random_state=seed).fit(votes)
    probas = _probas(model.probas_, labels)
    _, workers = pd.factorize(votes["worker"])  # MACE's own worker order
    quality = {str(w): float(model.spamming_[i, 1]) for i, w in enumerate(workers)}  # column 1: P(not spamming)
    return Consensus("mace", _argmax(probas, labels), probas, quality, "competence (MACE, 1 - P(spamming))")


def _argmax(probas, labels) -> dict:
    return {item: labels[int(row.to_numpy().argmax())] for item, row in probas.iterrows()}


@dataclass
class Aggregator:
    title: str
    fit: Callable  # (votes DataFrame task/worker/label, labels, tie, seed) -> Consensus


AGGREGATORS = {
    "majority": Aggregator("majority vote (crowd-kit MajorityVote; ties by the task's `tie`)", _majority),
    "dawid_skene": Aggregator("Dawid-Skene (crowd-kit DawidSkene, 100 EM iterations)", _dawid_skene),
    "mace": Aggregator("MACE (crowd-kit MACE, 5 restarts x 50 iterations)", _mace),
}


def aggregate(votes, labels: list, method: str, tie: str = "drop", seed: int = 0) -> Consensus:
    """The consensus of `votes` (a DataFrame with columns task, worker, label) by `method`."""
    if method not in AGGREGATORS:
        raise UserError(f"aggregate {method!r} is not one of {', '.join(AGGREGATORS)}")
    return AGGREGATORS[method].fit(votes, labels, tie, seed)


# -------------------------------------------------------------------- reading annotations
def describe(spec) -> dict:
    """What the manifest records: the layout, the method and its tie rule."""
    cfg = settings(spec)
    return {"layout": "one row per annotation" if cfg.get("annotator_column") else "one column per annotator",
            "aggregate": cfg["aggregate"], "method": AGGREGATORS[cfg["aggregate"]].title, "tie": cfg["tie"]}


def settings(spec) -> dict:
    """The task's annotation settings, checked: layout, aggregate and tie resolved."""
    cfg = dict(spec.data.get("annotations") or {})
    where = f"task spec {spec.source}: data.annotations"
    if bool(cfg.get("annotator_column")) == bool(cfg.get("annotators")):
        raise UserError(f"{where}: give annotator_column (one row per annotation) or annotators (one column per "
                        "annotator), not both or neither")
    if cfg.get("item_column") and not cfg.get("annotator_column"):
        raise UserError(f"{where}: item_column goes with annotator_column")
    if spec.type != "classification":
        raise UserError(f"{where}: annotations aggregate labels; a generation task has none")
    cfg.setdefault("aggregate", DEFAULT_AGGREGATE)
    cfg.setdefault("tie", "drop")
    if cfg["aggregate"] not in AGGREGATORS:
        raise UserError(f"{where}.aggregate must be one of {', '.join(AGGREGATORS)}, got {cfg['aggregate']!r}")
    if cfg["tie"] not in TIES:
        raise UserError(f"{where}.tie must be one of {', '.join(TIES)}, got {cfg['tie']!r}")
    return cfg


def is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in ("", "nan")


def text_key(text: str) -> str:
    """An item id for data with no id column: a hash of its text (case and whitespace ignored)."""
    norm = " ".join(str(text).split()).casefold()
    return "t" + hashlib.sha1(norm.encode("utf-8")).hexdigest()[:12]


def read_votes(spec, rows: list, source: str, label_of: Callable, text_of: Callable) -> tuple:
    """(votes: list of (item, annotator, label), item rows: item -> its first row, counts of what was
    not a vote). label_of(spec, row, where) maps a raw vote as data.label_column's value is mapped."""
    cfg, counts = settings(spec), Counter()
    pairs, items = {}, {}
    for item, annotator, row, raw, where in _annotations(spec, cfg, rows, source, text_of):
        items.setdefault(item, row)
        if is_blank(raw):
            counts["blank vote"] += 1
            continue
        target = label_of(spec, dict(row, **{spec.data["label_column"]: raw}), where)
        if target is None:
            counts["skip_values vote"] += 1
            continue
        label = find_label(target, spec.finest_labels, f"task {spec.name} ({spec.source}): the vote{where}")
        if (item, annotator) in pairs:
            if pairs[(item, annotator)] != label:
                raise UserError(f"task {spec.name}: annotator {annotator!r} gives item {item!r} two labels "
                                f"({pairs[(item, annotator)]!r} and {label!r}){where}; each pair once")
            counts["repeated vote (same pair, same label)"] += 1
            continue
        pairs[(item, annotator)] = label
    voted = {item for item, _ in pairs}
    for item in items:
        if item not in voted:
            counts["item with every vote blank"] += 1
    votes = [(item, annotator, label) for (item, annotator), label in pairs.items()]
    return votes, {i: r for i, r in items.items() if i in voted}, dict(counts)


def _annotations(spec, cfg: dict, rows: list, source: str, text_of: Callable):
    """(item, annotator, row, raw vote, where) for every annotation of a source split."""
    column = spec.data["label_column"]
    id_column = cfg.get("item_column") or spec.data.get("id_column")
    if cfg.get("annotator_column"):
        for number, row in enumerate(rows):
            where = f" (split {source}, row {number})"
            for needed in (cfg["annotator_column"], column) + ((id_column,) if id_column else ()):
                if needed not in row:
                    raise UserError(f"task {spec.name}: column {needed!r} is not in the annotations{where} "
                                    f"(columns: {sorted(row)[:20]})")
            item = str(row[id_column]) if id_column else text_key(text_of(spec, row))
            yield item, str(row[cfg["annotator_column"]]), row, row.get(column), where
        return
    joined = {name: _joined(spec, name, ref) for name, ref in cfg["annotators"].items() if isinstance(ref, dict)}
    for number, row in enumerate(rows):
        where = f" (split {source}, row {number})"
        item = str(row[spec.data["id_column"]]) if spec.data.get("id_column") else f"{source}-{number}"
        found = 0
        for name, ref in cfg["annotators"].items():
            if isinstance(ref, dict):
                if item not in joined[name]:
                    continue
                raw = joined[name][item]
            elif str(ref) not in row:
                raise UserError(f"task {spec.name}: annotator {name}'s column {ref!r} is not in the data{where} "
                                f"(columns: {sorted(row)[:20]})")
            else:
                raw = row[str(ref)]
            found += 1
            yield item, str(name), row, raw, f"{where} by {name}"
        if not found:
            raise UserError(f"task {spec.name}: item {item!r}{where} has no annotation in any annotator's file")


def _joined(spec, name: str, ref: dict) -> dict:
    """An annotator's file: id -> raw label."""
    if not spec.data.get("id_column") and not ref.get("id_column"):
        raise UserError(f"task spec {spec.source}: annotator {name}'s file is joined by id: set data.id_column")
    path = resolve_path(ref["path"])
    key = ref.get("id_column") or spec.data["id_column"]
    column = ref.get("label_column") or spec.data["label_column"]
    out = {}
    for number, row in enumerate(read_table(path, ref.get("format"), None, ref.get("encoding", "utf-8"))):
        if key not in row or column not in row:
            raise UserError(f"annotator {name}'s file {path}: row {number} lacks column {key!r} or {column!r}")
        row_id = str(row[key])
        if row_id in out and out[row_id] != row[column]:
            raise UserError(f"annotator {name}'s file {path}: id {row_id!r} given two labels; each id once")
        out[row_id] = row[column]
    return out


def votes_frame(votes: list):
    import pandas as pd

    return pd.DataFrame(votes, columns=["task", "worker", "label"])


def aggregated_rows(spec, rows: list, source: str, label_of: Callable, text_of: Callable, seed: int = 0) -> tuple:
    """(one row per item carrying its aggregated label under ITEM_LABEL and its id under ITEM_ID,
    counts of the annotation rows and items not used, by reason)."""
    cfg = settings(spec)
    votes, items, counts = read_votes(spec, rows, source, label_of, text_of)
    counts = Counter(counts)
    if not votes:
        return [], counts
    labels = [label.name for label in spec.finest_labels]
    consensus = aggregate(votes_frame(votes), labels, cfg["aggregate"], cfg["tie"], seed)
    out = []
    for item, row in items.items():
        label = consensus.labels.get(item)
        if label is None:
            counts["item whose top votes tie (tie: drop)"] += 1
            continue
        out.append(dict(row, **{ITEM_ID: item, ITEM_LABEL: label}))
    return out, {k: v for k, v in counts.items() if v}
