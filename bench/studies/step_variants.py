"""Training step variants in one process: the loss module's forward and backward on the same four
Politosphere batches, each variant in turn, repeated, so the machine's drift between runs (25% here)
falls on every variant alike.

    .venv/bin/python bench/studies/step_variants.py                 # 6 repeats (about 5 minutes on 2 cores)
    .venv/bin/python bench/studies/step_variants.py --repeats 3
    .venv/bin/python bench/studies/step_variants.py --bf16 --repeats 3    # fp32 against bf16 autocast (--cpu_bf16)

Variants of LoRA's layer forward and dropout mask (issue 14):
- peft, old mask: PEFT's forward (base(x) + B(A(drop(x))) * scaling); the mask compared with a
  Python-number threshold, converted to float and scaled (three passes);
- fused, old mask: annotune.model.lora_update's in-place addmm; the old mask;
- fused, new mask: what train.py runs (annotune.model.lora_dropout's one-pass float mask).
Prints the median and the minimum seconds of each variant over the repeats (four batches of 8 a
step, the 309-token shared prefix run once per batch, as train.py does).

--bf16 instead compares the step in fp32 and under bf16 autocast (train.py --cpu_bf16): the loss, and
the LoRA gradient's relative difference and cosine to the fp32 step's, beside the same for fp32 with
other dropout masks (the noise training already accepts), then the seconds of each; LoRA's B starts
from small random values instead of 0, as after some training.
"""
import argparse
import statistics
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=6, help="rounds over all variants (default: 6)")
    p.add_argument("--bf16", action="store_true", help="compare fp32 and bf16 autocast instead (default: off)")
    return p.parse_args(argv)


def old_keep_mask(x, p: float, out=None):
    """annotune.model.lora_dropout.keep_mask before the one-pass mask: a bool compare, then a conversion
    pass to floats (`out` is ignored)."""
    import torch

    from annotune.model.lora_dropout import LANES

    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None)
    return (bits.view(torch.int16)[:n].view(x.shape) >= round(p * LANES) - LANES // 2).to(x.dtype)


def batches_and_loss():
    import preprocess
    from datasets import load_from_disk

    from annotune.model import lm
    from annotune.base.cli import run_cli
    from annotune.model.models import add_lora, load_model, load_tokenizer
    from annotune.training.trainer import LossModule
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="annotune-steps-")) / "data"
    assert run_cli(preprocess.main, ["--task", "politosphere", "--output_dir", str(folder), "--num_preview", "0"]) == 0
    tok = load_tokenizer("smollm2-135m", for_generation=False)
    rows, labels = [], []
    for ex in load_from_disk(str(folder))["train"].select(range(32)):
        prompt = tok(ex["prompt"], add_special_tokens=False)["input_ids"]
        completion = tok(ex["completion"], add_special_tokens=False)["input_ids"]
        rows.append(prompt + completion)
        labels.append([-100] * len(prompt) + completion)
    plen = lm.common_prefix_length(rows)
    batches = [lm.pad_batch(rows[i:i + 8], tok.pad_token_id, "right", labels[i:i + 8]) for i in range(0, 32, 8)]
    model = add_lora(load_model("smollm2-135m", "causal", quantization="none"), "causal", 16, 32, 0.05)
    model.train()
    return model, LossModule(model, "causal", rows[0][:plen]), batches


def main(argv=None):
    args = parse_args(argv)
    import torch
    from peft.tuners.lora.layer import Linear

    from annotune.model import lora_dropout

    torch.manual_seed(0)
    model, loss_module, batches = batches_and_loss()
    if args.bf16:
        return compare_bf16(model, loss_module, batches, args.repeats)
    fused = {m: m.forward for m in model.modules() if type(m) is Linear}
    new_mask = lora_dropout.keep_mask

    def use(layer_forward, mask):
        for module, forward in fused.items():
            module.forward = forward if layer_forward == "fused" else types.MethodType(Linear.forward, module)
        lora_dropout.keep_mask = new_mask if mask == "new" else old_keep_mask

    def step():
        for ids, mask, labels in batches:
            loss_module(ids, mask, labels).backward()

    variants = [("peft", "old"), ("fused", "old"), ("fused", "new")]
    times = {v: [] for v in variants}
    step()  # warm-up, and the once-per-model split-prefix check
    for _ in range(args.repeats):
        for variant in variants:
            use(*variant)
            model.zero_grad()
            start = time.perf_counter()
            step()
            times[variant].append(time.perf_counter() - start)
    use("fused", "new")
    print("| LoRA forward | dropout mask | median s | min s | all s |\n|---|---|---|---|---|")
    for (forward, mask), seconds in times.items():
        print(f"| {forward} | {mask} | {statistics.median(seconds):.2f} | {min(seconds):.2f} | "
              f"{', '.join(f'{s:.2f}' for s in seconds)} |")
    return 0


def compare_bf16(model, loss_module, batches, repeats):
    import torch

    lora = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # as after some training: the adapter's update, and so its masks, matter
            torch.nn.init.normal_(p, std=0.01)

    def step(autocast, seed=1):
        model.zero_grad()
        torch.manual_seed(seed)  # the dropout masks
        loss_module.autocast = autocast
        total = 0.0
        for ids, mask, labels in batches:
            loss = loss_module(ids, mask, labels)
            loss.backward()
            total += loss.item()
        return total / len(batches), torch.cat([p.grad.flatten() for p in lora])

    loss32, grad32 = step(False)
    print("| step | mean loss | gradient: relative difference to fp32 | cosine |\n|---|---|---|---|")
    print(f"| fp32 | {loss32:.4f} | 0 | 1 |")
    for name, (loss, grad) in (("fp32, other dropout masks", step(False, seed=2)), ("bf16 autocast", step(True))):
        print(f"| {name} | {loss:.4f} | {float((grad - grad32).norm() / grad32.norm()):.4f} | "
              f"{float(torch.nn.functional.cosine_similarity(grad, grad32, dim=0)):.4f} |")
    times = {False: [], True: []}
    for _ in range(repeats):
        for autocast in times:
            start = time.perf_counter()
            step(autocast)
            times[autocast].append(time.perf_counter() - start)
    print("\n| step | median s | min s | all s |\n|---|---|---|---|")
    for autocast, seconds in times.items():
        print(f"| {'bf16 autocast' if autocast else 'fp32'} | {statistics.median(seconds):.2f} | {min(seconds):.2f} | "
              f"{', '.join(f'{s:.2f}' for s in seconds)} |")
    loss_module.autocast = False
    return 0


if __name__ == "__main__":
    sys.exit(main())
