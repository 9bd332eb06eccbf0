"""The one table module: every table annotune reads or writes goes through a registered format
(task data, a corpus to label and the labelled corpus, annotation sheets, annotators' label files,
merged files). A format is one `TableFormat` in TABLE_FORMATS: the file endings that mean it, how
its rows are read (streamed, values as read) and how rows are written; adding one there is all a
new format needs (tests/test_registries.py adds one and reads it as a corpus and a sheet, and writes
it as a sheet).

Two layouts of task data are not tables and have no writer: `textdir` (a folder of
<label>/*.txt files) and `lines` (a plain text file, one text per line).
"""
from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cli import UserError
from .files import atomic_write_text, parse_json

csv.field_size_limit(2**31 - 1)  # a pasted article in one cell is a row, not an error
LAYOUTS = ("textdir", "lines")


@dataclass(frozen=True)
class TableFormat:
    """A table file format: rows(handle, path, columns) -> dicts (columns: the header of a file
    without one); text(rows, columns, header) -> the rows written in `columns` order (header: the
    first part of a file; a part written without it follows another). `streams`: parts written one
    after another make one file (a labelled corpus is written in parts)."""
    name: str
    suffixes: tuple
    rows: Callable
    text: Callable
    streams: bool = True


def _delimited_text(delimiter: str):
    def text(rows, columns, header: bool = True) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n",
                                delimiter=delimiter)
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    return text


def _jsonl_text(rows, columns, header: bool = True) -> str:
    return "".join(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n" for row in rows)


def _json_text(rows, columns, header: bool = True) -> str:
    return json.dumps([{c: row.get(c) for c in columns} for row in rows], ensure_ascii=False, indent=2) + "\n"


def _delimited_rows(delimiter: str):
    return lambda handle, path, columns: _csv_rows(handle, path, delimiter, columns)


TABLE_FORMATS = (
    TableFormat("csv", (".csv",), _delimited_rows(","), _delimited_text(",")),
    TableFormat("tsv", (".tsv",), _delimited_rows("\t"), _delimited_text("\t")),
    TableFormat("jsonl", (".jsonl",), lambda handle, path, columns: _json_rows(handle, path, "jsonl"), _jsonl_text),
    TableFormat("json", (".json",), lambda handle, path, columns: _json_rows(handle, path, "json"), _json_text,
                streams=False),
)


def streaming_formats() -> list:
    """The formats a file can be written in parts of (a labelled corpus)."""
    return [f.name for f in TABLE_FORMATS if f.streams]


def table_suffixes() -> list:
    return [s for f in TABLE_FORMATS for s in f.suffixes]


def table_names() -> list:
    """The registered table formats' names."""
    return [f.name for f in TABLE_FORMATS]


def format_names() -> tuple:
    """Every format and layout a task spec may name."""
    return tuple(table_names()) + LAYOUTS


def table_format(name: str, what: str = "format") -> TableFormat:
    for fmt in TABLE_FORMATS:
        if fmt.name == name:
            return fmt
    raise UserError(f"{what}: {name!r} is not a table format ({', '.join(f.name for f in TABLE_FORMATS)})")


def infer_format(path: str) -> str:
    """The format a path's name says (the member's, for archive.zip!member; a .gz file's without it:
    it is read decompressed); `textdir` for a name without a suffix, else the suffix itself (refused
    where it is read)."""
    name = str(path).split("!")[-1].lower().removesuffix(".gz")
    for fmt in TABLE_FORMATS:
        if name.endswith(fmt.suffixes):
            return fmt.name
    return "textdir" if not Path(name).suffix else Path(name).suffix.lstrip(".")


# -------------------------------------------------------------------- reading
def open_text(path: str, encoding: str):
    """A text handle on a file (a .gz file decompressed as it is read), or on archive.zip!member
    (read whole: members are small)."""
    encoding = "utf-8-sig" if encoding.lower().replace("-", "") == "utf8" else encoding
    if "!" in path:
        archive, member = path.split("!", 1)
        if not Path(archive).is_file():
            raise UserError(f"data file {archive} not found")
        with zipfile.ZipFile(archive) as zf:
            if member not in zf.namelist():
                raise UserError(f"{archive} has no member {member} (members: {zf.namelist()})")
            return io.StringIO(zf.read(member).decode(encoding), newline="")
    if Path(path).is_dir():
        raise UserError(f"{path} is a folder, not a data file")
    if Path(path).exists() and not Path(path).is_file():
        raise UserError(f"{path} is not a regular file (a FIFO or a device is never read)")
    if not Path(path).exists():
        raise UserError(f"data file {path} not found (set ANNOTUNE_DATA_DIR to the folder holding the "
                        "task data, or point the task spec at your copy)")
    if path.lower().endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def iter_rows(path: str, fmt: str | None = None, columns: list | None = None, encoding: str = "utf-8"):
    """Rows (dicts of column -> value, values as read) of a table file, streamed, of a folder of
    <label>/*.txt files, or of a plain text file (`lines`: one 'text' per line). CSV/TSV values
    are strings; blank lines are no rows, except in `lines`."""
    fmt = fmt or infer_format(path)
    if fmt == "textdir":
        yield from _read_textdir(path, encoding)
        return
    if fmt == "lines":
        yield from ({"text": line} for line in read_lines(path, encoding))
        return
    if fmt not in format_names():
        raise UserError(f"{path}: format must be one of {format_names()}, got {fmt!r}")
    try:
        with open_text(path, encoding) as handle:
            yield from table_format(fmt).rows(handle, path, columns)
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not {encoding.upper()} (byte {err.start}); convert it, e.g. iconv -t UTF-8") from None
    except csv.Error as err:
        raise UserError(f"{path}: cannot parse as {fmt.upper()} ({err})") from None
    except (OSError, EOFError) as err:  # a damaged or truncated .gz
        raise UserError(f"{path}: cannot be read ({str(err).splitlines()[0] if str(err) else type(err).__name__})") \
            from None


def read_table(path: str, fmt: str | None = None, columns: list | None = None, encoding: str = "utf-8") -> list:
    """All rows of a table file (see iter_rows)."""
    return list(iter_rows(path, fmt, columns, encoding))


def read_frame(path, what: str):
    """A table file (of any registered format) as a pandas DataFrame of strings: a corpus or a
    sheet. Every cell a string ("" where a row lacks the column or holds null); columns in the
    order first seen. what: the flag that named the file, for its errors."""
    import pandas as pd

    path = str(path)
    if not Path(path).exists():
        raise UserError(f"{what} {path} not found")
    if not Path(path).is_file():
        raise UserError(f"{what} {path} is not a regular file")
    fmt = infer_format(path)
    if fmt not in table_names():
        raise UserError(f"{what} {path}: not a table file ({', '.join(table_suffixes())})")
    rows = read_table(path, fmt)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = {c: ["" if row.get(c) is None else _cell(row.get(c)) for row in rows] for c in columns}
    return pd.DataFrame(cells, columns=columns, dtype=object)


def _cell(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# -------------------------------------------------------------------- writing
def write_table(path, rows, columns, fmt: str | None = None) -> Path:
    """Rows as a table file, atomically, in the format its name says (or `fmt`); never compressed."""
    if str(path).lower().endswith(".gz"):
        raise UserError(f"{path}: tables are written uncompressed; give a name without .gz")
    fmt = fmt or infer_format(str(path))
    return atomic_write_text(path, table_format(fmt, f"{path}").text(rows, columns, True))


def _csv_rows(handle, path, delimiter, columns):
    reader = csv.reader(handle, delimiter=delimiter)
    header = list(columns) if columns else next(reader, None)
    if header is None:
        return
    # An unnamed leading column is the row index that pandas/R wrote: call it "index".
    header = ["index" if (i == 0 and name in ("", "Unnamed: 0")) else name for i, name in enumerate(header)]
    for record in reader:
        if not record:
            continue
        if len(record) > len(header):
            raise UserError(f"{path}: line {reader.line_num} has {len(record)} fields, the header {len(header)}")
        yield dict(zip(header, record + [""] * (len(header) - len(record))))


def _json_rows(handle, path, fmt):
    """Rows of a JSON list or JSON Lines file; each row must be an object (one line names the first
    that is not: its line number, or its index in the list)."""
    if fmt == "json":
        text = handle.read()
        if text.lstrip().startswith(("[", "{")):
            try:
                data = parse_json(text, path)
            except json.JSONDecodeError:
                data = None  # many ".json" files (Politosphere) are really JSON Lines
            if data is not None:
                for i, row in enumerate(data if isinstance(data, list) else [data]):
                    if not isinstance(row, dict):
                        raise UserError(f"{path}: entry {i} of the JSON list is {_kind(row)}, not an object "
                                        "({\"column\": value, ...})")
                    yield row
                return
        handle = io.StringIO(text)
    for number, line in enumerate(handle, 1):
        if line.strip():
            try:
                row = parse_json(line, f"{path}: line {number}")
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: line {number} is not JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}: line {number} is {_kind(row)}, not a JSON object ({{\"column\": value, ...}})")
            yield row


def _kind(value) -> str:
    return {str: "a string", list: "a list", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _read_textdir(path: str, encoding: str):
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"data folder {path} not found")
    found = False
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(label_dir.glob("*.txt")):
            try:
                text = file.read_text(encoding=encoding).strip()
            except UnicodeDecodeError as err:
                raise UserError(f"{file} is not {encoding} (byte {err.start})") from None
            title, _, body = text.partition("\n")
            found = True
            yield {"id": f"{label_dir.name}/{file.stem}", "label": label_dir.name, "title": title.strip(),
                   "body": body.strip(), "text": text}
    if not found:
        raise UserError(f"data folder {path} holds no <label>/*.txt files")


def read_lines(path: str, encoding: str = "utf-8") -> list:
    """Every line of a text file as it is (no quote processing; a blank line is an empty row), the
    count checked against the file's newlines."""
    try:
        with open_text(path, encoding) as handle:
            text = handle.read()
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not {encoding.upper()} (byte {err.start}); convert it, e.g. iconv -t UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    expected = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    if len(lines) != expected:
        raise UserError(f"{path}: read {len(lines)} lines, the file has {expected}")
    return lines
