"""A few runs on the real small models that install from PyPI (SmolLM2-135M, MiniLM)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_script

pytestmark = pytest.mark.slow


def test_smollm2_instruction_tuning_and_scoring(in_tmp):
    assert run_script("train", ["--max_train_samples", 16, "--max_eval_samples", 6, "--max_seq_length", 256,
                                "--epoch", 1, "--quiet", "--output_dir", "run"]) == 0  # the embedded default task and model
    adapter = in_tmp / "run" / "smollm2-135m-drug_reviews-epoch1"
    info = json.loads((adapter / "annotune.json").read_text())
    assert info["base_model"] == "smollm2-135m" and info["prompt"]["template"] == "chat"
    # --decision argmax: training scored 6 of the 120 validation rows, so a rule would be fit now on all
    # 120 with the real model (tests/test_decision.py checks that path on a tiny one).
    assert run_script("evaluate", ["--adapters_name", adapter, "--split", "test", "--max_samples", 8, "--decision",
                                   "argmax", "--output_dir", "ev", "--quiet", "--bootstrap", 50, "--baseline", "none"]) == 0
    m = json.loads((in_tmp / "ev" / adapter.name / "test" / "metrics.json").read_text())
    assert m["n"] == 8 and m["invalid"] == 0 and 0 <= m["accuracy"] <= 1
    # The adapter names its base by hub id, and says which weights it was trained on.
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == hub_id
    assert info["base"]["hub_id"] == hub_id and len(info["base"]["weights_sha256"]) == 64
    assert "GGUF" in info["base"]["weights"]
    # Standard PEFT loads it by that id: here from a hub-style cache, offline.
    from annotune.model.models import resolve_model_path

    snapshot = in_tmp / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / ("0" * 40)
    snapshot.parent.parent.joinpath("refs").mkdir(parents=True)
    snapshot.parent.parent.joinpath("refs", "main").write_text("0" * 40)
    snapshot.mkdir(parents=True)
    for f in Path(resolve_model_path("smollm2-135m")).iterdir():
        (snapshot / f.name).symlink_to(f)
    code = ("from peft import AutoPeftModelForCausalLM; import sys; "
            "m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]); print(type(m).__name__)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(in_tmp / "hub"))
    out = subprocess.run([sys.executable, "-c", code, str(adapter)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "PeftModelForCausalLM" in out.stdout, out.stderr[-2000:]


def test_smollm2_in_4bit_on_cpu(in_tmp):
    assert run_script("train", ["--task", "politosphere", "--merge", "supp_anti_oth", "--merge_at", "training",
                                "--quantization", "4bit",
                                "--stop_condition", "steps", "--steps", 2, "--train_batch_size", 2,
                                "--eval_strategy", "no", "--quiet", "--output_dir", "q"]) == 0
    manifest = json.loads((in_tmp / "q" / "manifest.json").read_text())
    assert manifest["quantization"] == "4bit" and manifest["result"]["steps"] == 2


def test_minilm_classification_head_on_imdb(in_tmp):
    assert run_script("train", ["--task", "imdb", "--model_name", "minilm-l6", "--max_train_samples", 64,
                                "--max_eval_samples", 16, "--max_seq_length", 96, "--quiet", "--output_dir", "h",
                                "--learning_rate", "1e-3", "--epoch", 3]) == 0
    manifest = json.loads((in_tmp / "h" / "manifest.json").read_text())
    assert manifest["kind"] == "classifier" and manifest["result"]["history"][0]["n"] == 16
