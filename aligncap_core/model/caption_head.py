"""The LM head at the caption positions only.

A student row is ~250 prompt tokens (audio) and ~24 caption tokens, and every training loss
(CE, KD, the KL gap) reads only the logits that predict caption tokens. The full forward
projects every position through the vocabulary-wide head and log-softmaxes it: for the demo's
student that was ~30% of a step's FLOPs and most of its memory traffic, spent on rows that
are then masked out.

`caption_logits` passes the union of the batch's caption positions as HF `logits_to_keep` (a
1-D index tensor; every causal LM of transformers >= 4.50 takes it, and the model applies its
own head, softcapping or scaling to exactly those rows), then gathers each row's own positions.
Batches are grouped by length (`train.loop.batch_order`), so that union is a small band of the
sequence. The values equal the full forward's at those positions (the head is per position).
A model whose forward has no `logits_to_keep` gets the full forward, gathered the same way.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from aligncap_core.model.losses import IGNORE_INDEX, caption_positions


def unwrap_ddp(model: Any) -> Any:
    """The module inside a DistributedDataParallel wrapper (train.runtime); others as they are.
    DDP forwards every keyword to it, so only signature checks and adapter switches need it."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


_ACCEPTS: dict[type, bool] = {}


def _base(model: Any) -> Any:
    model = unwrap_ddp(model)
    get = getattr(model, "get_base_model", None)  # peft wrappers forward kwargs to it
    return get() if callable(get) else model


def accepts_logits_to_keep(model: Any) -> bool:
    base = _base(model)
    kind = type(base)
    if kind not in _ACCEPTS:
        try:
            _ACCEPTS[kind] = "logits_to_keep" in inspect.signature(base.forward).parameters
        except (TypeError, ValueError):
            _ACCEPTS[kind] = False
    return _ACCEPTS[kind]


def caption_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   caption_start: torch.Tensor, caption_len: torch.Tensor,
                   **forward_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(aligned, mask): the logits that predict each caption token, (batch, L_cap, vocab), as
    `losses.align_caption_logits(model(...).logits, ...)` gives them, and the (batch, L_cap)
    mask, False beyond a row's caption. Only the caption positions go through the LM head."""
    seq = input_ids.shape[1]
    pos, mask = caption_positions(caption_start.to(input_ids.device),
                                  caption_len.to(input_ids.device), seq)
    keep = torch.unique(pos[mask])  # sorted
    if 0 < keep.numel() < seq and accepts_logits_to_keep(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       logits_to_keep=keep, **forward_kwargs).logits
        idx = torch.searchsorted(keep, pos).clamp_max(keep.numel() - 1)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **forward_kwargs).logits
        idx = pos
    aligned = logits.gather(1, idx[:, :, None].expand(-1, -1, logits.size(-1)))
    return aligned, mask


def caption_targets(labels: torch.Tensor, caption_start: torch.Tensor,
                    caption_len: torch.Tensor) -> torch.Tensor:
    """The caption token ids as (batch, L_cap), IGNORE_INDEX beyond each caption: the targets of
    `caption_logits`' rows. Raises when `labels` holds targets outside the caption spans (the
    aligned CE would silently drop them)."""
    seq = labels.shape[1]
    pos, mask = caption_positions(caption_start.to(labels.device), caption_len.to(labels.device), seq)
    targets = labels.gather(1, (pos + 1).clamp_max(seq - 1))
    targets = targets.masked_fill(~mask, IGNORE_INDEX)
    if int((targets != IGNORE_INDEX).sum()) != int((labels != IGNORE_INDEX).sum()):
        raise ValueError("caption_targets: labels hold targets outside caption_start/caption_len")
    return targets
