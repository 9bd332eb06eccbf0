"""LoRA's input dropout, cheap where random numbers are dear.

PEFT puts an nn.Dropout on each adapted layer's input; on a CPU its bernoulli_ draws one random number
per element and cost 19% of a training step (docs/benchmarks.md). LoraInputDropout keeps the
regulariser and changes two things:
- the mask comes from 16-bit lanes of 64-bit draws (four elements per draw): p is rounded to a
  multiple of 1/65536 (0.05 -> 0.050003);
- layers that read the same input tensor (q, k and v; gate and up) share one dropped-out input, as
  LoRA on a fused qkv or gate_up projection does: each layer still sees its input with a fraction p
  dropped, but the masks of q, k and v are no longer independent of each other.
Outside training it is the identity, as nn.Dropout is. On a GPU the mask is drawn as floats.
"""
from __future__ import annotations

import weakref

import torch

LANES = 65536  # the mask's resolution: 16 bits


def cheap_lora_dropout(model):
    """Swap PEFT's LoRA dropout modules for LoraInputDropout (one memo shared by the whole model)."""
    memo = {}
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, layer in dropouts.items():
                if type(layer) is torch.nn.Dropout and layer.p > 0:
                    dropouts[name] = LoraInputDropout(layer.p, memo)
    return model


def keep_mask(x, p: float, out=None):
    """Mask shaped like x, true with probability 1 - round(p * 65536) / 65536: boolean, or written
    as 0/1 into `out` (a float tensor shaped like x; one pass instead of a compare and a conversion)."""
    threshold = round(p * LANES)
    if x.device.type != "cpu":
        return torch.ge(torch.rand(x.shape, device=x.device), threshold / LANES, out=out)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None)  # the full 64-bit range
    # With `out` the compare writes the floats itself: no bool mask and conversion pass.
    return torch.ge(bits.view(torch.int16)[:n].view(x.shape), torch.tensor(threshold - LANES // 2, dtype=torch.int16),
                    out=out)


class LoraInputDropout(torch.nn.Module):
    def __init__(self, p: float, memo: dict):
        super().__init__()
        self.p, self.memo = p, memo
        self.scale = 1.0 / (1.0 - round(p * LANES) / LANES)

    def forward(self, x):
        if not self.training:
            return x
        memo = self.memo
        entry = memo.get("entry")
        if entry is not None and entry["input"]() is x and entry["version"] == x._version:
            return entry["output"]  # the layer before read this same tensor: share its dropped-out copy
        # A float mask with the scale in it: its backward is one multiply (torch.where's is ~4x slower).
        out = x * keep_mask(x, self.p, out=torch.empty_like(x)).mul_(self.scale)
        # The copy lives exactly as long as its input: not as long as autograd happens to keep it
        # (under activation checkpointing the forward keeps nothing, the recomputation keeps
        # everything, and both must share alike to draw the same masks), and no finished step's
        # tensors stay behind in the memo.
        memo["entry"] = {"output": out, "version": x._version, "input": weakref.ref(x, self._input_gone)}
        return out

    def _input_gone(self, ref):
        # It must not hold the entry itself: a cycle would keep the copy until the garbage collector runs.
        if self.memo.get("entry", {}).get("input") is ref:
            del self.memo["entry"]

    def extra_repr(self) -> str:
        return f"p={self.p}, shared by layers that read the same input"
