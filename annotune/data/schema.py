"""The task YAML's schema: every key at every level, with its type, default and meaning. task.py
checks each spec against it, so an unknown key anywhere is one line naming the key, its place and
the closest valid key; docs/tasks.md documents exactly these keys (tests/test_tasks.py keeps the
two in step)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..base.cli import UserError


@dataclass
class Key:
    type: str
    default: str
    meaning: str
    keys: dict | None = None  # a mapping holding these keys
    each: dict | None = None  # a mapping (any names) or a list whose entries hold these keys
    scalar_items: bool = False  # list entries may also be plain text (labels: [positive, negative])


PROMPT_KEYS = {
    "system": Key("text", "a generic annotator line", "the system prompt; label definitions are appended to it"),
    "instruction": Key("text", "classify into {label_list}", "what to do; {label_list} becomes the quoted labels"),
    "input": Key("text", "'Text: {text}\\nLabel:'", "how the text is shown; must contain {text}"),
    "seq2seq_prefix": Key("text", "none", "a prefix for encoder-decoder models (e.g. 'summarize: ')"),
}
LABEL_KEYS = {
    "name": Key("text", "required", "the label as the model answers it"),
    "definition": Key("text", "empty", "one sentence, put in the prompt unless --without_definitions"),
}
JOIN_KEYS = {
    "path": Key("path", "required", "the file holding the labels"),
    "id_column": Key("text", "data.id_column", "the column of that file holding the row id"),
    "label_column": Key("text", "data.label_column", "the column of that file holding the label"),
    "format": Key("text", "from the suffix", "csv, tsv, jsonl or json"),
    "encoding": Key("text", "utf-8", "the file's text encoding"),
}
FILE_KEYS = {
    "path": Key("path", "required", "a file, a folder (textdir) or archive.zip!member; {data_dir} and "
                                    "{package:NAME} are filled in"),
    "format": Key("text", "from the suffix", "csv, tsv, jsonl, json, textdir (<label>/*.txt) or lines (one "
                                             "row per line, no quote processing; the column is 'text')"),
    "columns": Key("list of text", "the header row", "column names of a file without a header row"),
    "encoding": Key("text", "utf-8", "the file's text encoding (e.g. latin-1)"),
    "rename": Key("mapping", "none", "old column name -> new column name, applied as the file is read"),
    "labels_path": Key("path", "none", "a file with one label per line, aligned with this file's rows "
                                       "(read as lines; the counts must match); it fills data.label_column"),
    "label_ids": Key("path", "none", "with labels_path: a mapping file, one label per line ('0 negative', "
                                     "'0<TAB>negative', or just 'negative' for id = line number)"),
    "labels_join": Key("mapping", "none", "labels kept in another file, joined to these rows by id",
                       keys=JOIN_KEYS),
}
ANNOTATION_KEYS = {
    "annotator_column": Key("text", "none", "one row per annotation: the column naming the annotator"),
    "item_column": Key("text", "data.id_column, else the text", "one row per annotation: the column naming the "
                       "item (the rows of one item share it; without one, the text is the key)"),
    "annotators": Key("mapping", "none", "one column per annotator: annotator name -> a column of the rows, or a "
                      "file joined by id (path, id_column, label_column, format, encoding)", each=JOIN_KEYS,
                      scalar_items=True),
    "aggregate": Key("text", "dawid_skene", "how the votes become the label: majority, dawid_skene or mace"),
    "tie": Key("text", "drop", "majority: an item whose top votes tie is dropped (counted), gets the first of "
                               "them in the labels' order (first) or a seeded choice (random)"),
}
DATA_KEYS = {
    "splits": Key("mapping", "required unless hub", "source split name (train, validation/dev/val/valid, test, "
                                                     "all) -> the file(s) holding it", each=FILE_KEYS),
    "hub": Key("mapping", "none", "a Hugging Face dataset, used when the local files are missing", keys={
        "path": Key("text", "required", "the dataset id"),
        "name": Key("text", "none", "the dataset's configuration name"),
        "splits": Key("mapping", "{train: train}", "our split name -> the hub's split name"),
    }),
    "split_ratios": Key("mapping", "{validation: 0.2, test: 0.0}", "shares carved (stratified, seeded) for the "
                        "splits the files do not have; preprocess.py --val_ratio / --test_ratio override", keys={
                            "validation": Key("number", "0.2", "share of the rows held out for validation"),
                            "test": Key("number", "0.0", "share of the rows held out for test"),
                        }),
    "id_column": Key("text", "the row number", "the column holding a row id (ids must be unique)"),
    "text": Key("template", "required", "the text to annotate, built from columns: '{title}. {body}'"),
    "text_cleanup": Key("list", "none", "steps applied to the text: html_unescape, strip_quotes, squash_whitespace"),
    "keep_empty": Key("boolean", "false", "keep rows whose text is empty (else dropped and counted)"),
    "label_column": Key("text", "required (classification)", "the column holding the raw label"),
    "label_map": Key("mapping", "none", "raw value -> label name (else values match label names, any case)"),
    "bins": Key("list", "none", "numeric raw values binned into labels, in order", each={
        "below": Key("number", "none (the last bin)", "upper bound (exclusive) of the bin"),
        "label": Key("text", "required", "the label of the bin"),
    }),
    "skip_values": Key("list", "none", "raw label values whose rows are dropped (and counted)"),
    "annotations": Key("mapping", "none", "the rows hold several annotators' votes; the label is their aggregate "
                       "(data.label_column holds a vote)", keys=ANNOTATION_KEYS),
    "target_column": Key("text", "required (generation)", "the column holding the reference text"),
    "list_column": Key("boolean", "false", "generation: the target column holds JSON lists as text"),
    "list_join": Key("text", "', '", "generation: how a list-valued target is joined"),
    "empty_target": Key("text", "none", "generation: the target for an empty list or text"),
    "reference_columns": Key("list of text", "none", "generation: more reference columns for the metrics"),
}
MERGE_KEYS = {
    "labels": Key("list", "required", "the merged labels", each={
        **LABEL_KEYS, "from": Key("list of text", "required", "the original labels merged into this one")}),
    "prompt": Key("mapping", "the task's", "prompt keys that change for the merged task", keys=PROMPT_KEYS),
}
SCHEMA = {
    "name": Key("text", "required", "the task's name (outputs are named after it)"),
    "type": Key("text", "required", "classification or generation"),
    "description": Key("text", "empty", "one paragraph: the data, its labels, where it comes from"),
    "data": Key("mapping", "required", "where the rows are and how a row becomes an example", keys=DATA_KEYS),
    "labels": Key("list", "required (classification)", "the labels, in their numbering order", each=LABEL_KEYS,
                  scalar_items=True),
    "prompt": Key("mapping", "required", "the prompt's parts", keys=PROMPT_KEYS),
    "merges": Key("mapping", "none", "named label merges: merge name -> its labels", each=MERGE_KEYS),
    "balance_per_label": Key("number", "none", "default per-label row count for preprocess.py"),
}


SCALAR = (str, int, float)
TYPES = {"text": (SCALAR, "text"), "path": ((str,), "a path (text)"), "template": ((str,), "text with {column} fields"),
         "mapping": ((dict,), "a mapping (key: value)"), "list": ((list,), "a list"),
         "list of text": ((list,), "a list of text"), "number": ((int, float), "a number"),
         "boolean": ((bool,), "true or false")}


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "a mapping", list: "a list", str: "text"}.get(type(value), "a number" if isinstance(
        value, (int, float)) else type(value).__name__)


def check_type(value, key: Key, where: str, source: str) -> None:
    """A value of the type the schema states (None = not set); one line naming the key and both types."""
    allowed, wanted = TYPES[key.type]
    bad = value is not None and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed))
    if key.type == "list of text" and not bad and value is not None:
        bad = any(not isinstance(v, SCALAR) or isinstance(v, bool) for v in value)
    if bad:
        raise UserError(f"task spec {source}: {where} must be {wanted}, got {_kind(value)} ({str(value)[:60]!r})")


def check_keys(raw, keys: dict, place: str, source: str) -> None:
    """Every key of `raw` (and below) is in the schema and of its type, else one line naming the key
    (with the closest valid key for an unknown one) or the type it expects."""
    if not isinstance(raw, dict):
        return
    for name, value in raw.items():
        if name not in keys:
            close = difflib.get_close_matches(str(name), list(keys), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(keys)})"
            raise UserError(f"task spec {source}: {place or 'top level'}: unknown key '{name}'{hint}")
        key, where = keys[name], f"{place}.{name}" if place else str(name)
        check_type(value, key, where, source)
        if key.keys:
            check_keys(value, key.keys, where, source)
        if key.each and isinstance(value, dict):
            for child, item in value.items():
                _check_entry(item, key, f"{where}.{child}", source)
        if key.each and isinstance(value, list):
            for i, item in enumerate(value):
                _check_entry(item, key, f"{where}[{i}]", source)


def check_types(raw: dict, source: str) -> None:
    """The top-level keys' types, before anything reads them (labels: 5 is one line, not a TypeError)."""
    for name, value in raw.items():
        if name in SCHEMA:
            check_type(value, SCHEMA[name], name, source)


def _check_entry(item, key: Key, where: str, source: str) -> None:
    if not isinstance(item, dict) and not (key.scalar_items and isinstance(item, SCALAR)):
        raise UserError(f"task spec {source}: {where} must be a mapping ({', '.join(key.each)}), got {_kind(item)}")
    check_keys(item, key.each, where, source)


def documented_paths(keys: dict = None, place: str = "") -> list:
    """Every key as docs/tasks.md names it: data.splits.<split>.path, labels[].name, ..."""
    keys = SCHEMA if keys is None else keys
    out = []
    for name, key in keys.items():
        where = f"{place}.{name}" if place else name
        out.append(where)
        if key.keys:
            out += documented_paths(key.keys, where)
        if key.each:
            out += documented_paths(key.each, f"{where}[]" if key.type == "list" else f"{where}.<{_item(name)}>")
    return out


def _item(name: str) -> str:
    return {"splits": "split", "merges": "merge", "annotators": "annotator"}.get(name, "name")
