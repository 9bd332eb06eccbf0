"""Labelling under bf16 autocast on the CPU (evaluate.py --cpu_bf16): when it is chosen, close to
fp32, and a decision rule never applied to scores of another precision than it was fit on."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch

from annotune.model import models
from annotune.labelling.annotator import load_annotator
from annotune.labelling.contract import of_spec
from annotune.data.task import load_task
from conftest import run_script
from test_hostile_input import write_posts


def test_auto_scores_in_bf16_only_on_a_cpu_with_bf16_instructions(tiny_llama_dir, monkeypatch):
    spec = load_task("politosphere", "pol_unpol_oth")
    for native in (True, False):
        monkeypatch.setattr(models, "native_bf16_cpu", lambda native=native: native)
        annotator = load_annotator(of_spec(spec), base_model=tiny_llama_dir, cpu_bf16="auto")
        assert annotator.autocast is native
        assert annotator.precision == ("bf16-autocast" if native else "fp32")
    assert load_annotator(of_spec(spec), base_model=tiny_llama_dir, cpu_bf16="off").precision == "fp32"
    assert load_annotator(of_spec(spec), base_model=tiny_llama_dir).autocast is False  # the library default


def test_bf16_label_scores_are_close_to_fp32(tiny_llama_dir):
    spec = load_task("politosphere", "pol_unpol_oth")
    rows = [{"text": f"post {i} about the new gun law and who voted for it"} for i in range(24)]
    out = {}
    for mode in ("off", "on"):
        annotator = load_annotator(of_spec(spec), base_model=tiny_llama_dir, cpu_bf16=mode, tie_margin=0)
        prompts, _ = annotator.fit_prompts(rows, annotator.max_label_tokens() + 1)
        # Log-probabilities of the labels (a random model's softmax saturates at 0 and 1).
        out[mode] = torch.log(annotator.score(prompts, batch_size=8)).numpy()
    assert not np.array_equal(out["off"], out["on"])  # bf16 really ran
    finite = np.isfinite(out["off"]) & np.isfinite(out["on"])
    assert finite.mean() > 0.5
    np.testing.assert_allclose(out["on"][finite], out["off"][finite], rtol=0.03, atol=0.15)
    assert (out["on"].argmax(axis=1) == out["off"].argmax(axis=1)).mean() >= 0.9


def test_near_ties_under_bf16_are_scored_again_in_fp32(tiny_llama_dir):
    spec = load_task("politosphere", "pol_unpol_oth")
    rows = [{"text": f"post {i} about the new gun law and who voted for it"} for i in range(12)]
    fp32 = load_annotator(of_spec(spec), base_model=tiny_llama_dir, cpu_bf16="off")
    prompts, _ = fp32.fit_prompts(rows, fp32.max_label_tokens() + 1)
    exact = torch.log(fp32.score(prompts, batch_size=4)).numpy()  # a random model's softmax saturates
    assert fp32.tie_margin == 0  # nothing to recheck in fp32
    out = {}
    for margin in (0.0, 1e9):  # never / every row a near tie
        bf16 = load_annotator(of_spec(spec), base_model=tiny_llama_dir, cpu_bf16="on", tie_margin=margin)
        out[margin] = torch.log(bf16.score(prompts, batch_size=4)).numpy()
    assert np.abs(out[0.0] - exact).max() > 1e-3  # bf16 really ran ...
    np.testing.assert_allclose(out[1e9], exact, atol=1e-5)  # ... and the rows rechecked are fp32's


def test_a_near_tie_is_judged_after_the_rules_offsets(tiny_llama_dir):
    annotator = load_annotator(of_spec(load_task("politosphere", "pol_unpol_oth")), base_model=tiny_llama_dir,
                               cpu_bf16="on", tie_margin=0.05)
    scores = torch.tensor([[0.0, -0.01, -8.0], [0.0, -3.0, -5.0], [-2.0, -1.0, -1.5]], dtype=torch.float64)
    assert annotator.near_ties(scores) == [0]
    # offsets move the boundary: row 1's third label comes to 0.01 from its first, row 0's gap opens
    assert annotator.near_ties(scores, offsets=[0.0, -1.0, 4.99]) == [1]
    assert annotator.near_ties(scores, offsets=[0.0, 0.0]) == [0]  # another label set's offsets: not used


def test_a_labelling_resumes_only_with_the_tie_margin_it_started_with(in_tmp, pol_run, capsys):
    posts = write_posts(in_tmp / "posts.csv", 8)
    argv = ["--adapters_name", pol_run[-1], "--predict_file", posts, "--text_column", "body", "--quiet",
            "--output", "out.csv", "--chunk_rows", 4, "--cpu_bf16", "on"]
    assert run_script("evaluate", argv + ["--stop_after_chunks", 1]) == 0
    capsys.readouterr()
    assert run_script("evaluate", argv + ["--bf16_tie_margin", 0]) == 2
    assert "bf16_tie_margin differ" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        run_script("evaluate", argv + ["--bf16_tie_margin", "nan"])
    assert stop.value.code == 2 and "--bf16_tie_margin nan: must be at least 0" in capsys.readouterr().err
    assert run_script("evaluate", argv) == 0


def adapter_with_rule(pol_run, folder, precision, keep_rows=True):
    """A copy of a trained adapter whose annotune.json carries a decision rule fit on `precision` scores
    (the pol_run fixture trains without validation, so it has none of its own)."""
    adapter = shutil.copytree(pol_run[-1], folder / "adapter")
    info = json.loads((adapter / "annotune.json").read_text())
    labels = info["labels"]
    info["decision_rule"] = {"labels": labels, "offsets": [0.0, 1.0, -1.0][:len(labels)], "temperature": 1.0,
                             "objective": "macro_f1", "fitted_on": 60, "heldout_gain": 0.05, "note": "test",
                             "precision": precision}
    if not keep_rows:
        info["dataset"], info["split_ids"] = str(folder / "gone"), {}
    (adapter / "annotune.json").write_text(json.dumps(info))
    return adapter


def test_a_rule_fit_on_fp32_scores_is_refit_when_labelling_in_bf16(in_tmp, pol_run, capsys):
    adapter = adapter_with_rule(pol_run, in_tmp, "fp32")
    posts = write_posts(in_tmp / "posts.csv", 6)
    argv = ["--adapters_name", adapter, "--predict_file", posts, "--text_column", "body", "--quiet"]
    capsys.readouterr()
    assert run_script("evaluate", argv + ["--cpu_bf16", "off", "--output", "fp32.csv"]) == 0
    assert "refit" not in capsys.readouterr().out  # the same precision: the adapter's rule as it is
    assert run_script("evaluate", argv + ["--cpu_bf16", "on", "--output", "bf16.csv"]) == 0
    out = capsys.readouterr().out
    assert "decision rule was fit on fp32 scores and this run scores in bf16-autocast; fit on" in out
    with open(in_tmp / "bf16.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 6


def test_a_rule_of_another_precision_without_its_validation_rows_is_refused(in_tmp, pol_run, capsys):
    adapter = adapter_with_rule(pol_run, in_tmp, "fp32", keep_rows=False)
    posts = write_posts(in_tmp / "posts.csv", 4)
    capsys.readouterr()
    assert run_script("evaluate", ["--adapters_name", adapter, "--predict_file", posts, "--text_column", "body",
                                   "--quiet", "--cpu_bf16", "on", "--output", "o.csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert "was fit on fp32 scores and this run scores in bf16-autocast" in err and "--cpu_bf16 off" in err
    assert len(err.splitlines()) == 1 and not (in_tmp / "o.csv").exists()
    # --decision argmax needs no rule: it labels.
    assert run_script("evaluate", ["--adapters_name", adapter, "--predict_file", posts, "--text_column", "body",
                                   "--quiet", "--cpu_bf16", "on", "--decision", "argmax", "--output", "o.csv"]) == 0


def test_a_labelling_resumes_only_in_the_precision_it_started_in(in_tmp, pol_run, capsys):
    posts = write_posts(in_tmp / "posts.csv", 12)
    argv = ["--adapters_name", pol_run[-1], "--predict_file", posts, "--text_column", "body", "--quiet",
            "--output", "out.csv", "--chunk_rows", 4]
    assert run_script("evaluate", argv + ["--cpu_bf16", "off", "--stop_after_chunks", 1]) == 0
    capsys.readouterr()
    assert run_script("evaluate", argv + ["--cpu_bf16", "on"]) == 2
    err = capsys.readouterr().err.strip()
    assert "precision differ" in err and len(err.splitlines()) == 1
    assert run_script("evaluate", argv + ["--cpu_bf16", "off"]) == 0


@pytest.mark.parametrize("precision", ["bf16-autocast", "fp32"])
def test_training_records_the_precision_its_rule_was_fit_on(in_tmp, tiny_llama_dir, precision, monkeypatch):
    from annotune.labelling import decision

    monkeypatch.setattr(decision, "MIN_ROWS", 10)  # Politosphere's few validation rows keep this fast
    assert run_script("train", ["--task", "politosphere", "--model_name", tiny_llama_dir, "--epoch", 1, "--quiet",
                                "--max_train_samples", 16, "--cpu_bf16", "on" if precision != "fp32" else "off",
                                "--output_dir", "run"]) == 0
    adapter = next(p for p in (in_tmp / "run").iterdir() if "epoch" in p.name)
    info = json.loads((adapter / "annotune.json").read_text())
    rule, rows = info["decision_rule"], info["validation_metrics"]["n"]
    assert rows >= 10 and rule["fitted_on"] == rows  # fit on every validation row ...
    assert rule["precision"] == precision  # ... on scores of the precision training validated in
