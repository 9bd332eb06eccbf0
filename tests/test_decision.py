"""The decision rule fit on validation, and the classical baselines, on synthetic data."""
import numpy as np
import pytest

from annotune.labelling.baseline import TfidfBaseline, majority_label
from annotune.labelling.decision import MIN_ROWS, DecisionRule, expected_score, fit_rule, rule_applies
from annotune.labelling.metrics import balanced_accuracy, macro_f1

LABELS = ["neither", "offensive", "hate"]


def skewed_probs(n, seed):
    """A model that ranks the gold label up by 1.5 nats but leans 2.5 nats to the majority label."""
    rng = np.random.default_rng(seed)
    gold = rng.choice(3, size=n, p=[0.7, 0.24, 0.06])
    logits = rng.normal(0, 1, (n, 3)) + 1.5 * np.eye(3)[gold] + np.array([2.5, 0.0, -0.5])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, [LABELS[g] for g in gold]


@pytest.mark.parametrize("objective", ["macro_f1", "balanced_accuracy"])
def test_offsets_fit_on_one_half_raise_the_metric_on_the_other(objective):
    probs, gold = skewed_probs(2000, seed=0)
    fit_p, fit_g, test_p, test_g = probs[:1000], gold[:1000], probs[1000:], gold[1000:]
    metric = macro_f1 if objective == "macro_f1" else balanced_accuracy
    raw = metric(test_g, [LABELS[i] for i in test_p.argmax(1)], LABELS)
    rule = fit_rule(fit_p, fit_g, LABELS, objective)
    _, fitted = rule.apply(test_p)
    assert rule.fitted and rule.offsets[0] == 0.0 and rule.heldout_gain > 0.05
    assert metric(test_g, fitted, LABELS) > raw + 0.1
    assert balanced_accuracy(test_g, [LABELS[i] for i in test_p.argmax(1)], LABELS) < 0.5  # the raw model collapses


def test_temperature_calibrates_without_changing_any_label():
    probs, gold = skewed_probs(600, seed=1)
    rule = fit_rule(probs, gold, LABELS)
    calibrated, labels = rule.apply(probs)
    same_offsets = DecisionRule(LABELS, rule.offsets, 1.0)
    assert labels == same_offsets.apply(probs)[1] and rule.temperature != 1.0
    assert np.allclose(calibrated.sum(1), 1.0)
    gold_index = [LABELS.index(g) for g in gold]
    nll = lambda p: -np.log(p[np.arange(len(p)), gold_index]).mean()  # noqa: E731
    assert nll(calibrated) <= nll(same_offsets.apply(probs)[0]) + 1e-9


def test_a_rule_that_does_not_hold_out_of_sample_is_not_applied():
    rng = np.random.default_rng(3)
    gold = list(rng.choice(LABELS, 200, p=[0.6, 0.3, 0.1]))
    probs = rng.dirichlet([1, 1, 1], 200)  # no signal: any offsets fit noise
    rule = fit_rule(probs, gold, LABELS)
    assert rule.fitted_on == 200 and rule.gain_lower < 0 and not rule.fitted and "not applied" in rule.note


def test_too_few_validation_rows_fit_nothing_and_say_so():
    probs, gold = skewed_probs(MIN_ROWS - 1, seed=2)
    rule = fit_rule(probs, gold, LABELS)
    assert not rule.fitted and rule.offsets == [0.0, 0.0, 0.0] and f"{MIN_ROWS - 1} validation rows" in rule.note
    assert "too few to show a gain" in rule.note
    assert rule.apply(probs)[1] == [LABELS[i] for i in probs.argmax(1)]  # argmax
    again = DecisionRule.from_dict(rule.to_dict(), LABELS)
    assert again == rule


def test_tfidf_baseline_learns_words_and_reports_probabilities_in_label_order():
    rng = np.random.default_rng(0)
    cue = {"neither": "lovely", "offensive": "idiot", "hate": "vermin"}
    rows = [{"text": f"{' '.join(rng.choice(['the', 'a', 'this', 'post'], 4))} {cue[l]}", "label": l}
            for l in rng.choice(LABELS, 120, p=[0.6, 0.3, 0.1])]
    model = TfidfBaseline(LABELS, seed=0).fit(rows[:80], rows[80:100])
    probs = model.probs(rows[100:])
    assert probs.shape == (20, 3) and np.allclose(probs.sum(1), 1)
    assert macro_f1([r["label"] for r in rows[100:]], [LABELS[i] for i in probs.argmax(1)], LABELS) > 0.9
    assert model.chosen_by == "validation split"
    # No validation rows: C by cross-validation on the training rows.
    assert TfidfBaseline(LABELS).fit(rows[:80]).chosen_by.endswith("cross-validation on train")
    # A label never seen in training gets probability 0, in its own column.
    two = TfidfBaseline(LABELS).fit([r for r in rows[:80] if r["label"] != "hate"])
    assert (two.probs(rows[100:])[:, 2] == 0).all()


def test_majority_label_breaks_ties_in_sorted_order():
    assert majority_label([{"label": "b"}, {"label": "a"}, {"label": "b"}]) == "b"
    assert majority_label([{"label": "b"}, {"label": "a"}]) == "a"


def test_a_rule_is_applied_when_its_gain_is_shown_and_an_old_rule_keeps_its_own_test():
    probs, gold = skewed_probs(300, seed=4)
    unshown = DecisionRule(LABELS, [0.0, 1.0, 2.0], 1.0, "macro_f1", 120, heldout_gain=0.04, gain_lower=-0.01)
    shown = DecisionRule(LABELS, [0.0, 1.0, 2.0], 1.0, "macro_f1", 120, heldout_gain=0.04, gain_lower=0.001)
    assert not unshown.fitted and shown.fitted
    # What a rule that is not applied scores: argmax, in training's epoch choice as in evaluation.
    assert expected_score({"macro_f1": 0.5}, unshown) == 0.5 and expected_score({"macro_f1": 0.5}, shown) == 0.54
    assert shown.apply(probs)[1] != [LABELS[i] for i in probs.argmax(1)]
    # A rule saved before the lower bound was recorded: applied as it was then (mean held-out gain >= 0.02).
    old = {"labels": LABELS, "offsets": [0, 1, 2], "temperature": 1.0, "objective": "macro_f1", "fitted_on": 120,
           "heldout_gain": 0.012, "note": "", "precision": "fp32"}
    assert not rule_applies(old) and rule_applies(dict(old, heldout_gain=0.02))
    assert DecisionRule.from_dict(old, LABELS).gain_lower is None


def calibrated_balanced(n, seed, k=3):
    """Balanced labels and a calibrated model (the exact posterior of Gaussian scores): argmax is the
    best rule there is, so an applied rule is a false acceptance."""
    rng = np.random.default_rng(seed)
    gold = rng.choice(k, size=n)
    logits = rng.normal(0, 1, (n, k)) + np.eye(k)[gold]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, [LABELS[g] for g in gold]


def test_the_acceptance_test_takes_a_real_gain_and_refuses_no_gain():
    """bench/decision_power.py measures the rates over 200 seeds; here 20 seeds of each."""
    shown = [fit_rule(*skewed_probs(200, seed=s), LABELS).fitted for s in range(20)]
    assert sum(shown) >= 18  # a lean of 2.5 nats to the majority label: about +0.2 macro-F1 to gain
    false = [fit_rule(*calibrated_balanced(MIN_ROWS, seed=s), LABELS) for s in range(20)]
    assert sum(r.fitted for r in false) <= 1  # the stated rate: at most 5% of seeds
    assert all(r.fitted_on == MIN_ROWS and r.gain_lower is not None for r in false)


def test_a_rule_fit_on_bf16_rounded_scores_gives_the_labels_of_one_fit_on_fp32():
    """bf16 keeps 8 bits of mantissa: log-probabilities rounded to it differ from fp32's by up to
    ~0.4% of their size, what scoring under bf16 autocast does to them."""
    import torch

    same = []
    for seed in range(3):
        probs, gold = skewed_probs(600, seed=10 + seed)
        val, test = (probs[:300], gold[:300]), probs[300:]
        rounded = torch.tensor(np.log(val[0])).to(torch.bfloat16).double().exp().numpy()
        assert np.abs(rounded - val[0]).max() > 1e-4  # the perturbation is there
        fp32, bf16 = fit_rule(val[0], val[1], LABELS), fit_rule(rounded, val[1], LABELS)
        assert fp32.fitted and bf16.fitted
        same.append(np.mean([a == b for a, b in zip(fp32.apply(test)[1], bf16.apply(test)[1])]))
    # Offsets taken from a coarse grid alone gave 0.957 on the first seed (a whole grid step apart).
    assert min(same) >= 0.98 and np.mean(same) >= 0.99


def test_an_estimated_score_stays_below_a_measured_top():
    """A gain measured on half-size samples can add up past 1 (0.55 + 0.47 was seen): training must
    not keep that epoch over one whose argmax labels are all right."""
    ruled = DecisionRule(LABELS, [0.0, 0.0, -0.25], 0.2, "macro_f1", 48, heldout_gain=0.466)
    plain = DecisionRule(LABELS, fitted_on=48, heldout_gain=0.0)
    estimated, measured = expected_score({"macro_f1": 0.551}, ruled), expected_score({"macro_f1": 1.0}, plain)
    assert measured == 1.0 and 0.99 < estimated < measured


def test_the_decision_rule_is_decision_py_alone(in_tmp, tiny_llama_dir, monkeypatch):
    """docs/architecture.md names decision.py for how probabilities become a label: changed there
    alone (here: offsets that always give the second label, gain forced shown, on any number of rows), the rule
    train.py saves with the adapter and the labels evaluate.py gives follow."""
    import json

    from annotune.labelling import decision
    from conftest import run_script
    from test_train import write_colour_task

    monkeypatch.setattr(decision, "fit_offsets", lambda logp, gold, labels, *args, **kwargs:
                        [0.0, 50.0] + [0.0] * (len(labels) - 2))
    monkeypatch.setattr(decision, "refine_offsets", lambda logp, gold, labels, offsets, *args, **kwargs: offsets)
    monkeypatch.setattr(decision, "crossfit_gain", lambda *args, **kwargs: (0.9, 0.5))
    monkeypatch.setattr(decision, "MIN_ROWS", 2)
    data = write_colour_task(in_tmp)
    assert run_script("preprocess", ["--data_path", data, "--text_column", "text", "--label_column", "label",
                                     "--output_dir", "ds"]) == 0
    assert run_script("train", ["--dataset_name", "ds", "--model_name", tiny_llama_dir, "--epoch", 1, "--lora_r", 4,
                                "--output_dir", "run", "--quiet"]) == 0
    adapter = next(p for p in (in_tmp / "run").iterdir() if (p / "annotune.json").exists())
    rule = json.loads((adapter / "annotune.json").read_text())["decision_rule"]
    assert rule["offsets"][1] == 50.0 and rule["heldout_gain"] == 0.9 and rule["gain_lower"] == 0.5
    assert "applied" in rule["note"]
    assert run_script("evaluate", ["--adapters_name", adapter, "--split", "train", "--max_samples", 20,
                                   "--bootstrap", 20, "--baseline", "none", "--output_dir", "ev", "--quiet"]) == 0
    rows = [json.loads(line) for line in (in_tmp / "ev" / adapter.name / "train" / "predictions.jsonl").open()]
    second = rule["labels"][1]
    assert len(rows) == 20 and {r["prediction"] for r in rows} == {second}
    metrics = json.loads((in_tmp / "ev" / adapter.name / "train" / "metrics.json").read_text())
    assert metrics["decision_rule"]["offsets"] == rule["offsets"] and "argmax" in metrics  # applied, argmax beside it


def test_train_and_evaluate_fit_the_rule_on_the_same_validation_rows(in_tmp, tiny_llama_dir, capsys):
    """Every validation row in both: train.py fits the rule on all of them; evaluate.py, refitting it
    for another precision, or fitting it where training scored only a sample (--max_eval_samples),
    fits on the same rows."""
    import json

    from conftest import run_script
    from test_train import write_colour_task

    data = write_colour_task(in_tmp, n=560)
    assert run_script("preprocess", ["--data_path", data, "--text_column", "text", "--label_column", "label",
                                     "--val_ratio", 0.2, "--test_ratio", 0.05, "--output_dir", "ds"]) == 0
    from annotune.data.examples import load_dataset_folder

    n_val = len(load_dataset_folder(in_tmp / "ds")[0]["validation"])
    assert n_val >= MIN_ROWS
    common = ["--dataset_name", "ds", "--model_name", tiny_llama_dir, "--epoch", 1, "--lora_r", 4, "--quiet",
              "--max_train_samples", 24, "--cpu_bf16", "off"]
    assert run_script("train", common + ["--output_dir", "all"]) == 0
    assert run_script("train", common + ["--output_dir", "sample", "--max_eval_samples", 30]) == 0
    rules = {}
    for run in ("all", "sample"):
        adapter = next(p for p in (in_tmp / run).iterdir() if (p / "annotune.json").exists())
        rules[run] = (adapter, json.loads((adapter / "annotune.json").read_text())["decision_rule"])
    assert rules["all"][1]["fitted_on"] == n_val and not rules["all"][1]["fit_later"]
    assert rules["sample"][1]["fitted_on"] == 0 and rules["sample"][1]["fit_later"]
    assert "evaluate.py fits it on every validation row" in rules["sample"][1]["note"]
    for run, precision in (("all", "on"), ("sample", "off")):
        capsys.readouterr()
        assert run_script("evaluate", ["--adapters_name", rules[run][0], "--split", "test", "--baseline", "none",
                                       "--bootstrap", 20, "--cpu_bf16", precision, "--output_dir", f"ev-{run}"]) == 0
        assert f"fit on {n_val} validation rows" in capsys.readouterr().out
        metrics = json.loads((in_tmp / f"ev-{run}" / rules[run][0].name / "test" / "metrics.json").read_text())
        assert metrics["decision_rule"]["fitted_on"] == n_val
