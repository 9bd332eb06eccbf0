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

import torch

LANES = 65536  # the mask's resolution: 16 bits


def cheap_lora_dropout(model):
    """Swap PEFT's LoRA dropout modules for LoraInputDropout."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, layer in dropouts.items():
                if type(layer) is torch.nn.Dropout and layer.p > 0:
                    dropouts[name] = LoraInputDropout(layer.p)
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
    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.scale = 1.0 / (1.0 - round(p * LANES) / LANES)

    def forward(self, x):
        if not self.training:
            return x
        shared = getattr(x, "_lora_dropped", None)
        if shared is not None and shared[:2] == (x._version, self.p) and torch.equal(shared[2], _rng_state(x)):
            return shared[3]  # the layer before read this same tensor: share its dropped-out copy
        # A float mask with the scale in it: its backward is one multiply (torch.where's is ~4x slower).
        out = x * keep_mask(x, self.p, out=torch.empty_like(x)).mul_(self.scale)
        # Kept on the input itself, so it lives as long as the input does whether or not autograd
        # keeps either (activation checkpointing keeps neither), and shared only while no random
        # number has been drawn since: a checkpointed layer's recomputation restores the generator
        # to before this draw, so it draws the same mask again instead of reusing this one.
        x._lora_dropped = (x._version, self.p, _rng_state(x), out)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, shared by layers that read the same input"


def _rng_state(x):
    return torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else torch.get_rng_state()
