"""The human sample drawn from an annotated corpus: which rows humans label, with what inclusion
probability, written as a design file that estimate.py checks. The sampling designs are one
registry (DESIGNS); an entry declares its parameters (sample.py's flags), how pi is computed, how
rows are drawn, how a design file of it is checked, and its variance; adding one there is all a new
design needs (tests/test_registries.py registers one, draws with sample.py and estimates with
estimate.py).
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
every field against the corpus (`check_design`): pi is recomputed from the design's own settings
and drawn rows (its entry's `replay`).
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import inference
from .annotated import Corpus, row_id
from ..base.cli import Parameter, UserError
from ..labelling.corpus import PROB
from ..base.files import parse_json, read_bounded

DESIGN_FORMAT = "annotune-sample-design/2"   # sealed: "sha256" of the rest of the record
UNSEALED_FORMATS = ("annotune-sample-design/1",)
MAX_DESIGN_BYTES = 1 << 30


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


def check_strata(per_stratum, sizes, names, column) -> None:
    for nh, big, name in zip(per_stratum, sizes, names):
        if nh < 2 and nh < big:
            raise UserError(f"--stratify_by {column}: stratum {name!r} ({big} rows) gets {nh} of the drawn rows; "
                            "at least 2 per stratum are needed for an interval: raise --n or merge strata")


# ---------------------------------------------------------------- the registry
@dataclass(frozen=True)
class SamplingDesign:
    """A way to draw the rows humans label. name: sample.py --strategy NAME and the design file's
    `strategy`; kind: the design file's `kind`; parameters: its own settings (sample.py flags, kept
    in the design file). The functions:
    inclusion(corpus, n, strata, settings) -> (pi per corpus row, rows per stratum) for n rows;
    draw(pi, strata, per_stratum, already, old_pi, rng) -> corpus positions newly drawn, in the
      order the sheet lists them (never one already drawn; old_pi: an earlier phase's pi);
    realised(pi, strata, drawn) -> the pi the design file records once `drawn` are drawn;
    replay(corpus, design, strata, drawn, where) -> the pi check_design expects of a design file;
    sample(rows, design, corpus, strata) -> the inference.Sample of the labelled corpus positions
      (drawn rows left unlabelled taken as missing at random);
    variance(sample, d) -> the design covariance of the Horvitz-Thompson mean of per-row values d;
    plan(sample, influence, half_width, alpha, shape) -> the labels that reach half_width."""
    name: str
    kind: str
    help: str
    inclusion: Callable
    draw: Callable
    realised: Callable
    replay: Callable
    sample: Callable
    variance: Callable
    plan: Callable
    parameters: tuple = ()


def _uniform_inclusion(corpus: Corpus, n: int, strata: np.ndarray, settings: dict) -> tuple:
    sizes = np.bincount(strata)
    per_stratum = allocate(n, sizes)
    return (per_stratum / sizes)[strata], per_stratum


def _srs_draw(pi, strata, per_stratum, already, old_pi, rng) -> np.ndarray:
    new = []
    for h, nh in enumerate(per_stratum):
        pool = np.flatnonzero((strata == h) & ~already)
        take = max(nh - int((already & (strata == h)).sum()), 0)
        new.extend(rng.choice(pool, size=take, replace=False).tolist())
    return np.array(new, dtype=int)


def _drawn_share(pi, strata, drawn) -> np.ndarray:
    """Under SRS a row's pi is its stratum's share of rows drawn so far."""
    sizes = np.bincount(strata)
    return (np.bincount(strata[drawn], minlength=len(sizes)) / sizes)[strata]


def _srs_sample(rows, design: dict, corpus: Corpus, strata) -> inference.Sample:
    sizes, taken = np.bincount(strata), np.bincount(strata[rows], minlength=strata.max() + 1)
    _, names = strata_of(corpus, design["stratify_by"])
    short = [n for n, t, big in zip(names, taken, sizes) if t < 2 and t < big]
    if short:
        raise UserError(f"stratum {short[0]!r} of {design['stratify_by']} has fewer than 2 labelled rows: its "
                        "variance is unknown; label more of its drawn rows (or top the draw up)")
    return inference.Sample(rows, (taken / sizes)[strata[rows]], "srs", corpus.size, strata)


def _active_inclusion(corpus: Corpus, n: int, strata: np.ndarray, settings: dict) -> tuple:
    sizes = np.bincount(strata)
    per_stratum = allocate(n, sizes)
    u, pi = uncertainty(corpus, settings["target"]), np.zeros(corpus.size)
    for h, nh in enumerate(per_stratum):
        mine = strata == h
        pi[mine] = active_pi(u[mine], nh, settings["uniform_share"])
    return pi, per_stratum


def _poisson_draw(pi, strata, per_stratum, already, old_pi, rng) -> np.ndarray:
    base = np.zeros_like(pi) if old_pi is None else old_pi
    r = np.where(already, 0.0, (pi - base) / np.maximum(1 - base, 1e-12))
    new = np.flatnonzero(rng.random(len(pi)) < np.clip(r, 0, 1))
    return new[rng.permutation(len(new))]  # the sheet in random order, not the corpus's


def _poisson_sample(rows, design: dict, corpus: Corpus, strata) -> inference.Sample:
    rate = len(rows) / max(design["drawn_n"], 1)  # the labelled share of the drawn rows scales every pi
    return inference.Sample(rows, np.array(design["pi"], dtype=float)[rows] * rate, "poisson", corpus.size)


DESIGNS = (
    SamplingDesign("uniform", "srs", "a simple random sample of n rows (per stratum, in proportion)",
                   _uniform_inclusion, _srs_draw, _drawn_share,
                   lambda corpus, design, strata, drawn, where: _drawn_share(None, strata, drawn),
                   _srs_sample, inference.srs_cov, inference.plan_n),
    SamplingDesign("active", "poisson", "a Poisson draw weighted by the model's uncertainty about --target, with a "
                                        "uniform floor (--uniform_share)",
                   _active_inclusion, _poisson_draw, lambda pi, strata, drawn: pi,
                   lambda corpus, design, strata, drawn, where: replay_active(corpus, design, strata, where),
                   _poisson_sample, inference.poisson_cov, inference.plan_n,
                   (Parameter("target", "all", "active: the label whose share matters most, or 'all' (default: all)"),
                    Parameter("uniform_share", 0.5, "active: share of the inclusion probability spread uniformly, a "
                                                    "floor for every row; 0 < value <= 1 (default: 0.5)",
                              type=float, low=1e-9, high=1.0, range_text="in (0, 1]"))),
)


def sampling_design(name: str, where: str = "--strategy") -> SamplingDesign:
    for design in DESIGNS:
        if design.name == name:
            return design
    raise UserError(f"{where}: strategy {name!r} is not one of {', '.join(d.name for d in DESIGNS)}")


def design_parameters() -> list:
    """Every registered design's parameters (sample.py's flags)."""
    return [p for design in DESIGNS for p in design.parameters]


def design_settings(name: str, stratify_by: str | None, values: dict) -> dict:
    """What a design file keeps of the draw's settings: the strategy, the stratifying column and
    every registered parameter (null where another design's)."""
    own = {p.name for p in sampling_design(name).parameters}
    return {"strategy": name, "stratify_by": stratify_by,
            **{p.name: (values[p.name] if p.name in own else None) for p in design_parameters()}}


def inclusion_probabilities(corpus: Corpus, strategy: str, n: int, strata: np.ndarray, settings: dict) -> tuple:
    """(pi per corpus row, rows per stratum) of a design of expected size n."""
    return sampling_design(strategy).inclusion(corpus, n, strata, settings)


def sample_of(design: dict, corpus: Corpus, labelled_rows) -> inference.Sample:
    """The labelled corpus positions as a sample of the design file's draw, with its variance."""
    rows = np.array(sorted(labelled_rows), dtype=int)
    if len(rows) < 2:
        raise UserError(f"the sheets hold {len(rows)} labelled rows; at least 2 are needed")
    entry = sampling_design(design["strategy"])
    strata, _ = strata_of(corpus, design["stratify_by"])
    sample = entry.sample(rows, design, corpus, strata)
    sample.variance = entry.variance
    return sample


# ---------------------------------------------------------------- design files
def design_record(corpus: Corpus, settings: dict, pi, strata, names, drawn, phases) -> dict:
    """The design file's record, sealed. settings: design_settings(); drawn: corpus positions of
    every drawn row, in the order they were drawn."""
    drawn = np.asarray(drawn, dtype=int)
    record = {"format": DESIGN_FORMAT, "corpus": str(corpus.path), "corpus_sha256": corpus.sha256,
              "corpus_rows": corpus.size, **settings, "kind": sampling_design(settings["strategy"]).kind,
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
    entry = sampling_design(strategy, where)
    if design.get("kind") != entry.kind:
        raise UserError(f"{where}: kind {design.get('kind')!r} does not match strategy {strategy!r} "
                        f"({entry.kind!r})")
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
    expected = entry.replay(corpus, design, strata, positions, where)
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
        now, _ = _active_inclusion(corpus, total, strata, {"target": target, "uniform_share": tau})
        pi = now if pi is None else np.maximum(pi, now)
    return pi
