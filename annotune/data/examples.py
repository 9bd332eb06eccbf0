"""Examples: task data read into examples (id, text, label or target), seeded stratified splits,
per-label balancing and sampling, and the saved instruction dataset (a DatasetDict plus a manifest
of every split's row ids).

preprocess.py writes a dataset folder and train.py / evaluate.py read it, so they see exactly the
rows and prompts it wrote. Where a task is named instead of a folder (train.py --task, evaluate.py
--base_only --task), prepare_splits builds the splits with the same function and seed (defaults
0.2 validation, no test), so they equal preprocess.py's defaults; train.py saves what it trained
on as <run>/dataset, and evaluate.py reads an adapter's dataset from there.
"""
from __future__ import annotations

import html
import json
import math
import random
from collections import Counter
from pathlib import Path

from ..base.cli import UserError
from . import annotations
from .labels import raw_key
from .sources import load_hub_rows, load_source_rows
from .task import TaskSpec, adhoc_spec, sorted_labels, spec_from_saved, template_fields

SPLITS = ("train", "validation", "test")
SOURCE_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation", "all": "train"}


# -------------------------------------------------------------------- one row -> one example
def target_of(spec: TaskSpec, row: dict, where: str):
    """The gold label as the data spells it, through data.bins or data.label_map (classification;
    example_of maps it to the task's labels), or the reference text (generation) of one source row;
    None when the row's raw value is listed in data.skip_values."""
    data = spec.data
    if spec.type == "generation":
        value = row.get(data["target_column"])
        if isinstance(value, str) and data.get("list_column"):
            value = parse_list(value, where)
        if isinstance(value, (list, tuple)):
            # Deduplicate while keeping order: SBIC repeats a group once per annotator.
            value = data.get("list_join", ", ").join(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))
        value = "" if value is None else str(value).strip()
        return value or str(data.get("empty_target", ""))
    if annotations.ITEM_LABEL in row:  # several annotators' votes, aggregated (annotations.py)
        return row[annotations.ITEM_LABEL]
    raw = row.get(data["label_column"])
    context = f"task {spec.name} ({spec.source})"
    if raw is None:
        raise UserError(f"{context}: label column '{data['label_column']}' missing{where}")
    if raw_key(raw) in {raw_key(v) for v in data.get("skip_values") or []}:
        return None
    if data.get("bins"):
        label = _bin(raw, data["bins"], f"{context}: label value {raw!r}{where}")
    elif data.get("label_map"):
        table = {raw_key(k): v for k, v in data["label_map"].items()}
        if raw_key(raw) not in table:
            raise UserError(f"{context}: label value {raw!r}{where} maps to no label; label_map knows {sorted(table)}")
        label = table[raw_key(raw)]
    else:
        label = raw
    return label


def _bin(raw, bins, context):
    try:
        number = float(raw)
    except (TypeError, ValueError):
        raise UserError(f"{context} is not a number to bin") from None
    if math.isnan(number):
        raise UserError(f"{context} is empty")
    for item in bins:
        if "below" not in item or number < float(item["below"]):
            return item["label"]
    raise UserError(f"{context} falls in no bin")


def text_of(spec: TaskSpec, row: dict) -> str:
    """The text to annotate: the spec's template over the row's columns, then its cleanup steps."""
    values = {}
    for name in template_fields(spec.data["text"], spec.source):
        if name not in row:
            raise UserError(f"task spec {spec.source}: column '{name}' is not in the data (columns: {sorted(row)[:20]})")
        value = row[name]
        values[name] = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    text = spec.data["text"].format_map(values)
    for step in spec.data.get("text_cleanup") or []:
        if step == "html_unescape":
            text = html.unescape(text)
        elif step == "strip_quotes":
            text = text.strip().strip('"').strip()
        elif step == "squash_whitespace":
            text = " ".join(text.split())
    return text


def parse_list(value: str, where: str = "") -> list:
    """SBIC stores lists as JSON text ('["women", "black folks"]')."""
    text = value.strip()
    if not text:
        return []
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"expected a JSON list, got {value[:60]!r}{where}") from None
    return parsed if isinstance(parsed, list) else [parsed]


def hub_task(name: str) -> TaskSpec:
    """train.py --dataset_name owner/name: a hub dataset with 'text' and 'label' columns (labels sorted)."""
    rows = load_hub_rows({"path": name, "splits": {"train": "train"}})
    if not rows["train"] or not {"text", "label"} <= set(rows["train"][0]):
        raise UserError(f"hub dataset {name} needs 'text' and 'label' columns")
    data = {"hub": {"path": name}, "text": "{text}", "label_column": "label"}
    return adhoc_spec(name.split("/")[-1], f"hub:{name}", data, sorted_labels(r["label"] for r in rows["train"]))


# -------------------------------------------------------------------- examples
def build_examples(spec: TaskSpec, source_rows: dict) -> tuple:
    """(examples per canonical split name, rows dropped: {reason: {source split: count}}). Every row
    read is used or counted: skip_values, an empty text (unless data.keep_empty), a repeated id."""
    examples, dropped = {}, {}
    id_column, keep_empty = spec.data.get("id_column"), bool(spec.data.get("keep_empty"))

    def drop(reason, source):
        dropped.setdefault(reason, Counter())[source] += 1

    for source, rows in source_rows.items():
        split = SOURCE_ALIASES.get(source, source)
        if split not in SPLITS:
            raise UserError(f"task spec {spec.source}: source split {source!r} is not one of {SPLITS} (or dev/all)")
        built, seen = [], set()
        if spec.data.get("annotations"):
            rows, counts = annotations.aggregated_rows(spec, rows, source, target_of, text_of)
            for reason, n in counts.items():
                dropped.setdefault(reason, Counter())[source] += n
        for number, row in enumerate(rows):
            raw_id = row.get(annotations.ITEM_ID, row.get(id_column) if id_column else None)
            ex_id = str(raw_id) if raw_id not in (None, "") else f"{source}-{number}"
            example = example_of(spec, row, ex_id, f" (split {source}, row {number}, id {ex_id})")
            if example is None:
                drop("skip_values", source)
            elif not keep_empty and not example["text"].strip():
                drop("empty text", source)
            elif ex_id in seen:
                drop("duplicate id", source)
            else:
                seen.add(ex_id)
                built.append(example)
        examples.setdefault(split, []).extend(built)
    unique_ids(examples, spec)
    return examples, {reason: dict(counts) for reason, counts in dropped.items()}


def task_votes(spec: TaskSpec) -> tuple:
    """(votes as (item id, annotator, label) triples, {item id: text}) over every source split of a
    task whose data.annotations describe several annotators; labels before any merge."""
    if not spec.data.get("annotations"):
        raise UserError(f"task {spec.name} ({spec.source}) has one label a row: its YAML has no data.annotations "
                        "(docs/tasks.md, 'Several annotators')")
    votes, texts = [], {}
    for source, rows in load_source_rows(spec).items():
        triples, items, _ = annotations.read_votes(spec, rows, source, target_of, text_of)
        votes += triples
        texts.update({item: text_of(spec, row) for item, row in items.items()})
    return votes, texts


def example_of(spec: TaskSpec, row: dict, ex_id: str, where: str) -> dict | None:
    """One source row as an example, or None when its raw label is in data.skip_values."""
    target = target_of(spec, row, where)
    if target is None:
        return None
    example = {"id": ex_id, "text": text_of(spec, row)}
    if spec.type == "classification":
        example["label"] = spec.task_label(target, where)
        finer = spec.label_before_merge(target, where)  # what a model scoring the finer labels learns
        if finer is not None:
            example["fine_label"] = finer
    else:
        example["target"] = target
        refs = [str(row[c]).strip() for c in spec.data.get("reference_columns") or [] if str(row.get(c) or "").strip()]
        example["references"] = refs or [target]
    return example


def unique_ids(examples: dict, spec: TaskSpec) -> None:
    """Ids unique across splits: per-file row numbers (SBIC dev and tst both start at 0) get their
    split as a prefix; ids repeated across the files of a task are an error."""
    all_ids = [ex["id"] for split in examples.values() for ex in split]
    if len(set(all_ids)) == len(all_ids):
        return
    for split, rows in examples.items():
        for ex in rows:
            ex["id"] = f"{split}:{ex['id']}"
    all_ids = [ex["id"] for split in examples.values() for ex in split]
    dupes = [i for i, c in Counter(all_ids).items() if c > 1]
    if dupes:
        raise UserError(f"task {spec.name}: duplicate ids {dupes[:5]} in column {spec.data.get('id_column')!r}")


def norm_text(text: str) -> str:
    """A text as duplicates are found: case and whitespace ignored (retweets of one post match)."""
    return " ".join(str(text).split()).casefold()


def cross_split_duplicates(splits: dict) -> int:
    """Rows whose (normalised) text also appears in another split: leakage the files came with."""
    where = {}
    for name, rows in splits.items():
        for ex in rows:
            where.setdefault(norm_text(ex.get("text", "")), set()).add(name)
    return sum(1 for rows in splits.values() for ex in rows if len(where[norm_text(ex.get("text", ""))]) > 1)


# -------------------------------------------------------------------- splitting and balancing
def _stratified_take(examples: list, fraction: float, seed: int, stratify: bool) -> tuple:
    """Split examples into (rest, taken): ceil(n * fraction) taken, as scikit-learn's test_size does
    (113 rows at 0.2 -> 90 / 23, the seeds' split), shared among labels in proportion (largest
    remainder), each label's rows shuffled with the seed. Rows with the same normalised text move
    together (a post and its retweets never end up on both sides), so with duplicates the count
    taken can exceed the quota by a few rows."""
    if fraction <= 0 or not examples:
        return examples, []
    rng = random.Random(seed)
    clusters = {}
    for ex in examples:
        clusters.setdefault(norm_text(ex.get("text", "")), []).append(ex)
    groups = {}  # label -> its clusters (a cluster counts under its first row's label)
    for cluster in clusters.values():
        groups.setdefault(cluster[0].get("label") if stratify else None, []).append(cluster)
    keys = sorted(groups, key=str)
    sizes = {k: sum(len(c) for c in groups[k]) for k in keys}
    total = math.ceil(len(examples) * fraction - 1e-9)
    exact = {k: sizes[k] * fraction for k in keys}
    quota = {k: int(exact[k]) for k in keys}
    for k in sorted(keys, key=lambda k: -(exact[k] - quota[k]))[: total - sum(quota.values())]:
        quota[k] += 1
    taken_ids = set()
    for key in keys:
        group, count = groups[key][:], 0
        rng.shuffle(group)
        for cluster in group:
            if count >= quota[key]:
                break
            taken_ids.update(ex["id"] for ex in cluster)
            count += len(cluster)
    rest = [ex for ex in examples if ex["id"] not in taken_ids]
    taken = [ex for ex in examples if ex["id"] in taken_ids]
    return rest, taken


def assign_folds(examples: list, k: int, seed: int) -> dict:
    """{id: fold in 0..k-1}: stratified K folds, seeded. Rows with the same normalised text move
    together (as in _stratified_take: a post and its retweets never train a model that predicts
    the other); each label's clusters are shuffled and dealt, largest first, to the fold holding
    the fewest rows of that label (ties: the fold with the fewest rows)."""
    rng = random.Random(seed)
    clusters = {}
    for ex in examples:
        clusters.setdefault(norm_text(ex.get("text", "")), []).append(ex)
    groups = {}
    for cluster in clusters.values():
        groups.setdefault(str(cluster[0].get("label")), []).append(cluster)
    fold_of, sizes = {}, [0] * k
    for key in sorted(groups):
        group = groups[key][:]
        rng.shuffle(group)
        group.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
        mine = [0] * k
        for cluster in group:
            target = min(range(k), key=lambda f: (mine[f], sizes[f], f))
            for ex in cluster:
                fold_of[ex["id"]] = target
            mine[target] += len(cluster)
            sizes[target] += len(cluster)
    return fold_of


def stratified_split(examples: list, fraction: float, seed: int) -> tuple:
    """(rest, taken): a stratified, seeded share of the rows taken, duplicates kept together."""
    return _stratified_take(examples, fraction, seed, bool(examples) and "label" in examples[0])


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


def cap_samples(splits: dict, max_samples, seed: int) -> dict:
    """Seeded samples: max_samples is N for every split, or 'N_train,N_val,N_test' (0 = all)."""
    caps = parse_caps(max_samples)
    return {split: sample_rows(rows, caps.get(split), seed) for split, rows in splits.items()}


def parse_caps(text) -> dict:
    """--max_samples: N for every split, or N_train,N_val,N_test (0 = all)."""
    return parse_split_numbers(text, "--max_samples", every_split=True, least=0)


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
    """({split: rows}, manifest, TaskSpec) of a folder written by preprocess.py (or by train.py)."""
    from datasets import load_from_disk

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise UserError(f"{folder} is not a dataset written by preprocess.py (no manifest.json)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    spec = spec_from_saved(manifest["task_spec"], manifest.get("merge"), str(manifest_path))
    dsdict = load_from_disk(str(folder))
    return {split: [dict(row) for row in dsdict[split]] for split in dsdict}, manifest, spec


def sample_rows(rows: list, n: int | None, seed: int) -> list:
    """A seeded sample of n rows in their original order (all rows when n is 0/None or >= len)."""
    if not n or len(rows) <= n:
        return list(rows)
    keep = set(ex["id"] for ex in random.Random(seed).sample(rows, n))
    return [ex for ex in rows if ex["id"] in keep]


def pick_split(rows_by_split: dict, split: str, max_samples: int | None = None, seed: int = 42) -> list:
    """The rows of one split (a seeded sample of max_samples), or a UserError naming the splits there are."""
    if split not in rows_by_split:
        raise UserError(f"split {split!r} is not in the dataset (it has: {', '.join(rows_by_split)})")
    if not rows_by_split[split]:
        raise UserError(f"split {split!r} is empty")
    return sample_rows(rows_by_split[split], max_samples, seed)


def parse_counts(text) -> dict:
    """--balance_per_label: '1000' -> train only; '2000,500,500' -> train, validation, test."""
    return parse_split_numbers(text, "--balance_per_label", every_split=False, least=1)


def parse_split_numbers(text, flag: str, every_split: bool, least: int) -> dict:
    """'N' or 'N,N,N' as {split: N}; one N applies to every split or to train only."""
    if text is None or text == "":
        return {}
    try:
        numbers = [int(x) for x in str(text).split(",")]
    except ValueError:
        raise UserError(f"{flag} takes N or N_train,N_val,N_test, got {text!r}") from None
    if len(numbers) not in (1, 3) or min(numbers) < least:
        raise UserError(f"{flag} takes N or N_train,N_val,N_test of counts >= {least}, got {text!r}")
    return dict(zip(SPLITS, numbers * 3 if every_split and len(numbers) == 1 else numbers))


def prepare_splits(spec: TaskSpec, prompter, val_ratio: float | None = None, test_ratio: float | None = None,
                   seed: int = 42, balance=None, max_samples=None, max_words: int | None = None,
                   resplit: bool = False, corrections: dict | None = None) -> tuple:
    """Rendered examples per split, and what the manifest records about them. Ratios default to the
    spec's data.split_ratios (else 0.2 validation, no test); max_samples caps every split (N) or each
    one (N_train,N_val,N_test); max_words cuts each text to its first words; resplit carves validation
    and test from the train rows, leaving the source's own held-out splits untouched (for choosing
    settings without looking at the test set); corrections ({"path", "labels": {id: label}}, from
    review.py --fold_back) relabel rows by id before the split, and what changed is recorded."""
    ratios = spec.data.get("split_ratios") or {}
    val_ratio = ratios.get("validation", 0.2) if val_ratio is None else val_ratio
    test_ratio = ratios.get("test", 0.0) if test_ratio is None else test_ratio
    examples, dropped = build_examples(spec, load_source_rows(spec))
    corrected = None
    if corrections:
        from .corrections import apply_corrections

        corrected = {"path": corrections["path"], "sha256": corrections["sha256"],
                     "changed": apply_corrections(examples, corrections["labels"], corrections["path"])}
    if resplit:
        examples = {"train": examples.get("train", [])}
    given_leaks = cross_split_duplicates(examples)
    cut = cut_words(examples, max_words)
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
    info = {"task": spec.name, "merge": merge, "task_type": spec.type,
            "labels": spec.label_names, "prompt": prompter.describe(), "seed": seed, "val_ratio": val_ratio,
            "test_ratio": test_ratio, "resplit": resplit,
            "annotations": annotations.describe(spec) if spec.data.get("annotations") else None,
            "corrections": corrected, "balance_per_label": balance, "max_samples": max_samples,
            "max_words": max_words, "texts_cut_to_max_words": cut, "dropped_rows": dropped,
            "duplicate_texts_across_given_splits": given_leaks, "balance_shortfalls": shortfalls,
            "splits": split_summary(splits), "task_spec": spec_dict}
    return splits, info


def data_report(info: dict) -> list:
    """The lines preprocess.py and train.py print about rows not used as read."""
    lines = [f"dropped {sum(counts.values())} rows: {reason} ({', '.join(f'{s} {n}' for s, n in counts.items())})"
             for reason, counts in (info.get("dropped_rows") or {}).items()]
    if info.get("duplicate_texts_across_given_splits"):
        lines.append(f"{info['duplicate_texts_across_given_splits']} rows share their text with a row of another "
                     "given split (leakage in the files; carved splits keep duplicates together)")
    if info.get("texts_cut_to_max_words"):
        lines.append(f"{info['texts_cut_to_max_words']} texts cut to their first {info['max_words']} words")
    return lines + [f"fewer examples than asked for {line}" for line in info.get("balance_shortfalls") or []]


def rows_by_ids(spec: TaskSpec, split_ids: dict, max_words: int | None = None) -> dict:
    """Recorded splits rebuilt from the task's source data by their row ids (an adapter whose
    dataset folder is gone). Prompts are rendered later from the text; every id must be found."""
    examples, _ = build_examples(spec, load_source_rows(spec))
    cut_words(examples, max_words)
    pool = {ex["id"]: ex for rows in examples.values() for ex in rows}
    out = {}
    for split, ids in split_ids.items():
        missing = [i for i in ids if i not in pool]
        if missing:
            raise UserError(f"{len(missing)} recorded {split} rows are not in task {spec.name}'s data any more "
                            f"(e.g. id {missing[0]}): the source data changed")
        out[split] = [dict(pool[i]) for i in ids]
    return out


def cut_words(examples: dict, max_words: int | None) -> int:
    """Cut every text to its first max_words words (in place); returns how many were cut."""
    cut = 0
    for rows in examples.values() if max_words else ():
        for ex in rows:
            words = str(ex.get("text", "")).split()
            if len(words) > max_words:
                ex["text"], cut = " ".join(words[:max_words]), cut + 1
    return cut


def write_dataset_folder(out_dir: Path, splits: dict, manifest: dict, overwrite: bool = False,
                         num_preview: int = 3) -> list:
    """Write the dataset, manifest.json, preview.jsonl and task.yaml atomically; returns the preview."""
    import yaml

    from ..base.files import atomic_write_json, atomic_write_jsonl, atomic_write_text, ensure_new_path, publish_dir, \
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
