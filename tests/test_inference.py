"""The estimators of annotune.estimation.inference: equal to ppi-python where both apply, exact in the limits,
unbiased and of the right width in simulation."""
import numpy as np
import pytest

from annotune.estimation import inference as inf


def corpus(rng, size=20000, share=0.3, signal=0.5, noise=0.2):
    y = (rng.random(size) < share).astype(float)
    f = np.clip(share + signal * (y - share) + noise * rng.standard_normal(size), 0, 1)
    return y, f


def srs(rng, size, n):
    return inf.Sample(np.sort(rng.choice(size, n, replace=False)), np.full(n, n / size), "srs", size)


def test_mean_equals_ppi_python_without_finite_population_correction():
    from ppi_py import ppi_mean_ci

    rng = np.random.default_rng(1)
    y, f = corpus(rng)
    rows = rng.choice(len(y), 300, replace=False)
    rest = np.setdiff1d(np.arange(len(y)), rows)
    for lam in (None, 0.0, 0.4, 1.0):
        ours = inf.ppi_python_mean(y[rows], f[rows], f[rest], 0.1, lam)[1]
        theirs = ppi_mean_ci(y[rows], f[rows], f[rest], alpha=0.1, lam=lam)
        assert np.allclose(ours, np.ravel(theirs), atol=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_logistic_point_estimate_equals_ppi_python(lam):
    """The census term over ppi-python's unlabelled rows and weights 1/n on the labelled: the same
    rectified loss, so the same minimiser."""
    from ppi_py import ppi_logistic_pointestimate

    rng = np.random.default_rng(2)
    size, n = 3000, 400
    x = np.column_stack([np.ones(size), rng.standard_normal(size), rng.integers(0, 2, size)])
    y = (rng.random(size) < 1 / (1 + np.exp(-(x @ [-0.5, 1.0, 0.8])))).astype(float)
    f = np.clip(0.7 * y + 0.15 + 0.1 * rng.standard_normal(size), 0, 1)
    lab, unl = np.arange(n), np.arange(n, size)
    census = inf.compress(x[unl], f[unl])
    ours = inf.solve(census, x[lab], y[lab], f[lab], np.full(n, 1 / n), lam, "logistic")
    theirs = ppi_logistic_pointestimate(x[lab], y[lab], f[lab], x[unl], f[unl], lam=lam)
    assert np.allclose(ours, theirs, atol=1e-5)


def test_a_perfect_model_gives_the_naive_estimate_and_only_the_one_error_floor():
    rng = np.random.default_rng(3)
    y, _ = corpus(rng, size=5000)
    x = np.ones((len(y), 1))
    sample = srs(rng, len(y), 200)
    est = inf.estimate(x, y, sample, y[sample.rows])
    assert est.value[0] == pytest.approx(inf.naive(x, y).value[0], abs=1e-12)
    assert est.value[0] == pytest.approx(y.mean(), abs=1e-12)
    # No residual at all: the variance is the floor of one unit error among the n rows, (1 - n/N) / n^2.
    assert est.cov[0, 0] == pytest.approx((1 - 200 / 5000) / 200 ** 2, rel=1e-9)


def test_predictions_independent_of_labels_give_the_classical_width():
    rng = np.random.default_rng(4)
    size = 100_000
    y = (rng.random(size) < 0.3).astype(float)
    f = rng.random(size)
    x = np.ones((size, 1))
    census = inf.compress(x, f)
    ratios = []
    for _ in range(200):
        sample = srs(rng, size, 200)
        ppi = inf.estimate(x, f, sample, y[sample.rows], census=census)
        classical = inf.estimate(x, f, sample, y[sample.rows], method="classical", census=census)
        ratios.append(np.sqrt(ppi.cov[0, 0] / classical.cov[0, 0]))
    assert abs(np.mean(ratios) - 1) < 0.03


def test_the_classical_estimate_is_the_sample_mean_with_the_finite_population_correction():
    rng = np.random.default_rng(5)
    y, f = corpus(rng, size=1000)
    sample = srs(rng, 1000, 300)
    est = inf.estimate(np.ones((1000, 1)), f, sample, y[sample.rows], method="classical")
    ys = y[sample.rows]
    assert est.value[0] == pytest.approx(ys.mean())
    assert est.cov[0, 0] == pytest.approx((1 - 300 / 1000) * ys.var(ddof=1) / 300)


def test_the_active_estimator_is_unbiased_and_its_intervals_cover():
    """Poisson draws weighted by the model's uncertainty, 2,000 times: the mean estimate within 3
    standard errors of the corpus share, 90% intervals covering about 90%."""
    from annotune.estimation.designs import active_pi

    rng = np.random.default_rng(6)
    y, f = corpus(rng, size=10000)
    x = np.ones((len(y), 1))
    census = inf.compress(x, f)
    pi = active_pi(np.sqrt(f * (1 - f)), 200, 0.5)
    assert pi.sum() == pytest.approx(200) and pi.min() > 0
    values, covered = [], 0
    for _ in range(2000):
        rows = np.flatnonzero(rng.random(len(y)) < pi)
        est = inf.estimate(x, f, inf.Sample(rows, pi[rows], "poisson", len(y)), y[rows], census=census)
        values.append(est.value[0])
        low, high = inf.interval(est.value[0], est.cov[0, 0], 0.1, est.df)
        covered += low <= y.mean() <= high
    values = np.array(values)
    assert abs(values.mean() - y.mean()) < 3 * values.std() / np.sqrt(len(values))
    assert 0.87 <= covered / 2000 <= 0.93


def test_uniform_ppi_width_follows_the_correlation():
    """Simple random samples: ppi's interval is sqrt(1 - rho^2) of classical's, and both cover."""
    rng = np.random.default_rng(7)
    y, f = corpus(rng, size=20000)
    x = np.ones((len(y), 1))
    census = inf.compress(x, f)
    widths, hits = {"ppi": [], "classical": []}, {"ppi": 0, "classical": 0}
    for _ in range(400):
        sample = srs(rng, len(y), 200)
        for method in widths:
            est = inf.estimate(x, f, sample, y[sample.rows], method=method, census=census)
            low, high = inf.interval(est.value[0], est.cov[0, 0], 0.1, est.df)
            widths[method].append(high - low)
            hits[method] += low <= y.mean() <= high
    rho = np.corrcoef(f, y)[0, 1]
    assert np.mean(widths["ppi"]) / np.mean(widths["classical"]) == pytest.approx(np.sqrt(1 - rho ** 2), rel=0.05)
    assert all(0.85 <= h / 400 <= 0.95 for h in hits.values())


def test_a_logistic_regression_recovers_the_census_coefficients():
    rng = np.random.default_rng(8)
    size = 6000
    group = rng.integers(0, 3, size)
    x = np.column_stack([np.ones(size), group == 1, group == 2]).astype(float)
    y = (rng.random(size) < np.array([0.2, 0.4, 0.6])[group]).astype(float)
    f = np.clip(0.6 * y + 0.2 + 0.15 * rng.standard_normal(size), 0, 1)
    truth = inf.naive(x, y, "logistic").value
    census = inf.compress(x, f)
    hits = np.zeros(3)
    for _ in range(300):
        sample = srs(rng, size, 400)
        est = inf.estimate(x, f, sample, y[sample.rows], "logistic", census=census)
        assert 0 <= est.lam <= 1
        for t in range(3):
            low, high = inf.interval(est.value[t], est.cov[t, t], 0.1, est.df)
            hits[t] += low <= truth[t] <= high
    assert np.all(hits / 300 >= 0.84)


def test_plan_predicts_the_half_width_reached():
    rng = np.random.default_rng(9)
    y, f = corpus(rng, size=20000)
    x = np.ones((len(y), 1))
    census = inf.compress(x, f)
    pilot = srs(rng, len(y), 150)
    est = inf.estimate(x, f, pilot, y[pilot.rows], census=census)
    n = int(np.ceil(inf.plan_n(pilot, est.influence, 0.02, 0.1)))
    halves = []
    for _ in range(200):
        sample = srs(rng, len(y), n)
        e = inf.estimate(x, f, sample, y[sample.rows], census=census)
        halves.append(np.diff(inf.interval(e.value[0], e.cov[0, 0], 0.1))[0] / 2)
    assert np.mean(halves) == pytest.approx(0.02, rel=0.15)



def test_a_share_interval_at_a_binomial_variance_is_wilsons_and_near_symmetric_at_a_small_one():
    from statsmodels.stats.proportion import proportion_confint

    for k, n in ((3, 40), (20, 50), (1, 200)):
        p = k / n
        low, high = inf.interval(p, p * (1 - p) / n, 0.1, scale="wilson")
        assert (low, high) == pytest.approx(proportion_confint(k, n, 0.1, method="wilson"), abs=1e-12)
    # A good model's variance is far below the binomial's: the interval is the symmetric one.
    low, high = inf.interval(0.1, 0.002 ** 2, 0.1, scale="wilson")
    assert (low, high) == pytest.approx(inf.interval(0.1, 0.002 ** 2, 0.1), abs=1e-4)
    assert 0 < low and high - 0.1 > 0.1 - low  # skewed away from the bound, never past it


def test_shares_and_differences_are_reported_inside_their_range():
    from annotune.estimation.findings import Findings, Quantity

    share = Findings._row(Quantity("share", "a"), "ppi", -0.02, 0.05 ** 2, 0.1, 30, 0.5, None)
    assert share["estimate"] == 0.0 and share["low"] == 0.0 and 0.0 < share["high"] < 0.2
    diff = Findings._row(Quantity("difference", "a", "x - y"), "ppi", 0.95, 0.2 ** 2, 0.1, 30, 0.5, None)
    assert diff["high"] == 1.0 and diff["low"] == pytest.approx(0.95 - 1.697 * 0.2, abs=1e-3)
    coef = Findings._row(Quantity("coefficient", "a", term="t"), "ppi", 3.0, 1.0, 0.1, 30, 0.5, None)
    assert coef["high"] > 4.5  # a coefficient has no range
