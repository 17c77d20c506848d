"""DPO round: step time with precomputed reference log-probs vs computing them on the fly.

    python bench/dpo_round.py [--pairs 24] [--batch-size 8] [--steps 4] [--smoke]

Runs `prefs.dpo.build_dpo_trainer` (the PO-Regularized DPO trainer with the KD term,
lambda_kd = 0.5) on a `tiny`-preset student with the demo's vocabulary and audio prompts of
the demo's length, twice per repetition: as shipped (`precompute_ref_log_probs=True`: the
policy itself scores every pair once when the trainer is built) and with the reference forward
run inside every step (the same builder with that one setting flipped and, since the policy
moves during training, a frozen merged copy of it as the reference).
Step times are the median per-step wall times of `trainer.train()` (a callback; the first step
is dropped as warm-up). Round time = precompute + steps x step time. Prints one JSON object.
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import AUDIO_VOCAB, TEXT_VOCAB, emit, log, parser, scratch_dir, setup_threads  # noqa: E402

CAPTIONS = ["A man speaks slowly in a low, heavy voice, sounding sad.",
            "A woman speaks quickly in a high, trembling voice, sounding excited.",
            "She whispers softly, sounding fearful.",
            "The speaker sounds calm and talks at a normal pace.",
            "A loud, angry male voice shouts fast, sounding furious and tense."]
TEACHER = ("Kids are talking by the door. Emotional clues: pitch low; speed slow; tone heavy, sad. "
           "Describe how the speaker sounds.")
INSTRUCTION = "Listen to the speech and describe how the speaker sounds."


def _student(preset: str):
    """(student PeftModel, tokenizer): a from-scratch base of `preset` with a tokenizer trained
    on a few captions, the audio tokens added and the embedding grown to the demo's size."""
    from aligncap_core.codec import audio_token_vocab
    from aligncap_core.model.base import add_audio_tokens, build_tiny_base, load_base
    from aligncap_core.model.config import LoraSettings
    from aligncap_core.model.lora import make_student

    base = build_tiny_base(preset, (CAPTIONS + [TEACHER, INSTRUCTION]) * 8,
                           scratch_dir("bench-dpo-") / "base")
    model, tok = load_base(base, dtype=torch.float32)
    ids = add_audio_tokens(model, tok, audio_token_vocab(2))
    model.resize_token_embeddings(max(len(tok), TEXT_VOCAB + AUDIO_VOCAB))  # the demo's lm_head width
    torch.manual_seed(0)
    return make_student(model, ids, LoraSettings()), tok


def _pairs(n: int, prompt_len: int) -> list[dict]:
    from aligncap_core.codec import audio_token_vocab
    from aligncap_core.prefs.candidates import student_prompt_text

    audio = audio_token_vocab(2)[2:]
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        toks = [audio[j] for j in torch.randint(len(audio), (prompt_len,), generator=g).tolist()]
        rows.append({"id": f"clip-{i}", "prompt": student_prompt_text(INSTRUCTION, toks),
                     "chosen": CAPTIONS[i % 5], "rejected": CAPTIONS[(i + 2) % 5],
                     "teacher_text": TEACHER})
    return rows


class _StepTimer:
    def __init__(self):
        self.t0, self.steps = 0.0, []

    def on_step_begin(self, *a, **k):
        self.t0 = time.perf_counter()

    def on_step_end(self, *a, **k):
        self.steps.append(time.perf_counter() - self.t0)


def _frozen_copy(policy):
    """A reference that stays the round-k policy while the policy trains: its active adapter
    merged into a copy of the base (what an on-the-fly reference forward needs)."""
    ref = copy.deepcopy(policy).merge_and_unload(adapter_names=[policy.active_adapter])
    ref.eval()
    return ref.requires_grad_(False)


def _run(policy, tok, pairs, cfg, precompute: bool) -> dict[str, float]:
    import trl
    from transformers import TrainerCallback

    from aligncap_core.prefs import dpo
    from aligncap_core.prefs.dpo import build_dpo_trainer

    real, real_ref = trl.DPOConfig, dpo.PolicyReference

    def config(*a, **k):
        k["precompute_ref_log_probs"] = precompute
        return real(*a, **k)

    timer = type("StepTimer", (_StepTimer, TrainerCallback), {})()
    with tempfile.TemporaryDirectory(prefix="bench-dpo-work-") as work:
        trl.DPOConfig = config
        if not precompute:
            dpo.PolicyReference = _frozen_copy
        try:
            t = time.perf_counter()
            trainer = build_dpo_trainer(copy.deepcopy(policy), tok, pairs, None, cfg, work)
            build_s = time.perf_counter() - t
        finally:
            trl.DPOConfig, dpo.PolicyReference = real, real_ref
        trainer.add_callback(timer)
        trainer.train()
    steps = timer.steps[1:] or timer.steps
    return {"build_s": build_s, "step_s": statistics.median(steps)}


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per step (demo: 8)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=180, help="audio tokens per prompt")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--round-steps", type=int, default=30, help="steps of the demo's round")
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    if args.smoke:
        args.pairs, args.batch_size, args.steps, args.prompt_len, args.preset = 4, 2, 2, 8, "micro"
    reps = args.reps or 1

    from aligncap_core.prefs.dpo import DPORoundConfig

    policy, tok = _student(args.preset)
    pairs = _pairs(args.pairs, args.prompt_len)
    cfg = DPORoundConfig(max_steps=args.steps, batch_size=args.batch_size, lambda_kd=0.5,
                         max_length=None, logging_steps=1000)
    log(f"dpo: {args.pairs} pairs, batch {args.batch_size}, {args.steps} steps, prompt "
        f"{args.prompt_len} audio tokens, {reps} reps")
    res: dict[str, list[dict]] = {"precomputed": [], "on_the_fly": []}
    for _ in range(reps):  # interleaved
        res["precomputed"].append(_run(policy, tok, pairs, cfg, precompute=True))
        res["on_the_fly"].append(_run(policy, tok, pairs, cfg, precompute=False))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("build_s", "step_s")}
           for k, v in res.items()}
    pre, fly = med["precomputed"], med["on_the_fly"]
    precompute_s = max(pre["build_s"] - fly["build_s"], 0.0)
    per_pair = precompute_s / args.pairs
    # the demo's round: ~clips_per_round pairs scored once, round_steps steps
    demo_pairs = 96
    round_pre = per_pair * demo_pairs + args.round_steps * pre["step_s"]
    round_fly = args.round_steps * fly["step_s"]
    return emit("dpo_round", {
        "on_the_fly_over_precomputed_step": round(fly["step_s"] / pre["step_s"], 3),
        "step_s": {"precomputed": round(pre["step_s"], 3), "on_the_fly": round(fly["step_s"], 3)},
        "precompute_s_per_pair": round(per_pair, 4),
        "demo_round_estimate_s": {"precomputed": round(round_pre, 1), "on_the_fly": round(round_fly, 1),
                                  "pairs": demo_pairs, "steps": args.round_steps},
        "sizes": {"pairs": args.pairs, "batch_size": args.batch_size, "steps": args.steps,
                  "prompt_len": args.prompt_len, "preset": args.preset, "lambda_kd": 0.5},
    }, args.smoke)


if __name__ == "__main__":
    main()
