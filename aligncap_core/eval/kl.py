"""The speech-text KL gap (ARCHITECTURE.md, method step 7): how far the speech student's
next-token distributions are from the text teacher's on held-out clips."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from aligncap_core.model.losses import kd_loss


@torch.no_grad()
def kl_gap(batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float | None:
    """Mean KL(p_teacher || p_student) in nats per caption token, over all masked positions.

    Args:
        batches: iterable of (student_logits, teacher_logits, mask) with logits
            (batch, L_cap, vocab) already caption-aligned (`align_caption_logits`) and mask
            (batch, L_cap) bool, True on caption tokens. A generator works: each batch is
            consumed and dropped, so the logits of the whole held-out set never sit in memory.

    Returns:
        The token-weighted mean of `kd_loss(..., temperature=1)` (T=1: the KL of the
        distributions the models actually sample from, no T^2 factor), >= 0, 0 when student and
        teacher agree. Batches are weighted by their token counts, so the result does not depend
        on how the examples were batched. None when no position is masked in.
    """
    total = 0.0
    tokens = 0
    for student_logits, teacher_logits, mask in batches:
        n = int(mask.sum())
        if n == 0:
            continue
        total += float(kd_loss(student_logits, teacher_logits, mask, temperature=1.0)) * n
        tokens += n
    return total / tokens if tokens else None
