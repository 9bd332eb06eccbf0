"""bench/quality.py's report: one line per recorded setting, and the verdict against TF-IDF."""
import importlib.util
from types import SimpleNamespace

from conftest import REPO


def quality_module():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scored(f1, bal, **extra):
    return {"n": 10, "macro_f1": f1, "balanced_accuracy": bal, "labels": ["a", "b", "c"], **extra}


def record(tag, recipe, rows):
    return {"data": "toy", "task": "toy", "recipe": recipe, "tag": tag, "rows": rows}


def test_report_shows_each_setting_and_judges_the_best_against_tfidf():
    q = quality_module()
    results = {"records": [
        record("", "baselines", {"majority": scored(0.2, 1 / 3), "tfidf": scored(0.45, 0.46)}),
        record("e3-none", "tuned", {"tuned": scored(0.40, 0.42, argmax=scored(0.38, 0.40))}),
        record("e3-weights", "tuned", {"tuned": scored(0.50, 0.52, argmax=scored(0.47, 0.50))}),
    ]}
    every = q.report(results, SimpleNamespace(tag="all"))
    assert "SmolLM2 tuned (e3-none), argmax" in every and "SmolLM2 tuned (e3-weights), decision rule" in every
    assert "best own (tuned:e3-weights) 0.500 >= TF-IDF" in every
    assert "balanced acc. 0.520 > 1/K + 0.10 = 0.433" in every
    one = q.report(results, SimpleNamespace(tag="e3-none"))
    assert "e3-weights" not in one and "best own (tuned) 0.400 < TF-IDF" in one


def test_a_collapsed_tuned_model_is_told_apart_by_its_ranking_auc():
    q = quality_module()
    for auc, words in [(0.81, "it ranks the rows; the decision rule fails to use it"),
                       (0.52, "little signal to rank (0.5 = none)")]:
        results = {"records": [
            record("", "baselines", {"majority": scored(0.2, 1 / 3), "tfidf": scored(0.45, 0.46, ranking_auc=0.7)}),
            dict(record("", "tuned", {"tuned": scored(0.2, 1 / 3, ranking_auc=auc, argmax=scored(0.2, 1 / 3))}),
                 cpu_s=812.5),  # CPU seconds of the record's scripts: not inflated by a paused run
        ]}
        text = q.report(results, SimpleNamespace(tag=""))
        assert f"| {auc:.3f} |" in text and "| 0.700 |" in text  # the column, for the tuned and TF-IDF rows
        assert "| ranking AUC | wall s | CPU s |" in text and text.count("| 812.5 |") == 2  # argmax and rule rows
        assert "balanced acc. 0.333 <= 1/K + 0.10" in text and f"its ranking AUC {auc:.3f}: {words}" in text
