"""LoRA's update added inside a matrix multiply.

PEFT's LoRA layer returns base(x) + B(A(dropout(x))) * scaling: the product by `scaling` and the sum
are two passes over the layer's whole output ([tokens, out features]) in the forward, and the
product one more in the backward. On a CPU such passes are memory-bound and cost far more than their
arithmetic. Here the update is base(x).addmm_(A(dropout(x)), B^T, alpha=scaling), in place: the sum
is the GEMM's own accumulate, and the scaling is applied inside the GEMM (and, in the backward, to the
rank-r gradient instead of the full one). The arithmetic is the same (tested: outputs and gradients
equal to PEFT's forward).

Everything PEFT's forward does beyond one plain adapter keeps PEFT's forward: disabled or merged
adapters, several active adapters, mixed-batch adapter names, DoRA and other variants, a bias on B.
Where the base output and the adapter differ in dtype outside autocast, PEFT's arithmetic is used.
"""
from __future__ import annotations

import types

import torch


def fuse_lora_update(model):
    """Give every plain PEFT LoRA Linear layer of the model the fused forward."""
    from peft.tuners.lora.layer import Linear

    for module in model.modules():
        if type(module) is Linear:  # subclasses (bitsandbytes, ...) keep their own forward
            module.forward = types.MethodType(_fused_forward, module)
    return model


def _plain_adapter(layer, extra_positional, extra_keywords):
    """The one active adapter's name, when PEFT's forward would do nothing but the plain update
    (no extra arguments to the forward, one plain adapter)."""
    names = layer.active_adapters
    if extra_positional or extra_keywords or layer.disable_adapters or layer.merged or len(names) != 1:
        return None
    name = names[0]
    if name not in layer.lora_A or name in layer.lora_variant or layer.lora_B[name].bias is not None:
        return None
    return name


def _fused_forward(self, x, *args, **kwargs):
    from peft.tuners.lora.layer import Linear

    name = _plain_adapter(self, args, kwargs)
    if name is None:
        return Linear.forward(self, x, *args, **kwargs)
    lora_a, lora_b, scaling = self.lora_A[name], self.lora_B[name], self.scaling[name]
    # The base layer on the tokens as rows: its output is then a fresh 2-D tensor that the update can
    # be accumulated into in place (addmm out of place copies it first; in place on a view of it
    # would make autograd copy the gradient). Linear layers do not keep their output for backward.
    result = self.base_layer(x.reshape(-1, x.shape[-1]))
    # The dropout sees x itself: layers reading the same tensor share its dropped-out copy.
    a = lora_a(self.lora_dropout[name](self._cast_input_dtype(x, lora_a.weight.dtype)))
    a = a.reshape(-1, a.shape[-1])
    if result.dtype != lora_b.weight.dtype and not torch.is_autocast_enabled(result.device.type):
        result = (result + lora_b(a) * scaling).to(result.dtype)  # PEFT's own arithmetic
    else:
        weight = lora_b.weight
        if weight.dtype != result.dtype:  # autocast: the GEMM runs in its dtype, the gradient reaches the fp32 weight
            weight, a = weight.to(result.dtype), a.to(result.dtype)
        result.addmm_(a, weight.t(), alpha=scaling)
    return result.view(*x.shape[:-1], result.shape[-1])
