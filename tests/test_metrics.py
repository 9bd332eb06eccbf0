"""Metrics against direct scikit-learn / rouge-score computations."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, f1_score

from annotune.data.labels import INVALID, parse_label
from annotune.labelling.decision import DecisionRule
from annotune.labelling.metrics import classification_metrics, expected_calibration_error, generation_metrics, ranking_auc

LABELS = ["neg", "neu", "pos"]


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    gold = list(rng.choice(LABELS, 200))
    pred = [g if rng.random() < 0.7 else rng.choice(LABELS) for g in gold]
    m = classification_metrics(gold, pred, LABELS, n_boot=200)
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(gold, pred, average="weighted"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(gold, pred))
    assert m["cohen_kappa"] == pytest.approx(cohen_kappa_score(gold, pred))
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        lo, hi = m["ci95"][key]
        assert lo < m[key] < hi
    assert classification_metrics(gold, pred, LABELS, n_boot=200)["ci95"] == m["ci95"]  # seeded
    assert sum(map(sum, m["confusion_matrix"])) == 200


def test_the_bootstrapped_metrics_equal_scikit_learns_on_odd_samples():
    """accuracy, macro_f1 and balanced_accuracy are counted with numpy (they run thousands of times
    in a bootstrap): equal to scikit-learn's on samples with invalid outputs, a label never given,
    a label never in gold, one row."""
    from warnings import catch_warnings, simplefilter

    from annotune.labelling.metrics import accuracy, balanced_accuracy, macro_f1

    rng = np.random.default_rng(1)
    for trial in range(300):
        n = int(rng.integers(1, 40))
        gold = list(rng.choice(LABELS[: 1 + trial % 3], n))
        pred = list(rng.choice(LABELS + [INVALID], n))
        present = [l for l in LABELS if l in set(gold) | set(pred)]
        with catch_warnings():
            simplefilter("ignore")
            assert balanced_accuracy(gold, pred, LABELS) == pytest.approx(balanced_accuracy_score(gold, pred), abs=1e-12)
        assert macro_f1(gold, pred, LABELS) == pytest.approx(
            f1_score(gold, pred, labels=present, average="macro", zero_division=0), abs=1e-12)
        assert accuracy(gold, pred) == pytest.approx(accuracy_score(gold, pred), abs=1e-12)
    assert np.isnan(macro_f1([], [], LABELS)) and np.isnan(balanced_accuracy([], [], LABELS))


def test_invalid_outputs_count_as_wrong_and_never_become_a_label():
    gold = ["neg", "pos", "pos", "neu"]
    pred = ["neg", "pos", "banana", "neu"]
    m = classification_metrics(gold, pred, LABELS, n_boot=50)
    assert m["invalid"] == 1 and m["accuracy"] == 0.75
    assert INVALID not in m["per_class"] and m["labels"] == LABELS
    assert m["per_class"]["pos"]["recall"] == 0.5
    assert m["valid_only"] == {"n": 3, "accuracy": 1.0, "macro_f1": 1.0}


def test_expected_calibration_error():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    # top-1 confidence 0.9 with accuracy 1/2 and 0.6 with accuracy 1/2: ECE = 0.5*0.4 + 0.5*0.1
    assert expected_calibration_error(probs, [0, 1, 0, 1])["ece"] == pytest.approx(0.25)


def test_ranking_auc_tells_signal_from_none_whatever_the_decision_rule():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 400)
    informative = np.clip(0.05 + 0.1 * gold + rng.normal(0, 0.03, 400), 0.001, 0.999)  # always "label 0" by argmax
    probs = np.stack([1 - informative, informative], axis=1)
    assert ranking_auc(probs, gold) > 0.95
    assert ranking_auc(probs[:, ::-1], gold) < 0.05
    noise = rng.uniform(size=400)
    assert abs(ranking_auc(np.stack([1 - noise, noise], 1), gold) - 0.5) < 0.07
    shifted, _ = DecisionRule(["a", "b"], offsets=[0.0, 3.0]).apply(probs)  # a threshold moves, the ranking stays
    assert ranking_auc(shifted, gold) == pytest.approx(ranking_auc(probs, gold))
    names = ["a", "b"]
    m = classification_metrics([names[g] for g in gold], ["a"] * 400, names, probs=probs)
    assert m["balanced_accuracy"] == 0.5 and m["ranking_auc"] > 0.95  # collapsed, yet it ranks
    assert np.isnan(ranking_auc(probs[:5], np.zeros(5, int)))  # one label only: nothing to rank


def test_rouge_takes_the_best_reference_and_exact_match():
    summary, rows = generation_metrics(["the cat sat", "dogs run"], [["a cat sat down", "the cat sat"], ["cats sleep"]],
                                       n_boot=50)
    assert rows[0]["rouge1"] == pytest.approx(1.0) and rows[0]["exact_match"] == 1.0
    assert rows[1]["rouge1"] == pytest.approx(0.0)
    assert summary["rougeL"] == pytest.approx(0.5)


@pytest.mark.parametrize("text,expected", [
    ("positive", "positive"),
    (" Positive.", "positive"),
    ("positive. The review is nice", "positive"),
    ("neg", "negative"),
    ("Support Gun Polarized", "Support Gun Polarized"),
    ("support gun non-polarized", "Support Gun non-Polarized"),
    ("Support Gun", INVALID),  # a prefix of two labels
    ("I think", INVALID),
    ("", INVALID),
])
def test_parse_label(text, expected):
    labels = ["negative", "positive", "Support Gun Polarized", "Support Gun non-Polarized"]
    assert parse_label(text, labels) == expected


def test_paired_difference_is_the_difference_on_the_same_rows_with_its_own_interval():
    from annotune.labelling.metrics import balanced_accuracy, paired_difference

    rng = np.random.default_rng(0)
    gold = list(rng.choice(["a", "b"], 300))
    better = [g if rng.random() < 0.9 else ("b" if g == "a" else "a") for g in gold]
    worse = [g if rng.random() < 0.6 else ("b" if g == "a" else "a") for g in gold]
    fn = lambda g, p: balanced_accuracy(g, p, ["a", "b"])  # noqa: E731
    d = paired_difference(gold, better, worse, fn, n_boot=300, seed=1)
    assert d["diff"] == pytest.approx(fn(gold, better) - fn(gold, worse))
    assert 0 < d["ci95"][0] < d["diff"] < d["ci95"][1]
    # A model against itself: exactly no difference, at every resample.
    assert paired_difference(gold, better, better, fn, n_boot=50) == {"diff": 0.0, "ci95": [0.0, 0.0]}
    # Reversed, the difference is negative and so is all of its interval.
    reversed_ = paired_difference(gold, worse, better, fn, n_boot=300, seed=1)
    assert reversed_["diff"] == pytest.approx(-d["diff"]) and reversed_["ci95"][1] < 0


def test_no_bootstrap_gives_the_metrics_without_intervals():
    from annotune.labelling.metrics import classification_metrics

    m = classification_metrics(["a", "b", "a", "b"], ["a", "b", "b", "b"], ["a", "b"], n_boot=0)  # --bootstrap 0
    assert m["accuracy"] == 0.75 and all(np.isnan(v).all() for v in m["ci95"].values())
