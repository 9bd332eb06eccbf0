"""The annotated corpus read back: evaluate.py --predict_file's output (a table file of any format,
tables.read_frame) as every row's id, the model's label and its probabilities, with the group
names that --by and --stratify_by make of a column. Its own column names are corpus.py's: `row`
(the row number), `prediction`, `prob_<label>` per label and `truncated` (`corpus.reserved_column`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..base.cli import UserError
from ..labelling.corpus import PREDICTION, PROB, ROW
from ..base.files import file_sha256
from ..data.labels import norm_label
from ..base.tables import read_frame

BLANK = "(blank)"  # the group of blank (or NaN) cells of a --by / --stratify_by column


def row_id(value) -> int | None:
    """A row number as a sheet or corpus may write it (7, "7", " 7", 7.0, "7.0"); None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def is_blank(value) -> bool:
    """A missing cell: empty or white space, or NaN as pandas and R write it."""
    text = str(value).strip()
    return not text or text.lower() in ("nan", "na", "<na>")


def group_names(values, what: str) -> np.ndarray:
    """Values as group names: blank and NaN cells are the group "(blank)", a name no other value may
    take (so no group can take the whole corpus's place, or another's)."""
    values = np.array([str(v) for v in values], dtype=object)
    blank = np.array([is_blank(v) for v in values], dtype=bool)
    if blank.any() and (values[~blank] == BLANK).any():
        raise UserError(f"{what}: the column holds both blank cells and the value {BLANK!r}, the name blank "
                        "cells take; rename that value")
    values[blank] = BLANK
    return values.astype(str)


@dataclass
class Corpus:
    """An annotated corpus: every row's id, the model's label and (when scored) its probabilities."""
    path: str
    sha256: str
    table: object            # pandas DataFrame of strings
    ids: np.ndarray          # row ids (the `row` column, else 0..N-1)
    labels: list             # label names, in prob_ column order
    prediction: np.ndarray   # label index per row
    probs: np.ndarray | None  # (N, K), or None for a corpus labelled by generation
    fold_probs: np.ndarray | None = None  # (folds, N, K): each fold model's (evaluate.py --ensemble), else None
    given: np.ndarray | None = None  # the file's labels where `prediction` was replaced (crossfit.CrossFit.corpus)

    @property
    def size(self) -> int:
        return len(self.ids)

    def column(self, name: str, flag: str) -> np.ndarray:
        if name not in self.table.columns:
            raise UserError(f"{flag} {name}: {self.path} has no such column (columns: {list(self.table.columns)[:20]})")
        return self.table[name].to_numpy()

    def categories(self, name: str, flag: str) -> np.ndarray:
        """A column's values as group names (group_names)."""
        return group_names(self.column(name, flag), f"{flag} {name}")

    def positions(self, ids, what: str) -> np.ndarray:
        """Corpus positions of these row ids (each must be a row of the corpus)."""
        position = {int(i): k for k, i in enumerate(self.ids)}
        out = [position.get(i) for i in ids]
        if None in out:
            raise UserError(f"{what}: row {ids[out.index(None)]} is not a row of {self.path}")
        return np.array(out, dtype=int)

    def label_index(self, value: str, context: str) -> int:
        keys = {norm_label(label): i for i, label in enumerate(self.labels)}
        if norm_label(value) not in keys:
            raise UserError(f"{context}: {value!r} is not a label of this corpus ({', '.join(self.labels)})")
        return keys[norm_label(value)]


def read_corpus(path: str) -> Corpus:
    """The annotated corpus (a table file of any format: tables.read_frame), checked: a prediction
    column, finite probabilities in [0, 1]."""
    import pandas as pd

    table = read_frame(path, "--corpus")
    if PREDICTION not in table.columns or table.empty:
        raise UserError(f"--corpus {path} has no {PREDICTION!r} column or no rows: give the CSV that "
                        "evaluate.py --predict_file wrote")
    ids = _row_ids(table, path)
    labels = [c[len(PROB):] for c in table.columns if c.startswith(PROB)]
    probs = None
    if labels:
        probs = np.empty((len(table), len(labels)))
        for k, label in enumerate(labels):
            values = pd.to_numeric(table[PROB + label], errors="coerce").to_numpy(dtype=float)
            bad = np.flatnonzero(~np.isfinite(values) | (values < -1e-9) | (values > 1 + 1e-9))
            if len(bad):
                raise UserError(f"--corpus {path}: column {PROB + label} row {ids[bad[0]]} holds "
                                f"{table[PROB + label].iloc[bad[0]]!r}, not a probability in [0, 1]")
            probs[:, k] = np.clip(values, 0, 1)
    else:
        labels = sorted(set(table[PREDICTION]) - {""})
    keys = {norm_label(label): i for i, label in enumerate(labels)}
    pred = np.array([keys.get(norm_label(v), -1) for v in table[PREDICTION]])
    if (pred < 0).any():
        bad = int(np.flatnonzero(pred < 0)[0])
        raise UserError(f"--corpus {path}: row {ids[bad]} has prediction {table[PREDICTION].iloc[bad]!r}, "
                        f"not one of its labels ({', '.join(labels)})")
    return Corpus(path, file_sha256(path), table, ids, labels, pred, probs, fold_probabilities(table, labels, path))


def fold_probabilities(table, labels: list, path: str) -> np.ndarray | None:
    """(K, N, L) of the fold<k>_prob_<label> columns of a corpus labelled by an ensemble, else None."""
    from ..labelling.ensemble import FOLD_PROB

    found = {}
    for column in table.columns:
        match = FOLD_PROB.match(str(column))
        if match:
            found[int(match.group(1)), match.group(2)] = column
    if not found:
        return None
    k = 1 + max(f for f, _ in found)
    if set(found) != {(f, label) for f in range(k) for label in labels}:
        raise UserError(f"--corpus {path}: its fold<k>_prob_<label> columns are not one per fold and label of "
                        f"{labels}")
    import pandas as pd

    out = np.stack([[pd.to_numeric(table[found[f, label]], errors="coerce").to_numpy(dtype=float) for label in labels]
                    for f in range(k)]).transpose(0, 2, 1)
    if not np.isfinite(out).all() or (out < -1e-9).any() or (out > 1 + 1e-9).any():
        raise UserError(f"--corpus {path}: a fold<k>_prob_ column holds a value that is not a probability in [0, 1]")
    return np.clip(out, 0, 1)


def _row_ids(table, path) -> np.ndarray:
    if ROW not in table.columns:
        return np.arange(len(table))
    ids = [row_id(v) for v in table[ROW]]
    if None in ids:
        bad = ids.index(None)
        raise UserError(f"--corpus {path}: column {ROW!r} line {bad + 2} holds {table[ROW].iloc[bad]!r}, not a row "
                        "number (an integer)")
    if any(abs(i) >= 2 ** 63 for i in ids):
        raise UserError(f"--corpus {path}: column {ROW!r} holds a row number beyond 64 bits")
    ids = np.array(ids, dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise UserError(f"--corpus {path}: column {ROW!r} repeats a row number")
    return ids
