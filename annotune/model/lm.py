"""Forward passes shared by training and evaluation.

- A shared prefix (the system prompt and label definitions that every prompt of a task starts
  with) is run once; its key/value cache is expanded along the batch (a view, not a copy) and the
  batch's own tokens run on top of it with explicit positions. In training, gradients flow through
  the prefix's keys and values, so the result equals the plain padded batch (tested to 1e-5).
- Logits are computed only at positions that carry loss or a score: the decoder's hidden states are
  gathered there and only those go through the output layer (a 49k-vocabulary head over a whole
  300-token sequence otherwise costs more than the LoRA layers).
- Label scoring: every label string is scored as a continuation of the prompt (sum of token
  log-probabilities, optionally per token): one packed forward per batch of examples, every label
  branching off its example's prompt (checked once per model against one forward per label).
"""
from __future__ import annotations

import sys
import weakref

import torch


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_and_head(model):
    base = _base(model)
    return base.get_decoder(), base.get_output_embeddings(), base.config


def common_prefix_length(sequences, keep: int = 1) -> int:
    """Length of the longest common prefix of token sequences, leaving `keep` own tokens in each."""
    if not sequences:
        return 0
    first, n = sequences[0], min(len(s) for s in sequences) - keep
    length = 0
    while length < n and all(s[length] == first[length] for s in sequences):
        length += 1
    return max(length, 0)


def run_prefix(model, prefix_ids, checkpoint: bool = False):
    """Per-layer (key, value) tensors of the prefix (batch 1); differentiable when grad is on.
    checkpoint: its layers recomputed (once, for the whole batch) in the backward."""
    from .checkpointing import KeysValues, checkpointed

    decoder, _, _ = decoder_and_head(model)
    device = next(model.parameters()).device
    ids = torch.as_tensor([list(prefix_ids)], device=device)
    if not (checkpoint and torch.is_grad_enabled()):
        out = decoder(input_ids=ids, use_cache=True)
        return [(layer.keys, layer.values) for layer in out.cache.layers]
    kept = KeysValues()
    with checkpointed(decoder, cache=kept):
        decoder(input_ids=ids, use_cache=True)
    return kept.layers()


def hidden_states(model, input_ids, attention_mask, prefix_kv=None, split: bool = False,
                  checkpoint: bool = False):
    """Last hidden states of a (right- or left-padded) batch, optionally on top of a shared prefix:
    through a key/value cache expanded along the batch, or with `split` the prefix attended to
    without a copy per example and the own tokens run without their padding
    (annotune.model.prefix_attention; training on models it supports). checkpoint: each decoder layer's
    activations recomputed in the backward (annotune.model.checkpointing)."""
    from .checkpointing import checkpointed

    decoder, _, config = decoder_and_head(model)
    batch = input_ids.shape[0]
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    kwargs = {}
    if prefix_kv and split:
        with checkpointed(decoder, enabled=checkpoint):
            return _split_hidden_states(decoder, config, input_ids, attention_mask, positions, prefix_kv)
    if prefix_kv:
        plen = prefix_kv[0][0].shape[-2]
        kwargs["cache"] = _cache(prefix_kv, batch, config, expand=True)
        attention_mask = torch.cat([attention_mask.new_ones(batch, plen), attention_mask], dim=1)
        positions = positions + plen
        kwargs["use_cache"] = True
    else:
        kwargs["use_cache"] = False
    with checkpointed(decoder, prefix_kv, enabled=checkpoint):
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, **kwargs)
    return out.last_hidden_state


def _split_hidden_states(decoder, config, input_ids, attention_mask, positions, prefix_kv):
    """The split path on the batch's own tokens packed into one row, padding dropped (a padded
    token's compute is wasted; length-grouped batches keep it small, uneven lengths do not), then
    scattered back to [B, T, d] with zeros where the padding was."""
    from . import prefix_attention

    keep = attention_mask.bool()
    with prefix_attention.switched_on(config):
        out = decoder(input_ids=input_ids[keep][None], position_ids=positions[keep][None] + prefix_kv[0][0].shape[-2],
                      use_cache=False, prefix_kv=prefix_kv, segments=tuple(keep.sum(-1).tolist()))
    packed = out.last_hidden_state[0]
    return packed.new_zeros(*input_ids.shape, packed.shape[-1]).index_put((keep,), packed)


def logits_from_hidden(model, hidden):
    _, head, config = decoder_and_head(model)
    weight = getattr(head, "weight", None)
    if torch.is_autocast_enabled(hidden.device.type) and weight is not None:
        # The loss's logits in fp32 under bf16 autocast: it runs at the loss positions only, so it is cheap
        with torch.autocast(hidden.device.type, enabled=False):
            logits = head(hidden.to(weight.dtype))
    else:
        logits = head(hidden)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def completion_loss(model, input_ids, attention_mask, labels, prefix_kv=None, reduction: str = "mean",
                    split: bool = False, checkpoint: bool = False):
    """Cross-entropy of the completion tokens only: logits are computed where labels[t+1] != -100."""
    hidden = hidden_states(model, input_ids, attention_mask, prefix_kv, split, checkpoint)
    targets = labels[:, 1:]
    where = targets != -100
    logits = logits_from_hidden(model, hidden[:, :-1][where])
    return torch.nn.functional.cross_entropy(logits, targets[where], reduction=reduction)


def pad_batch(rows, pad_id: int, side: str = "right", label_rows=None):
    """Tensors (input_ids, attention_mask[, labels]) from lists of token ids."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long) if label_rows is not None else None
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, span] = torch.as_tensor(row)
        mask[i, span] = 1
        if labels is not None:
            labels[i, span] = torch.as_tensor(label_rows[i])
    return (ids, mask, labels) if labels is not None else (ids, mask)


def _cache(kv, batch, config, expand: bool):
    """A DynamicCache holding `kv` (expanded along the batch). Filled through update() it would copy
    them (a concatenation onto an empty tensor): with `expand`, B copies of the prefix's keys and
    values in every layer, kept for the whole step. Plain dynamic layers take the tensors as they
    are; a layer of another kind (a sliding window) is filled by its own update()."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) if expand else (k, v) for k, v in kv]
    cache = DynamicCache(config=config)
    if len(cache.layers) != len(data):
        return DynamicCache(ddp_cache_data=data, config=config)
    for layer, (k, v) in zip(cache.layers, data):
        if type(layer) is DynamicLayer:
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v
        else:
            layer.update(k, v)
    return cache


PACKED_ATTENTION = ("eager", "sdpa")  # implementations that take a custom 4D mask


@torch.no_grad()
def score_completions(model, prompt_ids, completion_ids, batch_size: int = 16, length_norm: bool = False,
                      progress=None, packed: bool | None = None):
    """Log-likelihood of each completion after each prompt: a tensor [n_prompts, n_completions].

    prompt_ids: token ids per prompt. completion_ids: per prompt, a list of token-id lists (the
    labels as tokenised after that prompt, EOS included where wanted).
    The prompts' common prefix runs once for the whole call (outside autocast). Packed (the default where the attention
    takes a 4D mask): each batch is ONE forward of [own prompt tokens, label 1, label 2, ...] per
    row, where a mask lets each label see the prompt and itself only and its positions restart
    after the prompt, so scoring every label costs about one prompt forward. Otherwise each batch's
    prompt runs once and every label runs on top of its cache (one small forward per label).
    """
    decoder, _, config = decoder_and_head(model)
    n_prompts, n_labels = len(prompt_ids), len(completion_ids[0])
    plen = common_prefix_length(prompt_ids) if n_prompts > 1 else 0
    # The prefix runs once per call, so in the weights' own precision even under bf16 autocast: it
    # costs nothing here, and its keys and values carry no bf16 rounding into every row's scores.
    with torch.autocast(next(model.parameters()).device.type, enabled=False):
        prefix_kv = run_prefix(model, prompt_ids[0][:plen]) if plen else None
    if packed is None:
        packed = _packed_agrees(model, config, prompt_ids[0][plen:], completion_ids[0], plen, prefix_kv)
    order = sorted(range(n_prompts), key=lambda i: len(prompt_ids[i]))  # similar lengths: less padding
    scores = torch.zeros(n_prompts, n_labels, dtype=torch.float64)
    score_batch = _score_batch_packed if packed else _score_batch_stepwise
    for start in range(0, n_prompts, batch_size):
        idx = order[start:start + batch_size]
        own = [list(prompt_ids[i][plen:]) for i in idx]
        sums, counts = score_batch(model, own, [completion_ids[i] for i in idx], plen, prefix_kv)
        scores[idx] = (sums / counts if length_norm else sums).cpu()
        if progress is not None:
            progress.update(len(idx) * n_labels)
    return scores


_PACKED_CHECKED = weakref.WeakKeyDictionary()  # model -> whether its packed scores matched


def _packed_agrees(model, config, own, comps, plen, prefix_kv) -> bool:
    """Whether this model may use the packed forward: its attention must take a 4D mask, and once
    per model the packed scores of one example are checked against the one-forward-per-label path
    (an architecture that rebuilds its own mask, e.g. from ALiBi, would silently score wrong)."""
    if getattr(config, "_attn_implementation", "eager") not in PACKED_ATTENTION:
        return False
    if model not in _PACKED_CHECKED:
        packed, _ = _score_batch_packed(model, [list(own)], [comps], plen, prefix_kv)
        stepwise, _ = _score_batch_stepwise(model, [list(own)], [comps], plen, prefix_kv)
        low_precision = next(model.parameters()).dtype in (torch.float16, torch.bfloat16) or getattr(
            model, "is_quantized", False) or torch.is_autocast_enabled("cpu")
        tolerance = 0.25 if low_precision else 1e-3  # log-probability summed over a label's tokens
        ok = bool(torch.allclose(packed, stepwise, atol=tolerance, rtol=0.02))
        if not ok:
            print(f"note: label scores from one packed forward differ from per-label forwards on this model "
                  f"(largest difference {(packed - stepwise).abs().max().item():.3g}); scoring one label at a "
                  "time", file=sys.stderr)
        _PACKED_CHECKED[model] = ok
    return _PACKED_CHECKED[model]


def _label_logprobs(model, hidden, targets, groups, n_groups):
    """Summed log-probabilities per group of the target tokens predicted from the hidden states."""
    logp = torch.log_softmax(logits_from_hidden(model, hidden), -1)
    token_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()
    return torch.zeros(n_groups, dtype=torch.float64, device=hidden.device).index_add_(0, groups, token_lp)


def _score_batch_packed(model, own, comps, plen, prefix_kv):
    """[batch, n_labels] summed log-probs (and token counts) from one forward (see score_completions)."""
    decoder, _, config = decoder_and_head(model)
    device = next(model.parameters()).device
    batch, n_labels = len(own), len(comps[0])
    rows = [o + [t for c in cs for t in c] for o, cs in zip(own, comps)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(batch, width, dtype=torch.long)
    positions = torch.zeros(batch, width, dtype=torch.long)
    group = torch.full((batch, width), -2, dtype=torch.long)  # -1: prompt, j: label j, -2: padding
    pick_rows, pick_pos, targets, groups = [], [], [], []
    for r, (o, cs) in enumerate(zip(own, comps)):
        ids[r, :len(rows[r])] = torch.as_tensor(rows[r])
        positions[r, :len(o)] = torch.arange(len(o))
        group[r, :len(o)] = -1
        at = len(o)
        for j, c in enumerate(cs):
            positions[r, at:at + len(c)] = len(o) + torch.arange(len(c))
            group[r, at:at + len(c)] = j
            # token t of the label is predicted from the position before it: the prompt's last
            # token for t = 0, else the label's own previous token
            pick_pos += [len(o) - 1] + list(range(at, at + len(c) - 1))
            pick_rows += [r] * len(c)
            targets += c
            groups += [r * n_labels + j] * len(c)
            at += len(c)
    q, k = group.unsqueeze(2), group.unsqueeze(1)
    allowed = torch.ones(width, width, dtype=torch.bool).tril() & ((k == -1) | (k == q)) & (k != -2)
    allowed |= torch.eye(width, dtype=torch.bool) & (q == -2)  # padding sees itself: no empty rows
    allowed = torch.cat([torch.ones(batch, width, plen, dtype=torch.bool), allowed], 2)
    # SDPA takes the boolean mask as it is; eager attention adds the mask to its scores (in fp32 it
    # promotes any score dtype, and eager's softmax runs in fp32 anyway)
    mask = allowed if getattr(config, "_attn_implementation", "eager") == "sdpa" else torch.zeros(
        allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    kwargs = {"cache": _cache(prefix_kv, batch, config, expand=True), "use_cache": True} if prefix_kv else {
        "use_cache": False}
    hidden = decoder(input_ids=ids.to(device), attention_mask=mask.unsqueeze(1).to(device),
                     position_ids=(plen + positions).to(device), **kwargs).last_hidden_state
    pick = hidden[torch.as_tensor(pick_rows, device=device), torch.as_tensor(pick_pos, device=device)]
    groups = torch.as_tensor(groups, device=device)
    sums = _label_logprobs(model, pick, torch.as_tensor(targets, device=device), groups, batch * n_labels)
    counts = torch.zeros(batch * n_labels, dtype=torch.float64, device=device).index_add_(
        0, groups, torch.ones(len(targets), dtype=torch.float64, device=device))
    return sums.view(batch, n_labels), counts.view(batch, n_labels)


def _score_batch_stepwise(model, own, comps, plen, prefix_kv):
    """[batch, n_labels] summed log-probs (and token counts): the prompt once, then each label on its cache."""
    decoder, _, config = decoder_and_head(model)
    device = next(model.parameters()).device
    batch, n_labels = len(own), len(comps[0])
    own_ids, own_mask = (t.to(device) for t in pad_batch(own, 0, "right"))
    own_len = own_mask.sum(-1)
    context_mask = torch.cat([torch.ones(batch, plen, dtype=torch.long, device=device), own_mask], 1)
    kwargs = {"cache": _cache(prefix_kv, batch, config, expand=True)} if prefix_kv else {}
    out = decoder(input_ids=own_ids, attention_mask=context_mask,
                  position_ids=plen + torch.arange(own_ids.shape[1], device=device).expand(batch, -1),
                  use_cache=True, **kwargs)
    last_hidden = out.last_hidden_state[torch.arange(batch, device=device), own_len - 1]
    own_kv = [(layer.keys, layer.values) for layer in out.cache.layers]
    sums = torch.zeros(batch, n_labels, dtype=torch.float64, device=device)
    counts = torch.zeros(batch, n_labels, dtype=torch.float64, device=device)
    for j in range(n_labels):
        comp_ids, comp_mask = (t.to(device) for t in pad_batch([list(c[j]) for c in comps], 0, "right"))
        # Padding holes sit between each prompt's end and its label: the mask skips them and the
        # label's positions continue from the prompt's true length.
        positions = (plen + own_len).unsqueeze(1) + torch.arange(comp_ids.shape[1], device=device)
        hidden = decoder(input_ids=comp_ids, attention_mask=torch.cat([context_mask, comp_mask], 1),
                         position_ids=positions, cache=_cache(own_kv, batch, config, expand=False),
                         use_cache=True).last_hidden_state
        predictors = torch.cat([last_hidden.unsqueeze(1), hidden[:, :-1]], 1)
        keep = comp_mask.bool()
        rows = torch.arange(batch, device=device).unsqueeze(1).expand_as(comp_ids)[keep]
        sums[:, j] = _label_logprobs(model, predictors[keep], comp_ids[keep], rows, batch)
        counts[:, j] = comp_mask.sum(-1)
    return sums, counts
