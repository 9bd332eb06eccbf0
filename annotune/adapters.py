"""Adapter folders: what train.py writes (the LoRA weights, the tokenizer and annotune.json with the
base model, task spec, labels, prompt and validation metrics), and how evaluate.py finds and reads
them, so that an adapter brings everything needed to use it."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from .cli import UserError
from .faults import crash_point
from .files import atomic_write_json, publish_dir, remove_dir, staging_dir

ADAPTER_INFO = "annotune.json"
PATH_KEYS = ("dataset", "run_dir")  # stored relative to the adapter folder
RUNS_DIR = Path("runs")


RECORD_TYPES = {"base_model": str, "kind": str, "task_spec": dict, "labels": list, "prompt": dict, "base": dict,
                "task": str, "merge": str, "merge_after": str, "epoch": int, "step": int, "validation_metrics": dict,
                "decision_rule": dict, "train_ids": list, "split_ids": dict, "max_words": int, "quantization": str,
                "dataset": str, "run_dir": str, "git_commit": str}  # what each key of annotune.json must hold
OPTIONAL = set(RECORD_TYPES) - {"base_model", "kind", "task_spec", "labels"}  # these may also be null


@dataclasses.dataclass
class AdapterRecord:
    """annotune.json: what an adapter brings to be used. train.py writes it; everything else reads
    it through read_adapter_info, by attribute."""
    base_model: str  # as train.py was given it (alias, hub id or folder)
    kind: str  # causal, classifier, seq2seq
    task_spec: dict  # the task spec as trained (task.spec_from_saved)
    labels: list  # the labels the model scores
    prompt: dict = dataclasses.field(default_factory=dict)  # template and with_definitions (Prompter.describe)
    base: dict | None = None  # the base's identity (models.base_identity: name, hub id, weights)
    task: str | None = None
    merge: str | None = None  # the merge trained on (preprocess/train --merge)
    merge_after: str | None = None  # the merge its predictions go through (--merge_at prediction)
    epoch: int | None = None
    step: int | None = None
    validation_metrics: dict | None = None
    decision_rule: dict | None = None  # decision.DecisionRule.to_dict(), fit on validation
    train_ids: list | None = None
    split_ids: dict | None = None  # split -> ids: the rows can be rebuilt from the task's data
    max_words: int | None = None
    quantization: str | None = None  # 4bit, 8bit, none (as trained)
    dataset: str | None = None  # the dataset folder (resolved against the adapter folder on reading)
    run_dir: str | None = None
    git_commit: str | None = None

    @classmethod
    def from_dict(cls, data: dict, what: str) -> "AdapterRecord":
        """The record of a parsed annotune.json, or one line naming what is missing or of a wrong type
        (keys it does not know, from a newer version, are left out)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        missing = [name for name, f in fields.items() if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and name not in data]
        if missing:
            raise UserError(f"{what}: {ADAPTER_INFO} lacks {', '.join(missing)}; the folder is damaged")
        wrong = [k for k, t in RECORD_TYPES.items() if k in data and not (
            isinstance(data[k], t) and not isinstance(data[k], bool) or (data[k] is None and k in OPTIONAL))]
        if wrong:
            raise UserError(f"{what}: {ADAPTER_INFO} has {wrong[0]} of the wrong type "
                            f"({type(data[wrong[0]]).__name__}); the folder is damaged")
        return cls(**{k: v for k, v in data.items() if k in fields and not (k == "prompt" and v is None)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def save_adapter(model, tokenizer, folder: Path, record: AdapterRecord) -> Path:
    """Write the adapter, its tokenizer and annotune.json into `folder` atomically (a resumed run
    that saves the same epoch again replaces it)."""
    import torch

    bad = [n for n, t in model.named_parameters() if t.requires_grad and not torch.isfinite(t.detach()).all()]
    if bad:
        raise UserError(f"{len(bad)} trained tensors hold NaN or inf (e.g. {bad[0]}): {folder.name} is not saved; "
                        "lower --learning_rate")
    info = record.to_dict()
    for key in PATH_KEYS:  # relative to the adapter: a run folder copied elsewhere keeps working
        if info.get(key):
            info[key] = os.path.relpath(Path(info[key]).resolve(), Path(folder).resolve())
    tmp = staging_dir(folder)
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        stable_config(tmp, (info.get("base") or {}).get("hub_id"))
        atomic_write_json(tmp / ADAPTER_INFO, info)
        crash_point("train.save")
        if folder.exists():
            remove_dir(folder)
        publish_dir(tmp, folder)
    finally:
        remove_dir(tmp)
    return folder


def stable_config(folder: Path, hub_id: str | None) -> None:
    """adapter_config.json names the base by its hub id (not a local cache path), so the standard
    PEFT calls load the adapter on any machine that reaches the hub; and its module lists are
    sorted (PEFT writes them in set order), so the same training writes the same bytes."""
    config = Path(folder) / "adapter_config.json"
    if not config.exists():
        return
    data = json.loads(config.read_text(encoding="utf-8"))
    if hub_id:
        data["base_model_name_or_path"] = hub_id
    for key in ("target_modules", "modules_to_save"):
        if isinstance(data.get(key), list):
            data[key] = sorted(data[key])
    atomic_write_json(config, data)


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from a file, or one line saying how the file is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what}: {path.name} is missing") from None
    except UnicodeDecodeError:
        raise UserError(f"{what}: {path.name} is not UTF-8 text (damaged)") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{what}: {path.name} is not valid JSON (line {err.lineno}: {err.msg}); the folder is "
                        "damaged or was cut short") from None
    if not isinstance(data, dict):
        raise UserError(f"{what}: {path.name} holds {type(data).__name__}, not a JSON object; the folder is damaged")
    return data


def check_safetensors(path: Path, what: str) -> None:
    """The file exists and is whole: its header parses and its tensors end where the file does."""
    import struct

    if not path.exists():
        raise UserError(f"{what}: {path.name} is missing (the weights); the folder is damaged")
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                raise ValueError
            header = json.loads(handle.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{what}: {path.name} is not a safetensors file (damaged)") from None
    if 8 + length + end != size:
        raise UserError(f"{what}: {path.name} is truncated or damaged ({size} bytes, its header says "
                        f"{8 + length + end})")


def read_adapter_info(folder) -> AdapterRecord:
    """annotune.json as an AdapterRecord, its relative paths (dataset, run_dir) resolved against the
    adapter folder, after the folder is checked whole (annotune.json an object with its keys,
    adapter_config.json, the weights file complete): a damaged adapter is one line naming the file,
    before any use."""
    path = Path(folder) / ADAPTER_INFO
    if not path.exists():
        raise UserError(f"{folder} is not an adapter written by train.py (no {ADAPTER_INFO})")
    what = f"adapter {folder}"
    record = AdapterRecord.from_dict(read_json_object(path, what), what)
    read_json_object(Path(folder) / "adapter_config.json", what)
    check_safetensors(Path(folder) / "adapter_model.safetensors", what)
    for key in PATH_KEYS:
        if getattr(record, key):
            setattr(record, key, str((Path(folder) / getattr(record, key)).resolve()))
    return record


def adapter_spec(folder, reported: bool = False):
    """The task spec (merged as trained) an adapter was trained on; reported=True: the labels it
    gives, which are a merge of those for an adapter trained with train.py --merge_at prediction."""
    from .task import spec_from_saved

    record = read_adapter_info(folder)
    spec = spec_from_saved(record.task_spec, record.merge, str(Path(folder) / ADAPTER_INFO))
    return spec.merged(record.merge_after) if reported and record.merge_after else spec


def find_adapter(name: str, report=print) -> Path:
    """An adapter folder by path, or by its name anywhere under runs/ (the seeds' --adapters_name
    NAME; the demo writes runs/demo/<time>/train/NAME). Several matches: the newest, named with the
    others listed."""
    path = Path(name)
    if path.is_dir():
        read_adapter_info(path)  # a clear error when it is not an adapter
        return path
    if "/" in name or not RUNS_DIR.is_dir():
        raise UserError(f"adapter {name!r} not found (neither a folder nor a name under {RUNS_DIR}/)")
    matches = [m.parent for m in RUNS_DIR.rglob(f"{name}/{ADAPTER_INFO}")]
    if not matches:
        raise UserError(f"adapter {name!r} not found (neither a folder nor a name under {RUNS_DIR}/)")
    matches.sort(key=lambda m: (m / ADAPTER_INFO).stat().st_mtime, reverse=True)
    if len(matches) > 1:
        report(f"adapter {name}: using the newest, {matches[0]} (also: {', '.join(str(m) for m in matches[1:])})")
    return matches[0]


def distinct_names(paths) -> dict:
    """Each adapter folder's name in reports: its own name, or, where two share it (two runs that
    both kept their epoch 3), as many parent folders as tell them apart ("tuned-a/NAME")."""
    parts = {Path(p): Path(p).resolve().parts for p in paths}
    names = {}
    for path, own in parts.items():
        depth = 1
        while depth < len(own) and any(o[-depth:] == own[-depth:] for q, o in parts.items() if q != path):
            depth += 1
        names[path] = "/".join(own[-depth:])
    return names


def natural_order(paths) -> list:
    """Paths with their numbers compared as numbers: a shell glob's ...-epoch10 before ...-epoch5 is undone."""
    def key(path):
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]

    return sorted(paths, key=key)


def adapters_in(run_dir: Path) -> list:
    """The adapter folders of a run, in epoch order."""
    return natural_order(p for p in Path(run_dir).iterdir() if (p / ADAPTER_INFO).exists())
