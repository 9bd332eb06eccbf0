"""Training under bf16 autocast on the CPU (train.py --cpu_bf16): when it is chosen, and that every
speed path of the training step (the split prefix attention, the key/value cache path, LoRA's update
inside the GEMM) runs under it, close to the fp32 step and to each other."""
import json

import pytest
import torch
from peft.tuners.lora.layer import Linear
from transformers import AutoModelForCausalLM

from annotune.model import lm, models, prefix_attention
from annotune.base.cli import UserError
from annotune.model.lora_update import fuse_lora_update
from annotune.training.trainer import LossModule
from test_lm import batch_of, grads, spy_on_split
from test_lora_update import lora_model


def fused_lora_model(folder):
    return fuse_lora_update(lora_model(folder))


def test_autocast_is_chosen_for_fp32_cpu_weights_on_a_cpu_with_bf16_instructions(tiny_llama_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    for native in (True, False):
        monkeypatch.setattr(models, "native_bf16_cpu", lambda: native)
        assert models.cpu_autocast("auto", model) is native
        assert models.cpu_autocast("on", model) is True
        assert models.cpu_autocast("off", model) is False
    monkeypatch.setattr(models, "native_bf16_cpu", lambda: True)
    model.to(torch.bfloat16)  # weights already in bf16 (as on CUDA): nothing to autocast
    assert models.cpu_autocast("auto", model) is False
    with pytest.raises(UserError, match="--cpu_bf16 on needs unquantized fp32 weights"):
        models.cpu_autocast("on", model)


def test_native_bf16_reads_the_cpu_capability(monkeypatch):
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: {"avx512_bf16": False, "amx_bf16": True})
    assert models.native_bf16_cpu() is True
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: {"avx512_bf16": False, "avx2": True})
    assert models.native_bf16_cpu() is False
    monkeypatch.delattr(torch._C._cpu, "_get_cpu_capability")
    assert models.native_bf16_cpu() is False  # a torch without the query: fp32


def cosine(a, b):
    a, b = (torch.cat([g.flatten() for g in d.values()]) for d in (a, b))
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_every_training_path_under_autocast_is_close_to_fp32_and_to_the_others(tiny_llama_dir, smol_tok,
                                                                               monkeypatch, capsys):
    model = fused_lora_model(tiny_llama_dir)
    model.train()
    ids, mask, labels = batch_of(smol_tok)
    plen = lm.common_prefix_length([row[row != smol_tok.pad_token_id].tolist() for row in ids])
    monkeypatch.setattr(Linear, "forward", lambda *a, **k: pytest.fail("PEFT's forward ran on a plain adapter"))
    calls = spy_on_split(monkeypatch)

    def step(autocast, split=None):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if split is None:
                loss = lm.completion_loss(model, ids, mask, labels)
            else:
                kv = lm.run_prefix(model, ids[0, :plen].tolist())
                loss = lm.completion_loss(model, ids[:, plen:], mask[:, plen:], labels[:, plen:], kv, split=split)
        loss.backward()
        return loss.item(), grads(model)

    fp32_loss, fp32 = step(False)
    runs = {name: step(True, split) for name, split in [("plain", None), ("cache", False), ("split", True)]}
    assert len(calls) == 2  # the split path ran (in both layers) under autocast
    for name, (loss, g) in runs.items():
        assert loss == pytest.approx(fp32_loss, rel=0.02), name
        assert cosine(g, fp32) > 0.995, name
        for other, (loss_o, g_o) in runs.items():
            assert loss == pytest.approx(loss_o, rel=0.02) and cosine(g, g_o) > 0.995, (name, other)
    # The loss module keeps the once-per-model check in fp32, so autocast does not trip it into the fallback.
    prefix_attention._CHECKED.pop(model, None)
    calls.clear()
    module = LossModule(model, "causal", ids[0, :plen].tolist(), autocast=True)
    model.zero_grad()
    loss = module(ids, mask, labels)
    loss.backward()
    assert prefix_attention._CHECKED[model] is True and "does not take" not in capsys.readouterr().out
    assert calls[2:] == [int(mask[:, plen:].sum())] * 2  # after the check's two rows: the split training forward
    assert loss.item() == pytest.approx(runs["split"][0], rel=1e-3) and loss.item() != fp32_loss  # in bf16
    assert cosine(grads(model), runs["split"][1]) > 0.9999


def test_the_loss_logits_stay_fp32_under_autocast(tiny_llama_dir):
    model = fused_lora_model(tiny_llama_dir)
    hidden = torch.randn(5, model.config.hidden_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lm.logits_from_hidden(model, hidden)
    assert logits.dtype == torch.float32
    assert torch.equal(logits, lm.logits_from_hidden(model, hidden))


def test_a_run_resumes_in_the_precision_it_trained_in(in_tmp, tiny_llama_dir, monkeypatch, capsys):
    from conftest import run_script

    monkeypatch.setattr(models, "native_bf16_cpu", lambda: True)  # --cpu_bf16 auto = on, on any CPU
    argv = ["--task", "politosphere", "--model_name", tiny_llama_dir, "--template", "alpaca", "--epoch", 1, "--quiet",
            "--max_train_samples", 24, "--eval_strategy", "no", "--output_dir", "run", "--save_every_steps", 1]
    assert run_script("train", argv + ["--stop_after_steps", 1]) == 0
    manifest = json.loads((in_tmp / "run" / "manifest.json").read_text())
    assert manifest["bf16_autocast"] is True and "bf16 autocast" in capsys.readouterr().out
    # fp32 would mix precisions in one run: refused, the run untouched.
    assert run_script("train", argv + ["--cpu_bf16", "off", "--resume_from_checkpoint"]) == 2
    assert "the run trained under bf16 autocast and would go on in fp32: pass --cpu_bf16 on" in capsys.readouterr().err
    assert json.loads((in_tmp / "run" / "manifest.json").read_text()) == manifest
    assert run_script("train", argv + ["--cpu_bf16", "on", "--resume_from_checkpoint"]) == 0  # same precision
    finished = json.loads((in_tmp / "run" / "manifest.json").read_text())
    assert finished["result"]["bf16_autocast"] is True and finished["resumed"][0]["from_step"] == 1


def test_a_run_from_before_the_flags_resumes_as_it_trained(in_tmp, tiny_llama_dir, monkeypatch, capsys):
    """A manifest without --merge_at, --cpu_bf16 and --long_examples (older annotune): trained on the merged
    labels, in fp32, long examples dropped."""
    from conftest import run_script

    monkeypatch.setattr(models, "native_bf16_cpu", lambda: True)
    argv = ["--task", "politosphere", "--merge", "pol_unpol_oth", "--merge_at", "training", "--cpu_bf16", "off",
            "--model_name", tiny_llama_dir, "--template", "alpaca", "--epoch", 1, "--quiet", "--max_train_samples", 24,
            "--eval_strategy", "no", "--output_dir", "run", "--save_every_steps", 1, "--long_examples", "drop"]
    assert run_script("train", argv + ["--stop_after_steps", 1]) == 0
    path = in_tmp / "run" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["args"]["merge_at"], manifest["args"]["cpu_bf16"], manifest["args"]["long_examples"]
    del manifest["bf16_autocast"]
    path.write_text(json.dumps(manifest))
    defaults = argv[:4] + argv[8:]  # --merge_at auto and --cpu_bf16 auto
    assert run_script("train", defaults + ["--resume_from_checkpoint"]) == 2
    assert "(the run used training)" in capsys.readouterr().err
    assert run_script("train", argv[:6] + argv[8:] + ["--resume_from_checkpoint"]) == 2
    assert "the run trained in fp32 and would go on under bf16 autocast: pass --cpu_bf16 off" in capsys.readouterr().err
    assert run_script("train", argv[:-2] + ["--resume_from_checkpoint"]) == 2
    assert "--long_examples cut (the run used drop)" in capsys.readouterr().err
    assert run_script("train", argv + ["--resume_from_checkpoint"]) == 0
    assert json.loads(path.read_text())["result"]["bf16_autocast"] is False
