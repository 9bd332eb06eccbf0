"""The flagship path on CUDA: `pytest -m cuda` on a GPU machine. Every test here skips
without CUDA (and bitsandbytes for the 4-bit ones); on tiny random models they check 4-bit NF4
loading with bf16 compute, the shared-prefix loss and gradients in bf16, label scoring against the
slow reference, resume against the uninterrupted run, and a train + evaluate run end to end."""
import json

import pytest
import torch

from conftest import run_script

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m cuda there)")]


def needs_bitsandbytes():
    return pytest.importorskip("bitsandbytes")


def test_4bit_nf4_with_bf16_compute_really_quantizes_the_linear_layers(tiny_llama_dir):
    needs_bitsandbytes()
    from bitsandbytes.nn import Linear4bit

    from annotune.model.models import cuda_compute_dtype, load_model

    model = load_model(tiny_llama_dir, "causal", "auto")  # auto = 4-bit NF4 on CUDA
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert layers and all(m.weight.quant_type == "nf4" for m in layers)
    assert all(m.compute_dtype == cuda_compute_dtype() for m in layers)  # bf16 from compute capability 8.0
    assert next(model.parameters()).device.type == "cuda"


def test_shared_prefix_loss_and_gradients_match_the_plain_forward_in_bf16(tiny_llama_dir, smol_tok):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from annotune.model import lm
    from test_lm import batch_of, grads

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16).cuda()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    ids, mask, labels = (t.cuda() for t in batch_of(smol_tok))
    model.train()
    plain = lm.completion_loss(model, ids, mask, labels)
    plain.backward()
    g_plain = grads(model)
    model.zero_grad()
    plen = lm.common_prefix_length([row[row != smol_tok.pad_token_id].tolist() for row in ids.cpu()])
    shared = lm.completion_loss(model, ids[:, plen:], mask[:, plen:], labels[:, plen:],
                                lm.run_prefix(model, ids[0, :plen].tolist()))
    shared.backward()
    g_shared = grads(model)
    assert shared.item() == pytest.approx(plain.item(), rel=2e-2)
    for name in g_plain:  # bf16: ~3 significant digits
        scale = g_plain[name].float().abs().max().item() + 1e-6
        assert (g_plain[name].float() - g_shared[name].float()).abs().max().item() <= 0.05 * scale, name


def test_label_scores_on_cuda_match_the_slow_reference(tiny_llama_dir, smol_tok):
    from transformers import AutoModelForCausalLM

    from annotune.model import lm
    from annotune.data.prompts import Prompter, encode_completion, encode_prompt
    from annotune.data.task import load_task

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).cuda().eval()
    prompter = Prompter(load_task("politosphere"), "llama2-chat")
    texts = ["guns", "we must ban this horrible weapon of war", "ok then"]
    names = ["Support Gun Polarized", "Support Gun non-Polarized", "Neutral", "Not Sure"]
    prompts = [encode_prompt(smol_tok, prompter.prompt(t)) for t in texts]
    completions = [[encode_completion(smol_tok, prompter.prompt(t), prompter.completion(n)) + [smol_tok.eos_token_id]
                    for n in names] for t in texts]
    fast = lm.score_completions(model, prompts, completions, batch_size=4)
    slow = torch.zeros_like(fast, dtype=torch.float64)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            for j, c in enumerate(completions[i]):
                logp = model(input_ids=torch.tensor([p + c]).cuda()).logits[0].float().log_softmax(-1)
                slow[i, j] = sum(logp[len(p) - 1 + k, c[k]].item() for k in range(len(c)))
    assert torch.allclose(fast.double().cpu(), slow, atol=1e-3)


def test_train_resume_and_evaluate_end_to_end_in_4bit(in_tmp, tiny_llama_dir):
    needs_bitsandbytes()
    argv = ["--task", "politosphere", "--merge", "pol_unpol_oth", "--merge_at", "training",
            "--model_name", tiny_llama_dir, "--template",
            "alpaca", "--epoch", 2, "--max_train_samples", 32, "--max_eval_samples", 8, "--quiet", "--lora_dropout", 0]
    assert run_script("train", argv + ["--output_dir", "full"]) == 0
    assert run_script("train", argv + ["--output_dir", "cut", "--stop_after_steps", 6]) == 0
    assert run_script("train", argv + ["--output_dir", "cut", "--resume_from_checkpoint"]) == 0
    manifest = json.loads((in_tmp / "full" / "manifest.json").read_text())
    assert manifest["quantization"] == "auto" and "cuda" in manifest["device"]
    from safetensors.torch import load_file

    name = next(p.name for p in (in_tmp / "full").iterdir() if (p / "annotune.json").exists())
    a, b = (load_file(str(in_tmp / d / name / "adapter_model.safetensors")) for d in ("full", "cut"))
    assert a.keys() == b.keys()
    for key in a:  # the CUDA RNG state is in the checkpoint: same batches, same dropout
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-3), key
    info = json.loads((in_tmp / "full" / name / "annotune.json").read_text())
    assert info["quantization"] == "4bit"
    assert run_script("evaluate", ["--adapters_name", in_tmp / "full" / name, "--base_only", "--output_dir", "ev",
                                   "--quiet", "--bootstrap", 50, "--max_samples", 8]) == 0
    metrics = json.loads((in_tmp / "ev" / name / "validation" / "metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["invalid"] == 0
