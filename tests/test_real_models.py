"""A few runs on the real small models that install from PyPI (SmolLM2-135M, MiniLM)."""
import json

import pytest

from conftest import run_script

pytestmark = pytest.mark.slow


def test_smollm2_instruction_tuning_and_scoring(in_tmp):
    assert run_script("train", ["--max_train_samples", 16, "--max_eval_samples", 6, "--max_seq_length", 256,
                                "--quiet", "--output_dir", "run"]) == 0  # the embedded default task and model
    adapter = in_tmp / "run" / "smollm2-135m-drug_reviews-epoch1"
    info = json.loads((adapter / "annotune.json").read_text())
    assert info["base_model"] == "smollm2-135m" and info["prompt"]["template"] == "chat"
    assert run_script("evaluate", ["--adapters_name", adapter, "--split", "test", "--max_samples", 8,
                                   "--output_dir", "ev", "--quiet", "--bootstrap", 50]) == 0
    m = json.loads((in_tmp / "ev" / adapter.name / "test" / "metrics.json").read_text())
    assert m["n"] == 8 and m["invalid"] == 0 and 0 <= m["accuracy"] <= 1


def test_smollm2_in_4bit_on_cpu(in_tmp):
    assert run_script("train", ["--task", "politosphere", "--merge", "supp_anti_oth", "--quantization", "4bit",
                                "--stop_condition", "steps", "--steps", 2, "--train_batch_size", 2,
                                "--eval_strategy", "no", "--quiet", "--output_dir", "q"]) == 0
    manifest = json.loads((in_tmp / "q" / "manifest.json").read_text())
    assert manifest["quantization"] == "4bit" and manifest["result"]["steps"] == 2


def test_minilm_classification_head_on_imdb(in_tmp):
    assert run_script("train", ["--task", "imdb", "--model_name", "minilm-l6", "--max_train_samples", 64,
                                "--max_eval_samples", 16, "--max_seq_length", 256, "--quiet", "--output_dir", "h",
                                "--learning_rate", "1e-3"]) == 0
    manifest = json.loads((in_tmp / "h" / "manifest.json").read_text())
    assert manifest["kind"] == "classifier" and manifest["result"]["history"][0]["n"] == 16
