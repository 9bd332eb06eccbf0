"""Labels: how spellings are matched, how labels are merged into coarser ones, and how a generated
answer is read back as a label. Task specs, data reading, evaluation and merge_labels.py all go
through these functions, so "Not Relevant" and "not  relevant" are one label everywhere."""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass

from ..base.cli import UserError

INVALID = "<invalid>"  # a generated answer that names no label: counted, scored as wrong


@dataclass
class Label:
    name: str
    definition: str = ""


def norm_label(value) -> str:
    """Case- and whitespace-insensitive key for matching label spellings."""
    return " ".join(str(value).split()).casefold()


def raw_key(value) -> str:
    """Raw values from CSV are strings, from JSON maybe ints/floats/bools: compare as normalised text."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool):
        value = int(value)
    return norm_label(value)


def find_label(value, labels, context: str) -> str:
    """The canonical name among `labels` (Label objects) for a spelling, or a UserError naming it."""
    key = norm_label(value)
    for label in labels:
        if norm_label(label.name) == key:
            return label.name
    raise UserError(f"{context}: label {value!r} is not in the label set {[l.name for l in labels]}")


def build_merge(labels, merge_name: str, groups, source: str) -> tuple:
    """(new Label list, {old name: new name}) of a merge given as [{name, definition, from}]."""
    if not groups:
        raise UserError(f"task spec {source}: merge {merge_name} has no labels")
    mapping, new_labels = {}, []
    for group in groups:
        if not isinstance(group, dict) or set(group) - {"name", "definition", "from"}:
            raise UserError(f"task spec {source}: merge {merge_name}: each label is {{name, definition, from}}, "
                            f"got {group!r}")
        if "name" not in group or not group.get("from"):
            raise UserError(f"task spec {source}: merge {merge_name}: each label needs 'name' and 'from'")
        new_labels.append(Label(str(group["name"]), str(group.get("definition", "") or "")))
        for old in group["from"]:
            old_name = find_label(old, labels, f"task spec {source}: merge {merge_name}")
            if old_name in mapping:
                raise UserError(f"task spec {source}: merge {merge_name} maps label '{old_name}' twice "
                                f"(to '{mapping[old_name]}' and '{group['name']}')")
            mapping[old_name] = str(group["name"])
    missing = [label.name for label in labels if label.name not in mapping]
    if missing:
        raise UserError(f"task spec {source}: merge {merge_name} leaves label(s) {missing} unmapped")
    keys = [norm_label(label.name) for label in new_labels]
    if len(set(keys)) != len(keys):
        raise UserError(f"task spec {source}: merge {merge_name} has duplicate label names {[l.name for l in new_labels]}")
    return new_labels, mapping


def merged_prediction(pred: dict, labels: list, merge_map: dict) -> dict:
    """A prediction over a task's finer labels as one over a merge of them (`labels`, with
    merge_map: finer -> merged label): each merged label's probability is the sum of its finer
    labels', and the prediction their argmax; without probabilities (generation) the predicted finer
    label's merged label, an invalid answer staying invalid. The finer ones are kept beside them."""
    out = dict(pred, fine_prediction=pred["prediction"])
    if pred.get("probs"):
        summed = dict.fromkeys(labels, 0.0)
        for fine, p in pred["probs"].items():
            summed[merge_map[fine]] += p
        out.update(prediction=max(labels, key=summed.get), probs={l: round(p, 6) for l, p in summed.items()},
                   fine_probs=pred["probs"])
    else:
        out["prediction"] = merge_map.get(pred["prediction"], pred["prediction"])
    return out


def parse_label(text: str, labels) -> str:
    """A generated answer as a label: exact, then normalised, then a unique prefix; else INVALID."""
    answer = text.strip()
    if answer in labels:
        return answer
    key = norm_label(answer).strip(" .'\"")
    by_key = {norm_label(l): l for l in labels}
    if key in by_key:
        return by_key[key]
    # The answer starts with exactly one label (e.g. "positive. The review ..."), or is a prefix of one.
    starts = [l for l in labels if key.startswith(norm_label(l))]
    if starts:
        longest = max(starts, key=len)
        if sum(len(norm_label(l)) == len(norm_label(longest)) for l in starts) == 1:
            return longest
    prefixed = [l for l in labels if key and norm_label(l).startswith(key)]
    return prefixed[0] if len(prefixed) == 1 else INVALID


def check_label_list(text, label_names) -> None:
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
    if sorted(map(norm_label, names)) != sorted(map(norm_label, label_names)):
        raise UserError(f"--label_name {list(names)} differs from the task's labels {list(label_names)}")
