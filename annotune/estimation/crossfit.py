"""Cross-prediction (Zrnic & Candes, "Cross-prediction-powered inference", PNAS 2024): the labelled
rows train the annotator and carry the estimates at once. They are split into K folds; K models
are trained, each on K-1 folds; every labelled row is predicted by the model that did not see it
(its out-of-fold prediction) and every other corpus row by the K models' mean (the ensemble).

The estimator is PPI++ (inference.estimate) with the model's output f equal to the out-of-fold
prediction on a labelled row and the ensemble's elsewhere, and the labelled rows taken as a
simple random sample of the N corpus rows (pi = n / N). For a share that is

    theta = mean_L(y) + lam (1 - n / N) (mean_U(ensemble) - mean_L(oof)),

the labelled rows counted with their gold labels, the others by the ensemble corrected by the
out-of-fold residual. Its variance is the sample's design variance of y - lam f over the labelled
rows with the finite-population correction (1 - n / N) s^2 / n (inference.srs_cov), lam tuned
to minimise it. The assumption behind it (the paper's stability condition): the K fold models
are alike, so that an out-of-fold prediction errs as the ensemble does on an unlabelled row.
Nothing in the data proves it; `spread` reports how far the K models' corpus means lie apart,
and `check_random_sample` tests what can be tested of the other assumption, that the labelled
rows are a random sample of this corpus.

`infinite_mean` and `infinite_point` give ppi-python's crossppi_* (lam = 1, labelled and
unlabelled rows disjoint, a superpopulation's value) for comparison.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import inference

from ..labelling.annotation import CHECK_ALPHA, shift_test


@dataclass
class CrossFit:
    """The K fold models' outputs on one corpus: rows, the corpus positions of the labelled rows;
    gold, their gold label indices; oof (n, L), their out-of-fold probabilities; fold (n,), which
    fold each was held out in; ensemble (N, L), the fold models' mean probabilities on every row;
    per_fold (K, N, L), each fold model's (for the spread and the random-sample check)."""
    rows: np.ndarray
    gold: np.ndarray
    oof: np.ndarray
    fold: np.ndarray
    ensemble: np.ndarray
    per_fold: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.ensemble)

    def sample(self) -> inference.Sample:
        """The labelled rows as a simple random sample of the corpus."""
        n = len(self.rows)
        return inference.Sample(np.asarray(self.rows), np.full(n, n / self.size), "srs", self.size)

    def probs(self) -> np.ndarray:
        """f on every row: out-of-fold on the labelled rows, the ensemble's elsewhere."""
        out = np.array(self.ensemble, dtype=float, copy=True)
        out[self.rows] = self.oof
        return out

    def corpus(self, corpus):
        """An annotated corpus (annotated.Corpus) whose probabilities and labels are cross-fitted:
        what findings.Findings estimates from, with self.sample() and self.gold. Its 0/1 labels are
        the argmax of f on every row, out-of-fold and ensemble values alike (a decision rule applied
        to the ensemble only would make the two kinds of row err differently); the file's own labels
        are kept as `given`, the naive estimate's."""
        probs = self.probs()
        return dataclasses.replace(corpus, probs=probs, prediction=probs.argmax(axis=1), given=corpus.prediction)

    def unlabelled(self) -> np.ndarray:
        mask = np.ones(self.size, dtype=bool)
        mask[self.rows] = False
        return mask


def spread(fits: CrossFit, labels: list) -> dict:
    """Per label: each fold model's mean probability over the unlabelled rows, their range and
    standard deviation. Cross-prediction assumes the fold models alike; a spread comparable to the
    interval's half-width says they are not (too few rows per fold, an unstable training)."""
    if fits.per_fold is None:
        return {}
    means = fits.per_fold[:, fits.unlabelled()].mean(axis=1)  # (K, L)
    return {label: {"fold_means": [round(float(m), 6) for m in means[:, j]],
                    "range": float(means[:, j].max() - means[:, j].min()),
                    "sd": float(means[:, j].std(ddof=1)) if len(means) > 1 else 0.0}
            for j, label in enumerate(labels)}


def check_random_sample(fits: CrossFit, alpha: float = CHECK_ALPHA) -> dict:
    """Is the labelled set a random sample of this corpus? For each fold model, its scores on the
    rows it held out against its scores on the unlabelled rows: under random sampling both are
    draws the model never saw, so their distributions agree (shift_test). Not rejecting proves
    nothing; rejecting says the labelled set was drawn otherwise (balanced per label, filtered,
    another period) and the interval's validity is lost. The out-of-fold scores against the
    ensemble's would differ even under random sampling (a fold model is weaker than the ensemble),
    so they are not compared."""
    if fits.per_fold is None:
        raise ValueError("the random-sample check needs each fold model's scores on the corpus")
    return shift_test(fits.oof, fits.fold, fits.per_fold[:, fits.unlabelled()], alpha)


def from_run(corpus, run, id_column: str) -> CrossFit:
    """The cross-fit of a corpus labelled by a K-fold run's ensemble (evaluate.py --predict_file
    --ensemble RUN: its fold<k>_prob_ columns) and the run's out-of-fold file (ensemble.KFoldRun),
    the labelled rows found by id: each labelled id must match exactly one value of the corpus's
    column id_column. The ensemble's value is the fold models' mean, as the out-of-fold values are
    a fold model's, before any decision rule."""
    from ..base.cli import UserError

    if corpus.fold_probs is None:
        raise UserError(f"--corpus {corpus.path} has no fold<k>_prob_<label> columns: label it with evaluate.py "
                        f"--predict_file ... --ensemble {run.folder}")
    if len(corpus.fold_probs) != run.k or sorted(corpus.labels) != sorted(run.labels):
        raise UserError(f"--corpus {corpus.path} was labelled by {len(corpus.fold_probs)} fold models of labels "
                        f"{corpus.labels}; --crossfit {run.folder} has {run.k} of {run.labels}")
    where = {}
    for position, value in enumerate(corpus.column(id_column, "--id_column")):
        where.setdefault(str(value).strip(), []).append(position)
    rows = []
    for i in run.oof["id"]:
        found = where.get(str(i).strip(), [])
        if len(found) != 1:
            raise UserError(f"--crossfit {run.folder}: labelled id {i!r} matches {len(found)} rows of --corpus column "
                            f"{id_column!r}; each labelled row must be exactly one corpus row")
        rows.append(found[0])
    order = [run.labels.index(label) for label in corpus.labels]
    gold = np.array([corpus.label_index(g, f"--crossfit {run.folder} oof.csv gold") for g in run.oof["gold"]])
    oof = run.oof_probs()[:, order]
    fold = run.oof["fold"].astype(int).to_numpy()
    return CrossFit(np.array(rows), gold, oof, fold, corpus.fold_probs.mean(axis=0), corpus.fold_probs)


def plan_rows(fits: CrossFit, influence: np.ndarray, half_width: float, alpha: float) -> float:
    """Labelled rows (trained into the folds) that reach half_width at the same out-of-fold
    residual variance: the simple random sample's plan (inference.plan_n)."""
    return inference.plan_n(fits.sample(), influence, half_width, alpha)


# ---------------------------------------------------------------- ppi-python's infinite-population form
def infinite_mean(y, f_oof, f_unlabelled, alpha: float = 0.1, lam: float = 1.0) -> tuple:
    """ppi-python's crossppi_mean_ci at lam = 1: theta = lam mean_U(f) + mean_L(y - lam f_oof),
    variance lam^2 var_U(f) / N + var_L(lam f_oof - y) / n (population variances). f_unlabelled
    (N,) or (N, K): each fold model's column, averaged."""
    y, fl, fu = (np.asarray(v, dtype=float) for v in (y, f_oof, f_unlabelled))
    fu = fu.mean(axis=1) if fu.ndim == 2 else fu
    theta = lam * fu.mean() + (y - lam * fl).mean()
    var = lam ** 2 * fu.var() / len(fu) + (lam * fl - y).var() / len(y)
    return float(theta), inference.interval(theta, var, alpha)


def infinite_point(x_labelled, y, f_oof, x_unlabelled, f_unlabelled, link: str = "logistic",
                   lam: float = 1.0) -> np.ndarray:
    """ppi-python's crossppi_{ols,logistic}_pointestimate at lam = 1: minimise lam * mean loss of
    the ensemble's f on the unlabelled rows + mean loss of y on the labelled rows - lam * mean
    loss of the out-of-fold f there."""
    fu = np.asarray(f_unlabelled, dtype=float)
    fu = fu.mean(axis=1) if fu.ndim == 2 else fu
    x_l = np.asarray(x_labelled, dtype=float)
    census = inference.compress(np.asarray(x_unlabelled, dtype=float), fu)
    weights = np.full(len(x_l), 1.0 / len(x_l))
    return inference.solve(census, x_l, np.asarray(y, dtype=float), np.asarray(f_oof, dtype=float), weights, lam,
                            link)
