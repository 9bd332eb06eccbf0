"""The annotated corpus as a table of model outputs, and the human sample drawn from it: which rows
humans label, with what inclusion probability, written as a design file that estimate.py checks.

The corpus file is evaluate.py --predict_file's output: the input columns plus `row` (the row
number), `prediction`, `prob_<label>` per label and `truncated`; those names are ours
(`corpus.reserved_column`). Designs:
- uniform: a simple random sample without replacement of n rows (stratified with proportional
  allocation under --stratify_by); a top-up draws more rows from those not drawn, so the union is
  again a simple random sample (per stratum) of the larger size.
- active: Poisson sampling, each row independently with probability
  pi_i = n * ((1 - tau) * u_i / sum u + tau / N), where u_i is the model's uncertainty about the
  target (sqrt(p (1 - p)) for one label, sqrt(sum_k p_k (1 - p_k)) for all) and tau the share
  drawn uniformly, so every row keeps a floor probability (active inference, Zrnic & Candes
  2024); pi is capped at 1. A top-up raises every pi to the larger design's and draws each
  undrawn row with (pi_new - pi_old) / (1 - pi_old): the union is Poisson with pi_new.

The design file is the evidence behind every interval, so it is sealed (`seal`: a SHA-256 of the
rest of the record, which shows an edit or an accident, not a forgery) and `read_design` checks
every field against the corpus (`check_design`): an active design's pi is recomputed from its
settings, an SRS design's from its drawn rows.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli import UserError
from .corpus import PREDICTION, PROB, ROW
from .files import file_sha256, parse_json, read_bounded
from .labels import norm_label

DESIGN_FORMAT = "annotune-sample-design/2"   # sealed: "sha256" of the rest of the record
UNSEALED_FORMATS = ("annotune-sample-design/1",)
KIND_OF_STRATEGY = {"uniform": "srs", "active": "poisson"}
BLANK = "(blank)"  # the group of blank (or NaN) cells of a --by / --stratify_by column
MAX_DESIGN_BYTES = 1 << 30


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
    """The annotated corpus, checked: a prediction column, finite probabilities in [0, 1]."""
    import pandas as pd

    if not Path(path).exists():
        raise UserError(f"--corpus {path} not found")
    if not Path(path).is_file():
        raise UserError(f"--corpus {path} is not a regular file")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"--corpus {path} is not a readable UTF-8 CSV: {str(err).splitlines()[0]}") from None
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
    return Corpus(path, file_sha256(path), table, ids, labels, pred, probs)


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


# ---------------------------------------------------------------- designs
def uncertainty(corpus: Corpus, target: str | None) -> np.ndarray:
    """The model's uncertainty per row about one label's indicator, or about all labels."""
    if corpus.probs is None:
        raise UserError(f"--strategy active needs the model's probabilities: {corpus.path} has no "
                        f"{PROB}<label> columns (label it with --mode score)")
    p = corpus.probs
    if target and target != "all":
        pk = p[:, corpus.label_index(target, "--target")]
        return np.sqrt(pk * (1 - pk))
    return np.sqrt(np.clip((p * (1 - p)).sum(axis=1), 0, None))


def strata_of(corpus: Corpus, column: str | None) -> tuple:
    """(stratum code per row, stratum names); one stratum without --stratify_by."""
    if not column:
        return np.zeros(corpus.size, dtype=int), ["all"]
    names, codes = np.unique(corpus.categories(column, "--stratify_by"), return_inverse=True)
    return codes.reshape(-1), [str(n) for n in names]


def allocate(n: int, sizes: np.ndarray) -> np.ndarray:
    """Proportional allocation of n over strata of these sizes (largest remainders)."""
    exact = n * sizes / sizes.sum()
    out = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - out), kind="stable")[: n - out.sum()]:
        out[i] += 1
    return np.minimum(out, sizes)


def active_pi(u: np.ndarray, n: float, tau: float) -> np.ndarray:
    """n * ((1 - tau) u / sum u + tau / N), capped at 1 with the excess spread over the others."""
    big = len(u)
    share = (1 - tau) * u / u.sum() + tau / big if u.sum() > 0 else np.full(big, 1.0 / big)
    pi, capped = np.zeros(big), np.zeros(big, dtype=bool)
    for _ in range(big):
        left = n - capped.sum()
        pi[~capped] = left * share[~capped] / share[~capped].sum()
        pi[capped] = 1.0
        over = (pi > 1) & ~capped
        if not over.any():
            break
        capped |= over
    return np.minimum(pi, 1.0)


def inclusion_probabilities(corpus: Corpus, strategy: str, n: int, strata: np.ndarray,
                            target: str | None, tau: float) -> tuple:
    """(pi per corpus row, rows per stratum) of a design of expected size n."""
    sizes = np.bincount(strata)
    per_stratum = allocate(n, sizes)
    pi = np.zeros(corpus.size)
    u = uncertainty(corpus, target) if strategy == "active" else None
    for h, nh in enumerate(per_stratum):
        mine = strata == h
        pi[mine] = nh / sizes[h] if strategy == "uniform" else active_pi(u[mine], nh, tau)
    return pi, per_stratum


def check_strata(per_stratum, sizes, names, column) -> None:
    for nh, big, name in zip(per_stratum, sizes, names):
        if nh < 2 and nh < big:
            raise UserError(f"--stratify_by {column}: stratum {name!r} ({big} rows) gets {nh} of the drawn rows; "
                            "at least 2 per stratum are needed for an interval: raise --n or merge strata")


def draw(strategy: str, pi: np.ndarray, strata: np.ndarray, per_stratum, already: np.ndarray,
         old_pi: np.ndarray | None, rng) -> np.ndarray:
    """Positions of the newly drawn rows (never one already drawn)."""
    if strategy == "uniform":
        new = []
        for h, nh in enumerate(per_stratum):
            pool = np.flatnonzero((strata == h) & ~already)
            take = max(nh - int((already & (strata == h)).sum()), 0)
            new.extend(rng.choice(pool, size=take, replace=False).tolist())
        return np.array(new, dtype=int)
    base = np.zeros_like(pi) if old_pi is None else old_pi
    r = np.where(already, 0.0, (pi - base) / np.maximum(1 - base, 1e-12))
    return np.flatnonzero(rng.random(len(pi)) < np.clip(r, 0, 1))


def design_record(corpus: Corpus, settings: dict, pi, strata, names, drawn, phases) -> dict:
    """The design file's record, sealed. settings: strategy, target, uniform_share, stratify_by;
    drawn: corpus positions of every drawn row, in the order they were drawn."""
    drawn = np.asarray(drawn, dtype=int)
    record = {"format": DESIGN_FORMAT, "corpus": str(corpus.path), "corpus_sha256": corpus.sha256,
              "corpus_rows": corpus.size, "strategy": settings["strategy"],
              "kind": KIND_OF_STRATEGY[settings["strategy"]], "target": settings["target"],
              "uniform_share": settings["uniform_share"], "stratify_by": settings["stratify_by"],
              "expected_n": float(pi.sum()), "drawn_n": int(len(drawn)),
              "strata": strata_record(strata, names, drawn), "phases": phases, "drawn": [int(corpus.ids[i]) for i in drawn],
              "pi": [round(float(p), 12) for p in pi]}
    return {**record, "sha256": seal(record)}


def strata_record(strata: np.ndarray, names: list, drawn: np.ndarray) -> dict:
    """{stratum name: its rows and drawn rows}, as the design file lists them."""
    sizes, taken = np.bincount(strata, minlength=len(names)), np.bincount(strata[drawn], minlength=len(names))
    return {name: {"rows": int(s), "drawn": int(t)} for name, s, t in zip(names, sizes, taken)}


def seal(design: dict) -> str:
    """SHA-256 of the record without its seal, in a canonical JSON form. It shows that a design was
    edited after sample.py wrote it (by hand or by accident), not that nobody forged it: whoever
    edits the file can compute a new seal."""
    body = {k: v for k, v in design.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_design(path: str, corpus: Corpus) -> dict:
    """A design file, checked in full against the corpus it was drawn from: same bytes, its seal,
    every field's type and range, and every field that the others determine (see check_design)."""
    try:
        design = parse_json(read_bounded(path, MAX_DESIGN_BYTES, "--design"), f"--design {path}")
    except json.JSONDecodeError:
        raise UserError(f"--design {path} is not JSON") from None
    if not isinstance(design, dict) or design.get("format") not in (DESIGN_FORMAT, *UNSEALED_FORMATS):
        raise UserError(f"--design {path} is not a design file written by sample.py")
    if design.get("corpus_sha256") != corpus.sha256:
        raise UserError(f"--design {path} was drawn from another corpus file (SHA-256 differs from "
                        f"{corpus.path}); estimates need the exact file the rows were drawn from")
    if design["format"] == DESIGN_FORMAT and design.get("sha256") != seal(design):
        raise UserError(f"--design {path} was changed after sample.py wrote it (its sha256 seal does not match "
                        "its content); use the design file as written")
    check_design(design, corpus, f"--design {path}")
    if design["format"] in UNSEALED_FORMATS:
        print(f"note: --design {path} is of the unsealed format {design['format']}: checked in full against the "
              "corpus and accepted", file=sys.stderr)
    return design


def _field(design: dict, key: str, types, where: str, optional: bool = False):
    value = design.get(key)
    if value is None and optional:
        return None
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (int in types or float in types) and not _is_number(value):
        raise UserError(f"{where}: {key!r} is {json.dumps(value)[:40]}, not {_type_name(types)}")
    return value


def _is_number(value) -> bool:
    """A JSON number a float holds (not a boolean, not an integer past 2**62)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (isinstance(value, int)
                                                                                  and abs(value) > 2 ** 62)


def _type_name(types) -> str:
    if types == (int, float):
        return "a number"
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return " or ".join(names[t] for t in (types if isinstance(types, tuple) else (types,)))


def check_design(design: dict, corpus: Corpus, where: str) -> None:
    """Types and ranges of every field; drawn rows unique and in the corpus; drawn_n = len(drawn);
    kind = the strategy's; expected_n = sum(pi); every pi in (0, 1] and equal to what the design's
    own settings give: under SRS each stratum's drawn share, under an active design the inclusion
    probabilities recomputed phase by phase from the model's probabilities."""
    strategy = _field(design, "strategy", str, where)
    if strategy not in KIND_OF_STRATEGY:
        raise UserError(f"{where}: strategy {strategy!r} is not one of {', '.join(KIND_OF_STRATEGY)}")
    if design.get("kind") != KIND_OF_STRATEGY[strategy]:
        raise UserError(f"{where}: kind {design.get('kind')!r} does not match strategy {strategy!r} "
                        f"({KIND_OF_STRATEGY[strategy]!r})")
    stratify_by = _field(design, "stratify_by", str, where, optional=True)
    pi = _field(design, "pi", list, where)
    if len(pi) != corpus.size:
        raise UserError(f"{where} lists {len(pi)} rows, the corpus has {corpus.size}")
    if not all(_is_number(p) for p in pi):
        bad = next(k for k, p in enumerate(pi) if not _is_number(p))
        raise UserError(f"{where}: pi of row {corpus.ids[bad]} is {json.dumps(pi[bad])[:40]}, not a number")
    pi = np.array(pi, dtype=float)
    outside = np.flatnonzero(~np.isfinite(pi) | (pi <= 0) | (pi > 1))
    if len(outside):
        raise UserError(f"{where}: pi of row {corpus.ids[outside[0]]} is {pi[outside[0]]}, not in (0, 1]")
    drawn = _field(design, "drawn", list, where)
    ids = [row_id(v) if not isinstance(v, (str, float)) else None for v in drawn]
    if None in ids:
        raise UserError(f"{where}: drawn holds {json.dumps(drawn[ids.index(None)])[:40]}, not a row number")
    if len(set(ids)) != len(ids):
        raise UserError(f"{where}: drawn lists a row twice")
    positions = corpus.positions(ids, where)
    if _field(design, "drawn_n", int, where) != len(ids):
        raise UserError(f"{where}: drawn_n is {design['drawn_n']}, but drawn lists {len(ids)} rows")
    if abs(_field(design, "expected_n", (int, float), where) - pi.sum()) > 1e-6 * max(1.0, pi.sum()):
        raise UserError(f"{where}: expected_n is {design['expected_n']}, the sum of pi {pi.sum():.6f}")
    phases = _field(design, "phases", list, where)
    if not phases or any(not isinstance(p, dict) or not all(isinstance(p.get(k), int) and not isinstance(p.get(k), bool)
                                                            for k in ("seed", "requested", "drawn")) for p in phases):
        raise UserError(f"{where}: phases must list each draw's seed, requested and drawn counts (integers)")
    if sum(p["drawn"] for p in phases) != len(ids):
        raise UserError(f"{where}: its phases drew {sum(p['drawn'] for p in phases)} rows, drawn lists {len(ids)}")
    strata, names = strata_of(corpus, stratify_by)
    if design.get("strata") != strata_record(strata, names, positions):
        raise UserError(f"{where}: its strata do not match the corpus's {stratify_by or 'rows'} and its drawn rows")
    taken = np.bincount(strata[positions], minlength=len(names))
    expected = (taken / np.bincount(strata, minlength=len(names)))[strata] if strategy == "uniform" else replay_active(corpus, design, strata, where)
    wrong = np.flatnonzero(np.abs(pi - expected) > 1e-8)
    if len(wrong):
        k = wrong[0]
        raise UserError(f"{where}: pi of row {corpus.ids[k]} is {pi[k]:.6g}, its {strategy} design gives "
                        f"{expected[k]:.6g}; use the design file as sample.py wrote it")


def replay_active(corpus: Corpus, design: dict, strata: np.ndarray, where: str) -> np.ndarray:
    """An active design's pi recomputed from its settings: each phase's pi for its total, a row's
    pi never falling across phases (as sample.py draws them)."""
    target = _field(design, "target", str, where, optional=True)
    tau = _field(design, "uniform_share", (int, float), where)
    if not 0 < tau <= 1:
        raise UserError(f"{where}: uniform_share {tau} is not in (0, 1]")
    pi = None
    for k, phase in enumerate(design["phases"]):
        total = phase["requested"] if k == 0 else int(round(pi.sum())) + phase["requested"]
        if not 1 <= total <= corpus.size:
            raise UserError(f"{where}: phase {k + 1} asks for {total} rows of {corpus.size}")
        now, _ = inclusion_probabilities(corpus, "active", total, strata, target, tau)
        pi = now if pi is None else np.maximum(pi, now)
    return pi
