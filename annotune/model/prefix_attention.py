"""Training attention over a shared prefix without a copy of the prefix per example.

The cache path (lm.hidden_states with a key/value cache expanded along the batch) concatenates the
prefix's keys and values to every example's own in every layer: B copies in the forward, and in the
backward B key/value gradient buffers that are filled, copied and summed (about 11% of a CPU step).
Here the batch's own tokens come packed into one row without padding (lm.hidden_states), and each
layer runs flash-attention calls: all the queries as one block against the single prefix (so the
prefix's key/value gradient comes out as one reduction), and each example's queries against its own
tokens (causal, one call per example); the parts are merged by their log-sum-exp, as
split-KV ("cascade") attention does at inference. The backward calls each part's flash backward with
the merged output and log-sum-exp, which is exactly the joint softmax's gradient restricted to that
part's keys. Equal to the cache path (tested: loss and gradients, SDPA and eager models, grouped
query heads, left padding). It uses PyTorch's CPU flash-attention operators, so it runs on CPUs.

It runs as a transformers attention implementation, switched on only for the forward that passes
`prefix_kv` (so the packed label scoring and generation keep the model's own implementation), and
only for models it can serve exactly: decoder attention through transformers' attention interface,
no logit soft-capping, no sliding window, no attention dropout. `agrees` checks one batch against
the cache path once per model, so an architecture that ignores it falls back instead of training on
something else.
"""
from __future__ import annotations

import contextlib
import weakref

import torch

NAME = "annotune_split_prefix"
DEVICES = ("cpu",)  # its operators are the CPU flash-attention kernels; CUDA keeps the cache path
_CHECKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, prefix_kv=None,
               segments=None, **kwargs):
    """query [1, H, N, D]; key, value [1, Hkv, N, D]: the batch's own tokens packed into one row
    (`segments` = each example's length, in order), rotated at their positions after the prefix;
    prefix_kv[layer] = ([1, Hkv, P, D], [1, Hkv, P, D]). The mask transformers built is not used:
    each example is causal within its own segment. Returns ([1, N, H, D], None)."""
    pk, pv = prefix_kv[module.layer_idx]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if torch.is_autocast_enabled(query.device.type):  # as SDPA under autocast: all in its dtype
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value, pk, pv = (t.to(dtype) for t in (query, key, value, pk, pv))
    out = _SplitAttention.apply(query, key, value, pk, pv, tuple(segments), scale)
    return out.transpose(1, 2), None


def _flash(q, k, v, scale, causal):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)


def _spans(segments):
    start = 0
    for length in segments:
        if length:
            yield slice(start, start + length)
        start += length


class _SplitAttention(torch.autograd.Function):
    """Softmax over [prefix keys, own keys] as flash-attention calls merged by their log-sum-exp:
    every query against the prefix in one call, each example's queries against its own keys
    (causal) in one call per example. The backward calls each part's flash backward with the merged
    output and log-sum-exp, which is the exact gradient of the joint softmax restricted to that
    part's keys (split-KV attention)."""

    @staticmethod
    def forward(ctx, q, k, v, pk, pv, segments, scale):
        out_p, lse_p = _flash(q, pk, pv, scale, causal=False)  # every query sees the whole prefix
        out_o, lse_o = torch.empty_like(out_p), torch.empty_like(lse_p)
        for span in _spans(segments):
            out_o[:, :, span], lse_o[:, :, span] = _flash(q[:, :, span], k[:, :, span], v[:, :, span], scale, True)
        lse = torch.logaddexp(lse_p, lse_o)
        out = torch.exp(lse_p - lse).unsqueeze(-1) * out_p + torch.exp(lse_o - lse).unsqueeze(-1) * out_o
        out = out.to(q.dtype)  # the weights are fp32 log-sum-exps; the output keeps the inputs' dtype
        ctx.save_for_backward(q, k, v, pk, pv, out, lse)
        ctx.segments, ctx.scale = segments, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, pk, pv, out, lse = ctx.saved_tensors
        flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        grad = grad.to(q.dtype).contiguous()
        dq, dpk, dpv = flash_backward(grad, q, pk, pv, out, lse, 0.0, False, scale=ctx.scale)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        for span in _spans(ctx.segments):
            part = (grad, q, k, v, out, lse)
            dq_o, dk[:, :, span], dv[:, :, span] = flash_backward(*(t[:, :, span] for t in part), 0.0, True,
                                                                  scale=ctx.scale)
            dq[:, :, span] += dq_o
        return dq, dk, dv, dpk, dpv, None, None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, _attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def supported(model, config) -> bool:
    """Whether the split path can serve this model exactly (then `agrees` confirms it once)."""
    device = next(model.parameters()).device.type
    if device not in DEVICES or config._attn_implementation not in ("sdpa", "eager"):
        return False
    if getattr(config, "attn_logit_softcapping", None) or getattr(config, "attention_dropout", 0.0):
        return False
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    return not sliding and "sliding_attention" not in (getattr(config, "layer_types", None) or ())


@contextlib.contextmanager
def switched_on(config):
    """The model's attention runs `_attention` inside this block (mask built as for SDPA)."""
    _register()
    original = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = original


def agrees(model, run_both) -> bool:
    """Once per model: `run_both()` returns (split, cache) hidden states of one batch in eval mode
    (no dropout); a difference means the architecture does not take the split path exactly."""
    if model in _CHECKED:
        return _CHECKED[model]
    was_training = model.training
    model.eval()
    try:  # in the weights' own precision: bf16 rounding is not a difference of paths
        with torch.no_grad(), torch.autocast(next(model.parameters()).device.type, enabled=False):
            split, cache = run_both()
        ok = bool(torch.allclose(split, cache, rtol=1e-3, atol=1e-4 * float(cache.abs().max()) + 1e-5))
    except (TypeError, KeyError, RuntimeError):
        ok = False
    finally:
        model.train(was_training)
    if not ok:
        print("note: this model's attention does not take the split shared-prefix path exactly; "
              "training uses the key/value cache path (same result, slower)")
    _CHECKED[model] = ok
    return ok
