"""A merge applied after prediction (train.py --merge_at prediction): the model learns the task's
finer labels on the same rows, and validation, the decision rule, evaluate.py, its baselines and
annotation all report the merged labels, each merged label's probability the sum of its finer ones'."""
import contextlib
import csv
import io
import json
import os
from collections import Counter

import pytest
from datasets import load_from_disk

from annotune.data.labels import INVALID, merged_prediction
from annotune.data.task import load_task
from conftest import run_script

FINE = load_task("politosphere").label_names  # 7 labels, merged into 3 by pol_unpol_oth


def test_merged_probability_is_the_sum_of_the_finer_ones_and_decides():
    spec = load_task("drug_reviews").merged("neutral_vs_rest")
    # The finer argmax is "neutral", but "negative" + "positive" outweigh it: the merged answer is "not neutral".
    pred = {"prediction": "neutral", "probs": {"negative": 0.35, "neutral": 0.4, "positive": 0.25}}
    merged = merged_prediction(pred, spec.label_names, spec.merge_map)
    assert merged["probs"] == {"neutral": 0.4, "not neutral": 0.6} and merged["prediction"] == "not neutral"
    assert merged["fine_prediction"] == "neutral" and merged["fine_probs"] == pred["probs"]
    # Generation has no probabilities: the finer label's merged one; an invalid answer stays invalid.
    assert merged_prediction({"prediction": "positive", "raw": "positive"}, spec.label_names,
                             spec.merge_map)["prediction"] == "not neutral"
    assert merged_prediction({"prediction": INVALID, "raw": "?"}, spec.label_names, spec.merge_map)["prediction"] == INVALID


@pytest.fixture(scope="module")
def after_run(tmp_path_factory, tiny_llama_dir):
    """Politosphere's 7 labels learnt, reported as pol_unpol_oth's 3 (the default for a merge); one
    epoch, oversampled."""
    folder = tmp_path_factory.mktemp("after")
    cwd = os.getcwd()
    os.chdir(folder)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            assert run_script("train", ["--task", "politosphere", "--merge", "pol_unpol_oth",  # --merge_at auto
                                        "--model_name", tiny_llama_dir, "--template", "alpaca", "--epoch", 1, "--quiet",
                                        "--max_eval_samples", 0, "--record_examples"]) == 0
    finally:
        os.chdir(cwd)
    run = folder / "runs" / f"{os.path.basename(tiny_llama_dir)}-politosphere-pol_unpol_oth-at_prediction"
    return run, next(p for p in run.iterdir() if p.name.endswith("epoch1")), printed.getvalue()


def test_training_learns_the_finer_labels_of_the_same_rows(after_run):
    run, adapter, printed = after_run
    info = json.loads((adapter / "annotune.json").read_text())
    assert info["labels"] == FINE and info["merge"] is None and info["merge_after"] == "pol_unpol_oth"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["labels"] == ["polarized", "unpolarized", "other"] and manifest["args"]["merge_at"] == "prediction"
    # The rows are the merged task's (its split); each keeps its label from before the merge.
    train = load_from_disk(str(run / "dataset"))["train"]
    merge_map = load_task("politosphere").merged("pol_unpol_oth").merge_map
    assert all(merge_map[r["fine_label"]] == r["label"] for r in train)
    assert sorted(info["train_ids"]) == sorted(train["id"])
    # Oversampling balanced the finer labels, so the answers trained on were the finer ones.
    fine = {r["id"]: r["fine_label"] for r in train}
    seen = Counter(fine[i] for i in json.loads((run / "examples_seen.rank0.json").read_text()))
    assert set(seen) == set(FINE) and max(seen.values()) - min(seen.values()) <= 8
    assert min(Counter(fine.values()).values()) < min(seen.values())
    assert "learning the 7 labels before the merge" in printed
    # Validation, and the decision rule fit on it, are over the merged labels.
    rule = info["decision_rule"]
    assert rule["labels"] == ["polarized", "unpolarized", "other"]
    assert info["validation_metrics"]["n"] == 23


def test_evaluation_baselines_and_annotation_report_the_merge(in_tmp, after_run):
    run, adapter, _ = after_run
    assert run_script("evaluate", ["--adapters_name", adapter, "--base_only", "--split", "train", "--max_samples", 30,
                                   "--bootstrap", 20, "--output_dir", "ev", "--quiet"]) == 0
    merge_map = load_task("politosphere").merged("pol_unpol_oth").merge_map
    merged = ["polarized", "unpolarized", "other"]
    names = [p.name for p in (in_tmp / "ev").iterdir() if p.is_dir()]
    assert len(names) == 4  # majority, TF-IDF, the base, the adapter
    for name in names:
        m = json.loads((in_tmp / "ev" / name / "train" / "metrics.json").read_text())
        assert list(m["per_class"]) == merged and m["n"] == 30
    for name in (adapter.name, next(n for n in names if n.startswith("base_"))):
        for p in map(json.loads, (in_tmp / "ev" / name / "train" / "predictions.jsonl").open()):
            assert set(p["fine_probs"]) == set(FINE) and p["gold"] in merged
            for label in merged:
                assert p["probs"][label] == pytest.approx(
                    sum(v for f, v in p["fine_probs"].items() if merge_map[f] == label), abs=1e-5)
    with open(in_tmp / "posts.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["text"], ["guns should be banned"], ["the weather is nice"]])
    assert run_script("evaluate", ["--adapters_name", adapter, "--predict_file", "posts.csv", "--quiet"]) == 0
    rows = list(csv.DictReader(open(in_tmp / "posts.csv.labeled.csv")))
    assert len(rows) == 2 and {r["prediction"] for r in rows} <= set(merged)
    assert [c for c in rows[0] if c.startswith("prob_")] == [f"prob_{label}" for label in merged]


def test_how_a_merge_maps_a_prediction_is_labels_py_alone(in_tmp, after_run, monkeypatch):
    """docs/architecture.md names labels.py for a label merge: changed there alone (here: every merged
    label equally likely and the first one given, which the model's own scores never produce),
    evaluate.py's outputs follow."""
    from annotune.data import labels

    real = labels.merged_prediction

    def even(pred, names, merge_map):
        return dict(real(pred, names, merge_map), probs={name: 1 / len(names) for name in names}, prediction=names[0])

    run, adapter, _ = after_run
    argv = ["--adapters_name", adapter, "--split", "train", "--max_samples", 12, "--bootstrap", 20, "--baseline",
            "none", "--quiet"]
    assert run_script("evaluate", argv + ["--output_dir", "real"]) == 0
    monkeypatch.setattr(labels, "merged_prediction", even)
    assert run_script("evaluate", argv + ["--output_dir", "even"]) == 0
    given = {}
    for out in ("real", "even"):
        rows = list(map(json.loads, (in_tmp / out / adapter.name / "train" / "predictions.jsonl").open()))
        given[out] = [(p["prediction"], p["probs"]) for p in rows]
    assert len(given["even"]) == 12 and given["real"] != given["even"]
    assert all(pred == "polarized" and probs == pytest.approx({n: 1 / 3 for n in probs}) for pred, probs in given["even"])


def test_refusals(in_tmp, after_run, tiny_llama_dir, capsys):
    _, adapter, _ = after_run
    assert run_script("train", ["--task", "politosphere", "--merge_at", "prediction", "--model_name", tiny_llama_dir,
                                "--epoch", 1, "--quiet"]) == 2
    assert "needs a merge" in capsys.readouterr().err
    # A dataset folder written before rows kept their finer label cannot train the finer labels.
    folder = in_tmp / "old"
    assert run_script("preprocess", ["--task", "politosphere", "--merge", "pol_unpol_oth", "--output_dir", folder,
                                     "--num_preview", 0]) == 0
    dataset = load_from_disk(str(folder))
    dataset.map(lambda r: r, remove_columns=["fine_label"]).save_to_disk(str(in_tmp / "older"))
    (in_tmp / "older" / "manifest.json").write_text((folder / "manifest.json").read_text())
    older = ["--dataset_name", in_tmp / "older", "--model_name", tiny_llama_dir, "--epoch", 1, "--quiet",
             "--eval_strategy", "no", "--output_dir", "o"]
    assert run_script("train", older + ["--merge_at", "prediction"]) == 2
    assert "build it again" in capsys.readouterr().err and not (in_tmp / "o").exists()
    # By default such a folder trains on its merged labels, and says so.
    assert run_script("train", older) == 0
    assert "keeps no labels from before the merge" in capsys.readouterr().out
    assert json.loads((in_tmp / "o" / "manifest.json").read_text())["args"]["merge_at"] == "training"


def test_an_adapter_of_the_finer_labels_evaluated_under_a_named_merge(in_tmp, after_run, tiny_llama_dir, capsys):
    assert run_script("train", ["--task", "politosphere", "--model_name", tiny_llama_dir, "--template", "alpaca",
                                "--epoch", 1, "--quiet", "--eval_strategy", "no", "--output_dir", "fine"]) == 0
    fine = next(p for p in (in_tmp / "fine").iterdir() if p.name.endswith("epoch1"))
    assert run_script("evaluate", ["--adapters_name", fine, "--merge", "pol_unpol_oth", "--split", "train",
                                   "--max_samples", 20, "--bootstrap", 20, "--output_dir", "ev", "--quiet"]) == 0
    m = json.loads((in_tmp / "ev" / fine.name / "train" / "metrics.json").read_text())
    assert list(m["per_class"]) == ["polarized", "unpolarized", "other"] and m["n"] == 20
    first = json.loads((in_tmp / "ev" / fine.name / "train" / "predictions.jsonl").open().readline())
    assert set(first["fine_probs"]) == set(FINE) and set(first["probs"]) == {"polarized", "unpolarized", "other"}
    # The gold labels went through the same merge as the predictions.
    merge_map = load_task("politosphere").merged("pol_unpol_oth").merge_map
    gold = {r["id"]: r["label"] for r in load_from_disk(str(in_tmp / "fine" / "dataset"))["train"]}
    assert first["gold"] == merge_map[gold[first["id"]]]
    # An adapter of merged labels has no finer ones to merge; an adapter merged after prediction keeps its merge.
    merged_run = ["--task", "politosphere", "--merge", "pol_unpol_oth", "--merge_at", "training", "--model_name",
                  tiny_llama_dir, "--epoch", 1, "--quiet", "--eval_strategy", "no", "--output_dir", "merged"]
    assert run_script("train", merged_run) == 0
    merged = next(p for p in (in_tmp / "merged").iterdir() if p.name.endswith("epoch1"))
    for adapter, merge, message in [(merged, "pol_unpol_oth", "was trained on merge pol_unpol_oth"),
                                    (after_run[1], "supp_anti_oth", "gives merge pol_unpol_oth")]:
        assert run_script("evaluate", ["--adapters_name", adapter, "--merge", merge, "--output_dir", "bad"]) == 2
        assert message in capsys.readouterr().err and not (in_tmp / "bad").exists()


def test_the_exported_models_recipe_gives_the_merged_labels_annotune_gives(in_tmp, after_run):
    from annotune.labelling.annotator import load_annotator
    from annotune.labelling.contract import from_adapter
    from annotune.labelling.decision import DecisionRule

    _, adapter, _ = after_run
    assert run_script("export", ["--adapters_name", adapter, "--output_dir", "exported"]) == 0
    meta = json.loads((in_tmp / "exported" / "annotune.json").read_text())
    assert meta["labels"] == ["polarized", "unpolarized", "other"] and meta["scored_labels"] == FINE
    assert set(meta["answer_token_ids"]) == set(FINE) and meta["merge"] == "pol_unpol_oth"
    # The README's own code, run as a user would, against evaluate.py's labels.
    readme = (in_tmp / "exported" / "README.md").read_text()
    recipe = {}
    exec(readme.split("```python\n")[1].split("```")[0], recipe)
    texts = ["ban all guns now", "I own three rifles and vote", "what a nice day", "they will never take them"]
    labelling = from_adapter(adapter)  # no rule settled: the merged argmax, relabelled below as the recipe does
    preds = labelling.label(load_annotator(labelling), [{"text": t} for t in texts], "score")
    rule = DecisionRule.from_dict(meta["decision_rule"], meta["labels"])
    expected = rule.relabel(preds) if rule.fitted else preds
    assert [recipe["label"](t) for t in texts] == [p["prediction"] for p in expected]


def test_a_run_learning_the_finer_labels_resumes_only_as_itself(in_tmp, tiny_llama_dir, capsys):
    argv = ["--task", "politosphere", "--merge", "pol_unpol_oth", "--model_name", tiny_llama_dir, "--epoch", 1,
            "--quiet", "--eval_strategy", "no", "--output_dir", "run", "--save_every_steps", 2]
    assert run_script("train", argv + ["--stop_after_steps", 2]) == 0
    # Training on the merged labels is another run: refused, and nothing of this one is touched.
    assert run_script("train", argv + ["--merge_at", "training", "--resume_from_checkpoint"]) == 2
    assert "--merge_at training (the run used prediction)" in capsys.readouterr().err
    assert run_script("train", argv + ["--resume_from_checkpoint"]) == 0
    steps = [json.loads(l)["step"] for l in (in_tmp / "run" / "log.jsonl").open() if '"step"' in l]
    assert steps[:2] == [1, 2] and len(steps) == len(set(steps)) > 2  # went on from step 3
    adapter = next(p for p in (in_tmp / "run").iterdir() if p.name.endswith("epoch1"))
    assert json.loads((adapter / "annotune.json").read_text())["merge_after"] == "pol_unpol_oth"


def test_agreement_with_humans_is_on_the_merged_labels(in_tmp, after_run):
    import math

    from sklearn.metrics import cohen_kappa_score

    from annotune.labelling.agreement import load_annotations
    from conftest import DATA

    _, adapter, _ = after_run
    files = [DATA / "politosphere" / "annotated_data_leo.json", DATA / "politosphere" / "annotated_data_yifei_v2.json"]
    assert run_script("evaluate", ["--adapters_name", adapter, "--annotations", *files, "--output_dir", "agr",
                                   "--quiet", "--bootstrap", 20]) == 0
    table = json.loads((in_tmp / "agr" / adapter.name / "agreement.json").read_text())
    pairs = {(p["a"], p["b"]): p["kappa"] for p in table["pairs"]}
    humans, _ = load_annotations(files, load_task("politosphere", "pol_unpol_oth"))
    expected = cohen_kappa_score([humans["annotated_data_leo"][i] for i in table["ids"]],
                                 [humans["annotated_data_yifei_v2"][i] for i in table["ids"]])
    assert table["n"] == 150 - 90 and pairs[("annotated_data_leo", "annotated_data_yifei_v2")] == pytest.approx(expected)
    assert not math.isnan(pairs[(adapter.name, "annotated_data_leo")])
