"""Reading task data, building examples, seeded stratified splits, per-label balancing, and the
saved instruction dataset (a DatasetDict plus a manifest of every split's row ids).

train.py and evaluate.py read the saved folder, so they use exactly the rows and prompts that
preprocess.py wrote and showed; nothing re-splits by seed downstream.
"""
from __future__ import annotations

import io
import json
import math
import random
import zipfile
from collections import Counter
from pathlib import Path

from .io import UserError
from .tasks import TaskSpec, infer_format, resolve_path

SPLITS = ("train", "validation", "test")
SOURCE_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation", "all": "train"}


# -------------------------------------------------------------------- reading files
def _read_bytes(path: str) -> bytes:
    if "!" in path:
        archive, member = path.split("!", 1)
        if not Path(archive).exists():
            raise UserError(f"data file {archive} not found")
        with zipfile.ZipFile(archive) as zf:
            if member not in zf.namelist():
                raise UserError(f"{archive} has no member {member} (members: {zf.namelist()})")
            return zf.read(member)
    if not Path(path).exists():
        raise UserError(f"data file {path} not found (set ANNOTUNE_DATA_DIR to the folder holding the "
                        "task data, or point the task spec at your copy)")
    return Path(path).read_bytes()


def _decode(data: bytes, path: str, encoding: str = "utf-8") -> str:
    try:
        return data.decode("utf-8-sig" if encoding.lower().replace("-", "") == "utf8" else encoding)
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 (byte {err.start}); convert it, e.g. iconv -t UTF-8") from None


def read_table(path: str, fmt: str | None = None, columns: list | None = None, encoding: str = "utf-8") -> list:
    """Rows (dicts of column -> value) of a CSV/TSV/JSONL/JSON file or a folder of label/*.txt."""
    fmt = fmt or infer_format(path)
    if fmt == "textdir":
        return _read_textdir(path, encoding)
    text = _decode(_read_bytes(path), path, encoding)
    if fmt in ("csv", "tsv"):
        import pandas as pd

        try:
            frame = pd.read_csv(io.StringIO(text), sep="," if fmt == "csv" else "\t", dtype=str,
                                keep_default_na=False, header=None if columns else 0, names=columns)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise UserError(f"{path}: cannot parse as {fmt.upper()} ({str(err).splitlines()[0]})") from None
        # An unnamed leading column is the row index that pandas/R wrote: call it "index".
        frame = frame.rename(columns={c: "index" for c in frame.columns if str(c) == "Unnamed: 0"})
        return frame.to_dict("records")
    if fmt == "json":
        try:
            data = json.loads(text)
            return data if isinstance(data, list) else [data]
        except json.JSONDecodeError:
            pass  # many ".json" files (Politosphere) are really JSON Lines
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: line {number} is not JSON ({err.msg})") from None
    return rows


def _read_textdir(path: str, encoding: str) -> list:
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"data folder {path} not found")
    rows = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(label_dir.glob("*.txt")):
            text = _decode(file.read_bytes(), str(file), encoding).strip()
            title, _, body = text.partition("\n")
            rows.append({"id": f"{label_dir.name}/{file.stem}", "label": label_dir.name, "title": title.strip(),
                         "body": body.strip(), "text": text})
    if not rows:
        raise UserError(f"data folder {path} holds no <label>/*.txt files")
    return rows


def load_source_rows(spec: TaskSpec) -> dict:
    """Raw rows per source split, from local files or (when they are missing) the hub."""
    out = {}
    splits = spec.data.get("splits") or {}
    missing = []
    for split, file_spec in splits.items():
        path = resolve_path(file_spec["path"])
        local = Path(path.split("!")[0])
        if not local.exists() and spec.data.get("hub"):
            missing.append(path)
            continue
        rows = read_table(path, file_spec.get("format"), file_spec.get("columns"), file_spec.get("encoding", "utf-8"))
        renames = file_spec.get("rename") or {}
        out[split] = [{renames.get(k, k): v for k, v in row.items()} for row in rows] if renames else rows
    if (missing or not splits) and spec.data.get("hub"):
        return load_hub_rows(spec.data["hub"])
    return out


def load_hub_rows(hub: dict) -> dict:
    """Rows from a hub dataset; fails fast with one line when the hub cannot be reached."""
    import datasets

    splits = hub.get("splits") or {"train": "train"}
    out = {}
    try:
        for ours, theirs in splits.items():
            ds = datasets.load_dataset(hub["path"], hub.get("name"), split=theirs)
            out[ours] = [dict(row) for row in ds]
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one clear line
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"could not load hub dataset {hub['path']} ({first[:200]})") from None
    return out


# -------------------------------------------------------------------- examples
def build_examples(spec: TaskSpec, source_rows: dict) -> tuple:
    """Examples per canonical split name and the number of rows skipped (data.skip_values)."""
    examples, skipped = {}, Counter()
    id_column = spec.data.get("id_column")
    for source, rows in source_rows.items():
        split = SOURCE_ALIASES.get(source, source)
        if split not in SPLITS:
            raise UserError(f"task spec {spec.source}: source split {source!r} is not one of {SPLITS} (or dev/all)")
        built = []
        for number, row in enumerate(rows):
            raw_id = row.get(id_column) if id_column else None
            ex_id = str(raw_id) if raw_id not in (None, "") else f"{source}-{number}"
            where = f" (split {source}, row {number}, id {ex_id})"
            target = spec.target_for(row, where)
            if target is None:
                skipped[source] += 1
                continue
            example = {"id": ex_id, "text": spec.text_for(row)}
            if spec.type == "classification":
                example["label"] = target
            else:
                example["target"] = target
                refs = [str(row[c]).strip() for c in spec.data.get("reference_columns") or [] if str(row.get(c) or "").strip()]
                example["references"] = refs or [target]
            built.append(example)
        examples.setdefault(split, []).extend(built)
    all_ids = [ex["id"] for split in examples.values() for ex in split]
    if len(set(all_ids)) != len(all_ids):
        # Per-file row numbers (SBIC dev and tst both start at 0): make ids unique by split.
        for split, rows in examples.items():
            for ex in rows:
                ex["id"] = f"{split}:{ex['id']}"
        all_ids = [ex["id"] for split in examples.values() for ex in split]
        dupes = [i for i, c in Counter(all_ids).items() if c > 1]
        if dupes:
            raise UserError(f"task {spec.name}: duplicate ids {dupes[:5]} in column {id_column!r}")
    return examples, dict(skipped)


# -------------------------------------------------------------------- splitting and balancing
def _stratified_take(examples: list, fraction: float, seed: int, stratify: bool) -> tuple:
    """Split examples into (rest, taken): ceil(n * fraction) taken, as scikit-learn's test_size does
    (113 rows at 0.2 -> 90 / 23, the seeds' split), shared among labels in proportion (largest
    remainder), each label's rows shuffled with the seed."""
    if fraction <= 0 or not examples:
        return examples, []
    rng = random.Random(seed)
    groups = {}
    for ex in examples:
        groups.setdefault(ex.get("label") if stratify else None, []).append(ex)
    keys = sorted(groups, key=str)
    total = math.ceil(len(examples) * fraction - 1e-9)
    exact = {k: len(groups[k]) * fraction for k in keys}
    quota = {k: int(exact[k]) for k in keys}
    for k in sorted(keys, key=lambda k: -(exact[k] - quota[k]))[: total - sum(quota.values())]:
        quota[k] += 1
    taken_ids = set()
    for key in keys:
        group = groups[key][:]
        rng.shuffle(group)
        taken_ids.update(ex["id"] for ex in group[: quota[key]])
    rest = [ex for ex in examples if ex["id"] not in taken_ids]
    taken = [ex for ex in examples if ex["id"] in taken_ids]
    return rest, taken


def split_examples(examples: dict, val_ratio: float, test_ratio: float, seed: int) -> dict:
    """Train/validation/test from the source splits: a missing validation (and test) split is
    carved from train, stratified by label, seeded. The file's own splits are kept as they are."""
    out = {k: list(v) for k, v in examples.items()}
    if "train" not in out:
        raise UserError("the data has no train (or single) split to train on")
    pool = out["train"]
    stratify = bool(pool) and "label" in pool[0]
    if "test" not in out and test_ratio > 0:
        pool, out["test"] = _stratified_take(pool, test_ratio, seed, stratify)
    if "validation" not in out and val_ratio > 0:
        # val_ratio is a fraction of the whole pool, as the seeds' 0.8/0.2 split is.
        remaining = 1.0 - (test_ratio if "test" not in examples else 0.0)
        pool, out["validation"] = _stratified_take(pool, val_ratio / max(remaining, 1e-9), seed + 1, stratify)
    out["train"] = pool
    return {k: out[k] for k in SPLITS if k in out}


def balance_per_label(splits: dict, counts: dict, seed: int) -> tuple:
    """Cap each split at counts[split] examples per label (seeded); returns (splits, shortfalls)."""
    rng = random.Random(seed)
    out, short = {}, []
    for split, rows in splits.items():
        cap = counts.get(split)
        if not cap or not rows or "label" not in rows[0]:
            out[split] = rows
            continue
        by_label = {}
        for ex in rows:
            by_label.setdefault(ex["label"], []).append(ex)
        keep = set()
        for label in sorted(by_label):
            group = by_label[label][:]
            rng.shuffle(group)
            if len(group) < cap:
                short.append(f"{split}/{label}: {len(group)} < {cap}")
            keep.update(ex["id"] for ex in group[:cap])
        out[split] = [ex for ex in rows if ex["id"] in keep]
    return out, short


def cap_samples(splits: dict, max_samples: int | None, seed: int) -> dict:
    if not max_samples:
        return splits
    rng = random.Random(seed)
    out = {}
    for split, rows in splits.items():
        if len(rows) > max_samples:
            keep = set(ex["id"] for ex in rng.sample(rows, max_samples))
            rows = [ex for ex in rows if ex["id"] in keep]
        out[split] = rows
    return out


def split_summary(splits: dict) -> dict:
    summary = {}
    for split, rows in splits.items():
        entry = {"count": len(rows), "ids": [ex["id"] for ex in rows]}
        if rows and "label" in rows[0]:
            entry["label_counts"] = dict(sorted(Counter(ex["label"] for ex in rows).items()))
        summary[split] = entry
    return summary


# -------------------------------------------------------------------- saved instruction datasets
def save_dataset(splits: dict, folder: Path) -> None:
    import datasets
    from datasets import Dataset, DatasetDict

    datasets.disable_progress_bars()  # a few thousand rows save in well under a second
    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items() if rows}).save_to_disk(str(folder))


def load_dataset_folder(folder) -> tuple:
    """(DatasetDict, manifest, TaskSpec) of a folder written by preprocess.py."""
    from datasets import load_from_disk

    from .tasks import TaskSpec

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise UserError(f"{folder} is not a dataset written by preprocess.py (no manifest.json)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    # The original spec is stored with the merge's name, so merging goes through one code path.
    spec = TaskSpec.from_dict(manifest["task_spec"], source=str(manifest_path)).merged(manifest.get("merge"))
    return load_from_disk(str(folder)), manifest, spec


def parse_counts(text) -> dict:
    """'1000' -> train only; '2000,500,500' -> train, validation, test."""
    try:
        numbers = [int(x) for x in str(text).split(",")]
    except ValueError:
        raise UserError(f"--balance_per_label takes N or N,N,N, got {text!r}") from None
    if len(numbers) not in (1, 3) or min(numbers) < 1:
        raise UserError(f"--balance_per_label takes N or N,N,N of positive counts, got {text!r}")
    return dict(zip(SPLITS, numbers))


def prepare_splits(spec: TaskSpec, prompter, val_ratio: float = 0.2, test_ratio: float = 0.0, seed: int = 42,
                   balance=None, max_samples: int | None = None) -> tuple:
    """Rendered examples per split, and what the manifest records about them."""
    examples, skipped = build_examples(spec, load_source_rows(spec))
    balance = balance or spec.balance_per_label
    splits = split_examples(examples, val_ratio, test_ratio, seed)
    splits, shortfalls = balance_per_label(splits, parse_counts(balance) if balance else {}, seed)
    splits = cap_samples(splits, max_samples, seed)
    if not splits.get("train"):
        raise UserError(f"task {spec.name}: the train split is empty")
    for rows in splits.values():
        for ex in rows:
            ex.update(prompter.render(ex))
    spec_dict, merge = spec.saved_form()
    info = {"task": spec.name, "merge": merge, "merge_map": spec.merge_map, "task_type": spec.type,
            "labels": spec.label_names, "prompt": prompter.describe(), "seed": seed, "val_ratio": val_ratio,
            "test_ratio": test_ratio, "balance_per_label": balance, "max_samples": max_samples,
            "skipped_rows": skipped, "balance_shortfalls": shortfalls, "splits": split_summary(splits),
            "task_spec": spec_dict}
    return splits, info


def write_dataset_folder(out_dir: Path, splits: dict, manifest: dict, overwrite: bool = False,
                         num_preview: int = 3) -> list:
    """Write the dataset, manifest.json, preview.jsonl and task.yaml atomically; returns the preview."""
    import yaml

    from .io import atomic_write_json, atomic_write_jsonl, atomic_write_text, ensure_new_path, publish_dir, \
        remove_dir, staging_dir

    out_dir = Path(out_dir)
    ensure_new_path(out_dir, overwrite, what="dataset folder")
    preview = [dict(ex, split=name) for name, rows in splits.items() for ex in rows[: max(num_preview, 0)]]
    preview = preview[: max(num_preview, 0)]
    tmp = staging_dir(out_dir)
    try:
        save_dataset(splits, tmp)
        atomic_write_json(tmp / "manifest.json", manifest)
        atomic_write_jsonl(tmp / "preview.jsonl", preview)
        atomic_write_text(tmp / "task.yaml", yaml.safe_dump(manifest["task_spec"], sort_keys=False, allow_unicode=True))
        if out_dir.exists():
            remove_dir(out_dir)  # only reached with overwrite (checked above)
        publish_dir(tmp, out_dir)
    finally:
        remove_dir(tmp)
    return preview
