"""bench/quality.py's report: one line per recorded setting, and the verdict against TF-IDF."""
import importlib.util
from types import SimpleNamespace

import pytest

from conftest import REPO


def bench_module(name, folder="bench"):
    """<folder>/<name>.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quality_module():
    return bench_module("quality")


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


def test_the_verdict_gives_the_paired_difference_where_it_was_recorded():
    q = quality_module()
    tuned = scored(0.50, 0.52, argmax=scored(0.47, 0.50),
                   vs_tfidf={"macro_f1": {"diff": 0.05, "ci95": [-0.02, 0.11]}})
    rows = {"tfidf": scored(0.45, 0.46), "tuned": tuned}
    assert "0.500 >= TF-IDF (paired difference +0.050 [-0.020, +0.110]: no difference shown)" in q.verdict(rows)
    tuned["vs_tfidf"]["macro_f1"]["ci95"] = [0.01, 0.11]
    assert "+0.050 [+0.010, +0.110]: better)" in q.verdict(rows)
    del tuned["vs_tfidf"]  # records made before evaluate.py reported it: the verdict as it was
    assert q.verdict(rows).startswith("TF-IDF macro-F1 0.450; best own (tuned) 0.500 >= TF-IDF;")


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


def rule_change_module():
    return bench_module("rule_change", "bench/studies")


def rule(gain, labels=("a", "b", "c")):
    return {"labels": list(labels), "offsets": [0.0, 0.5, 0.0], "temperature": 1.0, "objective": "macro_f1",
            "fitted_on": 120, "heldout_gain": gain, "note": f"held-out gain {gain:+.3f}: applied"}


def test_a_stricter_rule_test_redoes_the_epoch_choice_from_the_history():
    rc = rule_change_module()
    # ag_news as recorded: epoch 3 won only by a +0.012 rule that MIN_GAIN (0.02) no longer applies.
    history = [{"epoch": 2, "macro_f1": 0.868, "balanced_accuracy": 0.87, "decision_rule": rule(-0.015)},
               {"epoch": 3, "macro_f1": 0.861, "balanced_accuracy": 0.86, "decision_rule": rule(0.012)}]
    assert rc.kept_epoch(history, 3) == 2
    history[1]["decision_rule"] = rule(0.05)  # a rule that still passes keeps its gain
    assert rc.kept_epoch(history, 3) == 3
    # An epoch whose dropped rule leaves argmax labels that may all be one label: cannot tell.
    history[1].update(decision_rule=rule(0.01), balanced_accuracy=1 / 3)
    assert rc.kept_epoch(history, 3) is None


def test_a_base_row_whose_rule_no_longer_passes_becomes_its_argmax_row(tmp_path):
    import json

    rc = rule_change_module()
    argmax = {"n": 10, "accuracy": 0.6, "balanced_accuracy": 0.55, "macro_f1": 0.5, "ci95": {}, "ranking_auc": 0.7,
              "per_class": {"a": {"f1": 0.5}}}
    found = tmp_path / "base-eval" / "base_x" / "test"
    found.mkdir(parents=True)
    (found / "metrics.json").write_text(json.dumps({"decision_rule": rule(0.008), "argmax": argmax}))
    row = dict(scored(0.6, 0.6), rule="held-out gain +0.008: applied")
    new, what = rc.rescored({"rows": {"base": row}}, tmp_path)
    assert new["macro_f1"] == 0.5 and new["balanced_accuracy"] == 0.55 and "not applied" in new["rule"]
    (found / "metrics.json").write_text(json.dumps({"decision_rule": rule(0.2), "argmax": argmax}))
    assert rc.rescored({"rows": {"base": row}}, tmp_path) == (row, "unchanged")


def test_a_stopped_tuned_run_is_resumed_with_paths_relative_to_the_repository(monkeypatch):
    q = quality_module()
    folder = REPO / "runs" / "test-bench-quality" / "toy"
    run_dir = folder / "tuned-x"
    calls = []

    def stopped(script, argv, log):
        calls.append((script, [str(a) for a in argv]))
        raise SystemExit("stopped")  # train.py stopped (exit 130)

    def train(files):
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in files:
            (run_dir / name).write_text("{}")
        try:
            q.train_and_score(SimpleNamespace(), folder / "data", folder, "tuned-x", ["--epoch", "3"])
        except SystemExit:
            pass
        script, argv = calls[-1]
        assert script == "train.py" and argv[argv.index("--dataset_name") + 1] == "runs/test-bench-quality/toy/data"
        assert argv[argv.index("--epoch") + 1] == "3"
        return argv

    monkeypatch.setattr(q, "run", stopped)
    try:
        argv = train(["stale.txt"])  # no manifest: the run never started; it starts afresh
        assert "--resume_from_checkpoint" not in argv and not run_dir.exists()
        argv = train(["manifest.json", "checkpoint.json"])  # what a stopped run leaves
        assert "--resume_from_checkpoint" in argv and (run_dir / "checkpoint.json").exists()
        (run_dir / "manifest.json").write_text('{"result": {"steps": 9}}')  # finished, its record dropped
        argv = train([])
        assert "--resume_from_checkpoint" not in argv and not run_dir.exists()  # trained afresh
    finally:
        q.remove(REPO / "runs" / "test-bench-quality")


def test_only_the_requested_recipes_run():
    q = quality_module()
    args = SimpleNamespace(recipes="baselines,tuned", tag="x", train_args="", head_args=q.HEAD_ARGS)
    assert [r for r, _, _ in q.recipes_for(args, "toy", REPO, REPO)] == ["baselines", "tuned"]


def test_would_have_scores_a_turned_away_rule_on_the_test_predictions(tmp_path):
    import json

    rc = rule_change_module()
    adapter = tmp_path / "tuned-x" / "m-epoch3"
    adapter.mkdir(parents=True)
    two = ["a", "b"]
    (adapter / "annotune.json").write_text(json.dumps({"labels": two, "decision_rule": dict(rule(0.01, two), offsets=[0.0, 3.0])}))
    preds = [{"gold": g, "prediction": "a", "probs": {"a": 0.8, "b": 0.2}} for g in ("a", "b", "b", "b")]
    found = tmp_path / "tuned-x-eval" / "m-epoch3" / "test"
    found.mkdir(parents=True)
    (found / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    record = {"tag": "x", "rows": {"tuned": {"epoch_kept": 3}}}
    gain, argmax, ruled = rc.would_have(record, tmp_path)
    assert gain == 0.01 and argmax == pytest.approx(0.2) and ruled == pytest.approx(3 / 7)  # all "a", then all "b"
    (adapter / "annotune.json").write_text(json.dumps({"labels": two, "decision_rule": rule(0.05, two)}))
    assert rc.would_have(record, tmp_path) is None  # a rule that passes is applied: nothing to compare


def test_a_best_own_row_that_only_ties_the_majority_guess_is_called_so():
    q = quality_module()
    rows = {"majority": scored(0.475, 1 / 3), "tfidf": scored(0.475, 1 / 3), "head": scored(0.475, 1 / 3)}
    assert "the majority guess's score, not a pass" in q.verdict(rows)
    rows["head"] = scored(0.5, 0.4)
    assert "not a pass" not in q.verdict(rows)


def test_merge_after_prediction_scores_the_fine_labels_through_the_named_merge(tmp_path, capsys):
    """drug_reviews' neutral_vs_rest: a positive review predicted negative is right once merged, and
    each merged label's probability is the sum of its finer labels'."""
    import json

    from annotune.base.cli import run_cli

    rows = [("positive", "negative", {"negative": 0.6, "neutral": 0.1, "positive": 0.3}),
            ("neutral", "neutral", {"negative": 0.2, "neutral": 0.5, "positive": 0.3}),
            ("negative", "neutral", {"negative": 0.3, "neutral": 0.4, "positive": 0.3}),
            ("positive", "positive", {"negative": 0.0, "neutral": 0.2, "positive": 0.8})]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "gold": g, "prediction": p, "probs": pr}) + "\n"
                            for i, (g, p, pr) in enumerate(rows)))
    module = bench_module("merge_after")
    from annotune.data.task import load_task

    m = module.merged_metrics([json.loads(l) for l in path.read_text().splitlines()],
                              load_task("drug_reviews").merged("neutral_vs_rest"))
    assert m["labels"] == ["neutral", "not neutral"] and m["accuracy"] == 0.75  # only the third row is wrong
    assert m["per_class"]["neutral"]["recall"] == 1.0 and m["per_class"]["not neutral"]["recall"] == pytest.approx(2 / 3)
    assert m["ranking_auc"] == 1.0  # neutral's probability 0.5 ranks above 0.1, 0.4 and 0.2
    run = lambda argv: run_cli(module.main, [str(a) for a in argv])  # noqa: E731
    assert run(["--task", "drug_reviews", "--merge", "neutral_vs_rest", "--predictions", path]) == 0
    assert "| drug_reviews -> neutral_vs_rest | 4 | 0.733" in capsys.readouterr().out
    assert run(["--task", "drug_reviews", "--merge", "neutral_vs_rest", "--predictions", tmp_path / "none.jsonl"]) == 2
