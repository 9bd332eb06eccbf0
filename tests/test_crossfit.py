"""Cross-prediction (annotune.estimation.crossfit): equal to ppi-python's crossppi_* at lam = 1 in the
infinite-population form, exact with a perfect model, the formula of a share, intervals that hold in
simulation, and the random-sample check's level and power."""
import numpy as np
import pytest

from annotune.estimation import crossfit, inference


def test_infinite_mean_equals_ppi_python_crossppi_mean_ci():
    from ppi_py import crossppi_mean_ci, crossppi_mean_pointestimate

    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(float)
    f_oof = np.clip(0.6 * y + 0.2 + 0.1 * rng.standard_normal(300), 0, 1)
    f_unlabelled = np.clip(0.3 + 0.25 * rng.standard_normal((5000, 5)), 0, 1)
    theta, (low, high) = crossfit.infinite_mean(y, f_oof, f_unlabelled, alpha=0.1)
    assert theta == pytest.approx(np.ravel(crossppi_mean_pointestimate(y, f_oof, f_unlabelled))[0], abs=1e-12)
    assert np.allclose((low, high), np.ravel(crossppi_mean_ci(y, f_oof, f_unlabelled, alpha=0.1)), atol=1e-9)


def test_infinite_logistic_point_estimate_equals_ppi_python():
    from ppi_py import crossppi_logistic_pointestimate

    rng = np.random.default_rng(1)
    n, size = 400, 3000
    x = np.column_stack([np.ones(n + size), rng.standard_normal(n + size), rng.integers(0, 2, n + size)])
    y = (rng.random(n + size) < 1 / (1 + np.exp(-(x @ [-0.5, 1.0, 0.8])))).astype(float)
    f_oof = np.clip(0.7 * y[:n] + 0.15 + 0.1 * rng.standard_normal(n), 0, 1)
    f_folds = np.clip(0.7 * y[n:, None] + 0.15 + 0.1 * rng.standard_normal((size, 5)), 0, 1)
    ours = crossfit.infinite_point(x[:n], y[:n], f_oof, x[n:], f_folds, "logistic")
    theirs = crossppi_logistic_pointestimate(x[:n], y[:n], f_oof, x[n:], f_folds, optimizer_options={})
    assert np.allclose(ours, theirs, atol=1e-6)


def fits_of(rng, size=6000, n=400, k=5, share=0.3, skill=0.6, spread=0.02, draw="uniform"):
    """A corpus whose fold models score every row from the same feature (fold model j: its own
    small shift), labelled rows drawn uniformly or balanced per label."""
    gold = (rng.random(size) < share).astype(int)
    z = skill * (gold - share) + 0.25 * rng.standard_normal(size)
    shifts = spread * rng.standard_normal(k)
    per_fold = np.clip(share + z[None, :] + shifts[:, None], 0.001, 0.999)
    per_fold = np.stack([1 - per_fold, per_fold], axis=2)  # (K, N, 2)
    if draw == "uniform":
        rows = np.sort(rng.choice(size, n, replace=False))
    else:  # half of each label, from a skewed corpus
        rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(gold == c), n // 2, replace=False) for c in (0, 1)]))
    fold = rng.permutation(np.arange(n) % k)
    oof = per_fold[fold, rows]
    return crossfit.CrossFit(rows, gold[rows], oof, fold, per_fold.mean(axis=0), per_fold), gold


def findings_of(fits, labels=("no", "yes"), **options):
    from annotune.estimation.annotated import Corpus
    from annotune.estimation.findings import Findings

    corpus = Corpus("synthetic", "", None, np.arange(fits.size), list(labels), fits.ensemble.argmax(axis=1),
                    fits.ensemble)
    return Findings(fits.corpus(corpus), options=options)


def test_a_share_is_the_labelled_rows_gold_plus_the_corrected_ensemble_elsewhere():
    rng = np.random.default_rng(2)
    fits, gold = fits_of(rng)
    rows = findings_of(fits, lam=1.0).run(fits.sample(), fits.gold, methods=("ppi",))
    share = next(r for r in rows if r["quantity"].name == "share of yes")
    y, n, size = (fits.gold == 1).astype(float), len(fits.rows), fits.size
    expected = y.mean() + (1 - n / size) * (fits.ensemble[fits.unlabelled(), 1].mean() - fits.oof[:, 1].mean())
    assert share["estimate"] == pytest.approx(expected, abs=1e-12)
    assert share["lam"] == 1.0


def test_naive_counts_the_files_labels_and_ppi_labels_are_the_argmax_on_every_row():
    rng = np.random.default_rng(7)
    fits, _ = fits_of(rng)
    from annotune.estimation.annotated import Corpus

    decided = (fits.ensemble[:, 1] > 0.2).astype(int)  # a rule that moved labels: the file's prediction column
    corpus = Corpus("synthetic", "", None, np.arange(fits.size), ["no", "yes"], decided, fits.ensemble)
    crossed = fits.corpus(corpus)
    assert (crossed.prediction == fits.probs().argmax(axis=1)).all() and (crossed.given == decided).all()
    from annotune.estimation.findings import Findings

    naive = next(r for r in Findings(crossed).run(None, np.zeros(0, dtype=int), methods=("naive",))
                 if r["quantity"].name == "share of yes")
    assert naive["estimate"] == pytest.approx(decided.mean(), abs=1e-12)


def test_a_perfect_model_gives_the_corpus_share_exactly():
    rng = np.random.default_rng(3)
    fits, gold = fits_of(rng)
    exact = np.eye(2)[gold].astype(float)
    fits = crossfit.CrossFit(fits.rows, fits.gold, exact[fits.rows], fits.fold, exact)
    for r in findings_of(fits).run(fits.sample(), fits.gold, methods=("ppi",)):
        label = 1 if r["quantity"].name == "share of yes" else 0
        assert r["estimate"] == pytest.approx((gold == label).mean(), abs=1e-12)


def test_cross_fitted_intervals_hold_and_are_narrower_than_the_labels_alone():
    rng = np.random.default_rng(4)
    held, widths = [], {"ppi": [], "classical": []}
    for _ in range(300):
        fits, gold = fits_of(rng, size=4000, n=300)
        for r in findings_of(fits).run(fits.sample(), fits.gold, methods=("classical", "ppi")):
            if r["quantity"].name == "share of yes":
                widths[r["method"]].append(r["high"] - r["low"])
                if r["method"] == "ppi":
                    held.append(r["low"] <= gold.mean() <= r["high"])
    assert 0.86 <= np.mean(held) <= 0.94, np.mean(held)
    assert np.mean(widths["ppi"]) < 0.9 * np.mean(widths["classical"])


def test_the_random_sample_check_keeps_its_level_and_refuses_a_balanced_draw():
    rng = np.random.default_rng(5)
    uniform = [crossfit.check_random_sample(fits_of(rng, share=0.15)[0])["reject"] for _ in range(200)]
    se = np.sqrt(crossfit.CHECK_ALPHA * (1 - crossfit.CHECK_ALPHA) / 200)
    assert np.mean(uniform) <= crossfit.CHECK_ALPHA + 2 * se
    balanced = [crossfit.check_random_sample(fits_of(rng, share=0.15, draw="balanced")[0]) for _ in range(100)]
    assert np.mean([b["reject"] for b in balanced]) >= 0.95
    assert "Kolmogorov-Smirnov" in balanced[0]["test"] and balanced[0]["p_value"] < 0.01


def test_spread_reports_each_fold_models_corpus_mean():
    rng = np.random.default_rng(6)
    fits, _ = fits_of(rng, spread=0.05)
    out = crossfit.spread(fits, ["no", "yes"])
    means = fits.per_fold[:, fits.unlabelled(), 1].mean(axis=1)
    assert out["yes"]["fold_means"] == pytest.approx(means, abs=1e-6)
    assert out["yes"]["range"] == pytest.approx(means.max() - means.min())
