"""LoRA's update inside the GEMM (annotune.model.lora_update): equal to PEFT's forward in outputs and
gradients, taken for plain adapters, and PEFT's own forward wherever more is asked of the layer."""
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear
from transformers import AutoModelForCausalLM

from annotune.model.lora_update import fuse_lora_update


def lora_model(folder, dtype=torch.float32, **config):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM", **config))
    for name, p in model.named_parameters():
        if "lora_B" in name or "magnitude" in name:
            torch.nn.init.normal_(p, std=0.05)  # non-zero, so the update matters and every matrix gets a gradient
    return model


def unfuse(model):
    for module in model.modules():
        module.__dict__.pop("forward", None)


def loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_fused_update_equals_peft_in_loss_and_every_gradient(tiny_llama_dir, monkeypatch):
    model = lora_model(tiny_llama_dir)
    ids = torch.randint(5, 200, (3, 12))
    ref_loss, ref = loss_and_grads(model, ids)
    fuse_lora_update(model)
    fused = [m for m in model.modules() if type(m) is Linear]
    assert len(fused) == 14 and all(m.forward.__func__.__name__ == "_fused_forward" for m in fused)
    monkeypatch.setattr(Linear, "forward", lambda *a, **k: pytest.fail("PEFT's forward ran on a plain adapter"))
    loss, grads = loss_and_grads(model, ids)
    assert loss == pytest.approx(ref_loss, abs=1e-6)
    assert all(g.abs().sum() > 0 for g in ref.values())
    for name in ref:
        assert torch.allclose(grads[name], ref[name], atol=1e-6), name


def test_disabled_merged_and_dora_layers_keep_peft_forward(tiny_llama_dir):
    ids = torch.randint(5, 200, (2, 9))
    model = fuse_lora_update(lora_model(tiny_llama_dir))
    with torch.no_grad():
        with model.disable_adapter():
            disabled = model(input_ids=ids).logits
        unfuse(model)
        with model.disable_adapter():
            assert torch.equal(disabled, model(input_ids=ids).logits)
        fuse_lora_update(model)
        tuned = model(input_ids=ids).logits
        assert not torch.allclose(tuned, disabled)
        model.merge_adapter()
        assert torch.allclose(model(input_ids=ids).logits, tuned, atol=1e-5)
        model.unmerge_adapter()

    dora = lora_model(tiny_llama_dir, use_dora=True)
    ref_loss, ref = loss_and_grads(dora, ids)
    loss, grads = loss_and_grads(fuse_lora_update(dora), ids)
    assert loss == pytest.approx(ref_loss, abs=1e-6)
    assert all(torch.allclose(grads[n], ref[n], atol=1e-6) for n in ref)


def test_a_base_in_another_dtype_than_the_adapter_gets_peft_arithmetic(tiny_llama_dir):
    """A bf16 base with float32 adapters (PEFT's autocast_adapter_dtype) outside autocast."""
    model = lora_model(tiny_llama_dir, dtype=torch.bfloat16)
    assert next(p for n, p in model.named_parameters() if "lora_A" in n).dtype == torch.float32
    ids = torch.randint(5, 200, (2, 9))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        fused = fuse_lora_update(model)(input_ids=ids).logits
    assert fused.dtype == ref.dtype and torch.equal(fused, ref)
