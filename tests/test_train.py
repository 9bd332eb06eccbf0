"""train.py end to end on tiny models: per-epoch adapters, steps, learning, heads, seq2seq,
resume, reproducibility, data parallel, and its refusals."""
import csv
import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file

from conftest import REPO, run_script


def adapter_weights(folder):
    return load_file(os.path.join(folder, "adapter_model.safetensors"))


def read_log(run):
    return [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]


def test_politosphere_three_epochs_three_adapters_and_steps_mode(in_tmp, tiny_llama_dir, capsys):
    argv = ["--task", "politosphere", "--merge", "pol_unpol_oth", "--merge_at", "training",
            "--model_name", tiny_llama_dir, "--template",
            "llama2-chat", "--epoch", 3, "--save_epochs", "1,2,3", "--quiet", "--max_eval_samples", 10,
            "--max_train_samples", 32]
    assert run_script("train", argv) == 0
    run = in_tmp / "runs" / f"{os.path.basename(tiny_llama_dir)}-politosphere-pol_unpol_oth"
    adapters = sorted(p.name for p in run.iterdir() if p.name.endswith(("epoch1", "epoch2", "epoch3")))
    assert len(adapters) == 3
    info = json.loads((run / adapters[-1] / "annotune.json").read_text())
    assert info["labels"] == ["polarized", "unpolarized", "other"] and info["merge"] == "pol_unpol_oth"
    assert info["prompt"]["template"] == "llama2-chat" and "macro_f1" in info["validation_metrics"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["data"]["splits"]["train"]["ids"]) == 90 and manifest["versions"]["peft"]
    assert manifest["result"]["shared_prefix_tokens"] > 100
    assert (run / "learning_curve.png").stat().st_size > 1000
    assert [r["epoch"] for r in read_log(run) if r["type"] == "eval"] == [1, 2, 3]
    printed = capsys.readouterr().out
    assert ">>>" in printed and "trainable parameters" in printed
    # Each epoch says whether it gave every validation row one label; a collapsed keeper is warned of.
    evals = [r for r in read_log(run) if r["type"] == "eval"]
    assert all(isinstance(r["collapsed"], bool) for r in evals)
    assert ("majority collapse" in printed) == manifest["result"]["best"]["collapsed"]
    # The same with --stop_condition steps --steps 3: three optimizer steps, one adapter.
    assert run_script("train", argv[:10] + ["--stop_condition", "steps", "--steps", 3, "--quiet",
                                           "--output_dir", in_tmp / "steps"]) == 0
    steps = [r for r in read_log(in_tmp / "steps") if r["type"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert any(p.name.endswith("-step3") for p in (in_tmp / "steps").iterdir())


def write_colour_task(folder, n=240, seed=0):
    rng = random.Random(seed)
    fillers = "the a my big small old new one some this".split()
    path = folder / "colours.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(n):
            colour, words = rng.choice(["red", "green", "blue"]), rng.sample(fillers, 3)
            writer.writerow([" ".join(words[:2] + [colour] + words[2:]), colour])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("cpu_bf16", ["off", "on"])
def test_training_improves_the_metric_on_a_learnable_task(in_tmp, tiny_llama_dir, cpu_bf16):
    """In fp32 and under bf16 autocast (where the CPU lacks bf16 instructions, emulated: slower, same result)."""
    data = write_colour_task(in_tmp)
    assert run_script("preprocess", ["--data_path", data, "--text_column", "text", "--label_column", "label",
                                     "--template", "llama2-chat", "--output_dir", "ds"]) == 0
    # lr 3e-3 for 8 epochs reaches accuracy 1.0 by epoch 5 with seeds 42, 1 and 2 (5e-3 is unstable here).
    assert run_script("train", ["--dataset_name", "ds", "--model_name", tiny_llama_dir, "--epoch", 8,
                                "--learning_rate", "3e-3", "--lora_r", 8, "--output_dir", "run", "--quiet",
                                "--cpu_bf16", cpu_bf16]) == 0
    # One adapter is kept: the epoch with the best validation score (the first to reach the top).
    result = json.loads((in_tmp / "run" / "manifest.json").read_text())["result"]
    best = result["best"]
    assert result["bf16_autocast"] is (cpu_bf16 == "on")
    adapters = [p for p in (in_tmp / "run").iterdir() if (p / "annotune.json").exists()]
    assert [p.name for p in adapters] == [f"{os.path.basename(tiny_llama_dir)}-colours-epoch{best['epoch']}"]
    adapter = adapters[0]
    assert run_script("evaluate", ["--adapters_name", adapter, "--base_only", "--output_dir", "ev", "--quiet"]) == 0
    before = json.loads(next((in_tmp / "ev").glob("base_*/validation/metrics.json")).read_text())
    after = json.loads((in_tmp / "ev" / adapter.name / "validation" / "metrics.json").read_text())
    assert after["macro_f1"] > before["macro_f1"] + 0.3
    assert after["accuracy"] > 0.9


def test_same_seed_same_adapter(in_tmp, tiny_llama_dir):
    # Resume after a kill or Ctrl-C at every point, bit for bit: tests/test_faults.py.
    common = ["--task", "politosphere", "--model_name", tiny_llama_dir, "--template", "alpaca", "--epoch", 2,
              "--train_batch_size", 8, "--eval_strategy", "no", "--quiet", "--lora_dropout", "0.1",
              "--max_train_samples", 48]
    assert run_script("train", common + ["--output_dir", "a"]) == 0
    assert run_script("train", common + ["--output_dir", "b"]) == 0
    name = next(p.name for p in (in_tmp / "a").iterdir() if p.name.endswith("epoch2"))
    a, b = (adapter_weights(in_tmp / d / name) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_long_examples_are_cut_to_fit_and_counted_or_dropped(in_tmp, tiny_llama_dir, capsys):
    common = ["--task", "drug_reviews", "--model_name", tiny_llama_dir, "--template", "alpaca", "--epoch", 1,
              "--max_train_samples", 24, "--max_seq_length", 160, "--eval_strategy", "no"]
    assert run_script("train", common + ["--output_dir", "cut"]) == 0
    assert "texts from their end to fit --max_seq_length 160" in capsys.readouterr().out
    assert run_script("train", common + ["--output_dir", "drop", "--long_examples", "drop", "--quiet"]) == 0
    cut, drop = (json.loads((in_tmp / d / "manifest.json").read_text()) for d in ("cut", "drop"))
    assert cut["args"]["long_examples"] == "cut" and drop["args"]["long_examples"] == "drop"
    cut, drop = cut["features"], drop["features"]
    assert cut["cut_to_fit"] > 0 and cut["dropped_too_long"] == 0 and cut["longest"] <= 160
    assert drop["dropped_too_long"] == cut["cut_to_fit"] and drop["cut_to_fit"] == 0


def test_classifier_head_with_class_weights_on_an_imbalanced_task(in_tmp, tiny_bert_dir):
    argv = ["--task", "drug_reviews", "--model_name", tiny_bert_dir, "--class_weights", "auto", "--epoch", 1,
            "--max_train_samples", 96, "--max_eval_samples", 24, "--max_seq_length", 128, "--quiet",
            "--output_dir", "head"]
    assert run_script("train", argv) == 0
    adapter = next(p for p in (in_tmp / "head").iterdir() if p.name.endswith("epoch1"))
    info = json.loads((adapter / "annotune.json").read_text())
    assert info["kind"] == "classifier" and info["labels"] == ["negative", "neutral", "positive"]
    assert run_script("evaluate", ["--adapters_name", adapter, "--split", "test", "--max_samples", 30,
                                   "--output_dir", "ev", "--quiet"]) == 0
    metrics = json.loads((in_tmp / "ev" / adapter.name / "test" / "metrics.json").read_text())
    assert metrics["mode"] == "head" and metrics["n"] == 30 and metrics["invalid"] == 0


def test_inverse_frequency_class_weights():
    from annotune.training.trainer import class_weights

    w = class_weights("auto", [0, 0, 0, 1], 2)
    assert torch.allclose(w, torch.tensor([4 / 6, 4 / 2]))
    assert class_weights("none", [0, 1], 2) is None
    assert torch.equal(class_weights("1,3", [0, 1], 2), torch.tensor([1.0, 3.0]))


def test_class_weights_reach_the_loss_the_trainer_minimises(tiny_bert_dir, tmp_path):
    from transformers import AutoTokenizer, TrainingArguments

    from annotune.model.models import add_lora, load_model
    from annotune.training.trainer import AnnotuneTrainer, LossOptions, collate

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = add_lora(load_model(tiny_bert_dir, "classifier", "none", num_labels=2), "classifier", 4, 8, 0.0)
    feats = [{"input_ids": tok(t)["input_ids"], "label": y, "id": str(i)}
             for i, (t, y) in enumerate([("good", 0), ("fine", 0), ("great", 0), ("bad", 1)])]
    targs = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", remove_unused_columns=False)
    trainer = AnnotuneTrainer(model, targs, feats, tok, LossOptions(kind="classifier", class_weights="auto", n_labels=2))
    assert torch.allclose(trainer.model.weights, torch.tensor([4 / 6, 4 / 2]))
    batch = collate("classifier", feats, tok.pad_token_id)
    batch.pop("ids")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    weighted = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=torch.tensor([4 / 6, 4 / 2]))
    plain = torch.nn.functional.cross_entropy(logits, batch["labels"])
    loss = trainer.compute_loss(trainer.model, dict(batch, ids=[f["id"] for f in feats]))
    assert loss.item() == pytest.approx(weighted.item(), abs=1e-6) and abs(loss.item() - plain.item()) > 1e-4


def test_oversampling_balances_every_epoch_with_fresh_repeats():
    from annotune.training.trainer import LengthGroupedBatches

    labels = [0] * 9 + [1] * 3 + [2] * 1
    sampler = LengthGroupedBatches([10] * 13, 4, seed=0, oversample_labels=labels)
    epochs = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        seen = [i for batch in sampler for i in batch]
        assert len(seen) == 27 and len(sampler) == 7 and set(range(13)) <= set(seen)  # every example, each epoch
        epochs.append(seen)
    assert sorted(labels[i] for i in epochs[0]) == [0] * 9 + [1] * 9 + [2] * 9  # every label as often as the largest
    assert epochs[0] != epochs[1]


def test_default_epochs_give_small_data_enough_optimizer_steps():
    """--epoch's default is 3, raised on small data to reach MIN_STEPS optimizer steps (at most 50 epochs),
    counting the epoch as the sampler does (oversampled epochs are longer)."""
    from annotune.training.trainer import LengthGroupedBatches
    from annotune.training.training_set import default_epochs

    labels = [0] * 9 + [1] * 3 + [2] * 1
    feats = [{"label": label} for label in labels]
    assert len(LengthGroupedBatches([10] * 13, 4, seed=0, oversample_labels=labels)) == 7
    assert default_epochs(feats, "oversample", 4) == 22  # 7 steps an epoch: ceil(150 / 7)
    assert default_epochs(feats, "none", 4) == 38  # 4 steps an epoch
    assert default_epochs(feats, "weights", 13) == 50  # one step an epoch: capped
    assert default_epochs([{"label": i % 2} for i in range(480)], "oversample", 8) == 3  # 60 steps an epoch


def test_train_without_epoch_resolves_the_default_before_the_manifest(in_tmp, tiny_llama_dir, capsys):
    argv = ["--task", "politosphere", "--merge", "pol_unpol_oth", "--merge_at", "training",
            "--model_name", tiny_llama_dir, "--quiet",
            "--stop_after_steps", 1]
    assert run_script("train", argv + ["--output_dir", "auto"]) == 0
    manifest = json.loads((in_tmp / "auto" / "manifest.json").read_text())
    labels = Counter(r["label"] for r in load_from_disk(str(in_tmp / "auto" / "dataset"))["train"])
    steps = -(-max(labels.values()) * len(labels) // 8)  # an oversampled epoch, in batches of 8
    assert len(labels) == 3 and 1 < 150 / steps <= manifest["args"]["epochs"] < 150 / steps + 1
    assert f"up to {manifest['args']['epochs']} epochs, so that training takes at least 150" in capsys.readouterr().out
    argv[-1] = 2  # the same default resolves again on resume, so the run's arguments still match
    assert run_script("train", argv + ["--output_dir", "auto", "--resume_from_checkpoint"]) == 0
    assert [r["step"] for r in read_log(in_tmp / "auto") if r["type"] == "step"] == [1, 2]
    assert run_script("train", argv + ["--output_dir", "given", "--epoch", 2]) == 0
    assert json.loads((in_tmp / "given" / "manifest.json").read_text())["args"]["epochs"] == 2


def test_answer_weights_weight_each_answers_tokens(tiny_llama_dir, smol_tok):
    from transformers import AutoModelForCausalLM

    from annotune.training.trainer import LossModule, collate

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    p = [smol_tok("Text: a b c\nLabel:")["input_ids"], smol_tok("Text: d\nLabel:")["input_ids"]]
    c = [smol_tok(" red herring", add_special_tokens=False)["input_ids"], smol_tok(" blue", add_special_tokens=False)["input_ids"]]
    feats = [{"input_ids": p[i] + c[i], "labels": [-100] * len(p[i]) + c[i], "label": i, "id": str(i)} for i in (0, 1)]
    batch = collate("causal", feats, smol_tok.pad_token_id)
    batch.pop("ids")
    loss = LossModule(model, "causal", weights=torch.tensor([1.0, 3.0]))(**batch)
    with torch.no_grad():
        single = [model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]])).loss for f in feats]
    n = [len(x) for x in c]
    expected = (1 * n[0] * single[0] + 3 * n[1] * single[1]) / (1 * n[0] + 3 * n[1])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    plain = LossModule(model, "causal")(**batch)
    assert abs(plain.item() - loss.item()) > 1e-4


def test_balance_oversample_trains_on_balanced_epochs_and_weights_run(in_tmp, tiny_llama_dir):
    """Oversampling is the default for classification in causal mode (--balance auto)."""
    argv = ["--task", "politosphere", "--merge", "pol_unpol_oth", "--merge_at", "training",
            "--model_name", tiny_llama_dir, "--template",
            "alpaca", "--quiet", "--eval_strategy", "no", "--record_examples", "--epoch", 1]
    assert run_script("train", argv + ["--output_dir", "o"]) == 0
    assert json.loads((in_tmp / "o" / "manifest.json").read_text())["args"]["balance"] == "oversample"
    labels = {r["id"]: r["label"] for r in load_from_disk(str(in_tmp / "o" / "dataset"))["train"]}
    counts = Counter(labels[i] for i in json.loads((in_tmp / "o" / "examples_seen.rank0.json").read_text()))
    assert max(counts.values()) - min(counts.values()) <= 8  # equal up to the one short batch dropped
    assert min(Counter(labels.values()).values()) < 20 < min(counts.values())  # the rare label was repeated
    assert run_script("train", argv + ["--balance", "weights", "--output_dir", "w"]) == 0
    manifest = json.loads((in_tmp / "w" / "manifest.json").read_text())
    assert manifest["args"]["balance"] == "weights" and manifest["result"]["steps"] == 12


def test_4bit_loads_real_4bit_linear_layers_on_cpu(tiny_llama_dir):
    import bitsandbytes as bnb

    from annotune.model.models import add_lora, load_model

    model = add_lora(load_model(tiny_llama_dir, "causal", "4bit"), "causal", 4, 8, 0.0)
    linear4 = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 2 * 7  # q, k, v, o, gate, up, down in each of the two layers
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())


def test_seq2seq_on_a_tiny_t5(in_tmp, tiny_t5_dir):
    argv = ["--task", "dialogsum", "--model_name", tiny_t5_dir, "--epoch", 1, "--max_train_samples", 16,
            "--max_eval_samples", 4, "--quiet", "--output_dir", "s2s", "--train_batch_size", 4]
    assert run_script("train", argv) == 0
    adapter = next(p for p in (in_tmp / "s2s").iterdir() if p.name.endswith("epoch1"))
    assert json.loads((adapter / "annotune.json").read_text())["kind"] == "seq2seq"
    from annotune.training.trainer import collate

    batch = collate("seq2seq", [{"input_ids": [5, 6, 7], "labels": [8, 1]}, {"input_ids": [5], "labels": [9, 9, 1]}], 0)
    assert batch["labels"].tolist() == [[8, 1, -100], [9, 9, 1]]  # padded with -100, never the pad id


@pytest.mark.slow
def test_two_process_data_parallel(in_tmp, tiny_llama_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(REPO / "train.py"), "--task", "politosphere", "--model_name", tiny_llama_dir, "--template", "alpaca",
           "--epoch", 1, "--balance", "none", "--train_batch_size", 4, "--quiet", "--record_examples", "--output_dir", "ddp",
           "--max_eval_samples", 5, "--max_train_samples", 40]
    out = subprocess.run([str(c) for c in cmd], cwd=in_tmp, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = [json.loads((in_tmp / "ddp" / f"examples_seen.rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == 40  # every example once (10 batches of 4, 5 per process)
    manifest = json.loads((in_tmp / "ddp" / "manifest.json").read_text())
    assert manifest["num_processes"] == 2
    assert len([p for p in (in_tmp / "ddp").iterdir() if p.name.endswith("epoch1")]) == 1


@pytest.mark.parametrize("argv,message", [
    (["--task", "nope"], "unknown task"),
    (["--dataset_name", "no_such_thing"], "neither a dataset folder"),
    (["--task", "politosphere", "--merge", "nope"], "unknown merge"),
    (["--task", "politosphere", "--max_seq_length", 10], "no training example fits"),
    (["--task", "politosphere", "--epoch", "1", "--save_epochs", "5"], "only 1 epochs"),
    (["--task", "dialogsum", "--mode", "classifier"], "generation task"),
    (["--task", "dialogsum", "--balance", "weights"], "need a classification task"),
])
def test_bad_input_exits_2_with_one_line(in_tmp, tiny_llama_dir, capsys, argv, message):
    assert run_script("train", argv + ["--model_name", tiny_llama_dir, "--output_dir", "out", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (in_tmp / "out").exists() or not any((in_tmp / "out").iterdir())


def test_existing_run_is_refused_and_4bit_without_bitsandbytes(in_tmp, tiny_llama_dir, capsys, monkeypatch):
    out = in_tmp / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    assert run_script("train", ["--task", "politosphere", "--model_name", tiny_llama_dir, "--output_dir", out]) == 2
    assert "already holds a run" in capsys.readouterr().err and (out / "manifest.json").read_text() == "{}"
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as on a machine without it
    assert run_script("train", ["--task", "politosphere", "--model_name", tiny_llama_dir, "--quantization", "4bit",
                                "--output_dir", in_tmp / "q"]) == 2
    assert "needs bitsandbytes" in capsys.readouterr().err


def test_gold_label_outside_the_label_set(in_tmp, tiny_llama_dir, capsys):
    assert run_script("preprocess", ["--task", "politosphere", "--template", "alpaca", "--output_dir", "ds"]) == 0
    manifest = json.loads((in_tmp / "ds" / "manifest.json").read_text())
    manifest["task_spec"]["labels"] = manifest["task_spec"]["labels"][:-1]  # drop "Not Sure" from the spec
    manifest["task_spec"]["merges"] = {}
    (in_tmp / "ds" / "manifest.json").write_text(json.dumps(manifest))
    assert run_script("train", ["--dataset_name", "ds", "--model_name", tiny_llama_dir, "--output_dir", "o"]) == 2
    assert "'Not Sure'" in capsys.readouterr().err


def test_eval_every_n_steps_early_stopping_and_keep_best(in_tmp, tiny_llama_dir):
    argv = ["--task", "politosphere", "--merge", "supp_anti_oth", "--model_name", tiny_llama_dir, "--template",
            "alpaca", "--quiet", "--max_eval_samples", 6, "--learning_rate", "1e-9", "--balance", "none",
            "--max_train_samples", 48]
    assert run_script("train", argv + ["--epoch", 1, "--eval_strategy", "steps", "--eval_steps", 2,
                                       "--output_dir", "s"]) == 0
    evals = [r for r in read_log(in_tmp / "s") if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 6]  # 48 examples, batch 8: 6 steps
    # A learning rate of 1e-9 changes nothing: no epoch beats the first, so patience 1 stops after epoch 2.
    assert run_script("train", argv + ["--epoch", 5, "--early_stopping_patience", 1, "--keep_best",
                                       "--output_dir", "e"]) == 0
    evals = [r for r in read_log(in_tmp / "e") if r["type"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]
    best = json.loads(next((in_tmp / "e").glob("*-best")).joinpath("annotune.json").read_text())
    assert best["epoch"] == 1


def test_classifier_head_is_trainable(tiny_bert_dir):
    from annotune.model.models import add_lora, load_model

    model = add_lora(load_model(tiny_bert_dir, "classifier", "none", num_labels=3), "classifier", 4, 8, 0.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in n and "lora" not in n for n in trainable)
    assert any("lora_A" in n for n in trainable)


@pytest.mark.slow
def test_unreachable_hub_dataset_is_refused(in_tmp, tiny_llama_dir, capsys, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # As a command started with HF_HUB_OFFLINE=1 has it: the libraries read it when imported.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    assert run_script("train", ["--dataset_name", "nope/nope", "--model_name", tiny_llama_dir, "--output_dir", "o",
                                "--quiet"]) == 2
    assert "could not load hub dataset" in capsys.readouterr().err
