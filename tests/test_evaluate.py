"""evaluate.py end to end on tiny models: score vs generate, the per-epoch table, agreement with
humans, generation metrics with boxplots, annotation of a file that is interrupted and resumed."""
import csv
import json
import os
from pathlib import Path

import pytest

from annotune.data.labels import INVALID, parse_label
from conftest import DATA, run_script


def metrics(folder, model, split="validation"):
    return json.loads((folder / model / split / "metrics.json").read_text())


def test_score_mode_never_invalid_and_generate_mode_counts_invalid(in_tmp, pol_run):
    adapter = pol_run[-1]
    # a classification run never loads BERTScore's model (the GPU image lacks it): an absent one is fine
    assert run_script("evaluate", ["--adapters_name", adapter, "--output_dir", "score", "--quiet",
                                   "--bertscore_model", "./no-such-model"]) == 0
    assert run_script("evaluate", ["--adapters_name", adapter, "--mode", "generate", "--output_dir", "gen",
                                   "--quiet"]) == 0
    score, gen = metrics(in_tmp / "score", adapter.name), metrics(in_tmp / "gen", adapter.name)
    assert score["invalid"] == 0 and score["mode"] == "score" and score["n"] == 23
    assert gen["mode"] == "generate" and gen["n"] == 23
    preds = [json.loads(l) for l in (in_tmp / "score" / adapter.name / "validation" / "predictions.jsonl").open()]
    assert set(preds[0]["probs"]) == {"polarized", "unpolarized", "other"}
    assert abs(sum(preds[0]["probs"].values()) - 1) < 1e-4
    gen_preds = [json.loads(l) for l in (in_tmp / "gen" / adapter.name / "validation" / "predictions.jsonl").open()]
    # The invalid count is the number of raw answers that name no label, read again from the written answers.
    labels = ["polarized", "unpolarized", "other"]
    reparsed = [parse_label(p["raw"], labels) for p in gen_preds]
    assert [p["prediction"] for p in gen_preds] == reparsed
    assert gen["invalid"] == reparsed.count(INVALID)
    assert {e["id"] for e in gen["invalid_examples"]} == {p["id"] for p in gen_preds if p["prediction"] == INVALID}
    for name in ("confusion_matrix.csv", "confusion_matrix.png", "reliability.png"):
        assert (in_tmp / "score" / adapter.name / "validation" / name).exists()
    assert "| model | split |" in (in_tmp / "score" / "comparison.md").read_text()


def test_epoch_table_from_one_runs_adapters(in_tmp, pol_run, capsys):
    assert run_script("evaluate", ["--adapters_name", *pol_run, "--base_only", "--table", "--output_dir", "tab", "--quiet",
                                   "--bootstrap", 50]) == 0
    out = capsys.readouterr().out
    assert "| # Epoch | Accuracy on Train. | F1-score on Train. | Accuracy on Val. | F1-score on Val. |" in out
    rows = [l.split(" | ")[0] for l in out.splitlines() if l.startswith(("| 0 (base) ", "| 1 ", "| 2 "))]
    assert rows == ["| 0 (base)", "| 1", "| 2"]  # the untuned base reads as epoch 0, then epochs in order
    assert metrics(in_tmp / "tab", pol_run[0].name, "train")["n"] == 90
    later = metrics(in_tmp / "tab", pol_run[1].name, "validation")  # each later epoch against epoch 1, same rows
    assert later["vs_first_adapter"]["reference"] == pol_run[0].name and "vs_base" in later
    assert "vs_first_adapter" not in metrics(in_tmp / "tab", pol_run[1].name, "train")  # it trained there


def test_a_metric_added_to_the_registry_alone_reaches_every_output(in_tmp, pol_run, capsys, monkeypatch):
    """metrics.LABEL_METRICS is the one place a label metric is defined: metrics.json (with its
    interval), comparison.md, the per-epoch table, the paired differences and the decision objectives."""
    from annotune.labelling import metrics as registry

    share = registry.LabelMetric("share_right", "share right", lambda gold, pred, labels: registry.accuracy(gold, pred),
                                 paired=True, objective=True)
    monkeypatch.setattr(registry, "LABEL_METRICS", registry.LABEL_METRICS + (share,))
    assert run_script("evaluate", ["--adapters_name", *pol_run, "--base_only", "--table", "--output_dir", "reg", "--quiet",
                                   "--bootstrap", 20, "--decision_objective", "share_right"]) == 0
    out = capsys.readouterr().out
    later = metrics(in_tmp / "reg", pol_run[1].name)
    assert later["share_right"] == later["accuracy"] and later["ci95"]["share_right"] == later["ci95"]["accuracy"]
    base = json.loads(next((in_tmp / "reg").glob("base_*/validation/metrics.json")).read_text())
    assert later["vs_base"]["share_right"]["diff"] == pytest.approx(later["accuracy"] - base["accuracy"])
    assert set(later["vs_first_adapter"]) >= {"share_right", "macro_f1", "reference"}
    comparison = (in_tmp / "reg" / "comparison.md").read_text()
    header = next(line for line in comparison.splitlines() if line.startswith("| model | split | n |"))
    assert "| share right |" in header
    assert "share right - TF-IDF" in comparison and "share right - first" in comparison
    assert "| share right on Train. |" in out and "| share right on Val. |" in out


def test_kappa_model_vs_humans_beside_human_vs_human(in_tmp, pol_run):
    from sklearn.metrics import cohen_kappa_score

    from annotune.labelling.agreement import load_annotations
    from annotune.data.task import load_task

    files = [DATA / "politosphere" / "annotated_data_leo.json", DATA / "politosphere" / "annotated_data_yifei_v2.json"]
    assert run_script("evaluate", ["--adapters_name", pol_run[-1], "--annotations", *files, "--output_dir", "agr",
                                   "--quiet", "--bootstrap", 50]) == 0
    table = json.loads((in_tmp / "agr" / pol_run[-1].name / "agreement.json").read_text())
    assert table["n"] == 150 - 90  # every annotated row except those trained on
    pairs = {(p["a"], p["b"]): p["kappa"] for p in table["pairs"]}
    humans, _ = load_annotations(files, load_task("politosphere", "pol_unpol_oth"))
    ids = table["ids"]
    expected = cohen_kappa_score([humans["annotated_data_leo"][i] for i in ids],
                                 [humans["annotated_data_yifei_v2"][i] for i in ids])
    assert pairs[("annotated_data_leo", "annotated_data_yifei_v2")] == pytest.approx(expected)
    assert (pol_run[-1].name, "annotated_data_leo") in pairs
    assert "Cohen's kappa" in (in_tmp / "agr" / "comparison.md").read_text()


def test_generation_metrics_base_vs_tuned_with_boxplots(in_tmp, tiny_t5_dir):
    assert run_script("train", ["--task", "dialogsum", "--model_name", tiny_t5_dir, "--epoch", 1,
                                "--max_train_samples", 8, "--quiet", "--eval_strategy", "no", "--output_dir", "s"]) == 0
    adapter = next(p for p in (in_tmp / "s").iterdir() if p.name.endswith("epoch1"))
    assert run_script("evaluate", ["--adapters_name", adapter, "--base_only", "--split", "test", "--max_samples", 4,
                                   "--max_new_tokens", 8, "--output_dir", "ev", "--quiet", "--bootstrap", 20]) == 0
    m = metrics(in_tmp / "ev", adapter.name, "test")
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum", "bertscore_f1"} <= set(m)
    assert m["bertscore_num_layers"] == 6
    assert (in_tmp / "ev" / "scores_boxplot.png").stat().st_size > 1000
    assert "beats the base on rougeL for" in (in_tmp / "ev" / "comparison.md").read_text()
    rec = json.loads((in_tmp / "ev" / adapter.name / "test" / "predictions.jsonl").open().readline())
    assert len(rec["scores"]) >= 5


def write_posts(path, n, word="guns"):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["post_id", "body"])
        for i in range(n):
            writer.writerow([f"p{i}", f"post number {i} about {word}" if i % 3 else "ban them all, now"])
    return path


def read_labelled(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def same_labels(a, b):
    """Same rows, columns and labels; probabilities equal up to float noise (batches pad differently)."""
    ra, rb = read_labelled(a), read_labelled(b)
    assert [list(r) for r in ra] == [list(r) for r in rb]
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if not k.startswith("prob_")} == \
            {k: v for k, v in y.items() if not k.startswith("prob_")}
        assert all(abs(float(x[k]) - float(y[k])) < 1e-5 for k in x if k.startswith("prob_"))
    return len(ra)


@pytest.mark.slow
def test_annotating_2k_rows_interrupted_and_resumed_with_another_chunk_size(in_tmp, pol_run):
    posts = write_posts(in_tmp / "posts.csv", 2_000)
    argv = ["--adapters_name", pol_run[-1], "--predict_file", posts, "--text_column", "body", "--output", "out.csv",
            "--batch_size", 64, "--quiet"]
    assert run_script("evaluate", argv + ["--chunk_rows", 200, "--stop_after_chunks", 3]) == 0
    assert not (in_tmp / "out.csv").exists()
    assert sorted(p.name for p in (in_tmp / "out.csv.parts").glob("r*.csv")) == [
        f"r{a:012d}-{a + 200:012d}.csv" for a in (0, 200, 400)]
    # A crash in the middle of writing the fourth part leaves only its temporary file behind.
    (in_tmp / "out.csv.parts" / ".r000000000600-000000000800.csv.1.tmp").write_text("600,p600,torn")
    assert run_script("evaluate", argv + ["--chunk_rows", 140]) == 0
    rows = read_labelled(in_tmp / "out.csv")
    assert [int(r["row"]) for r in rows] == list(range(2_000))
    assert [r["post_id"] for r in rows] == [f"p{i}" for i in range(2_000)]
    assert {r["prediction"] for r in rows} <= {"polarized", "unpolarized", "other"}
    assert all(abs(sum(float(r[f"prob_{l}"]) for l in ("polarized", "unpolarized", "other")) - 1) < 1e-3 for r in rows[:50])
    assert not (in_tmp / "out.csv.parts").exists()
    assert run_script("evaluate", argv) == 2  # never overwrites the finished file


def test_annotation_resumed_with_any_chunk_size_labels_every_row_once_from_one_model(in_tmp, pol_run, capsys):
    posts = write_posts(in_tmp / "posts.csv", 40)
    # fp32: under bf16 a chunk's batches decide which rows are near ties rescored in fp32, so the
    # probabilities (not the labels' reason to be) move with the chunk size by more than float noise
    common = ["--predict_file", posts, "--text_column", "body", "--quiet", "--cpu_bf16", "off"]
    first, second = ["--adapters_name", pol_run[-1]], ["--adapters_name", pol_run[0]]
    assert run_script("evaluate", first + common + ["--output", "clean.csv"]) == 0
    # Interrupted after one chunk of 4 rows, resumed with chunks of 8 (case 1: rows were dropped).
    assert run_script("evaluate", first + common + ["--output", "a.csv", "--chunk_rows", 4, "--stop_after_chunks", 1]) == 0
    assert run_script("evaluate", first + common + ["--output", "a.csv", "--chunk_rows", 8, "--stop_after_chunks", 2]) == 0
    assert run_script("evaluate", first + common + ["--output", "a.csv", "--chunk_rows", 3]) == 0
    assert same_labels(in_tmp / "a.csv", in_tmp / "clean.csv") == 40
    # Resumed with another adapter, another decision setting or another input file: refused (case 2).
    assert run_script("evaluate", first + common + ["--output", "b.csv", "--chunk_rows", 4, "--stop_after_chunks", 1]) == 0
    capsys.readouterr()
    for other, differs in ((second + common, "model"), (first + common + ["--length_norm"], "length_norm"),
                           (first + common + ["--decision", "argmax"], "decision_rule")):
        if differs == "decision_rule" and not json.loads((pol_run[-1] / "annotune.json").read_text()).get("decision_rule"):
            continue  # no rule saved (no validation in this run): argmax either way
        assert run_script("evaluate", other + ["--output", "b.csv"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"({differs} differ" in err and len(err.splitlines()) == 1
    write_posts(posts, 40, word="knives")
    assert run_script("evaluate", first + common + ["--output", "b.csv"]) == 2
    assert "input_sha256" in capsys.readouterr().err
    # --overwrite starts clean: every row from the second model, none left from the first.
    write_posts(posts, 40)
    assert run_script("evaluate", second + common + ["--output", "b.csv", "--overwrite"]) == 0
    assert run_script("evaluate", second + common + ["--output", "clean2.csv"]) == 0
    assert same_labels(in_tmp / "b.csv", in_tmp / "clean2.csv") == 40


@pytest.mark.parametrize("case,message", [
    ("missing_adapter", "not found"),
    ("other_base", "was trained on"),
    ("no_text_column", "no column 'body'"),
    ("not_utf8", "not UTF-8"),
    ("bad_label_name", "differs from the task's labels"),
    ("bad_split", "split 'dev' is not in the dataset"),
    ("annotations_missing", "not found"),
    ("annotations_no_label", "lacks column"),
    ("our_column_prediction", "column 'prediction' has a name the labelled output uses"),
    ("our_column_prob", "column 'prob_polarized' has a name the labelled output uses"),
    ("our_column_row", "column 'row' has a name the labelled output uses"),
])
def test_bad_input_exits_2_and_writes_nothing(in_tmp, pol_run, capsys, case, message):
    adapter = str(pol_run[-1])
    (in_tmp / "plain.csv").write_text("text\nhello\n")
    (in_tmp / "latin.csv").write_bytes("body\ncaf\xe9\n".encode("latin-1"))
    for column in ("prediction", "prob_polarized", "row"):  # a human label named like our outputs
        (in_tmp / f"{column}.csv").write_text(f"body,{column}\nhello,x\n")
    argv = {
        "missing_adapter": ["--adapters_name", "nowhere/adapter"],
        "other_base": ["--adapters_name", adapter, "--base_only", "--model_name", "smollm2-135m"],
        "no_text_column": ["--adapters_name", adapter, "--predict_file", "plain.csv", "--text_column", "body"],
        "not_utf8": ["--adapters_name", adapter, "--predict_file", "latin.csv", "--text_column", "body"],
        "bad_label_name": ["--adapters_name", adapter, "--label_name", "['a', 'b']"],
        "bad_split": ["--adapters_name", adapter, "--split", "dev"],
        "annotations_missing": ["--adapters_name", adapter, "--annotations", "nobody.json"],
        "annotations_no_label": ["--adapters_name", adapter, "--annotations", "plain.csv"],
        **{f"our_column_{c.split('_')[0]}": ["--adapters_name", adapter, "--predict_file", f"{c}.csv",
                                             "--text_column", "body"] for c in ("prediction", "prob_polarized", "row")},
    }[case]
    argv += ["--output", "o.csv"] if "--predict_file" in argv else []
    assert run_script("evaluate", argv + ["--output_dir", "ev", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (in_tmp / "ev").exists() and not (in_tmp / "o.csv").exists()
    assert not [p.name for p in in_tmp.iterdir() if p.name.startswith(".")]  # no staging folder left


@pytest.mark.slow
def test_annotation_sharded_over_two_processes_comes_back_in_order(in_tmp, pol_run):
    import subprocess
    import sys

    from conftest import REPO

    with open(in_tmp / "posts.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["body"])
        writer.writerows([[f"post {i}"] for i in range(700)])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           str(REPO / "evaluate.py"), "--adapters_name", str(pol_run[-1]), "--predict_file", "posts.csv",
           "--text_column", "body", "--output", "out.csv", "--chunk_rows", "100", "--quiet"]
    out = subprocess.run(cmd, cwd=in_tmp, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(in_tmp / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["body"] for r in rows] == [f"post {i}" for i in range(700)]


def test_sampling_only_when_asked_and_seeded(in_tmp, pol_run):
    def raw_answers(folder, *extra):
        assert run_script("evaluate", ["--adapters_name", pol_run[-1], "--mode", "generate", "--output_dir", folder,
                                       "--quiet", "--bootstrap", 10, *extra]) == 0
        rows = (in_tmp / folder / pol_run[-1].name / "validation" / "predictions.jsonl").read_text().splitlines()
        return [json.loads(r)["raw"] for r in rows]

    sample = ["--do_sample", "--temperature", "1.5"]
    greedy, first, second = raw_answers("g"), raw_answers("s1", *sample), raw_answers("s2", *sample)
    other_seed = raw_answers("s3", *sample, "--seed", 7)
    assert first == second  # seeded: the same command gives the same samples
    assert first != greedy and first != other_seed  # and they are samples, not greedy answers


def test_adapters_are_evaluated_in_epoch_order_not_glob_order():
    from annotune.model.adapters import natural_order

    glob_order = [Path("runs/x/m-t-epoch10"), Path("runs/x/m-t-epoch20"), Path("runs/x/m-t-epoch5")]
    assert [p.name for p in natural_order(glob_order)] == ["m-t-epoch5", "m-t-epoch10", "m-t-epoch20"]


def test_lora_folded_for_scoring_gives_the_same_scores_and_unfolds_to_the_base(pol_run):
    # evaluate.py folds each adapter into the shared base while scoring (faster), then unfolds it
    # before the next adapter: the scores must not change, nor the base the next adapter gets.
    import torch
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    from annotune.labelling.contract import read_adapter_info
    from annotune.labelling.annotator import BaseModels, load_annotator, unfold_lora
    from annotune.labelling.contract import from_adapter

    record = read_adapter_info(pol_run[-1])
    base = BaseModels("none").get(record.base_model, "causal", record.labels)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    annotator = load_annotator(from_adapter(pol_run[-1]), model=PeftModel.from_pretrained(base, str(pol_run[-1])))
    assert all(m.merged for m in annotator.model.modules() if isinstance(m, BaseTunerLayer))
    prompts = [annotator.prompter.prompt(t) for t in ["guns are fine", "ban them all now", "what a day"]]
    folded = annotator.score(prompts)
    unfold_lora(annotator.model)
    assert not any(m.merged for m in annotator.model.modules() if isinstance(m, BaseTunerLayer))
    assert torch.allclose(folded, annotator.score(prompts), atol=1e-5)
    annotator.model.unload()
    assert all(torch.allclose(v, original[k], atol=1e-6) for k, v in base.state_dict().items())


def test_a_difference_without_bootstrap_draws_is_shown_without_a_reading():
    from annotune.labelling.report import baseline_difference_table

    nan = float("nan")
    rows = [{"name": "base:m 8-shot similar", "split": "test", "metrics": {"vs_base": {
        "macro_f1": {"diff": -0.037, "ci95": [nan, nan]}, "balanced_accuracy": {"diff": 0.02, "ci95": [-0.01, 0.05]},
        "reference": "base:m"}}}]
    table = baseline_difference_table(rows)
    assert "-0.037 (no CI: --bootstrap 0)" in table and "nan" not in table
    assert "+0.020 [-0.010, +0.050] (no difference shown)" in table
