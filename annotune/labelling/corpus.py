"""Labelling an unlabelled corpus file in chunks: streamed (a 100k-row file never sits in memory)
and written as finished row ranges, so an interrupted run resumes where it stopped and never labels
a row twice. Under `accelerate launch` chunks are dealt round-robin to the processes.

Each finished range of rows is one CSV part, written atomically, in <output>.parts/ and named by its
row range, so a resume with another --chunk_rows labels exactly the rows no part holds. The folder's
settings.json holds the fingerprint of everything that changes a prediction (the model's weights,
the tokenizer and the label token ids, the decision rule, the mode and decoding settings, the input
file's content): a resume with other settings refuses instead of mixing two models' labels in one
file. When every row is in a part, the parts are joined in row order into the output and the
folder is removed.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..base.cli import UserError
from ..base.faults import crash_point
from ..base.files import atomic_path, atomic_write_json, file_sha256
from ..base.tables import infer_format, iter_rows, streaming_formats, table_format, table_names

ROW, PREDICTION, TRUNCATED, PROB = "row", "prediction", "truncated", "prob_"
SETTINGS = "settings.json"


def reserved_column(name: str) -> bool:
    """A column name the labelled output uses for its own values (sample.py and estimate.py read them)."""
    from .ensemble import is_fold_column

    return name in (ROW, PREDICTION, TRUNCATED) or name.startswith(PROB) or is_fold_column(name)


def iter_input(path: str, text_column: str, chunk_rows: int):
    """Chunks (lists of (row_number, row_dict)) of a CSV/TSV/JSONL file, streamed."""
    if not Path(path).is_file():
        raise UserError(f"--predict_file {path} not found")
    if infer_format(path) not in table_names():
        raise UserError(f"--predict_file must be a table file ({', '.join(table_names())}), got {path}")
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


def output_format(output) -> str:
    """The format a labelled corpus is written in: its name's, one written in parts (csv, tsv, jsonl)."""
    fmt = infer_format(str(output))
    streaming = streaming_formats()
    if fmt not in streaming or str(output).lower().endswith(".gz"):
        raise UserError(f"--output {output}: a labelled corpus is written as {', '.join(streaming)} (its name's "
                        "ending says which)")
    return fmt


def check_input(path: str, text_column: str) -> tuple:
    """Fail before any model work: the file exists, is UTF-8, every row has the text column and no
    row has a column named like one of ours. Returns the SHA-256 of its bytes (part of the run's
    fingerprint) and the input's columns: the union of every row's keys, in the order first seen
    (the rows of a JSON-lines file need not share theirs)."""
    columns = {}
    for chunk in iter_input(path, text_column, 4096):
        for number, row in chunk:
            if any(key not in columns for key in row):
                refuse_reserved(list(row), f"{path}: row {number}")
                columns.update(dict.fromkeys(row))
    return file_sha256(path), list(columns)  # iter_input decoded every byte: a file that is not UTF-8 is refused


def refuse_reserved(input_columns, path: str) -> None:
    clash = [c for c in input_columns if reserved_column(str(c))]
    if clash:
        raise UserError(f"{path}: column {clash[0]!r} has a name the labelled output uses for its own values "
                        f"({ROW}, {PREDICTION}, {PROB}<label>, fold<k>_{PROB}<label>, {TRUNCATED}); rename it in the input")


def output_columns(spec, input_columns, path: str = "--predict_file"):
    """row, the input's columns, prediction, prob_<label>..., truncated. An input column named like
    one of ours is refused, never dropped or overwritten (a human label called `prediction`, say)."""
    refuse_reserved(input_columns, path)
    labels = spec.label_names if spec.type == "classification" else []  # the labels given
    extra = [PREDICTION] + [f"{PROB}{label}" for label in labels] + [TRUNCATED]
    return [ROW] + list(input_columns) + extra


class PartStore:
    """The finished row ranges of one annotation run: <output>.parts/r<start>-<end>.csv (end
    exclusive, no header), each written whole or not at all, and settings.json (the fingerprint).
    One labeller at a time: the run's main process holds an flock on <output>.lock (which names its
    pid and host); a second run on the same output is refused while the holder lives."""

    def __init__(self, output: Path, fingerprint: dict, fmt: str = "csv"):
        self.format = table_format(fmt)  # a format whose parts follow each other (TableFormat.streams)
        self.folder = output.with_name(f"{output.name}.parts")
        self.lock_path = output.with_name(f"{output.name}.lock")
        self.fingerprint = fingerprint
        self.ranges = []  # finished (start, end) row ranges, read by open()
        self.locked = False

    def lock(self) -> None:
        """Take the output's lock, or refuse in one line naming its holder. The lock is an flock on
        <output>.lock, held while the run lives: the kernel drops it when the holder dies, so a stale
        lock is taken over by the same atomic call that checks it (two racing takers cannot both win).
        A lock file that names a live process on this host, or any process on another, is refused."""
        import fcntl
        import socket
        import time

        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        while True:
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)
            except OSError as err:
                raise UserError(f"cannot open the lock file {self.lock_path}: {err.strerror}") from None
            crash_point("lock.opened")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._refuse(_read_lock(self.lock_path))
            try:  # the file locked must still be the one at the path (its holder unlinks it when done)
                current = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        holder = _read_lock(self.lock_path)
        pid = holder.get("pid")
        if holder.get("host") not in (None, me["host"]) or (pid is not None and pid != me["pid"] and _alive(pid)):
            os.close(fd)  # written by a run that does not flock (another host, an older version)
            self._refuse(holder)
        if pid is not None or holder.get("host"):
            print(f"removing a stale lock {self.lock_path} (pid {holder.get('pid')} is gone)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd, self.locked = fd, True

    def _refuse(self, holder: dict) -> None:
        raise UserError(f"{self.lock_path.name[:-5]} is being labelled by pid {holder.get('pid')} on "
                        f"{holder.get('host')} since {holder.get('since')} ({self.lock_path}); wait for it, "
                        "or delete the lock file if that run is gone") from None

    def unlock(self) -> None:
        if self.locked:
            self.lock_path.unlink(missing_ok=True)  # while still held: a waiter that opened it retries
            os.close(self._fd)
            self.locked = False

    def _scan(self):
        for path in self.folder.glob("r*-*.csv") if self.folder.is_dir() else ():
            start, end = path.stem[1:].split("-")
            yield int(start), int(end)

    def open(self) -> None:
        """Start or continue: refuse parts written with other settings (one line naming them)."""
        settings, self.ranges = self.folder / SETTINGS, sorted(self._scan())
        if settings.exists():
            old = json.loads(settings.read_text(encoding="utf-8"))
            differ = sorted(k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k))
            if differ:
                raise UserError(f"{self.folder} holds rows labelled with other settings ({', '.join(differ)} "
                                "differ); rerun with the same settings to resume, or pass --overwrite to start clean")
        elif self.ranges:
            raise UserError(f"{self.folder} holds parts but no {SETTINGS}; pass --overwrite to start clean")

    def start(self) -> None:
        """Record the settings once the first part is about to be written (a run that labels
        nothing leaves nothing behind to block the corrected rerun)."""
        settings = self.folder / SETTINGS
        if not settings.exists():
            atomic_write_json(settings, self.fingerprint)

    def done(self, number: int) -> bool:
        import bisect

        i = bisect.bisect_right(self.ranges, (number, float("inf"))) - 1
        return i >= 0 and self.ranges[i][0] <= number < self.ranges[i][1]

    def write(self, rows: list, columns) -> None:
        """Rows (consecutive row numbers) as one part."""
        start, end = rows[0][ROW], rows[-1][ROW] + 1
        path = self.folder / f"r{start:012d}-{end:012d}.csv"
        self.start()
        with atomic_path(path, "a part of the labelled output") as tmp, open(tmp, "w", encoding="utf-8",
                                                                            newline="") as handle:
            handle.write(self.format.text(rows, columns, header=False))
            crash_point("annotate.write")
            handle.flush()
            os.fsync(handle.fileno())
        self.ranges = sorted(self.ranges + [(start, end)])
        crash_point("annotate.part")

    def join(self, output: Path, columns, total: int) -> int:
        """All parts, in row order, into `output` (atomically); then the folder is removed."""
        ranges, expected = sorted(self._scan()), 0
        for start, end in ranges:
            if start != expected:
                raise UserError(f"{self.folder}: rows {expected}-{start - 1} are missing; run the same command again")
            expected = end
        if expected != total:
            raise UserError(f"{self.folder}: rows {expected}-{total - 1} are missing; run the same command again")
        with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as out:
            out.write(self.format.text([], columns, header=True))
            for start, end in ranges:
                with open(self.folder / f"r{start:012d}-{end:012d}.csv", encoding="utf-8", newline="") as part:
                    shutil.copyfileobj(part, out)
            out.flush()
            os.fsync(out.fileno())
        shutil.rmtree(self.folder, ignore_errors=True)
        return total


def _read_lock(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
        return holder if isinstance(holder, dict) else {"pid": None}
    except (OSError, ValueError):
        return {"pid": None}  # torn or unreadable: named, never taken for ours


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return True  # unreadable: never taken over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runs_of(numbers: list) -> list:
    """[3, 4, 5, 9, 10] -> [[3, 4, 5], [9, 10]]: consecutive row numbers, one part each."""
    out = []
    for n in numbers:
        if out and out[-1][-1] == n - 1:
            out[-1].append(n)
        else:
            out.append([n])
    return out


def annotate_file(labelling, annotator, path: str, text_column: str, store: PartStore, batch_size: int = 16,
                  mode: str = "score", chunk_rows: int = 256, rank: int = 0, world: int = 1,
                  stop_after_chunks: int = 0, progress: bool = True, input_columns=None, **label_kwargs) -> dict:
    """Label the rows of `path` that no part holds yet, this process's chunks only: input columns,
    prediction, prob_<label>, truncated (1: the text was cut to fit the model), labelled through
    `labelling` (contract.Labelling.label); under a fitted decision rule the probabilities are its
    calibrated ones. input_columns: check_input's (default: read again). Returns the row count and
    the columns for the join."""
    input_columns = input_columns if input_columns is not None else check_input(path, text_column)[1]
    columns, bar, labelled, written, total = None, None, 0, 0, 0
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(desc="annotating", unit="row")
    for chunk_index, chunk in enumerate(iter_input(path, text_column, chunk_rows)):
        total += len(chunk)
        if columns is None:
            columns = output_columns(labelling.reported, input_columns, path)
        todo = [(n, row) for n, row in chunk if not store.done(n)] if chunk_index % world == rank else []
        if bar is not None:
            bar.update(len(chunk) * (world if chunk_index % world == rank else 0))
        if not todo:
            continue
        rows = [{"text": str(row[text_column] or ""), "id": str(n)} for n, row in todo]
        preds = [dict(p, probs=p["calibrated_probs"]) if "calibrated_probs" in p else p
                 for p in labelling.label(annotator, rows, mode, batch_size, **label_kwargs)]
        records = {n: record_of(n, row, pred) for (n, row), pred in zip(todo, preds)}
        for numbers in runs_of([n for n, _ in todo]):
            store.write([records[n] for n in numbers], columns)
        labelled, written = labelled + len(todo), written + 1
        if stop_after_chunks and written >= stop_after_chunks:
            return {"interrupted": True, "labelled": labelled}
    if bar is not None:
        bar.close()
    if columns is None:
        raise UserError(f"--predict_file {path} has no rows")
    return {"interrupted": False, "labelled": labelled, "columns": columns, "total": total}


def record_of(number: int, row: dict, pred: dict) -> dict:
    record = {**row, ROW: number, PREDICTION: pred["prediction"], TRUNCATED: int(bool(pred.get("truncated")))}
    for label, value in (pred.get("probs") or {}).items():
        record[f"{PROB}{label}"] = value
    return record
