"""Adapter folders: writing one atomically (the LoRA weights, the tokenizer and annotune.json, the
record contract.AdapterRecord types), finding one by name, and checking its files whole, so that
an adapter brings everything needed to use it."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..base.cli import UserError
from ..base.faults import crash_point
from ..base.files import atomic_write_json, file_sha256, publish_dir, remove_dir, staging_dir

ADAPTER_INFO = "annotune.json"
# Files a tokenizer may load from: an adapter's must be the ones train.py recorded (tokenizer_files).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "vocab.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
PATH_KEYS = ("dataset", "run_dir")  # stored relative to the adapter folder
RUNS_DIR = Path("runs")


def save_adapter(model, tokenizer, folder: Path, record) -> Path:
    """Write the adapter, its tokenizer and annotune.json (record: a contract.AdapterRecord) into
    `folder` atomically (a resumed run that saves the same epoch again replaces it)."""
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
        saved = {Path(f).name for f in tokenizer.save_pretrained(str(tmp))}
        info["tokenizer_files"] = tokenizer_hashes(tmp, sorted(n for n in saved if (tmp / n).is_file()))
        stable_config(tmp, (info.get("base") or {}).get("hub_id"))
        atomic_write_json(tmp / ADAPTER_INFO, info)
        crash_point("train.save")
        if folder.exists():
            remove_dir(folder)
        publish_dir(tmp, folder)
    finally:
        remove_dir(tmp)
    return folder


def tokenizer_hashes(folder: Path, names) -> dict:
    return {name: file_sha256(Path(folder) / name) for name in names}


def tokenizer_source(folder: Path, recorded: dict | None, base_model: str) -> str:
    """Where an adapter's tokenizer loads from. With train.py's record of its tokenizer files: the
    adapter folder, once every recorded file is there with its bytes and no other tokenizer file was
    added (else one line naming the file). An adapter older than that record: its base model's
    tokenizer, with a note (evaluate.py and export.py alike)."""
    folder = Path(folder)
    if recorded is None:
        import sys

        print(f"note: adapter {folder} has no record of its tokenizer files (trained before annotune kept one); "
              f"the base model {base_model}'s tokenizer is used", file=sys.stderr)
        return base_model
    present = {name for name in TOKENIZER_FILES if (folder / name).is_file()}
    for name in sorted(set(recorded) | present):
        if name not in recorded:
            raise UserError(f"adapter {folder}: tokenizer file {name} was added after training (annotune.json's "
                            "tokenizer_files does not list it); remove it to use the adapter as trained")
        if name not in present:
            raise UserError(f"adapter {folder}: tokenizer file {name} is missing; restore the adapter folder as "
                            "train.py wrote it")
        if tokenizer_hashes(folder, [name])[name] != recorded[name]:
            raise UserError(f"adapter {folder}: tokenizer file {name} differs from the one it was trained with "
                            "(SHA-256 in annotune.json's tokenizer_files); restore the adapter folder")
    return str(folder)


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


def find_adapter(name: str, report=print) -> Path:
    """An adapter folder by path, or by its name anywhere under runs/ (the seeds' --adapters_name
    NAME; the demo writes runs/demo/<time>/train/NAME). Several matches: the newest, named with the
    others listed."""
    path = Path(name)
    if path.is_dir():
        if not (path / ADAPTER_INFO).exists():
            raise UserError(f"{path} is not an adapter written by train.py (no {ADAPTER_INFO})")
        return path  # whole and typed: checked when its record is read (contract.read_adapter_info)
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
