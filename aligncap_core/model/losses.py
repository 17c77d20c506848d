"""Losses of the KD-regularised speech student (AlignCap, Liang et al. 2024, "KD-Regularization").

Student objective:  L = L_CE(caption | speech) + lambda_kd * L_KD,
  L_KD = (1/|C|) sum_{t in C} T^2 * KL( p_teacher(. | text, y_<t) || p_student(. | speech, y_<t) )
over the caption positions C, where teacher and student predict the same caption tokens y.
All functions are pure: tensors in, tensors out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            temperature: float = 1.0) -> torch.Tensor:
    """Token-level forward KL(p_teacher || p_student) at temperature T (AlignCap KD-Regularization, L_KD).

    Args:
        student_logits: (batch, seq, vocab), caption-aligned (see `align_caption_logits`).
        teacher_logits: (batch, seq, vocab), same positions; treated as constant (detached).
        mask: (batch, seq) bool, True on caption positions that count.
        temperature: T > 0. Both distributions are softened by T.

    Returns:
        Scalar: mean over masked positions of T^2 * KL. The T^2 factor (Hinton et al. 2015)
        keeps the gradient magnitude independent of T (soft-target gradients scale as 1/T^2),
        so lambda_kd means the same thing at every temperature. An all-False mask returns 0
        with the graph intact (sum / clamp_min(1), never 0/0 -> nan).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"kd_loss: student logits {tuple(student_logits.shape)} and teacher "
                         f"logits {tuple(teacher_logits.shape)} differ; align them first")
    if mask.shape != student_logits.shape[:2]:
        raise ValueError(f"kd_loss: mask {tuple(mask.shape)} does not match logits "
                         f"{tuple(student_logits.shape[:2])}")
    if temperature <= 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
    # fp32 for the softmax: bf16 log-probs over a 10k+ vocab lose the small KL differences
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    # sum p (log p - log q); xlogy-free because log_p is finite (log_softmax of finite logits)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (batch, seq)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0) * temperature**2


def caption_ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on caption tokens (AlignCap L_CE).

    Args:
        logits: (batch, seq, vocab) for the full input sequence.
        labels: (batch, seq) token ids, IGNORE_INDEX (-100) on prompt and padding; position t's
            logits predict labels[t + 1] (the shift happens here).
    Returns: mean over non-ignored tokens; 0 (graph intact) if every label is ignored.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    tok = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                          shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    n = (shift_labels != IGNORE_INDEX).sum().clamp_min(1)
    return tok / n


def aligned_ce_loss(aligned: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`caption_ce_loss` on caption-aligned logits (`model.caption_head.caption_logits`).

    Args:
        aligned: (batch, L_cap, vocab), row j predicts caption token j.
        targets: (batch, L_cap) caption ids, IGNORE_INDEX beyond each caption
            (`caption_head.caption_targets`).
    Returns: mean over non-ignored tokens; 0 (graph intact) if every target is ignored.
    """
    tok = F.cross_entropy(aligned.float().reshape(-1, aligned.size(-1)), targets.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    return tok / (targets != IGNORE_INDEX).sum().clamp_min(1)


def align_caption_logits(logits: torch.Tensor, caption_start: torch.Tensor,
                         caption_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the logits that predict each caption token -> (batch, L_cap, vocab) + mask.

    Teacher and student sequences have different prompts (text vs speech tokens) and so
    different lengths, but the same caption tokens. Caption token j of row b sits at
    `caption_start[b] + j` (absolute index in the padded row, so left and right padding are both
    handled); the logits that predict it are one position earlier.

    Args:
        logits: (batch, seq, vocab).
        caption_start: (batch,) long, index of the first caption token in each row (>= 1: a
            caption is always preceded by at least bos).
        caption_len: (batch,) long, caption tokens including the final eos.
    Returns:
        (aligned, mask): aligned (batch, L_cap, vocab) with L_cap = max(caption_len); mask
        (batch, L_cap) bool, False beyond a row's caption (those slots hold clamped junk).
    """
    pos, mask = caption_positions(caption_start.to(logits.device), caption_len.to(logits.device),
                                  logits.shape[1])
    aligned = logits.gather(1, pos[:, :, None].expand(-1, -1, logits.size(-1)))
    return aligned, mask


def caption_positions(caption_start: torch.Tensor, caption_len: torch.Tensor,
                      seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos, mask), both (batch, L_cap): pos[b, j] is the position whose logits predict caption
    token j of row b (one before it; clamped junk where mask is False)."""
    caption_start, caption_len = caption_start.long(), caption_len.long()
    if caption_start.numel() and int(caption_start.min()) < 1:
        raise ValueError("caption_positions: caption_start must be >= 1 (a caption follows "
                         "at least bos)")
    l_cap = int(caption_len.max()) if caption_len.numel() else 0
    offs = torch.arange(l_cap, device=caption_start.device)
    mask = offs[None, :] < caption_len[:, None]
    pos = (caption_start[:, None] - 1 + offs[None, :]).clamp(0, max(seq - 1, 0))
    return pos, mask
