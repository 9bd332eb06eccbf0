"""The GPU's compute dtype from its capability (a T4, the seeds' card, has no bf16 arithmetic), checked
on the CPU with the device mocked: 4-bit compute, the weights' dtype, the Trainer's loss scaling and
fp32 trained weights under fp16."""
import pytest
import torch

from annotune.model import models

from annotune.training import trainer


@pytest.fixture
def gpu(monkeypatch):
    def with_capability(major, minor):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (major, minor))
        monkeypatch.setattr(models, "device_name", lambda: "cuda")
    return with_capability


@pytest.mark.parametrize("capability,dtype", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                              ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_the_compute_dtype_follows_the_cards_capability(gpu, capability, dtype):
    pytest.importorskip("bitsandbytes")
    gpu(*capability)
    assert models.cuda_compute_dtype() == dtype
    assert models.quantization_config("auto", "cuda").bnb_4bit_compute_dtype == dtype  # auto = 4-bit on CUDA


def test_a_card_without_bf16_trains_with_loss_scaling(gpu, monkeypatch):
    import argparse
    from pathlib import Path

    import train

    args = train.parse_args(["--task", "sst2", "--output_dir", "o", "--epoch", "3"])
    seen = {}
    monkeypatch.setattr("transformers.TrainingArguments", lambda **kw: seen.update(kw) or argparse.Namespace(**kw))
    for capability, fp16 in (((7, 5), True), ((8, 0), False)):
        gpu(*capability)
        trainer.trainer_arguments(train.schedule_of(args), Path("o"))
        assert seen["fp16"] is fp16


def test_trained_weights_stay_fp32_on_an_fp16_base(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float16)
    model = models.add_lora(base, "causal", 4, 8, 0.0)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert any(p.dtype == torch.float16 for p in model.parameters() if not p.requires_grad)
