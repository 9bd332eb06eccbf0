"""Baselines and decision rules end to end on a tiny model: the baseline trains on exactly the
adapter's training rows, the rule is fit on validation only, and --decision argmax is the plain
most-probable label."""
import json

import pytest
from datasets import load_from_disk

from conftest import run_script
from annotune.labelling.decision import DecisionRule
from test_train import write_colour_task


@pytest.fixture(scope="module", autouse=True)
def rules_on_few_rows():
    """48 validation rows keep these tests fast: the rows a rule comes from do not depend on the
    power floor (decision.MIN_ROWS, 100), lowered here to 40."""
    from annotune.labelling import decision

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decision, "MIN_ROWS", 40)
        yield


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory, tiny_llama_dir):
    folder = tmp_path_factory.mktemp("colours")
    data = write_colour_task(folder)
    assert run_script("preprocess", ["--data_path", data, "--text_column", "text", "--label_column", "label",
                                     "--template", "llama2-chat", "--test_ratio", "0.2",
                                     "--output_dir", folder / "ds"]) == 0
    assert run_script("train", ["--dataset_name", folder / "ds", "--model_name", tiny_llama_dir, "--epoch", 1,
                                "--max_train_samples", 100, "--learning_rate", "3e-3", "--quiet",
                                "--output_dir", folder / "run"]) == 0
    return folder, next(p for p in (folder / "run").iterdir() if p.name.endswith("epoch1"))


def evaluate(folder, *argv):
    assert run_script("evaluate", [*argv, "--output_dir", folder, "--quiet", "--bootstrap", 50]) == 0
    return folder


def read(folder, model, name="metrics.json", split="test"):
    path = folder / model / split / name
    return json.loads(path.read_text()) if name.endswith(".json") else [json.loads(l) for l in path.open()]


def test_baselines_train_on_the_adapters_rows_and_rules_come_from_validation(tmp_path, colour_run):
    folder, adapter = colour_run
    info = json.loads((adapter / "annotune.json").read_text())
    assert len(info["train_ids"]) == 100 and info["decision_rule"]["fitted_on"] == 48  # 48 validation rows
    out = evaluate(tmp_path / "ev", "--adapters_name", adapter, "--base_only", "--split", "test")
    tfidf = read(out, "baseline_tf-idf_logreg")
    assert tfidf["train_ids"] == sorted(info["train_ids"]) and tfidf["n"] == 48
    assert read(out, "baseline_majority")["balanced_accuracy"] == pytest.approx(1 / 3)
    table = (out / "comparison.md").read_text()
    assert "| baseline: majority | test |" in table and "| baseline: tf-idf + logreg | test |" in table
    tuned = read(out, adapter.name)
    # Each model against TF-IDF on the same rows: the difference of the scores, with its paired interval.
    for metric in ("macro_f1", "balanced_accuracy"):
        d = tuned["vs_tfidf"][metric]
        assert d["diff"] == pytest.approx(tuned[metric] - tfidf[metric]) and d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    assert "Against TF-IDF and the untuned base on the same rows" in table
    assert f"| {adapter.name} | test | {tuned['vs_tfidf']['macro_f1']['diff']:+.3f}" in table
    assert "vs_tfidf" not in tfidf and "vs_tfidf" in read(out, "base_tiny-llama0")
    # The adapter against the untuned base on the same rows too; the base has no base to be against.
    base = read(out, "base_tiny-llama0")
    assert tuned["vs_base"]["macro_f1"]["diff"] == pytest.approx(tuned["macro_f1"] - base["macro_f1"])
    assert "vs_base" not in base
    assert tuned["decision_rule"] == info["decision_rule"]  # the adapter's own rule, not refit on test
    applied = DecisionRule.from_dict(info["decision_rule"], info["labels"]).fitted  # held-out check passed
    assert (f"| {adapter.name} (fitted rule) | test |" in table) == applied == ("argmax" in tuned)
    assert (f"| {adapter.name} | test |" in table) != applied
    # On the validation split a rule is never applied (it was fit there).
    val = evaluate(tmp_path / "val", "--adapters_name", adapter, "--baseline", "none")
    assert "decision_rule" not in read(val, adapter.name, split="validation")
    assert not list(val.glob("baseline*"))


def test_decision_argmax_is_the_most_probable_label(tmp_path, colour_run):
    folder, adapter = colour_run
    fitted = read(evaluate(tmp_path / "f", "--adapters_name", adapter, "--split", "test"), adapter.name,
                  "predictions.jsonl")
    plain = read(evaluate(tmp_path / "a", "--adapters_name", adapter, "--split", "test", "--decision", "argmax"),
                 adapter.name, "predictions.jsonl")
    assert [p["prediction"] for p in plain] == [max(p["probs"], key=p["probs"].get) for p in plain]
    assert [p["prediction"] for p in plain] == [p.get("argmax_prediction", p["prediction"]) for p in fitted]
    assert "decision_rule" not in read(tmp_path / "a", adapter.name)


def test_the_gold_labels_of_the_reported_split_never_move_the_rule(tmp_path, colour_run, tiny_llama_dir):
    folder, _ = colour_run
    argv = ["--base_only", "--model_name", tiny_llama_dir, "--split", "test", "--baseline", "none"]
    first = read(evaluate(tmp_path / "one", "--dataset_name", folder / "ds", *argv), "base_tiny-llama0")
    # The same dataset with every test label rotated to another colour.
    flipped = tmp_path / "flipped"
    ds = load_from_disk(str(folder / "ds"))
    turn = {"red": "green", "green": "blue", "blue": "red"}
    ds["test"] = ds["test"].map(lambda r: {"label": turn[r["label"]]})
    ds.save_to_disk(str(flipped))
    for name in ("manifest.json", "task.yaml"):
        (flipped / name).write_text((folder / "ds" / name).read_text())
    second = read(evaluate(tmp_path / "two", "--dataset_name", flipped, *argv), "base_tiny-llama0")
    assert first["decision_rule"]["fitted_on"] == 48
    assert first["decision_rule"] == second["decision_rule"]
    assert first["accuracy"] != second["accuracy"]  # the gold labels did change


def test_two_trainings_are_compared_on_the_same_rows(tmp_path, colour_run, tiny_llama_dir):
    """Every adapter after the first gets its paired difference to the first (e.g. fp32 against bf16
    training, or two seeds); the first gets none. Two adapters of one name (both runs kept epoch 1)
    are told apart by their run folders, not written over each other."""
    folder, first = colour_run
    assert run_script("train", ["--dataset_name", folder / "ds", "--model_name", tiny_llama_dir, "--epoch", 1,
                                "--max_train_samples", 100, "--learning_rate", "3e-3", "--quiet", "--seed", 7,
                                "--output_dir", tmp_path / "other"]) == 0
    second = tmp_path / "other" / first.name
    assert second.is_dir()
    # Given first, the other run is the reference, though its path sorts after this one's.
    out = evaluate(tmp_path / "ev", "--adapters_name", second, first, second, "--split", "test", "--decision", "argmax")
    assert str(tmp_path / "other") > str(first.parent)
    names = [f"other/{first.name}", f"run/{first.name}"]
    a, b = (read(out, name.replace("/", "_")) for name in names)
    assert "vs_first_adapter" not in a
    # two trainings, two results (other seeds: other probabilities)
    assert (out / names[0].replace("/", "_") / "test" / "predictions.jsonl").read_text() != \
        (out / names[1].replace("/", "_") / "test" / "predictions.jsonl").read_text()
    for metric in ("macro_f1", "balanced_accuracy"):
        d = b["vs_first_adapter"][metric]
        assert d["diff"] == pytest.approx(b[metric] - a[metric]) and d["ci95"][0] <= d["diff"] <= d["ci95"][1]
    assert b["vs_first_adapter"]["reference"] == names[0]
    table = (out / "comparison.md").read_text()
    assert f"Against the first adapter, {names[0]}, on the same rows" in table
    assert f"| {names[1]} | test | {b['vs_first_adapter']['macro_f1']['diff']:+.3f}" in table
    assert len([d for d in out.iterdir() if d.is_dir()]) == 4  # two adapters (the first given once), two baselines
