"""Estimates about a corpus from the model's labels plus a human-labelled sample of it, with
confidence intervals that stay valid whatever the model's errors (prediction-powered inference).

Every quantity is the solution theta of a census estimating equation over the corpus's N rows,
sum_i x_i (y_i - mu(x_i theta)) = 0, with the human label y_i (a 0/1 indicator of one label):
a label's share (x = 1), its share in a group (x = the group's indicator) and the coefficients of
a linear or logistic regression (x = corpus columns). Three estimators of that census value:

- naive: the model's hard labels taken as gold on all N rows (an iid interval, what a study that
  trusts its annotator reports);
- classical: the human sample alone, inverse-probability weighted (lam = 0 below);
- ppi: PPI++ (Angelopoulos, Duchi, Zrnic 2023) for a finite corpus: minimise
      lam * L_census(f) + L_sample(y) - lam * L_sample(f)
  where f is the model's output (a probability or a 0/1 label) on every row, L_census is the
  loss over all N rows (known exactly: no sampling error) and L_sample the Horvitz-Thompson
  estimate of the census loss from the sampled rows (weights 1 / (N pi_i)). lam is tuned to
  minimise the estimated variance. For a share under simple random sampling this is the survey
  regression estimator; under an active (Poisson) design it is the difference estimator of
  active inference (Zrnic & Candes 2024).

The intervals are design-based and carry the finite-population correction: the only randomness
is which rows humans labelled. A stratified simple random sample has variance
sum_h W_h^2 (1 - n_h / N_h) s_h^2 / n_h of the per-row influence; a Poisson sample (each row
drawn independently with probability pi_i) has sum_S (1 - pi_i) / pi_i^2 d_i^2 / N^2.
`ppi_python_mean` gives ppi-python's infinite-population interval for comparison.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

LINKS = ("identity", "logistic")


@dataclass
class Sample:
    """Which corpus rows humans labelled and how they were drawn. rows: corpus positions of the
    sampled rows; pi: their inclusion probabilities; kind: 'srs' (stratified simple random
    sample; strata: every corpus row's stratum code, None = one stratum) or 'poisson'."""
    rows: np.ndarray
    pi: np.ndarray
    kind: str
    size: int  # N, the corpus size
    strata: np.ndarray | None = None
    variance: Callable | None = None  # its design's variance (designs.SamplingDesign), else the kind's


@dataclass
class Estimate:
    value: np.ndarray       # the point estimate (one entry per coefficient)
    cov: np.ndarray         # its estimated covariance
    influence: np.ndarray   # (n, k): per sampled row, theta_hat - theta ~ HT mean of these
    lam: float = 0.0
    df: int = 0             # degrees of freedom of the t quantile (0: normal)
    extra: dict = field(default_factory=dict)


def _mean(link: str, eta):
    if link == "identity":
        return eta
    from scipy.special import expit  # scipy on first use: sample.py and estimate.py --help stay quick

    return expit(eta)


def _slope(link: str, mu):
    return np.ones_like(mu) if link == "identity" else mu * (1.0 - mu)


def compress(x: np.ndarray, f: np.ndarray):
    """Census rows with the same covariates as one cell: (cell covariates, count share, mean f).
    Exact for the canonical-link losses used here, whose census term is linear in f."""
    if x.shape[1] == 1:  # a share's indicator: a 1-D unique is ~10x quicker than one over rows
        cells, inverse, counts = np.unique(x[:, 0], return_inverse=True, return_counts=True)
        cells = cells[:, None]
    else:
        cells, inverse, counts = np.unique(x, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.bincount(inverse, weights=f, minlength=len(cells))
    return cells, counts / len(x), sums / counts


def solve(census, xs, ys, fs, ws, lam: float, link: str, theta=None, iters: int = 100):
    """Newton's method on lam * census loss + HT sample loss of y - lam * HT sample loss of f."""
    xc, cc, fc = census
    theta = np.zeros(xc.shape[1]) if theta is None else theta.copy()
    for _ in range(iters):
        mc, ms = _mean(link, xc @ theta), _mean(link, xs @ theta)
        grad = lam * xc.T @ (cc * (mc - fc)) + xs.T @ (ws * ((1 - lam) * ms - ys + lam * fs))
        hess = lam * (xc * (cc * _slope(link, mc))[:, None]).T @ xc \
            + (1 - lam) * (xs * (ws * _slope(link, ms))[:, None]).T @ xs
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        theta = theta - step
        if link == "identity" or np.max(np.abs(step)) < 1e-10:
            break
    return theta


def design_cov(sample: Sample, d: np.ndarray) -> np.ndarray:
    """Design covariance of the HT mean (1/N) sum_S d_i / pi_i of per-row values d (n, k): the
    sample's own variance where its design gives one, else its kind's (srs, poisson)."""
    if sample.variance is not None:
        return sample.variance(sample, d)
    return (poisson_cov if sample.kind == "poisson" else srs_cov)(sample, d)


def poisson_cov(sample: Sample, d: np.ndarray) -> np.ndarray:
    """A Poisson sample: sum_S (1 - pi_i) / pi_i^2 d_i d_i' / N^2."""
    w = (1.0 - sample.pi) / sample.pi ** 2
    return (d * w[:, None]).T @ d / sample.size ** 2


def srs_cov(sample: Sample, d: np.ndarray) -> np.ndarray:
    """A stratified simple random sample: sum_h W_h^2 (1 - n_h / N_h) s_h^2 / n_h."""
    n_total = sample.size
    strata = np.zeros(n_total, dtype=int) if sample.strata is None else sample.strata
    mine = strata[sample.rows]
    out = np.zeros((d.shape[1], d.shape[1]))
    sizes = np.bincount(strata)
    for h in np.unique(mine):
        dh = d[mine == h]
        nh, big = len(dh), sizes[h]
        if nh < 2:
            continue  # sample.py refuses strata under 2 rows; a dropped-out stratum adds nothing known
        centred = dh - dh.mean(axis=0)
        out += (big / n_total) ** 2 * (1 - nh / big) * (centred.T @ centred) / (nh - 1) / nh
    return out


def _pieces(census, xs, ys, fs, theta, link):
    xc, cc, _ = census
    ms = _mean(link, xs @ theta)
    bread = np.linalg.pinv((xc * (cc * _slope(link, _mean(link, xc @ theta)))[:, None]).T @ xc)
    a = xs * (ms - ys)[:, None]
    b = xs * (ms - fs)[:, None]
    return bread, a, b


def tuned_lam(sample, bread, a, b, clip: tuple | None) -> float:
    """The lam that minimises the trace of the estimated covariance: V(lam) = V_aa - 2 lam V_ab + lam^2 V_bb."""
    both = design_cov(sample, np.hstack([a, b]))
    k = a.shape[1]
    vab, vbb = (both[:k, k:] + both[k:, :k]) / 2, both[k:, k:]
    denom = np.trace(bread @ vbb @ bread)
    lam = float(np.trace(bread @ vab @ bread) / denom) if denom > 1e-300 else 0.0
    return float(np.clip(lam, *clip)) if clip else lam


def estimate(x_all: np.ndarray, f_all: np.ndarray, sample: Sample, y: np.ndarray, link: str = "identity",
             method: str = "ppi", lam: float | None = None, census=None, f_sample=None) -> Estimate:
    """The census coefficients of regressing y on x, from f on all rows and y on the sampled ones.
    method 'ppi' (lam tuned unless given) or 'classical' (lam = 0). x_all (N, k), f_all (N,), y (n,);
    census: compress(x_all, f_all), when the caller reuses it across samples; f_sample: the model's
    outputs on the sampled rows where they are not f_all's (out-of-fold predictions of the rows a
    model was trained on: cross-fitting), default f_all[sample.rows]."""
    census = compress(x_all, f_all) if census is None else census
    xs = x_all[sample.rows]
    fs = f_all[sample.rows] if f_sample is None else np.asarray(f_sample, dtype=float)
    ws = 1.0 / (sample.size * sample.pi)
    if method == "classical":
        lam = 0.0
    # A logistic loss stays convex only for lam in [0, 1]; a mean's loss is quadratic for any lam.
    clip = (0.0, 1.0) if link == "logistic" else None
    theta = solve(census, xs, y, fs, ws, 1.0 if lam is None else lam, link)
    tuned = lam is None
    if tuned:
        bread, a, b = _pieces(census, xs, y, fs, theta, link)
        lam = tuned_lam(sample, bread, a, b, clip)
        theta = solve(census, xs, y, fs, ws, lam, link, theta)
    bread, a, b = _pieces(census, xs, y, fs, theta, link)
    influence = -(a - lam * b) @ bread
    rows_used = int(np.any(xs != 0, axis=1).sum())
    if tuned and rows_used > 2:  # lam was fit on these rows too: one more parameter, one less degree of freedom
        influence = influence * np.sqrt((rows_used - 1) / (rows_used - 2))
    cov = design_cov(sample, influence)
    extra = {"term_df": term_df(xs)}
    if xs.shape[1] == 1 and link == "identity":
        extra["floor"] = one_error_floor(sample, xs[:, 0] != 0, float(bread[0, 0]))
        cov = np.maximum(cov, extra["floor"])
    return Estimate(theta, cov, influence, lam, df=max(rows_used - xs.shape[1], 1), extra=extra)


def one_error_floor(sample: Sample, in_domain: np.ndarray, scale: float) -> float:
    """The variance the sample would show with one unit error in the domain and none elsewhere. A
    near-perfect model leaves most samples with no error at all (zero variance, an interval of no
    width that misses); a share's variance is never taken below this (it binds only when the
    sample holds at most about one error)."""
    rows = np.flatnonzero(in_domain)
    if not len(rows):
        return 0.0
    d = np.zeros((len(sample.rows), 1))
    d[rows[np.argmin(sample.pi[rows])], 0] = scale  # the row of the least inclusion probability (the largest weight)
    return float(design_cov(sample, d)[0, 0])


def term_df(xs: np.ndarray) -> list:
    """Degrees of freedom per coefficient: an indicator's is its sampled rows less one (a group's
    coefficient rests on that group's rows), any other column's the sample less the coefficients."""
    n, k = xs.shape
    out = []
    for t in range(k):
        column = xs[:, t]
        indicator = np.isin(column, (0.0, 1.0)).all() and not (column == 1).all()
        out.append(max(int((column != 0).sum()) - 1, 1) if indicator else max(n - k, 1))
    return out


def naive(x_all: np.ndarray, yhat_all: np.ndarray, link: str = "identity") -> Estimate:
    """The model's hard labels as if gold on every row: an iid (sandwich) interval with N rows."""
    census = compress(x_all, yhat_all)
    theta = solve(census, x_all[:0], yhat_all[:0], yhat_all[:0], np.zeros(0), 1.0, link)
    mu = _mean(link, x_all @ theta)
    bread = np.linalg.pinv((census[0] * (census[1] * _slope(link, _mean(link, census[0] @ theta)))[:, None]).T
                           @ census[0])
    d = x_all * (mu - yhat_all)[:, None]
    meat = d.T @ d / len(x_all) ** 2
    return Estimate(theta, bread @ meat @ bread, np.zeros((0, len(theta))), 1.0)


def interval(value: float, var: float, alpha: float, df: int = 0, scale: str = "identity") -> tuple:
    """value +- t_{df} (normal if df = 0) standard errors. scale 'wilson' (for a share strictly inside
    (0, 1)): the Wilson score interval at the effective sample size n* = p (1 - p) / var, as survey
    software builds a proportion's interval from a design variance (Korn & Graubard). A share from
    few rows is skewed, so the symmetric interval undercovers; where the variance is a binomial's
    (the classical estimator, n* = n) this is Wilson's own interval, and where a good model makes the
    variance far below p (1 - p) / n, n* is large and the interval near symmetric (a logit interval
    would be far too wide there: its width grows as 1 / (p (1 - p)) whatever the variance)."""
    from scipy import stats

    q = stats.t.ppf(1 - alpha / 2, df) if df else stats.norm.ppf(1 - alpha / 2)
    se = np.sqrt(max(var, 0.0))
    if scale == "wilson" and 0 < value < 1 and se > 0:
        n_eff = value * (1 - value) / se ** 2
        shrink = 1 + q * q / n_eff
        centre = (value + q * q / (2 * n_eff)) / shrink
        half = q / shrink * np.sqrt(se ** 2 + q * q / (4 * n_eff ** 2))
        return float(centre - half), float(centre + half)
    return value - q * se, value + q * se


def contrast(est_a: Estimate, est_b: Estimate, sample: Sample, ia: int = 0, ib: int = 0) -> tuple:
    """theta_a[ia] - theta_b[ib] and its design variance (the two share one sample)."""
    d = est_a.influence[:, [ia]] - est_b.influence[:, [ib]]
    return float(est_a.value[ia] - est_b.value[ib]), float(design_cov(sample, d)[0, 0])


def naive_contrast(est_a: Estimate, est_b: Estimate, ia: int = 0, ib: int = 0) -> tuple:
    """Naive difference of two disjoint groups' shares (independent iid intervals)."""
    return float(est_a.value[ia] - est_b.value[ib]), float(est_a.cov[ia, ia] + est_b.cov[ib, ib])


# ---------------------------------------------------------------- planning and effective size
def effective_n(classical_var: float, ppi_var: float, n: int, size: int) -> float:
    """How many human labels alone (simple random sample, finite corpus) give ppi's variance:
    m with (1/m - 1/N) S^2 = ppi_var, S^2 read off the classical variance at n."""
    if ppi_var <= 0 or classical_var <= 0:
        return float("nan")
    s2 = classical_var / max(1.0 / n - 1.0 / size, 1e-12)
    return float(1.0 / (ppi_var / s2 + 1.0 / size))


def plan_n(sample: Sample, influence: np.ndarray, half_width: float, alpha: float, shape=None) -> float:
    """Sample size at which this estimator's interval reaches half_width, from a pilot sample.
    shape: every row's pi / n under the design (Poisson: pi_i(n) = n q_i, caps ignored); SRS
    designs scale each stratum's size in proportion."""
    from scipy import stats

    z2 = stats.norm.ppf(1 - alpha / 2) ** 2
    d, n_total = influence[:, 0], sample.size
    if sample.kind == "poisson":
        q = shape[sample.rows]
        big_a = np.sum(d ** 2 / (q * sample.pi))
        big_b = np.sum(d ** 2 / sample.pi)
        return float(big_a / (n_total ** 2 * half_width ** 2 / z2 + big_b))
    strata = np.zeros(n_total, dtype=int) if sample.strata is None else sample.strata
    mine, sizes = strata[sample.rows], np.bincount(strata)
    mean_s2, fpc = 0.0, 0.0
    for h in np.unique(mine):
        dh = d[mine == h]
        if len(dh) < 2:
            continue
        w, s2 = sizes[h] / n_total, np.var(dh, ddof=1)
        mean_s2, fpc = mean_s2 + w * s2, fpc + w ** 2 * s2 / sizes[h]
    return float(mean_s2 / (half_width ** 2 / z2 + fpc))


# ---------------------------------------------------------------- ppi-python's infinite-population form
def ppi_python_mean(y, f_labelled, f_unlabelled, alpha: float = 0.1, lam: float | None = None) -> tuple:
    """ppi-python's ppi_mean_ci (infinite population, lam tuned and clipped to [0, 1]): the same
    point estimate and interval, computed here so the benchmark needs no numba compile per call."""
    y, fl, fu = (np.asarray(v, dtype=float) for v in (y, f_labelled, f_unlabelled))
    n, big = len(y), len(fu)
    if lam is None:
        theta1 = fu.mean() + (y - fl).mean()
        g, gh = y - theta1, fl - theta1
        cov = 2 * np.mean((g - g.mean()) * (gh - gh.mean()))
        var_hat = np.var(np.concatenate([gh, fu - theta1]), ddof=1)
        lam = float(np.clip(cov / (2 * (1 + n / big) * var_hat), 0, 1)) if var_hat > 0 else 0.0
    theta = lam * fu.mean() + (y - lam * fl).mean()
    se = np.sqrt((lam * fu).std() ** 2 / big + (y - lam * fl).std() ** 2 / n)
    low, high = interval(theta, se ** 2, alpha)
    return float(theta), (float(low), float(high)), lam
