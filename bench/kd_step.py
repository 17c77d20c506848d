"""KD step time / plain SFT step time on the same batch (goal <= 1.25), and the training MFU.

    python bench/kd_step.py [--batch 16] [--student-len 256] [--teacher-len 96] [--smoke]

One optimizer step of the speech student exactly as `train.stages.train_student` runs it (LoRA
+ trainable audio rows on the `tiny` preset, demo vocabulary): SFT = CE only; KD = the frozen
teacher's no-grad pass on the same weights (adapters disabled) + CE + KL. The two are timed
interleaved on the same batch. MFU: FLOPs torch executes in one step (FlopCounterMode, forward +
backward, both passes for KD) / step time / the peak of a matmul of the model's own shapes,
measured in the same process. Also reported for the from-scratch teacher stage (every weight
trained), whose step is the plainer case. Prints one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import (  # noqa: E402
    AUDIO_VOCAB,
    TEXT_VOCAB,
    caption_batch,
    count_flops,
    emit,
    interleaved,
    log,
    parser,
    setup_threads,
    tiny_model,
    tiny_student,
)


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--student-len", type=int, default=256, help="student prompt tokens (audio)")
    ap.add_argument("--teacher-len", type=int, default=64, help="teacher prompt tokens (text)")
    ap.add_argument("--caption-len", type=int, default=24)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--spread", type=float, default=0.1,
                    help="prompt lengths vary over this share of --student-len within the batch "
                         "(the demo's length-grouped batches: ~0.1)")
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    if args.smoke:
        args.batch, args.student_len, args.teacher_len, args.caption_len, args.preset = 2, 16, 8, 4, "micro"
    reps = args.reps or (1 if args.smoke else 3)

    from aligncap_core.model.losses import caption_ce_loss, kd_loss
    from aligncap_core.train.loop import param_groups
    from aligncap_core.train.stages import forward_caption, teacher_caption_logits

    vocab = TEXT_VOCAB + AUDIO_VOCAB
    model = tiny_student(args.preset, vocab)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-4)
    s = caption_batch(args.batch, args.student_len, args.caption_len, vocab, audio=True, seed=0,
                      spread=args.spread)
    t = caption_batch(args.batch, args.teacher_len, args.caption_len, vocab, audio=False, seed=0,
                      spread=args.spread)

    def sft_loss() -> torch.Tensor:
        return forward_caption(model, s)[2]

    def sft_full_head() -> torch.Tensor:  # before model.caption_head: the head at every position
        logits = model(input_ids=s["input_ids"], attention_mask=s["attention_mask"]).logits
        return caption_ce_loss(logits, s["labels"])

    def kd_total() -> torch.Tensor:  # train_student's compute_loss with lambda_kd = 1
        t_cap, _ = teacher_caption_logits(model, t, None)
        s_cap, mask, ce = forward_caption(model, s)
        return ce + 1.0 * kd_loss(s_cap, t_cap, mask, 1.0)

    def step(loss_fn) -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()

    # the from-scratch teacher stage: every weight trained, text batches
    teacher = tiny_model(args.preset, vocab)
    teacher.train()
    topt = torch.optim.AdamW(param_groups(teacher, 0.1), lr=1e-4)
    tb = caption_batch(args.batch, args.teacher_len, args.caption_len, vocab, audio=False, seed=1,
                       spread=args.spread)

    def teacher_step() -> None:
        topt.zero_grad(set_to_none=True)
        forward_caption(teacher, tb)[2].backward()
        topt.step()

    # the peak: matmuls of the model's own shapes, timed interleaved with the steps (same load)
    cfg = model.get_base_model().config
    n_tok = args.batch * (args.student_len + args.caption_len)
    shapes = [(n_tok, cfg.hidden_size, cfg.intermediate_size), (n_tok, cfg.hidden_size, vocab),
              (n_tok, cfg.hidden_size, cfg.hidden_size)] if not args.smoke else [(64, 64, 64)]
    mats = {f"{m}x{k}x{n}": (torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)) for m, k, n in shapes}
    peak_sides = {f"mm_{name}": (lambda a=a, b=b, o=o: [torch.mm(a, b, out=o) for _ in range(5)])
                  for name, (a, b, o) in mats.items()}

    log(f"kd_step: batch {args.batch}, student {args.student_len}+{args.caption_len}, "
        f"teacher {args.teacher_len}+{args.caption_len} tokens, {reps} reps")
    times = interleaved({"sft": lambda: step(sft_loss), "kd": lambda: step(kd_total),
                         "sft_full_head": lambda: step(sft_full_head),
                         "teacher_pass": lambda: teacher_caption_logits(model, t, None),
                         "teacher_stage": teacher_step, **peak_sides}, reps)
    flops = {"sft": count_flops(lambda: sft_loss().backward()),
             "kd": count_flops(lambda: kd_total().backward()),
             "sft_full_head": count_flops(lambda: sft_full_head().backward()),
             "teacher_stage": count_flops(lambda: forward_caption(teacher, tb)[2].backward())}
    opt.zero_grad(set_to_none=True)
    by_shape = {}
    for name, (a, b, _) in mats.items():
        by_shape[name] = 5 * 2 * a.shape[0] * a.shape[1] * b.shape[1] / times.pop(f"mm_{name}")
    pk = max(by_shape.values())
    peak = {"peak_gflops": round(pk / 1e9, 1),
            "gflops_by_shape": {k: round(v / 1e9, 1) for k, v in by_shape.items()}}

    def mfu(k: str) -> float:
        return round(flops[k] / max(times[k], 1e-9) / max(pk, 1.0), 3)

    return emit("kd_step", {
        "kd_over_sft": round(times["kd"] / times["sft"], 3),
        "goal_kd_over_sft": 1.25,
        "teacher_pass_share_of_kd": round(times["teacher_pass"] / times["kd"], 3),
        # the LM head at the caption positions only (model.caption_head) / at every position
        "caption_head_over_full_head_sft_step": round(times["sft"] / times["sft_full_head"], 3),
        "step_s": {k: round(v, 4) for k, v in times.items()},
        "gflop_per_step": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "mfu": {"sft": mfu("sft"), "kd": mfu("kd"), "teacher_stage": mfu("teacher_stage"),
                "sft_full_head": mfu("sft_full_head")},
        "goal_mfu": 0.40,
        **peak,
        "sizes": {"batch": args.batch, "student_tokens": args.student_len + args.caption_len,
                  "teacher_tokens": args.teacher_len + args.caption_len, "vocab": vocab,
                  "preset": args.preset},
    }, args.smoke)


if __name__ == "__main__":
    main()
