"""What a study reports about a corpus, each estimated by every registered estimator
(estimators.ESTIMATORS: naive, classical, ppi, ...): every label's share, its share in each group
and the difference between groups, and the coefficients of a regression of one label on corpus
columns. Built once per corpus (`Findings`), then run on any human sample: estimate.py runs it
once, bench/inference.py thousands of times.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from . import estimators, inference
from ..base.cli import UserError


@dataclass
class Quantity:
    kind: str          # share | difference | coefficient
    label: str
    group: str = ""    # share: the group ("" = the whole corpus); difference: "A - B"
    term: str = ""     # coefficient: the covariate

    @property
    def name(self) -> str:
        if self.kind == "coefficient":
            return f"coef[{self.term}] of {self.label}"
        where = f" in {self.group}" if self.kind == "share" and self.group else ""
        return f"share of {self.label}{where}" if self.kind == "share" else f"share of {self.label}: {self.group}"


def design_matrix(columns: dict, labelled=None, drop_blank: bool = False) -> tuple:
    """Covariates -> (X with an intercept, term names, the rows regressed on). A column is numeric
    when every non-blank cell is a finite number, else categorical: one indicator per level but the
    most frequent (the reference). Blank cells are refused unless drop_blank, which leaves their rows
    out (X row 0: outside the regression's domain). labelled: corpus positions of the human-labelled
    rows, to refuse a level with fewer than 2 of them before the matrix is built."""
    from .annotated import is_blank

    size = len(next(iter(columns.values())))
    values = {name: np.array([str(v) for v in column], dtype=object) for name, column in columns.items()}
    blank = {name: np.array([is_blank(v) for v in column], dtype=bool) for name, column in values.items()}
    keep = ~np.any(list(blank.values()), axis=0)
    for name, missing in blank.items():
        if missing.any() and not drop_blank:
            raise UserError(f"--on {name}: {int(missing.sum())} of {size} rows are blank; fill them, or pass "
                            "--drop_blank to regress on the rows where every --on column has a value")
    parts, names = [np.ones((size, 1))], ["intercept"]
    for name, column in values.items():
        numeric = _numbers(column[keep])
        if numeric is not None:
            part = np.zeros(size)
            part[keep] = numeric
            parts.append(part[:, None])
            names.append(name)
            continue
        levels, counts = np.unique(column[keep].astype(str), return_counts=True)
        if labelled is not None:
            _check_levels(name, column, keep, levels, labelled)
        reference = levels[np.argmax(counts)]
        for level in levels:
            if level != reference:
                parts.append(((column == level) & keep).astype(float)[:, None])
                names.append(f"{name}={level} (vs {reference})")
    return np.hstack(parts) * keep[:, None], names, keep


def _numbers(column) -> np.ndarray | None:
    try:
        numbers = column.astype(float)
    except ValueError:
        return None
    return numbers if np.isfinite(numbers).all() else None


def _check_levels(name, column, keep, levels, labelled) -> None:
    rows = np.asarray(labelled, dtype=int)
    rows = rows[keep[rows]]
    seen = dict(zip(*np.unique(column[rows].astype(str), return_counts=True)))
    thin = [level for level in levels if seen.get(level, 0) < 2]
    if thin:
        raise UserError(f"--on {name}: level {thin[0]!r} has {seen.get(thin[0], 0)} labelled rows ({len(thin)} of its "
                        f"{len(levels)} levels have fewer than 2); a category needs 2 labelled rows per level: "
                        "merge rare levels, or regress on another column")


def check_terms(xs: np.ndarray, terms: list) -> None:
    """The labelled rows must identify every coefficient: each indicator on 2 rows or more, and
    their design matrix of full column rank."""
    for t, term in enumerate(terms):
        column = xs[:, t]
        if t and np.isin(column, (0.0, 1.0)).all() and (column == 1).sum() < 2:
            raise UserError(f"--on: term {term!r} has {int((column == 1).sum())} labelled rows; a category "
                            "level needs at least 2")
    rank = np.linalg.matrix_rank(xs) if len(xs) else 0
    if rank < xs.shape[1]:
        raise UserError(f"--on: the labelled rows' design matrix has rank {rank} below its {xs.shape[1]} columns "
                        f"({', '.join(terms)}): a covariate is constant or collinear where humans labelled")


class Findings:
    """The quantities of one corpus: the model's outputs on every row, the groups and the
    regression. output: what ppi uses, 'probs' (f = the label's probability) or 'labels' (f = 1
    if the model gave it); options: every estimator's parameters (estimators.default_options())."""

    def __init__(self, corpus, output: str = "probs", by=None, regress=None, link: str = "logistic", compare=None,
                 labelled=None, drop_blank: bool = False, options: dict | None = None):
        self.options = {**estimators.default_options(), "model_output": output, **(options or {})}
        if self.options["model_output"] == "probs" and corpus.probs is None:
            self.options["model_output"] = "labels"  # a corpus labelled by generation has no probabilities
        self.corpus, self.output, self.link = corpus, self.options["model_output"], link
        size, k = corpus.size, len(corpus.labels)
        given = None if corpus.given is None else np.eye(k)[corpus.given]
        self.outputs = estimators.ModelOutputs(corpus.probs, np.eye(k)[corpus.prediction], corpus, given)
        self.cache = {}  # census cells per (domain, label, output): reused by every sample run
        self.domains = {"": np.ones((size, 1))}
        self.groups = []
        if by is not None:
            from .annotated import group_names

            values = group_names(by, "--by")
            self.groups = sorted(set(values), key=lambda g: (-np.sum(values == g), g))
            for g in self.groups:
                self.domains[g] = (values == g).astype(float)[:, None]
        for pair in compare or []:
            for g in pair:
                if g not in self.domains or not g:
                    raise UserError(f"--compare {g}: not a group of --by (groups: {', '.join(self.groups)})")
        self.compare = [tuple(p) for p in compare] if compare else None
        self.regression, self.regression_rows = None, None
        if regress is not None:
            label, columns = regress
            j = corpus.label_index(label, "--regress")
            x, terms, keep = design_matrix(columns, labelled, drop_blank)
            self.regression_rows = int(keep.sum())
            self.regression = (j, x, terms)

    @property
    def f(self) -> np.ndarray:
        """The model's outputs ppi uses on every row, (N, K): probabilities, or 0/1 labels."""
        return self.outputs.values(self.output)

    def pairs(self):
        if self.compare:
            return self.compare
        if len(self.groups) <= 4:
            return list(combinations(self.groups, 2))
        return [(self.groups[0], g) for g in self.groups[1:]]  # many groups: each against the largest

    def quantities(self) -> list:
        out = []
        for j, label in enumerate(self.corpus.labels):
            out += [Quantity("share", label, g) for g in self.domains]
            out += [Quantity("difference", label, f"{a} - {b}") for a, b in self.pairs()]
        if self.regression:
            j, _, terms = self.regression
            out += [Quantity("coefficient", self.corpus.labels[j], term=t) for t in terms]
        return out

    # ---------------------------------------------------------------- every registered estimator
    def run(self, sample, gold, methods=None, alpha: float = 0.1) -> list:
        """Per quantity and estimator (methods: their names; default every registered one): estimate,
        interval, se, lam, the influence for planning, and the labelled rows it rests on. A share or
        difference whose group holds fewer than 2 labelled rows is not estimable from the sample: the
        entries of estimators that use it say so (estimate None). gold: the human label index of each
        sampled row (sample.rows order)."""
        labelled = {g: 0 if sample is None else int((x[sample.rows, 0] != 0).sum()) for g, x in self.domains.items()}
        results = []
        for j, label in enumerate(self.corpus.labels):
            y = (gold == j).astype(float)
            for e in estimators.registered(methods):
                ests = {g: e.fit(self._inputs(g, x, j, sample, y, "identity")) for g, x in self.domains.items()
                        if not e.uses_sample or labelled[g] >= 2}
                rests = None if not e.uses_sample else labelled
                for g in self.domains:
                    q = Quantity("share", label, g)
                    results.append(self._record(q, e.name, ests[g], alpha, rests and rests[g]) if g in ests
                                   else self._unknown(q, e.name, labelled[g]))
                for a, b in self.pairs():
                    q = Quantity("difference", label, f"{a} - {b}")
                    if a not in ests or b not in ests:
                        results.append(self._unknown(q, e.name, min(labelled[a], labelled[b])))
                        continue
                    value, var = (inference.contrast(ests[a], ests[b], sample) if e.uses_sample
                                  else inference.naive_contrast(ests[a], ests[b]))
                    var = max(var, ests[a].extra.get("floor", 0.0) + ests[b].extra.get("floor", 0.0))
                    results.append(self._row(q, e.name, value, var, alpha, min(ests[a].df, ests[b].df), None, None,
                                             rests and rests[a] + rests[b]))
        if self.regression:
            results += self._regression_rows(sample, gold, methods, alpha)
        return results

    def _regression_rows(self, sample, gold, methods, alpha) -> list:
        j, x, terms = self.regression
        used = np.zeros(0, dtype=bool) if sample is None else np.any(x[sample.rows] != 0, axis=1)
        if sample is not None:
            check_terms(x[sample.rows][used], terms)
        y, results = (gold == j).astype(float), []
        for e in estimators.registered(methods):
            est = e.fit(self._inputs("(regression)", x, j, sample, y, self.link))
            for t, term in enumerate(terms):
                df = est.extra["term_df"][t] if "term_df" in est.extra else est.df
                results.append(self._row(Quantity("coefficient", self.corpus.labels[j], term=term), e.name,
                                         float(est.value[t]), float(est.cov[t, t]), alpha, df, est.lam,
                                         est.influence[:, [t]] if len(est.influence) else None,
                                         int(used.sum()) if e.uses_sample else None))
        return results

    def _inputs(self, domain, x, j, sample, y, link) -> estimators.Inputs:
        return estimators.Inputs(x, j, self.outputs, sample, y, link, self.options, domain, self.cache)

    def _record(self, q, method, est, alpha, labelled):
        return self._row(q, method, float(est.value[0]), float(est.cov[0, 0]), alpha, est.df, est.lam,
                         est.influence if len(est.influence) else None, labelled)

    @staticmethod
    def _unknown(q, method, labelled):
        return {"quantity": q, "method": method, "estimate": None, "low": None, "high": None, "se": None,
                "lam": None, "influence": None, "labelled": labelled,
                "note": f"not estimable: {labelled} labelled rows in the group (at least 2 needed)"}

    @staticmethod
    def _row(q, method, value, var, alpha, df, lam, influence, labelled=None):
        """labelled: the human-labelled rows it rests on (None for an estimator without a sample)."""
        scale = "wilson" if q.kind == "share" else "identity"
        low, high = inference.interval(value, var, alpha, df, scale)
        if q.kind != "coefficient":  # a share lies in [0, 1], a difference of two in [-1, 1]: reported within them
            least = 0.0 if q.kind == "share" else -1.0
            value, low, high = (float(np.clip(v, least, 1.0)) for v in (value, low, high))
        return {"quantity": q, "method": method, "estimate": value, "low": float(low), "high": float(high),
                "se": float(np.sqrt(max(var, 0.0))), "lam": lam, "influence": influence, "labelled": labelled}

    def truth(self, gold_all: np.ndarray) -> dict:
        """The census value of every quantity from gold labels on all rows (benchmarks only)."""
        out = {}
        for j, label in enumerate(self.corpus.labels):
            y = (gold_all == j).astype(float)
            shares = {g: float((y * x[:, 0]).sum() / x[:, 0].sum()) for g, x in self.domains.items()}
            for g, v in shares.items():
                out[Quantity("share", label, g).name] = v
            for a, b in self.pairs():
                out[Quantity("difference", label, f"{a} - {b}").name] = shares[a] - shares[b]
        if self.regression:
            j, x, terms = self.regression
            theta = inference.naive(x, (gold_all == j).astype(float), self.link).value
            for t, term in enumerate(terms):
                out[Quantity("coefficient", self.corpus.labels[j], term=term).name] = float(theta[t])
        return out


def coverage(findings: "Findings", gold_all: np.ndarray, n: int, reps: int, alpha: float, seed: int = 0) -> dict:
    """How often the intervals hold: over `reps` simple random samples of n corpus rows (gold_all:
    every row's true label index), the share of draws whose interval holds each quantity's census
    value, per estimator that uses the sample, {(quantity name, method): rate}; one without a
    sample (naive) holds it or not."""
    truth, rng, held, runs = findings.truth(gold_all), np.random.default_rng(seed), {}, {}
    with_sample = [e.name for e in estimators.registered() if e.uses_sample]
    for _ in range(reps):
        rows = np.sort(rng.choice(findings.corpus.size, n, replace=False))
        sample = inference.Sample(rows, np.full(n, n / findings.corpus.size), "srs", findings.corpus.size)
        for r in findings.run(sample, gold_all[rows], methods=with_sample, alpha=alpha):
            key = (r["quantity"].name, r["method"])
            if r["estimate"] is not None:
                runs[key] = runs.get(key, 0) + 1
                held[key] = held.get(key, 0) + int(r["low"] <= truth[key[0]] <= r["high"])
    without = [e.name for e in estimators.registered() if not e.uses_sample]
    for r in findings.run(None, np.zeros(0, dtype=int), methods=without, alpha=alpha):
        runs[r["quantity"].name, r["method"]] = 1
        held[r["quantity"].name, r["method"]] = int(r["low"] <= truth[r["quantity"].name] <= r["high"])
    return {key: held[key] / runs[key] for key in runs}


def effective_sizes(results: list, n: int, size: int) -> dict:
    """Per quantity: the human labels alone that ppi's interval is worth."""
    by = {}
    for r in results:
        by.setdefault(r["quantity"].name, {})[r["method"]] = r
    return {name: inference.effective_n(m["classical"]["se"] ** 2, m["ppi"]["se"] ** 2, n, size)
            for name, m in by.items() if "classical" in m and "ppi" in m and m["ppi"]["se"] is not None}


# ---------------------------------------------------------------- output files
def write_estimates(out_dir, summary: dict, results: list, n_eff: dict, planned: dict | None) -> None:
    """estimates.json, estimates.md and forest.png, staged and published together."""
    from ..base.files import atomic_write_json, atomic_write_text, publish_dir, staging_dir

    rows = {}
    for r in results:
        entry = rows.setdefault(r["quantity"].name, {"quantity": r["quantity"].__dict__})
        entry[r["method"]] = {k: r[k] for k in ("estimate", "low", "high", "se", "lam", "labelled", "note") if k in r}
    for name, entry in rows.items():
        entry["effective_n"] = n_eff.get(name)
        if planned and name in planned:
            entry["plan"] = planned[name]
    staging = staging_dir(out_dir)
    atomic_write_json(staging / "estimates.json", {**summary, "estimates": list(rows.values())})
    atomic_write_text(staging / "estimates.md", _markdown(summary, rows))
    _forest(staging / "forest.png", rows, summary["alpha"])
    publish_dir(staging, out_dir)


def _cell(m: dict) -> str:
    if m["estimate"] is None:
        return f"not estimable ({m['labelled']} labelled)"
    return f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def _shown(rows: dict) -> list:
    """The registered estimators that the results hold, in registry order."""
    present = {method for entry in rows.values() for method in entry}
    return [e for e in estimators.registered() if e.name in present]


def _markdown(summary: dict, rows: dict) -> str:
    level = round(100 * (1 - summary["alpha"]))
    shown = _shown(rows)
    plan = bool(summary["plan_half_width"])
    lines = [f"# Estimates: {summary['corpus']}", "",
             f"{summary['labelled']} human labels ({summary['strategy']} design; {summary['unlabelled_dropped']} drawn "
             f"rows unlabelled, left out) and the model's {summary['model_output']} on {summary['corpus_rows']} rows; "
             f"{level}% intervals. " + "; ".join(f"{e.name}: {e.title}" for e in shown)
             + ". effective n: human labels alone worth ppi's interval.", "",
             "| quantity | " + " | ".join(e.name for e in shown) + " | lam | effective n |"
             + (" plan: n classical / ppi |" if plan else ""),
             "|---|" + "---|" * len(shown) + "---|---|" + ("---|" if plan else "")]
    for name, entry in rows.items():
        lam, n_eff = entry.get("ppi", {}).get("lam"), entry["effective_n"]
        lam_text = "" if lam is None else f"{lam:.2f}"
        n_text = "" if n_eff is None or not np.isfinite(n_eff) else f"{n_eff:.0f}"
        line = f"| {name} | " + " | ".join(_cell(entry[e.name]) for e in shown) + f" | {lam_text} | {n_text} |"
        if plan:
            planned = entry.get("plan")
            line += f" {planned.get('classical', '')} / {planned.get('ppi', '')} |" if planned else " |"
        lines.append(line)
    if plan:
        lines += ["", f"plan: human labels (this design's strategy) for a half-width of {summary['plan_half_width']}."]
    lines += [line for note in summary.get("notes", []) for line in ("", note)]
    return "\n".join(lines) + "\n"


def _forest(path, rows: dict, alpha: float) -> None:
    """Every estimator's interval of every quantity, in its registered colour: shares and
    differences in one panel, regression coefficients (another scale) in a second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [[n for n, e in rows.items() if e["quantity"]["kind"] != "coefficient"],
              [n for n, e in rows.items() if e["quantity"]["kind"] == "coefficient"]]
    panels = [names for names in panels if names]
    shown = _shown(rows)
    step = 0.75 / max(len(shown), 1)
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 0.34 * sum(map(len, panels)) * 2 + 1.5), squeeze=False,
                             gridspec_kw={"height_ratios": [len(names) for names in panels]})
    for ax, names in zip(axes[:, 0], panels):
        for i, name in enumerate(names):
            for k, e in enumerate(shown):
                m, y = rows[name][e.name], -(i + step * (k - (len(shown) - 1) / 2))
                if m["estimate"] is None:
                    ax.text(0.5, y, f"{e.name}: not estimable", transform=ax.get_yaxis_transform(), fontsize=6,
                            va="center", ha="center", color=e.colour)
                    continue
                ax.errorbar(m["estimate"], y, xerr=[[m["estimate"] - m["low"]], [m["high"] - m["estimate"]]],
                            fmt="o", ms=3, color=e.colour, label=e.name if i == 0 else None, capsize=2)
        ax.set_yticks([-i for i in range(len(names))], names, fontsize=8)
        ax.set_ylim(-len(names) + 0.4, 0.6)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel(f"estimate, {round(100 * (1 - alpha))}% interval")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
