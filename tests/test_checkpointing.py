"""Activation checkpointing (train.py --gradient_checkpointing, annotune/model/checkpointing.py): the same
loss and LoRA gradients as keeping the activations, on the plain, cache and split paths, with and
without LoRA dropout; fewer bytes kept for the backward; the shared prefix run once per batch; a
resumed run equal to the uninterrupted one."""
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from annotune.model import lm
from test_faults import adapter_files, assert_same_run, train_here
from test_lm import batch_of, grads, spy_on_split


def lora_model(tiny_llama_dir, dropout, cheap=False):
    """A tiny Llama with LoRA; cheap: train.py's LoraInputDropout in place of PEFT's nn.Dropout."""
    from annotune.model.lora_dropout import cheap_lora_dropout

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # non-zero, so every LoRA matrix gets a gradient
    return (cheap_lora_dropout(model) if cheap else model).train()


def step(model, batch, path, checkpoint):
    """(loss, LoRA gradients, bytes saved for the backward by the own tokens' forward) of one batch
    on a path, seeded alike."""
    ids, mask, labels = batch
    plen = lm.common_prefix_length([row[mask[i].bool()].tolist() for i, row in enumerate(ids)]) if path != "plain" else 0
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.zero_grad()
    torch.manual_seed(1)
    prefix_kv = lm.run_prefix(model, ids[0, :plen].tolist(), checkpoint) if plen else None  # once a batch
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # what the decoder's layers keep
        hidden = lm.hidden_states(model, ids[:, plen:], mask[:, plen:], prefix_kv, split=path == "split",
                                  checkpoint=checkpoint)
    targets = labels[:, plen + 1:]  # lm.completion_loss from here on
    loss = torch.nn.functional.cross_entropy(lm.logits_from_hidden(model, hidden[:, :-1][targets != -100]),
                                             targets[targets != -100])
    loss.backward()
    return loss.item(), grads(model), sum(saved.values())


@pytest.mark.parametrize("dropout,cheap", [(0.0, False), (0.05, False), (0.05, True)], ids=["0", "peft", "cheap"])
@pytest.mark.parametrize("path", ["plain", "cache", "split"])
def test_checkpointed_layers_give_the_same_loss_and_gradients(tiny_llama_dir, smol_tok, path, dropout, cheap):
    model, batch = lora_model(tiny_llama_dir, dropout, cheap), batch_of(smol_tok)
    kept_loss, kept, kept_bytes = step(model, batch, path, checkpoint=False)
    loss, recomputed, saved_bytes = step(model, batch, path, checkpoint=True)
    assert loss == pytest.approx(kept_loss, abs=1e-5)
    assert all(g.abs().sum() > 0 for g in kept.values())
    for name in kept:
        assert torch.allclose(recomputed[name], kept[name], atol=1e-5), name
    assert saved_bytes < 0.6 * kept_bytes  # each layer kept its input only
    if dropout:  # the masks were really drawn: another seed gives another loss
        torch.manual_seed(2)
        assert lm.completion_loss(model, *batch).item() != pytest.approx(kept_loss, abs=1e-6)


def test_the_prefix_runs_once_per_batch_and_the_own_tokens_twice(tiny_llama_dir, smol_tok):
    model, (ids, mask, labels) = lora_model(tiny_llama_dir, 0.0), batch_of(smol_tok)
    plen = lm.common_prefix_length([row[mask[i].bool()].tolist() for i, row in enumerate(ids)])
    seen = []
    first = model.base_model.model.model.layers[0].self_attn.q_proj
    hook = first.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[:-1].numel()))
    try:
        for checkpoint in (False, True):
            seen.clear()
            prefix_kv = lm.run_prefix(model, ids[0, :plen].tolist(), checkpoint)
            lm.completion_loss(model, ids[:, plen:], mask[:, plen:], labels[:, plen:], prefix_kv,
                               checkpoint=checkpoint).backward()
            own = ids[:, plen:].numel()
            # recomputed in the backward: the own tokens, then the prefix once (not once per example)
            assert seen == [plen, own] + ([own, plen] if checkpoint else [])
    finally:
        hook.remove()


def test_the_prefix_reaches_the_batch_without_a_copy_per_example(tiny_llama_dir, smol_tok):
    """A cache filled by update() copies what it is given: B copies of the prefix's keys and values
    per layer, kept for the whole step (at 7B, batch 8 and 317 prefix tokens, 80 MiB a layer)."""
    model, (ids, mask, _) = lora_model(tiny_llama_dir, 0.0), batch_of(smol_tok)
    prefix_kv = lm.run_prefix(model, ids[0, :5].tolist())
    cache = lm._cache(prefix_kv, ids.shape[0], lm.decoder_and_head(model)[2], expand=True)
    for layer, (k, v) in zip(cache.layers, prefix_kv, strict=True):
        assert layer.keys.shape[0] == ids.shape[0] and layer.get_seq_length() == 5
        assert layer.keys.data_ptr() == k.data_ptr() and layer.values.data_ptr() == v.data_ptr()


def test_the_split_path_is_recomputed_through_the_split_attention(tiny_llama_dir, smol_tok, monkeypatch):
    """The recomputation runs in the backward, outside the forward's switch to the split attention."""
    model, (ids, mask, labels) = lora_model(tiny_llama_dir, 0.0), batch_of(smol_tok)
    calls = spy_on_split(monkeypatch)
    plen = lm.common_prefix_length([row[mask[i].bool()].tolist() for i, row in enumerate(ids)])
    prefix_kv = lm.run_prefix(model, ids[0, :plen].tolist())
    loss = lm.completion_loss(model, ids[:, plen:], mask[:, plen:], labels[:, plen:], prefix_kv, split=True,
                              checkpoint=True)
    assert len(calls) == 2  # the forward: two layers
    loss.backward()
    assert len(calls) == 4 and model.config._attn_implementation == "sdpa"  # and their recomputation


def test_checkpointing_leaves_no_patched_layer_behind(tiny_llama_dir, smol_tok):
    from annotune.model.checkpointing import checkpointed

    model = lora_model(tiny_llama_dir, 0.0)
    decoder = lm.decoder_and_head(model)[0]
    with checkpointed(decoder):
        assert all("forward" in vars(layer) for layer in decoder.layers)
    assert not any("forward" in vars(layer) for layer in decoder.layers)
    with torch.no_grad(), checkpointed(decoder):  # nothing to save for a backward: left as it is
        assert not any("forward" in vars(layer) for layer in decoder.layers)


def step_losses(run):
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if r["type"] == "step"]


# train.py's LoRA dropout (0.05, LoraInputDropout): the recomputation must draw the forward's masks
ARGV = ["--task", "politosphere", "--model_name", None, "--template", "alpaca", "--epoch", 2, "--quiet",
        "--max_eval_samples", 6, "--learning_rate", "3e-3", "--save_epochs", "all", "--max_train_samples", 32]


def test_a_checkpointed_run_trains_as_the_kept_one_and_resumes_to_the_same_end(tmp_path, tiny_llama_dir):
    argv = [tiny_llama_dir if a is None else a for a in ARGV]
    for flag in ("off", "on"):
        code, _, err = train_here(tmp_path, argv + ["--gradient_checkpointing", flag, "--output_dir", flag])
        assert code == 0, err[-2000:]
    manifest = json.loads((tmp_path / "on" / "manifest.json").read_text())
    assert manifest["args"]["gradient_checkpointing"] == "on"
    losses = {f: step_losses(tmp_path / f) for f in ("off", "on")}
    assert losses["on"] and losses["on"] == pytest.approx(losses["off"], abs=1e-5)
    assert adapter_files(tmp_path / "on").keys() == adapter_files(tmp_path / "off").keys()
    # killed mid-epoch 2 with checkpointing on, resumed without it: the checkpointed run's end
    code, _, err = train_here(tmp_path, argv + ["--gradient_checkpointing", "on", "--output_dir", "killed"],
                              crash="train.step@6")
    assert code == 137, err[-2000:]
    code, _, err = train_here(tmp_path, argv + ["--gradient_checkpointing", "on", "--output_dir", "killed",
                                                "--resume_from_checkpoint"])
    assert code == 0, err[-2000:]
    assert_same_run(tmp_path / "killed", tmp_path / "on")


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_t5_dir"])
def test_the_head_and_seq2seq_paths_checkpoint_by_transformers(tmp_path, request, fixture):
    folder = request.getfixturevalue(fixture)
    argv = ["--task", "sst2", "--model_name", folder, "--epoch", 1, "--quiet", "--max_train_samples", 16,
            "--eval_strategy", "no", "--learning_rate", "1e-3"]
    losses = {}
    for flag in ("off", "on"):
        code, _, err = train_here(tmp_path, argv + ["--gradient_checkpointing", flag, "--output_dir", flag])
        assert code == 0, err[-2000:]
        losses[flag] = step_losses(tmp_path / flag)
    assert losses["on"] and losses["on"] == pytest.approx(losses["off"], abs=1e-5)


def test_auto_checkpoints_on_cuda_only(tiny_llama_dir, monkeypatch):
    from annotune.training import trainer

    model = lora_model(tiny_llama_dir, 0.0)
    assert trainer.gradient_checkpointing("auto", model, "causal") is False  # the CPU: speed, not memory
    assert trainer.gradient_checkpointing("on", model, "causal") is True
    assert trainer.gradient_checkpointing("off", model, "causal") is False
    cuda = torch.nn.Parameter(torch.zeros(1))
    monkeypatch.setattr(type(model), "parameters", lambda self, recurse=True: iter([cuda]))
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda")))
    assert trainer.gradient_checkpointing("auto", model, "causal") is True
