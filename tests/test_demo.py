"""demo.py end to end on a tiny model: its own defaults must make a valid train.py and evaluate.py
command line (a range check on --max_train_samples once broke `make demo` without any test noticing)."""
import json

from conftest import run_script


def test_the_demo_runs_with_its_defaults_and_writes_the_comparison(in_tmp, tiny_llama_dir):
    assert run_script("demo", ["--model_name", tiny_llama_dir, "--epochs", 1, "--test_samples", 8,
                               "--output_dir", "d"]) == 0
    train = json.loads((in_tmp / "d" / "train" / "manifest.json").read_text())
    assert train["args"]["max_train_samples"] is None  # the default 0 = every training row
    assert train["args"]["balance"] == "oversample"  # train.py's default for classification
    comparison = (in_tmp / "d" / "eval" / "comparison.md").read_text().lower()
    for row in ("baseline: majority", "baseline: tf-idf", "base:", "-epoch1 (argmax)"):
        assert row in comparison
