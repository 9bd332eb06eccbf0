"""LoRA's input dropout (annotune.model.lora_dropout): the rate, sharing across layers that read one input,
identity outside training, gradients through the kept elements only."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from annotune.model import lora_dropout
from annotune.model.models import add_lora


def test_the_mask_drops_the_asked_fraction_in_every_lane():
    x = torch.ones(1000, 1001)  # odd size: the last 64-bit draw is cut
    keep = lora_dropout.keep_mask(x, 0.05)
    assert keep.shape == x.shape and keep.dtype == torch.bool
    dropped = (~keep).double()
    assert dropped.mean().item() == pytest.approx(0.05, abs=0.002)
    for lane in range(4):  # the four 16-bit lanes of one 64-bit draw are each unbiased
        assert dropped.flatten()[lane::4].mean().item() == pytest.approx(0.05, abs=0.003)
    assert not lora_dropout.keep_mask(x, 0.0).logical_not().any()
    torch.manual_seed(3)
    as_float = lora_dropout.keep_mask(x, 0.05, out=torch.empty_like(x))  # the same draw, written as 0/1
    torch.manual_seed(3)
    assert as_float.dtype == x.dtype and torch.equal(as_float, lora_dropout.keep_mask(x, 0.05).float())


def test_outputs_are_scaled_inverted_dropout_and_gradients_flow_only_where_kept():
    layer = lora_dropout.LoraInputDropout(0.3, {})
    x = torch.randn(64, 512, requires_grad=True)
    out = layer(x)
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.02)
    assert torch.allclose(out[kept], x[kept] / (1 - round(0.3 * 65536) / 65536))
    out.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    layer.eval()
    assert layer(x) is x


def test_layers_reading_one_input_share_a_mask_and_the_next_input_gets_a_new_one():
    memo = {}
    q, k = lora_dropout.LoraInputDropout(0.5, memo), lora_dropout.LoraInputDropout(0.5, memo)
    x, y = torch.randn(32, 64), torch.randn(32, 64)
    assert q(x) is k(x)  # q and k read the same hidden states: one dropped-out copy
    shared = q(x)
    first = q(y)  # the next input (the attention output, for o) gets its own mask
    assert first is not shared and not torch.equal(first != 0, shared != 0)
    y.add_(1.0)  # changed in place: not the same input any more
    assert k(y) is not first


def test_add_lora_swaps_every_dropout_and_one_forward_draws_once_per_distinct_input(tiny_llama_dir, monkeypatch):
    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), "causal", 4, 8, 0.1)
    swapped = [m for m in model.modules() if isinstance(m, lora_dropout.LoraInputDropout)]
    assert len(swapped) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    draws = []
    real = lora_dropout.keep_mask
    monkeypatch.setattr(lora_dropout, "keep_mask", lambda x, p, **k: draws.append(x.shape) or real(x, p, **k))
    model.train()
    model(input_ids=torch.randint(0, 100, (2, 9)))
    assert len(draws) == 2 * 4  # per layer: q/k/v share, o, gate/up share, down
    model.eval()
    draws.clear()
    model(input_ids=torch.randint(0, 100, (2, 9)))
    assert draws == []


def test_the_shared_copy_lives_as_long_as_its_input_not_as_long_as_autograd_keeps_it():
    """Under activation checkpointing the forward keeps no tensor for the backward; q, k and v must
    still share one mask there, as they do in the recomputation, or the two draw different masks."""
    import gc
    import weakref

    memo = {}
    q, k = lora_dropout.LoraInputDropout(0.5, memo), lora_dropout.LoraInputDropout(0.5, memo)
    x = torch.randn(32, 64)
    shared = weakref.ref(q(x))  # nothing else holds the dropped-out copy
    assert shared() is not None and k(x) is shared()
    gc.disable()
    try:
        del x  # the input gone: the copy goes with it, without waiting for the garbage collector
        assert shared() is None and memo == {}
    finally:
        gc.enable()


def test_lora_speedups_off_leaves_peft_as_it_is(tmp_path, tiny_llama_dir):
    """train.py --lora_speedups off: PEFT's nn.Dropout and its own forward, and a run trains with them."""
    from test_faults import train_here

    model = add_lora(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), "causal", 4, 8, 0.1,
                     speedups=False)
    assert not any(isinstance(m, lora_dropout.LoraInputDropout) for m in model.modules())
    assert sum(type(m) is torch.nn.Dropout for m in model.modules()) == 2 * 7
    assert not any("forward" in vars(m) for m in model.modules())  # no instance forward patched in
    argv = ["--task", "politosphere", "--model_name", tiny_llama_dir, "--template", "alpaca", "--epoch", 1, "--quiet",
            "--max_train_samples", 16, "--eval_strategy", "no", "--lora_speedups", "off", "--output_dir", "off"]
    code, _, err = train_here(tmp_path, argv)
    assert code == 0, err[-2000:]
    code, _, err = train_here(tmp_path, argv[:-3] + ["on", "--output_dir", "off", "--resume_from_checkpoint"])
    assert code == 2 and "lora_speedups" in err  # other masks: not the same run
