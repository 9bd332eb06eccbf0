"""Adapters that travel: export.py's merged model gives the logits of base + adapter and,
with its documented recipe, annotune's labels; an adapter folder copied away from its deleted run
evaluates the same; names under runs/ are found at any depth."""
import json
import math
import shutil

import pytest
import torch

from conftest import run_script


@pytest.fixture(scope="module")
def causal_adapter(tmp_path_factory, tiny_llama_dir):
    folder = tmp_path_factory.mktemp("export")
    argv = ["--task", "politosphere", "--merge", "pol_unpol_oth", "--merge_at", "training",
            "--model_name", tiny_llama_dir, "--template",
            "alpaca", "--epoch", 1, "--learning_rate", "3e-3", "--lora_dropout", 0, "--max_eval_samples", 8,
            "--quiet", "--output_dir", folder / "run"]
    assert run_script("train", argv) == 0
    return next(p for p in (folder / "run").iterdir() if (p / "annotune.json").exists())


def peft_logits(base_dir, adapter, kind, ids, labels=None):
    from peft import PeftModel

    from annotune.model.models import load_model

    base = load_model(str(base_dir), kind, "none", num_labels=len(labels) if labels else None, label_names=labels)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_causal_model_equals_base_plus_adapter_and_its_recipe_gives_annotunes_labels(
        in_tmp, causal_adapter, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from annotune.labelling.annotator import load_annotator
    from annotune.labelling.contract import from_adapter

    assert run_script("export", ["--adapters_name", causal_adapter, "--output_dir", "merged"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(in_tmp / "merged")).eval()
    ids = torch.randint(3, 200, (2, 17))
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    assert torch.allclose(got, peft_logits(tiny_llama_dir, causal_adapter, "causal", ids), atol=1e-4)
    # The README's code, as written (generated from decision.py), reproduces score mode: argmax
    # here (8 validation rows fit no rule), and the rule's labels once annotune.json holds one.
    from annotune.labelling.decision import DecisionRule, probs_matrix

    readme = (in_tmp / "merged" / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    texts = ["ban all guns now", "I own three rifles and vote", "what a nice day", "they will never take them"]
    annotator = load_annotator(from_adapter(causal_adapter))
    preds = annotator.predict([{"id": str(i), "text": t} for i, t in enumerate(texts)], "score")
    recipe = {}
    exec(compile(code, "README.md", "exec"), recipe)  # our own generated file, not user input
    assert [recipe["label"](t) for t in texts] == [p["prediction"] for p in preds]
    meta_path = in_tmp / "merged" / "annotune.json"
    meta = json.loads(meta_path.read_text())
    labels = meta["labels"]
    probs = probs_matrix(preds, labels)
    argmax = [labels[max(range(len(labels)), key=row.__getitem__)] for row in probs]
    # An offset that turns every label into one the model never gives (of a probability that the
    # rounded probabilities still resolve), by a margin of 1 in log-probability.
    k = max((j for j, l in enumerate(labels) if l not in argmax), key=lambda j: min(row[j] for row in probs))
    loser, gap = labels[k], max(math.log(max(row)) - math.log(row[k]) for row in probs)
    assert math.isfinite(gap)
    rule = DecisionRule(labels, [gap + 1 if j == k else 0.0 for j in range(len(labels))], 1.0, "macro_f1", 100,
                        heldout_gain=0.5, gain_lower=0.3, note="test")
    meta["decision_rule"] = rule.to_dict()
    meta_path.write_text(json.dumps(meta))
    recipe = {}
    exec(compile(code, "README.md", "exec"), recipe)
    ruled = [recipe["label"](t) for t in texts]
    assert ruled == rule.apply(probs)[1] == [loser] * len(texts)
    assert "answer_token_ids" in readme and "Decision rule" in readme
    # Never replaced without --overwrite.
    assert run_script("export", ["--adapters_name", causal_adapter, "--output_dir", "merged"]) == 2
    assert run_script("export", ["--adapters_name", causal_adapter, "--output_dir", "merged", "--overwrite"]) == 0


def test_merged_head_equals_base_plus_adapter(in_tmp, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    argv = ["--task", "drug_reviews", "--model_name", tiny_bert_dir, "--epoch", 1, "--max_train_samples", 32,
            "--max_eval_samples", 8, "--max_seq_length", 64, "--learning_rate", "5e-3", "--quiet", "--output_dir", "h"]
    assert run_script("train", argv) == 0
    adapter = next(p for p in (in_tmp / "h").iterdir() if (p / "annotune.json").exists())
    assert run_script("export", ["--adapters_name", adapter, "--output_dir", "mh"]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(str(in_tmp / "mh")).eval()
    ids = torch.randint(5, 90, (3, 11))
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    labels = ["negative", "neutral", "positive"]
    assert torch.allclose(got, peft_logits(tiny_bert_dir, adapter, "classifier", ids, labels), atol=1e-4)
    assert merged.config.id2label == dict(enumerate(labels))


def test_copied_adapter_evaluates_the_same_after_its_run_is_deleted(in_tmp, causal_adapter):
    run = in_tmp / "run"
    shutil.copytree(causal_adapter.parent, run)
    adapter = run / causal_adapter.name
    info = json.loads((adapter / "annotune.json").read_text())
    assert not info["dataset"].startswith("/") and info["run_dir"] == ".."  # relative to the adapter
    assert run_script("evaluate", ["--adapters_name", adapter, "--output_dir", "ev1", "--quiet", "--bootstrap", 20]) == 0
    moved = in_tmp / "elsewhere" / adapter.name
    shutil.copytree(adapter, moved)
    shutil.rmtree(run)  # the run folder (and its dataset/) is gone: rows rebuilt from the recorded ids
    assert run_script("evaluate", ["--adapters_name", moved, "--output_dir", "ev2", "--quiet", "--bootstrap", 20]) == 0
    first, second = (json.loads((in_tmp / d / adapter.name / "validation" / "metrics.json").read_text())
                     for d in ("ev1", "ev2"))
    assert first["n"] == second["n"] and first["macro_f1"] == second["macro_f1"]
    assert first["accuracy"] == second["accuracy"]


def test_adapter_names_are_found_at_any_depth_under_runs(in_tmp, causal_adapter, capsys):
    from annotune.model.adapters import find_adapter

    import os
    import time

    for age, where in ((100, "runs/demo/2/train"), (0, "runs/demo/1/train")):
        shutil.copytree(causal_adapter, in_tmp / where / causal_adapter.name)
        stamp = time.time() - age
        os.utime(in_tmp / where / causal_adapter.name / "annotune.json", (stamp, stamp))
    found = find_adapter(causal_adapter.name)
    assert found.resolve() == (in_tmp / "runs/demo/1/train" / causal_adapter.name).resolve()
    printed = capsys.readouterr().out
    assert "using the newest" in printed and "demo/2/train" in printed
