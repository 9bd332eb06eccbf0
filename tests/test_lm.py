"""The shared-prefix forward and label scoring against slow reference computations."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from annotune.model import lm, prefix_attention
from annotune.data.prompts import Prompter, encode_completion, encode_prompt
from annotune.data.task import load_task


@pytest.fixture(scope="module")
def lora_model(tiny_llama_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # non-zero, so every LoRA matrix gets a gradient
    return model


def batch_of(tok, n=4):
    prompter = Prompter(load_task("politosphere"), "llama2-chat")
    texts = ["guns", "we must ban this horrible weapon of war", "ok", "an oath to the constitution , not to beto"][:n]
    labels = ["Neutral", "Anti Gun Polarized", "Not Sure", "Support Gun Polarized"][:n]
    rows, label_rows = [], []
    for text, label in zip(texts, labels):
        p = encode_prompt(tok, prompter.prompt(text))
        c = encode_completion(tok, prompter.prompt(text), prompter.completion(label)) + [tok.eos_token_id]
        rows.append(p + c)
        label_rows.append([-100] * len(p) + c)
    return lm.pad_batch(rows, tok.pad_token_id, "right", label_rows)


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("split,attention", [(False, "sdpa"), (True, "sdpa"), (True, "eager")])
def test_shared_prefix_gives_the_same_loss_and_gradients(lora_model, smol_tok, split, attention, monkeypatch):
    """The prefix through an expanded cache, or split (annotune.model.prefix_attention: no per-example copy,
    one softmax over prefix and own keys, own tokens packed without padding), equals the plain padded
    batch, with grouped-query heads."""
    ids, mask, labels = batch_of(smol_tok)
    lora_model.config._attn_implementation = attention
    calls = spy_on_split(monkeypatch)
    lora_model.train()
    lora_model.zero_grad()
    plain = lm.completion_loss(lora_model, ids, mask, labels)
    plain.backward()
    g_plain = grads(lora_model)
    lora_model.zero_grad()
    plen = lm.common_prefix_length([row[row != smol_tok.pad_token_id].tolist() for row in ids])
    assert plen > 100  # the system prompt with the seven definitions
    prefix_kv = lm.run_prefix(lora_model, ids[0, :plen].tolist())
    shared = lm.completion_loss(lora_model, ids[:, plen:], mask[:, plen:], labels[:, plen:], prefix_kv, split=split)
    shared.backward()
    g_shared = grads(lora_model)
    lora_model.zero_grad()
    assert lora_model.config._attn_implementation == attention  # switched back after the split forward
    assert len(calls) == (2 if split else 0)  # the split path ran in both layers, or not at all
    if split:  # one row of exactly the own tokens: the padding was not run
        assert all(n == int(mask[:, plen:].sum()) for n in calls) and int(mask.sum()) < mask.numel()
    lora_model.config._attn_implementation = "sdpa"
    assert shared.item() == pytest.approx(plain.item(), abs=1e-5)
    assert all(g.abs().sum() > 0 for g in g_plain.values())
    for name in g_plain:
        assert torch.allclose(g_plain[name], g_shared[name], atol=1e-5), name


def spy_on_split(monkeypatch):
    from transformers import AttentionInterface

    prefix_attention._register()
    calls, real = [], prefix_attention._attention
    monkeypatch.setitem(AttentionInterface._global_mapping, prefix_attention.NAME,
                        lambda module, q, *a, **k: calls.append(q.shape[0] * q.shape[2]) or real(module, q, *a, **k))
    return calls


def test_split_prefix_handles_left_padding_and_a_row_of_one_token(lora_model):
    """Own tokens left-padded (a query row that sees no own key, only the prefix) and a one-token row."""
    torch.manual_seed(1)
    kv = lm.run_prefix(lora_model, list(range(20, 60)))
    ids = torch.randint(20, 200, (3, 6))
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1], [0] * 5 + [1]])
    with torch.no_grad():
        split = lm.hidden_states(lora_model, ids, mask, kv, split=True)
        cache = lm.hidden_states(lora_model, ids, mask, kv)
    assert torch.isfinite(split).all()
    assert torch.allclose(split[mask.bool()], cache[mask.bool()], atol=1e-5)


def test_a_model_the_split_path_does_not_serve_trains_through_the_cache(lora_model, smol_tok, monkeypatch, capsys):
    """Checked once per model: an attention that ignores the split (here: a broken one) falls back,
    with a note, and the loss is the cache path's."""
    from annotune.training.trainer import LossModule

    ids, mask, labels = batch_of(smol_tok)
    plen = lm.common_prefix_length([row[row != smol_tok.pad_token_id].tolist() for row in ids])
    from transformers import AttentionInterface

    prefix_attention._register()
    prefix_attention._CHECKED.pop(lora_model, None)

    monkeypatch.setitem(AttentionInterface._global_mapping, prefix_attention.NAME,
                        lambda module, q, *a, **k: (torch.zeros_like(q).transpose(1, 2), None))
    loss_module = LossModule(lora_model, "causal", ids[0, :plen].tolist())
    lora_model.eval()
    with torch.no_grad():
        loss = loss_module(ids, mask, labels)
        reference = lm.completion_loss(lora_model, ids, mask, labels)
    assert "does not take the split shared-prefix path" in capsys.readouterr().out
    assert prefix_attention._CHECKED[lora_model] is False
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    prefix_attention._CHECKED.pop(lora_model)  # the fixture's model is shared: let later tests check afresh


def test_the_split_path_is_kept_off_where_it_cannot_be_exact(lora_model):
    config = lora_model.config
    assert prefix_attention.supported(lora_model, config)
    for name, value in [("attn_logit_softcapping", 50.0), ("sliding_window", 4096), ("attention_dropout", 0.1)]:
        old = getattr(config, name, None)
        setattr(config, name, value)
        assert not prefix_attention.supported(lora_model, config), name
        setattr(config, name, old)
    config._attn_implementation = "flash_attention_2"
    assert not prefix_attention.supported(lora_model, config)
    config._attn_implementation = "sdpa"


def test_loss_is_computed_only_on_completion_tokens(lora_model, smol_tok):
    ids, mask, labels = batch_of(smol_tok, 2)
    with torch.no_grad():
        ours = lm.completion_loss(lora_model, ids, mask, labels)
        ref = lora_model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)


def slow_scores(model, prompts, completions, length_norm=False):
    out = torch.zeros(len(prompts), len(completions[0]), dtype=torch.float64)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            for j, c in enumerate(completions[i]):
                logp = model(input_ids=torch.tensor([p + c])).logits[0].log_softmax(-1)
                total = sum(logp[len(p) - 1 + k, c[k]].item() for k in range(len(c)))
                out[i, j] = total / len(c) if length_norm else total
    return out


# packed: one forward per batch with a 4D mask (boolean for SDPA, additive for eager attention);
# stepwise: one forward per label on the prompt's cache
@pytest.mark.parametrize("path", ["packed-sdpa", "packed-eager", "stepwise"])
@pytest.mark.parametrize("length_norm", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_label_scores_match_per_label_forward_passes(lora_model, smol_tok, length_norm, batch_size, path):
    packed = path.startswith("packed")
    lora_model.set_attn_implementation("eager" if path == "packed-eager" else "sdpa")
    lora_model.eval()
    prompter = Prompter(load_task("politosphere"), "llama2-chat")
    texts = ["guns", "we must ban this horrible weapon of war, and all of them", "ok then", "an oath"]
    prompts = [encode_prompt(smol_tok, prompter.prompt(t)) for t in texts]
    # Labels that share their first tokens and differ in length.
    names = ["Support Gun Polarized", "Support Gun non-Polarized", "Neutral", "Not Sure", "Not Relevant"]
    completions = [[encode_completion(smol_tok, prompter.prompt(t), prompter.completion(n)) + [smol_tok.eos_token_id]
                    for n in names] for t in texts]
    fast = lm.score_completions(lora_model, prompts, completions, batch_size=batch_size, length_norm=length_norm,
                                packed=packed)
    assert torch.allclose(fast, slow_scores(lora_model, prompts, completions, length_norm), atol=1e-4)
    # One prompt: no shared prefix to reuse, same answer.
    single = lm.score_completions(lora_model, prompts[:1], completions[:1], length_norm=length_norm, packed=packed)
    assert torch.allclose(single, fast[:1], atol=1e-4)
    assert lm.decoder_and_head(lora_model)[2]._attn_implementation == ("eager" if path == "packed-eager" else "sdpa")
    lora_model.set_attn_implementation("sdpa")  # the module's other tests get the default back


def test_packed_scoring_is_checked_once_per_model_and_falls_back_when_it_disagrees(tiny_llama_dir, smol_tok,
                                                                                    monkeypatch, capsys):
    # An architecture that ignored the 4D mask would score every label wrong without a word: the
    # first call on a model compares one example both ways and keeps the slow path if they differ.
    prompter = Prompter(load_task("politosphere"), "llama2-chat")
    texts = ["guns", "an oath to the constitution"]
    prompts = [encode_prompt(smol_tok, prompter.prompt(t)) for t in texts]
    completions = [[encode_completion(smol_tok, prompter.prompt(t), prompter.completion(n)) + [smol_tok.eos_token_id]
                    for n in ["Neutral", "Not Sure"]] for t in texts]
    good = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    reference = slow_scores(good, prompts, completions)
    assert torch.allclose(lm.score_completions(good, prompts, completions), reference, atol=1e-4)
    assert lm._PACKED_CHECKED[good] is True and "differ" not in capsys.readouterr().err
    real = lm._score_batch_packed
    monkeypatch.setattr(lm, "_score_batch_packed", lambda *a: tuple(t + 1.0 for t in real(*a)))  # a broken mask
    broken = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    assert torch.allclose(lm.score_completions(broken, prompts, completions), reference, atol=1e-4)
    assert lm._PACKED_CHECKED[broken] is False and "scoring one label at a time" in capsys.readouterr().err
