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
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli import UserError
from .corpus import PREDICTION, PROB, ROW
from .labels import norm_label

DESIGN_FORMAT = "annotune-sample-design/1"


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

    def label_index(self, value: str, context: str) -> int:
        keys = {norm_label(label): i for i, label in enumerate(self.labels)}
        if norm_label(value) not in keys:
            raise UserError(f"{context}: {value!r} is not a label of this corpus ({', '.join(self.labels)})")
        return keys[norm_label(value)]


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_corpus(path: str) -> Corpus:
    """The annotated corpus, checked: a prediction column, finite probabilities in [0, 1]."""
    import pandas as pd

    if not Path(path).is_file():
        raise UserError(f"--corpus {path} not found")
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
    try:
        ids = table[ROW].astype(int).to_numpy()
    except ValueError:
        raise UserError(f"--corpus {path}: column {ROW!r} must hold row numbers (integers)") from None
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
    names, codes = np.unique(corpus.column(column, "--stratify_by").astype(str), return_inverse=True)
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


def design_record(corpus: Corpus, args, pi, strata, names, drawn, phases) -> dict:
    sizes = np.bincount(strata, minlength=len(names))
    taken = np.bincount(strata[drawn], minlength=len(names))
    return {"format": DESIGN_FORMAT, "corpus": str(corpus.path), "corpus_sha256": corpus.sha256,
            "corpus_rows": corpus.size, "strategy": args.strategy,
            "kind": "srs" if args.strategy == "uniform" else "poisson", "target": args.target,
            "uniform_share": args.uniform_share, "stratify_by": args.stratify_by,
            "expected_n": float(pi.sum()), "drawn_n": int(len(drawn)),
            "strata": {name: {"rows": int(s), "drawn": int(t)} for name, s, t in zip(names, sizes, taken)},
            "phases": phases, "drawn": [int(corpus.ids[i]) for i in drawn],
            "pi": [round(float(p), 12) for p in pi]}


def read_design(path: str, corpus: Corpus) -> dict:
    """A design file, checked against the corpus it was drawn from (same bytes, same rows)."""
    try:
        design = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--design {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"--design {path} is not JSON") from None
    if not isinstance(design, dict) or design.get("format") != DESIGN_FORMAT:
        raise UserError(f"--design {path} is not a design file written by sample.py")
    if design.get("corpus_sha256") != corpus.sha256:
        raise UserError(f"--design {path} was drawn from another corpus file (SHA-256 differs from "
                        f"{corpus.path}); estimates need the exact file the rows were drawn from")
    if len(design.get("pi", [])) != corpus.size:
        raise UserError(f"--design {path} lists {len(design.get('pi', []))} rows, the corpus has {corpus.size}")
    return design
