"""learning_curve.py and annotune.labelling.curves: nested stratified subsets, the paired bands and the
non-inferiority call, a killed curve resuming without retraining finished cells, and bad values."""
import json
import os

import numpy as np
import pytest

from conftest import run_script
from test_train import write_colour_task


@pytest.fixture(scope="module")
def colour_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("curve")
    data = write_colour_task(root, n=150, seed=5)
    assert run_script("preprocess", ["--data_path", data, "--text_column", "text", "--label_column", "label",
                                     "--test_ratio", 0.3, "--output_dir", root / "ds"]) == 0
    return root / "ds"


def test_each_prefix_of_the_order_is_stratified_and_the_sizes_nest():
    from annotune.labelling.curves import nested_order

    rng = np.random.default_rng(0)
    rows = [{"id": f"r{i}", "label": label} for i, label in enumerate(rng.choice(["a", "b", "c"], 500, p=[.6, .3, .1]))]
    share = {label: sum(r["label"] == label for r in rows) / len(rows) for label in "abc"}
    label_of = {r["id"]: r["label"] for r in rows}
    for seed in range(3):
        order = nested_order(rows, seed)
        assert sorted(order) == sorted(label_of) and order != nested_order(rows, seed + 1)
        for k in range(10, 501, 7):
            counts = {label: sum(label_of[i] == label for i in order[:k]) for label in "abc"}
            assert all(abs(counts[l] - k * share[l]) <= 2 for l in "abc"), (k, counts)


def test_the_call_is_the_smallest_size_not_worse_than_the_largest_or_not_resolvable():
    from annotune.labelling.curves import enough_at

    cell = lambda d, lo, hi: {"vs_largest": d, "vs_largest_ci": [lo, hi]}  # noqa: E731
    flat = {50: cell(-0.10, -0.14, -0.06), 100: cell(-0.01, -0.015, -0.005), 200: cell(0, 0, 0)}
    assert enough_at(flat, 0.02)["size"] == 100
    wide = {50: cell(-0.10, -0.20, 0.01), 100: cell(-0.05, -0.12, 0.03), 200: cell(0, 0, 0)}
    assert enough_at(wide, 0.02)["size"] is None and "not resolvable" in enough_at(wide, 0.02)["call"]
    rising = {50: cell(-0.10, -0.11, -0.09), 100: cell(-0.05, -0.06, -0.04), 200: cell(0, 0, 0)}
    assert enough_at(rising, 0.02)["size"] == 200
    one = enough_at({400: cell(0, 0, 0)}, 0.02)  # one size: no call, not "not flattened yet"
    assert one["size"] is None and "no smaller size" in one["call"]


def test_bands_hold_the_value_and_a_difference_to_itself_is_zero():
    from annotune.labelling.curves import resample, summarise

    rng = np.random.default_rng(1)
    gold = list(rng.choice(["a", "b"], 200))
    noisy = lambda p: [g if rng.random() < p else ("b" if g == "a" else "a") for g in gold]  # noqa: E731
    series = {("tfidf", 50): [noisy(0.6), noisy(0.6)], ("tfidf", 100): [noisy(0.8), noisy(0.8)],
              ("head", 50): [noisy(0.7), noisy(0.7)], ("head", 100): [noisy(0.9), noisy(0.9)]}
    curve = summarise(resample(series, gold, ["a", "b"], "accuracy", n_boot=300))
    for arm in curve:
        for size, c in curve[arm].items():
            assert c["band"][0] <= c["value"] <= c["band"][1]
    assert curve["tfidf"][100]["vs_largest_ci"] == [0.0, 0.0]
    assert curve["head"][100]["vs_reference"] > 0 and curve["head"][100]["vs_reference_ci"][0] > 0
    assert curve["tfidf"][50]["vs_largest_ci"][1] < 0


def in_process(monkeypatch):
    """learning_curve's train.py / evaluate.py steps run in this process (each subprocess would pay the
    imports again: ~5 s a step); what they are given and write is the same."""
    import learning_curve

    def step(script, argv):
        assert run_script(script.removesuffix(".py"), argv) == 0

    monkeypatch.setattr(learning_curve, "run_step", step)


def test_a_curve_writes_its_files_and_resumes_without_redoing_finished_cells(colour_ds, tmp_path, tiny_bert_dir,
                                                                             tiny_llama_dir, monkeypatch, capsys):
    in_process(monkeypatch)
    argv = ["--task", colour_ds, "--sizes", "20,40", "--seeds", 1, "--models", "tfidf,head,fewshot", "--head_model",
            tiny_bert_dir, "--model_name", tiny_llama_dir, "--few_shot", "2,3", "--shot_selector", "fixed,stratified",
            "--train_args", "--epoch 1", "--bootstrap", 50, "--output_dir", tmp_path / "c"]
    assert run_script("learning_curve", argv) == 0
    out = tmp_path / "c"
    record = json.loads((out / "curve.json").read_text())
    assert set(record["curve"]) == {"tfidf", "head", "fewshot"} and set(record["curve"]["head"]) == {"20", "40"}
    from annotune.data.examples import load_dataset_folder

    assert record["test_rows"] == len(load_dataset_folder(colour_ds)[0]["test"]) and "head" in record["enough"] and (out / "curve.png").stat().st_size > 1000
    assert "vs tfidf" in (out / "curve.md").read_text()
    small = json.loads((out / "head" / "seed0" / "n20" / "result.json").read_text())
    large = json.loads((out / "head" / "seed0" / "n40" / "result.json").read_text())
    assert set(small["rows"]) < set(large["rows"]) and len(large["rows"]) == 40
    assert (out / "head" / "seed0" / "n40" / "run" / "manifest.json").exists()  # an ordinary run folder
    # The few-shot reference: every (k, selector) scored on the largest cell's validation rows, the
    # best there on the test rows, drawn flat; every other cell compared with it on the same test rows.
    cell = out / "fewshot" / "seed0" / "n40"
    shots = json.loads((cell / "result.json").read_text())
    scored = {p.parent.parent.name: json.loads(p.read_text()) for p in (cell / "choose").glob("*/validation/metrics.json")}
    few = {name: m["macro_f1"] for name, m in scored.items() if "shots_used" in m}
    assert len(few) == 4 and few[shots["chosen"]] == max(few.values()) and record["fewshot_chosen"]["0"] == shots["chosen"]
    tested = [p.parent.parent.name for p in (cell / "eval").glob("*/test/metrics.json")]
    assert shots["chosen"] in tested and len(tested) == 2  # the chosen row, beside the zero-shot base
    assert set(record["curve"]["fewshot"]) == {"40"} and "vs_flat" in record["curve"]["head"]["20"]
    assert "vs fewshot" in (out / "curve.md").read_text() and "fewshot" not in record["enough"]
    # Killed after the last cell's training and evaluation, before its result: nothing is trained again.
    last = out / "head" / "seed0" / "n40"
    kept = {p: os.path.getmtime(p) for p in [*out.rglob("result.json"), last / "run" / "manifest.json"]
            if p != last / "result.json"}
    (last / "result.json").unlink()
    assert run_script("learning_curve", argv) == 0
    assert all(os.path.getmtime(p) == t for p, t in kept.items())
    assert json.loads((last / "result.json").read_text())["predictions"] == large["predictions"]
    # A later call for one arm reports every finished cell in the folder, per arm its complete seeds.
    assert run_script("learning_curve", [*argv[:7], "tfidf", *argv[8:]]) == 0
    assert set(json.loads((out / "curve.json").read_text())["curve"]) == {"tfidf", "head", "fewshot"}


@pytest.mark.parametrize("extra, says", [
    (["--sizes", "40,20"], "sizes must increase"),
    (["--sizes", "20,5000"], "labelled rows"),
    (["--models", "tfidf,gpt"], "arms are"),
    (["--seeds", 0], "at least 1"),
    (["--sizes", "a,b"], "whole numbers"),
    (["--models", "fewshot", "--few_shot", "0"], "at least one example"),
    (["--models", "fewshot", "--few_shot", "4,-1"], "at least 0"),
    (["--models", "tfidf,fewshot", "--shot_selector", "fixed,nearest"], "choose one of"),
    (["--few_shot_seeds", 0], "at least 1"),
])
def test_bad_values_exit_2_in_one_line(colour_ds, tmp_path, capsys, extra, says):
    argv = ["--task", colour_ds, "--models", "tfidf", "--output_dir", tmp_path / "c", *extra]
    try:
        code = run_script("learning_curve", argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0] and not (tmp_path / "c").exists()
