"""kd_loss / caption_ce_loss / align_caption_logits against plain reference computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aligncap_core.model.losses import align_caption_logits, caption_ce_loss, kd_loss


def _ref_kd(s, t, mask, T):
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask[b, i]:
                log_q = F.log_softmax(s[b, i] / T, -1)
                p = F.softmax(t[b, i] / T, -1)
                total += F.kl_div(log_q, p, reduction="sum").item()
                n += 1
    return total / max(n, 1) * T * T


@pytest.mark.parametrize("T", [1.0, 2.0, 0.5])
def test_kd_loss_matches_reference(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.4
    mask[0, 0] = True
    got = kd_loss(s, t, mask, temperature=T)
    assert got.item() == pytest.approx(_ref_kd(s, t, mask, T), rel=1e-5, abs=1e-6)


def test_kd_loss_masked_positions_do_not_count():
    s, t = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    s2 = s.clone()
    s2[~mask] = 1e3 * torch.randn_like(s2[~mask])  # junk beyond the caption
    assert torch.allclose(kd_loss(s, t, mask), kd_loss(s2, t, mask))


def test_kd_loss_all_masked_is_zero_with_finite_grad():
    s = torch.randn(2, 3, 5, requires_grad=True)
    loss = kd_loss(s, torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() == 0


def test_kd_loss_identical_logits_is_zero_and_teacher_gets_no_grad():
    x = torch.randn(2, 3, 9)
    t = x.clone().requires_grad_(True)
    loss = kd_loss(x, t, torch.ones(2, 3, dtype=torch.bool), temperature=3.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert not loss.requires_grad  # teacher logits are detached: nothing to train through


def test_kd_loss_temperature():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g)
    mask = torch.ones(2, 4, dtype=torch.bool)
    T = 4.0
    raw_kl = _ref_kd(s, t, mask, T) / T**2
    assert kd_loss(s, t, mask, temperature=T).item() == pytest.approx(T**2 * raw_kl, rel=1e-5)
    # large T flattens both distributions: the unscaled KL vanishes (~1/T^2 of the T=1 value)
    flat = kd_loss(s, t, mask, temperature=1e3).item() / 1e6
    assert flat < 1e-5 * kd_loss(s, t, mask).item()
    # ...while the T^2-scaled loss stays O(1): the gradient scale does not collapse
    assert 1e-3 < kd_loss(s, t, mask, temperature=1e3).item() < 10


def test_kd_loss_rejects_bad_input():
    with pytest.raises(ValueError):
        kd_loss(torch.randn(1, 2, 3), torch.randn(1, 3, 3), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError):
        kd_loss(torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), 0)


def test_caption_ce_loss_matches_reference_and_all_ignored():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, 4, 2], [-100, 1, 2, -100, -100]])
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert caption_ce_loss(logits, labels).item() == pytest.approx(ref.item(), rel=1e-6)
    zero = caption_ce_loss(logits, torch.full_like(labels, -100))
    assert zero.item() == 0.0
    zero.backward()
    assert torch.isfinite(logits.grad).all()


def test_align_caption_logits_left_and_right_padding():
    # Row 0: prompt of 3, caption of 2; row 1: prompt of 1, caption of 3. Logits encode position.
    V = 4
    def logits_for(seq, offset):
        x = torch.zeros(1, seq, V)
        x[0, :, 0] = torch.arange(seq) - offset  # value = position inside the unpadded row
        return x

    right = torch.cat([logits_for(6, 0)[:, :6], torch.cat([logits_for(4, 0), torch.zeros(1, 2, V)], 1)])
    al, mask = align_caption_logits(right, torch.tensor([3, 1]), torch.tensor([2, 3]))
    assert al.shape == (2, 3, V)
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    assert al[0, :2, 0].tolist() == [2, 3] and al[1, :, 0].tolist() == [0, 1, 2]

    # the same rows left-padded to 6: row 1 is shifted by 2, caption_start shifts with it
    left = torch.cat([logits_for(6, 0), logits_for(6, 2)])
    al2, mask2 = align_caption_logits(left, torch.tensor([3, 3]), torch.tensor([2, 3]))
    assert torch.equal(al2[mask2], al[mask])
