"""The labelling contract (annotune/labelling/contract.py) on its own: which labels are scored and given, the
one call that labels rows (score, then merge, then the rule), and that a merge lives in three
modules. The end-to-end paths through train.py and evaluate.py are in tests/test_merge_after.py."""
import dataclasses
import re

import pytest

from conftest import REPO

from annotune.labelling.contract import Labelling, of_spec, scoring_finer
from annotune.labelling.decision import DecisionRule
from annotune.data.task import load_task

MERGED = load_task("drug_reviews").merged("neutral_vs_rest")


class FakeAnnotator:
    """Scores fixed probabilities over the labels it is given and records what it was asked."""

    def __init__(self, probs):
        self.probs, self.calls = probs, []

    def predict(self, rows, mode="score", batch_size=16, length_norm=False, max_new_tokens=None, progress=False,
                sampling=None, offsets=None):
        self.calls.append({"rows": rows, "offsets": offsets})
        return [{"prediction": max(self.probs, key=self.probs.get), "probs": dict(self.probs)} for _ in rows]


def finer_job(rule=None):
    """drug_reviews' three labels scored, neutral_vs_rest's two given (train.py --merge_at prediction)."""
    rows = [{"id": "a", "text": "fine", "label": "neutral", "fine_label": "neutral", "prompt": "merged prompt"}]
    labelling = Labelling(MERGED, MERGED, {}, "causal", {"validation": rows})
    return dataclasses.replace(scoring_finer(labelling), rule=rule)


def test_without_a_merge_the_labels_scored_are_the_labels_given():
    labelling = of_spec(MERGED)
    assert not labelling.merges and labelling.label_of_scored() == {"neutral": "neutral", "not neutral": "not neutral"}
    ann = FakeAnnotator({"neutral": 0.3, "not neutral": 0.7})
    [pred] = labelling.label(ann, [{"text": "x", "prompt": "its own prompt"}])
    assert pred["prediction"] == "not neutral" and "fine_prediction" not in pred
    assert ann.calls[0]["rows"][0]["prompt"] == "its own prompt"  # a row's own prompt is used as it is


def test_a_merge_after_scoring_sums_the_finer_labels_then_the_rule_decides():
    labelling = finer_job()
    assert labelling.merges and labelling.scored.label_names == ["negative", "neutral", "positive"]
    assert labelling.reported.label_names == ["neutral", "not neutral"]
    assert labelling.label_of_scored() == {"negative": "not neutral", "neutral": "neutral", "positive": "not neutral"}
    ann = FakeAnnotator({"negative": 0.35, "neutral": 0.4, "positive": 0.25})
    [pred] = labelling.label(ann, [{"id": "a", "text": "fine", "prompt": "merged prompt"}])
    # the finer argmax is neutral; its merge says not neutral (0.6)
    assert pred["prediction"] == "not neutral" and pred["fine_prediction"] == "neutral"
    assert pred["probs"] == pytest.approx({"neutral": 0.4, "not neutral": 0.6})
    # the model is prompted with the finer labels (the row's prompt has the merged ones), offsets not passed
    assert ann.calls[0]["rows"] == [{"text": "fine"}] and ann.calls[0]["offsets"] is None
    # a fitted rule decides after the merge, over the labels given, keeping the argmax beside it
    rule = DecisionRule(labelling.reported.label_names, [2.0, 0.0], fitted_on=100, heldout_gain=0.1)
    [ruled] = finer_job(rule).label(ann, [{"id": "a", "text": "fine"}])
    assert ruled["prediction"] == "neutral" and ruled["argmax_prediction"] == "not neutral"
    assert set(ruled["calibrated_probs"]) == {"neutral", "not neutral"}
    # a rule that failed its held-out check is consulted, not applied
    unfit = DecisionRule(labelling.reported.label_names, [2.0, 0.0], fitted_on=100, heldout_gain=0.0)
    assert finer_job(unfit).label(ann, [{"id": "a", "text": "fine"}])[0]["prediction"] == "not neutral"


def test_training_rows_are_answered_with_the_scored_labels():
    from annotune.data.prompts import Prompter

    labelling = finer_job()
    prompter = Prompter(labelling.scored, "alpaca")
    [row] = labelling.training_rows(labelling.splits["validation"], prompter)
    assert row["label"] == "neutral" and row["completion"] == prompter.completion("neutral")
    assert row["prompt"] != "merged prompt"  # rendered again for the finer labels
    plain = of_spec(MERGED)
    assert plain.training_rows(labelling.splits["validation"], prompter) == labelling.splits["validation"]


def test_for_model_none_keeps_the_rows_and_drops_the_record_and_rule():
    rule = DecisionRule(MERGED.label_names, [1.0, 0.0], fitted_on=100, heldout_gain=0.1)
    labelling = finer_job(rule)
    base = labelling.for_model(None)
    assert base.splits is labelling.splits and base.rule is None and base.record is None and base.merges


def test_the_adapter_record_names_the_merge_after_scoring():
    record = finer_job().adapter_record(base_model="m")
    assert record.labels == ["negative", "neutral", "positive"] and record.merge_after == "neutral_vs_rest"
    assert record.merge is None and record.task == "drug_reviews"
    plain = of_spec(MERGED, kind="causal").adapter_record(base_model="m")
    assert plain.merge == "neutral_vs_rest" and plain.merge_after is None and plain.labels == MERGED.label_names


def test_a_merge_lives_in_at_most_three_package_modules():
    """`merge_after`, `unmerged`, `merge_map` and `merge_at` as words: task.py defines a merge,
    labels.py maps a prediction through it, contract.py decides which labels are scored and given;
    the scripts name them only as flags."""
    words = re.compile(r"\b(merge_after|unmerged|merge_map|merge_at)\b")
    modules = sorted(p.name for p in (REPO / "annotune").rglob("*.py") if words.search(p.read_text()))
    assert modules == ["contract.py", "labels.py", "task.py"]
    for script in ("train.py", "evaluate.py", "export.py", "preprocess.py"):
        uses = [line for line in (REPO / script).read_text().splitlines() if words.search(line)]
        assert all("add_argument" in line or "ADDED_LATER" in line for line in uses), (script, uses)
