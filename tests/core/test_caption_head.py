"""The LM head at the caption positions only (`model.caption_head`, `train.stages.forward_caption`)
against the full forward + `align_caption_logits` / `caption_ce_loss` it replaces."""

from __future__ import annotations

import pytest
import torch

from aligncap_core.model.batching import CaptionExample, pad_examples
from aligncap_core.model.caption_head import accepts_logits_to_keep, caption_logits, caption_targets
from aligncap_core.model.losses import align_caption_logits, caption_ce_loss, kd_loss
from aligncap_core.train.stages import forward_caption, teacher_caption_logits
from tests.helpers.models import perturbed_student


def _batch(tok, side: str = "right", seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of different prompt and caption lengths, like a student batch."""
    g = torch.Generator().manual_seed(seed)
    exs = []
    for n_prompt, n_cap in [(9, 4), (14, 6), (5, 3), (12, 5)]:
        prompt = [tok.bos_token_id] + torch.randint(3, len(tok), (n_prompt - 1,), generator=g).tolist()
        cap = torch.randint(3, len(tok), (n_cap - 1,), generator=g).tolist() + [tok.eos_token_id]
        exs.append(CaptionExample(prompt + cap, [-100] * n_prompt + cap, n_prompt, n_cap))
    return pad_examples(exs, tok.pad_token_id, side=side)


def _reference(model, b):
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    aligned, mask = align_caption_logits(logits, b["caption_start"], b["caption_len"])
    return aligned, mask, caption_ce_loss(logits, b["labels"])


@pytest.mark.parametrize("side", ["right", "left"])
def test_caption_logits_equal_the_full_forward_and_the_head_sees_only_caption_rows(side):
    model, tok = perturbed_student()
    model.eval()
    b = _batch(tok, side)
    rows = []
    head = model.get_base_model().get_output_embeddings()
    hook = head.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[1]))
    with torch.no_grad():
        ref, ref_mask, ref_ce = _reference(model, b)
        got, mask, ce = forward_caption(model, b)
    hook.remove()
    assert accepts_logits_to_keep(model)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(got[mask], ref[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-5, atol=1e-6)
    seq = b["input_ids"].shape[1]
    # the reference ran the head on every position, the caption path on the union of captions
    assert rows[0] == seq and rows[1] < seq
    assert rows[1] == len({int(s) - 1 + j for s, n in zip(b["caption_start"], b["caption_len"],
                                                           strict=True) for j in range(int(n))})


def test_forward_caption_gradients_and_kd_equal_the_full_forward():
    model, tok = perturbed_student(seed=3)
    model.train()
    s, t = _batch(tok, seed=1), _batch(tok, seed=2)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in params]

    t_cap, _ = teacher_caption_logits(model, t, None)
    with torch.no_grad(), model.disable_adapter():  # the teacher: the base, adapter off
        t_ref, t_mask = align_caption_logits(
            model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits,
            t["caption_start"], t["caption_len"])
    assert not t_cap.requires_grad
    torch.testing.assert_close(t_cap[t_mask], t_ref[t_mask], rtol=1e-5, atol=1e-5)

    ref, mask, ce = _reference(model, s)
    g_ref = grads(ce + 0.5 * kd_loss(ref, t_ref, mask, 2.0))
    got, mask2, ce2 = forward_caption(model, s)
    g_got = grads(ce2 + 0.5 * kd_loss(got, t_cap, mask2, 2.0))
    assert len(g_ref) == len(g_got) > 0
    for a, g in zip(g_ref, g_got, strict=True):
        torch.testing.assert_close(g, a, rtol=1e-4, atol=1e-6)


def test_a_model_without_logits_to_keep_gets_the_full_forward():
    model, tok = perturbed_student()
    model.eval()
    b = _batch(tok)

    class Plain(torch.nn.Module):  # a forward that takes no logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    plain = Plain(model)
    assert not accepts_logits_to_keep(plain)
    with torch.no_grad():
        ref, mask, _ = _reference(model, b)
        got, mask2 = caption_logits(plain, b["input_ids"], b["attention_mask"],
                                    b["caption_start"], b["caption_len"])
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(got[mask], ref[mask], rtol=1e-5, atol=1e-5)


def test_caption_targets_are_the_caption_ids_and_refuse_labels_outside_the_captions():
    labels = torch.tensor([[-100, -100, 5, 6, 2, -100], [-100, 7, 2, -100, -100, -100]])
    start, length = torch.tensor([2, 1]), torch.tensor([3, 2])
    assert caption_targets(labels, start, length).tolist() == [[5, 6, 2], [7, 2, -100]]
    stray = labels.clone()
    stray[1, 4] = 9  # a target the caption span does not cover
    with pytest.raises(ValueError, match="outside"):
        caption_targets(stray, start, length)
    with pytest.raises(ValueError, match=">= 1"):
        caption_targets(labels, torch.tensor([0, 1]), length)
