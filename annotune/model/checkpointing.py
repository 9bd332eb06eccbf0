"""Activation checkpointing of the decoder layers that keeps the shared prefix (train.py --gradient_checkpointing).

A training step keeps every layer's activations for the backward: at 7B, batch 8 and ~300 own tokens
an example that is about 12 GiB. Checkpointed, a layer keeps only its input; its work is run again
in the backward (about one more forward: ~30% more step time). transformers' own checkpointing
cannot serve the shared-prefix paths: its layers drop the key/value cache that carries the prefix.
Here each decoder layer's forward runs under torch.utils.checkpoint (non-reentrant, so LoRA's inputs
need no requires_grad trick, and the random state is replayed: LoRA's dropout draws the same masks
in the recomputation; LoraInputDropout's shared copy lives as long as its input, in both runs alike).
The layer's prefix keys and values reach it as tensors, through a cache view
that holds no state, so the recomputation attends to the same prefix and nothing is appended
twice; on the split path they come as the attention's `prefix_kv` argument already. The prefix's
own run is checkpointed too (lm.run_prefix): once per batch in the forward and once in the
backward, never per example; its keys and values are kept (KeysValues), its activations are not.
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint


class PrefixView:
    """Stands in for a key/value cache inside one checkpointed layer: update() returns the prefix's
    keys and values (expanded along the batch) followed by the batch's own, and stores nothing."""

    def __init__(self, prefix_kv):
        self.prefix_kv = prefix_kv

    def update(self, key, value, layer_idx, *args, **kwargs):
        pk, pv = self.prefix_kv[layer_idx]
        batch = key.shape[0]
        # as transformers' DynamicLayer.update concatenates (dtypes promoted alike)
        return (torch.cat([pk.expand(batch, -1, -1, -1), key], dim=-2),
                torch.cat([pv.expand(batch, -1, -1, -1), value], dim=-2))


class KeysValues:
    """Stands in for the cache while the prefix runs checkpointed: update() keeps each layer's keys
    and values and returns them. The recomputation in the backward overwrites them, which nothing
    reads by then (the batch's layers took them in the forward)."""

    def __init__(self):
        self.kept = {}

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.kept[layer_idx] = (key, value)
        return key, value

    def layers(self):
        return [self.kept[i] for i in sorted(self.kept)]


def decoder_layers(decoder):
    layers = getattr(decoder, "layers", None)
    return list(layers) if isinstance(layers, torch.nn.ModuleList) else []


def supported(decoder) -> bool:
    """Whether this decoder's layers can be checkpointed here: a `layers` list whose attention
    reads the cache by `cache.update(key, value, layer_idx, ...)` (the Llama family and most
    decoders in transformers 5)."""
    return bool(decoder_layers(decoder)) and all(hasattr(getattr(l, "self_attn", None), "layer_idx")
                                                 for l in decoder_layers(decoder))


@contextlib.contextmanager
def checkpointed(decoder, prefix_kv=None, enabled: bool = True, cache=None):
    """Within: each decoder layer's forward is checkpointed (see the module's docstring). With the
    cache path's prefix, the layer is handed a PrefixView of `prefix_kv` in place of the cache; with
    `cache` (the prefix's own run: a KeysValues), that object."""
    if not enabled or not torch.is_grad_enabled():
        yield
        return
    layers = decoder_layers(decoder)
    view = PrefixView(prefix_kv) if prefix_kv else cache
    for layer in layers:
        layer.forward = _checkpointed_forward(layer.forward, view, decoder.config)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward


def _checkpointed_forward(forward, view, config):
    def run(hidden_states, *args, **kwargs):
        if view is not None and kwargs.get("cache") is not None:
            kwargs["cache"] = view
        attention = config._attn_implementation

        def again(*a, **k):
            # The recomputation runs in the backward, after the split path has switched the attention
            # back: it must run the attention the forward ran (autocast checkpoint restores itself).
            before, config._attn_implementation = config._attn_implementation, attention
            try:
                return forward(*a, **k)
            finally:
                config._attn_implementation = before
        return checkpoint(again, hidden_states, *args, use_reentrant=False, **kwargs)
    return run
