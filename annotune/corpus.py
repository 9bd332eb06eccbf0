"""Labelling an unlabelled corpus file in chunks: streamed (a 100k-row file never sits in memory),
written chunk by chunk with fsync and a progress record, so an interrupted run resumes where it
stopped and never labels a row twice. Under `accelerate launch` chunks are dealt round-robin to the
processes and merged back into one file in input order.
"""
from __future__ import annotations

import csv
import heapq
import json
import os
from pathlib import Path

from .cli import UserError
from .files import atomic_write_json, infer_format, iter_rows

ROW = "row"


def iter_input(path: str, text_column: str, chunk_rows: int):
    """Chunks (lists of (row_number, row_dict)) of a CSV/TSV/JSONL file, streamed."""
    if not Path(path).is_file():
        raise UserError(f"--predict_file {path} not found")
    if infer_format(path) not in ("csv", "tsv", "jsonl", "json"):
        raise UserError(f"--predict_file must be .csv, .tsv or .jsonl, got {path}")
    chunk = []
    for number, row in enumerate(iter_rows(path)):
        if text_column not in row:
            raise UserError(f"{path}: row {number} has no column {text_column!r} (columns: {sorted(row)[:20]})")
        chunk.append((number, row))
        if len(chunk) == chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def check_input(path: str, text_column: str) -> None:
    """Fail before any model work: the file exists, is UTF-8 and has the text column."""
    import codecs

    for _ in iter_input(path, text_column, 1):
        break
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as handle:
        try:
            for block in iter(lambda: handle.read(1 << 20), b""):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8; convert it, e.g. iconv -t UTF-8") from None


def output_columns(annotator, input_columns):
    labels = annotator.spec.label_names if annotator.spec.type == "classification" else []
    extra = ["prediction"] + [f"prob_{label}" for label in labels]
    return [ROW] + [c for c in input_columns if c not in extra and c != ROW] + extra


class ShardWriter:
    """Appends finished chunks to <output>.part<rank> and records how far it got."""

    def __init__(self, output: Path, rank: int, columns):
        self.path = output.with_name(f"{output.name}.part{rank}")
        self.progress_path = output.with_name(f"{output.name}.part{rank}.json")
        self.columns = columns
        self.done_chunks, size = set(), 0
        if self.progress_path.exists():
            state = json.loads(self.progress_path.read_text())
            self.done_chunks, size = set(state["chunks"]), state["bytes"]
        # Drop anything written after the last recorded chunk (a crash mid-write).
        with open(self.path, "a+b") as handle:
            handle.truncate(size)
        self.size = size

    def write(self, chunk_index: int, rows):
        buf = _csv_text(rows, self.columns, header=self.size == 0)
        data = buf.encode("utf-8")
        with open(self.path, "ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        self.size += len(data)
        self.done_chunks.add(chunk_index)
        atomic_write_json(self.progress_path, {"chunks": sorted(self.done_chunks), "bytes": self.size})


def _csv_text(rows, columns, header: bool) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def annotate_file(annotator, path: str, text_column: str, output: str, batch_size: int = 16, mode: str = "score",
                  chunk_rows: int = 256, rank: int = 0, world: int = 1, stop_after_chunks: int = 0,
                  progress: bool = True, max_new_tokens: int | None = None, rule=None) -> dict:
    """Label every row of `path` into `output` (CSV): input columns, prediction, prob_<label>. With a
    fitted decision rule the prediction is the rule's and the probabilities are its calibrated ones."""
    output = Path(output)
    columns = None
    writer = None
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(desc="annotating", unit="row")
    labelled = 0
    for chunk_index, chunk in enumerate(iter_input(path, text_column, chunk_rows)):
        if columns is None:
            columns = output_columns(annotator, list(chunk[0][1].keys()))
            writer = ShardWriter(output, rank, columns)
        if chunk_index % world != rank or chunk_index in writer.done_chunks:
            if bar is not None:
                bar.update(len(chunk))
            continue
        rows = [{"text": str(row[text_column] or ""), "id": str(number)} for number, row in chunk]
        preds = annotator.predict(rows, mode, batch_size, max_new_tokens=max_new_tokens)
        if rule is not None and rule.fitted and preds and "probs" in preds[0]:
            preds = [dict(p, probs=p["calibrated_probs"]) for p in rule.relabel(preds)]
        out = []
        for (number, row), pred in zip(chunk, preds):
            record = {ROW: number, **row, "prediction": pred["prediction"]}
            for label, value in (pred.get("probs") or {}).items():
                record[f"prob_{label}"] = value
            out.append(record)
        writer.write(chunk_index, out)
        labelled += len(out)
        if bar is not None:
            bar.update(len(chunk) * world)
        if stop_after_chunks and len(writer.done_chunks) >= stop_after_chunks:
            return {"interrupted": True, "labelled": labelled}
    if bar is not None:
        bar.close()
    if columns is None:
        raise UserError(f"--predict_file {path} has no rows")
    return {"interrupted": False, "labelled": labelled, "columns": columns}


def merge_shards(output: str, world: int, columns) -> int:
    """Merge the per-process shards into `output` in input order, then remove them."""
    output = Path(output)
    parts = [output.with_name(f"{output.name}.part{r}") for r in range(world)]
    handles = [open(p, encoding="utf-8", newline="") for p in parts if p.exists()]
    tmp = output.with_name(f".{output.name}.tmp")
    count = 0
    try:
        readers = [csv.DictReader(h) for h in handles]
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for row in heapq.merge(*readers, key=lambda r: int(r[ROW])):
                writer.writerow(row)
                count += 1
        os.replace(tmp, output)
    finally:
        for h in handles:
            h.close()
        if tmp.exists():
            tmp.unlink()
    for r in range(world):
        for suffix in ("", ".json"):
            part = output.with_name(f"{output.name}.part{r}{suffix}")
            if part.exists():
                part.unlink()
    return count
