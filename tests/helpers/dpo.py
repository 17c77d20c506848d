"""A round-0 DPO policy on the micro model and a pairs file sampled "from" it, for the DPO tests."""

from __future__ import annotations

from pathlib import Path

import torch

from aligncap_core.model.checkpoint import load_checkpoint, save_checkpoint
from aligncap_core.prefs.candidates import student_prompt_text
from aligncap_core.prefs.pairs import write_pairs
from tests.helpers.models import audio_vocab, micro_base_dir, perturbed_student

INSTRUCTION = "Describe how the speaker sounds."
CAPTIONS = [("A man speaks slowly in a low, heavy voice, sounding sad.",
             "A loud, angry male voice shouts fast."),
            ("A woman speaks quickly in a high, trembling voice, sounding excited.",
             "The speaker sounds calm and talks at a normal pace."),
            ("She whispers softly, sounding fearful.", "A loud, angry male voice shouts fast."),
            ("The speaker sounds calm and talks at a normal pace.",
             "She whispers softly, sounding fearful.")]
TEACHER = "Kids are talking by the door. Emotional clues: pitch low. Describe how the speaker sounds."


def toy_prompt(i: int) -> str:
    return student_prompt_text(INSTRUCTION, audio_vocab()[2 + 3 * i: 10 + 3 * i])


def make_round0(root):
    """A round-0 policy checkpoint whose adapter is *not* zero (so policy != base) and a pairs
    file sampled 'from' it: (checkpoint, pairs path)."""
    student, tok = perturbed_student()
    ckpt = save_checkpoint(root / "round-0", student, tok, stage="distill", step=10,
                           base_model=str(micro_base_dir()))
    rows = [{"id": f"clip-{i}", "prompt": toy_prompt(i), "chosen": c, "rejected": r,
             "chosen_score": 9.0, "rejected_score": 3.0, "margin": 6.0, "teacher_text": TEACHER,
             "provenance": {"round": 1, "policy": str(ckpt), "judge": "rubric",
                            "strategy": "golden_vs_sample"}}
            for i, (c, r) in enumerate(CAPTIONS)]
    return ckpt, write_pairs(root / "pairs.jsonl", rows)


def dpo_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    model, _, meta = load_checkpoint(ckpt, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k or "trainable_tokens" in k}
