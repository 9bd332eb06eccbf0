"""The raw rows of each source split, in every layout a task YAML describes (docs/tasks.md):

- one table file per split (CSV, TSV, JSONL, JSON) or a folder of <label>/*.txt files;
- one file for all rows (split `all`), split later by data.split_ratios;
- plain text, one row per line (`format: lines`: no quote processing, blank lines kept as rows);
- texts and labels in two files aligned line by line (`labels_path`), with an optional mapping
  file of label ids (`label_ids`); the two line counts must match;
- labels in another file joined to the rows by id (`labels_join`); a row without a label there is
  a one-line error naming its id;
- a Hugging Face dataset (data.hub) when the local files are missing.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..base.cli import UserError
from ..base.files import resolve_path
from ..base.tables import read_lines, read_table


def load_source_rows(spec) -> dict:
    """Raw rows per source split, from local files or (when they are missing) the hub."""
    out, missing = {}, []
    splits = spec.data.get("splits") or {}
    for split, file_spec in splits.items():
        path = resolve_path(file_spec["path"])
        if not Path(path.split("!")[0]).exists() and spec.data.get("hub"):
            missing.append(path)
            continue
        out[split] = read_split(file_spec, spec.data.get("id_column"), spec.data.get("label_column") or "label")
    if (missing or not splits) and spec.data.get("hub"):
        return load_hub_rows(spec.data["hub"])
    return out


def read_split(file_spec: dict, id_column: str | None, label_column: str) -> list:
    """The rows of one source split in its layout."""
    path, encoding = resolve_path(file_spec["path"]), file_spec.get("encoding", "utf-8")
    rows = read_table(path, file_spec.get("format"), file_spec.get("columns"), encoding)
    renames = file_spec.get("rename") or {}
    if renames:
        rows = [{renames.get(k, k): v for k, v in row.items()} for row in rows]
    if file_spec.get("labels_path"):
        rows = with_aligned_labels(rows, path, file_spec, encoding, label_column)
    elif file_spec.get("label_ids"):
        raise UserError(f"{path}: label_ids maps the ids of a labels_path file; give labels_path too")
    if file_spec.get("labels_join"):
        rows = with_joined_labels(rows, path, file_spec["labels_join"], id_column, label_column)
    return rows


def with_aligned_labels(rows: list, path: str, file_spec: dict, encoding: str, label_column: str) -> list:
    labels_path = resolve_path(file_spec["labels_path"])
    labels = [line.strip() for line in read_lines(labels_path, encoding)]
    if len(labels) != len(rows):
        raise UserError(f"{path} has {len(rows)} rows but {labels_path} has {len(labels)} labels: they must be "
                        "aligned line by line")
    if file_spec.get("label_ids"):
        names = read_label_ids(resolve_path(file_spec["label_ids"]), encoding)
        unknown = sorted({l for l in labels if l not in names})
        if unknown:
            raise UserError(f"{labels_path}: label id {unknown[0]!r} is not in {file_spec['label_ids']} "
                            f"(ids there: {', '.join(list(names)[:10])})")
        labels = [names[l] for l in labels]
    return [dict(row, **{label_column: label}) for row, label in zip(rows, labels)]


def read_label_ids(path: str, encoding: str = "utf-8") -> dict:
    """A label-id mapping file: 'ID NAME' or 'ID<TAB>NAME' per line, or just 'NAME' (id = line number)."""
    out = {}
    for number, line in enumerate(read_lines(path, encoding)):
        if not line.strip():
            continue
        match = re.match(r"^\s*(\S+)[\t ]+(.+?)\s*$", line)
        key, name = (match.group(1), match.group(2)) if match and match.group(1).lstrip("-").isdigit() else (
            str(number), line.strip())
        if key in out:
            raise UserError(f"{path}: line {number + 1} gives label id {key} again (it is {out[key]!r} already); "
                            "each id once")
        out[key] = name
    return out


def with_joined_labels(rows: list, path: str, join: dict, id_column: str | None, label_column: str) -> list:
    key = join.get("id_column") or id_column
    if not key:
        raise UserError(f"{path}: labels_join needs an id column (labels_join.id_column or data.id_column)")
    source = resolve_path(join["path"])
    column = join.get("label_column") or label_column
    labels, first = {}, {}
    for number, row in enumerate(read_table(source, join.get("format"), None, join.get("encoding", "utf-8"))):
        if key not in row or column not in row:
            raise UserError(f"{source}: row {number} lacks column {key!r} or {column!r}")
        row_id = str(row[key])
        if row_id in labels:  # which label would win is arbitrary: refuse, as duplicate row ids are
            raise UserError(f"{source}: rows {first[row_id]} and {number} both give a label for id {row_id!r}; "
                            "each id once")
        labels[row_id], first[row_id] = row[column], number
    own_key = id_column or key
    out = []
    for number, row in enumerate(rows):
        row_id = str(row.get(own_key, ""))
        if row_id not in labels:
            raise UserError(f"{path}: row {number} (id {row_id!r}) has no label in {source}")
        out.append(dict(row, **{label_column: labels[row_id]}))
    return out


def load_hub_rows(hub: dict) -> dict:
    """Rows from a hub dataset; fails fast with one line when the hub cannot be reached."""
    import datasets

    from ..base.hub import require_hub

    splits = hub.get("splits") or {"train": "train"}
    out = {}
    require_hub(f"hub dataset {hub['path']}")  # with HF_HUB_OFFLINE=1, a cached copy loads without the network
    try:
        for ours, theirs in splits.items():
            ds = datasets.load_dataset(hub["path"], hub.get("name"), split=theirs)
            out[ours] = [dict(row) for row in ds]
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one clear line
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"could not load hub dataset {hub['path']} ({first[:200]})") from None
    return out
