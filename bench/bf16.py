"""bf16 against fp32 on this CPU: both matmul peaks, the kernels that ran, and the bf16 / fp32
time of a KD step, a DPO step, a caption batch and EnCodec encoding, all in one process.

    python bench/bf16.py [--threads 1] [--reps 3] [--data DATA_DIR] [--smoke]

Every pair is timed interleaved (fp32, bf16, fp32, bf16 ...; medians), so a neighbour's load
hits both sides alike. Each bf16 side is what the library runs where `dtype: auto` resolves to
bf16 (`aligncap_core.precision`):
  kd_step     `train.stages.train_student`'s step: the LoRA student on its frozen base (bf16
              weights, fp32 adapter and audio rows, bf16 autocast, LoRA inputs left in bf16,
              fused AdamW; fp32: the shipped fp32 step), teacher pass + CE + KL, clip, step;
              also `autocast_only`: bf16 autocast on the fp32 student, as it ran before;
  teacher     the from-scratch teacher stage's step (every weight trained: fp32 master weights);
  dpo_step    `prefs.dpo.build_dpo_trainer` (TRL) with the KD term, dtype bf16 vs fp32;
  caption     `Captioner.caption_codes` of a batch of 3 s clips, greedy and the default
              consistent decoding, `Captioner.load(dtype=...)`;
  encodec     the EnCodec encoder (weight norm folded) in bf16 against the shipped fp32 one,
              one clip at a time on one thread; with the share of codes that stay identical.
MFU: FLOPs torch executes in a step (FlopCounterMode) / step time / the matmul peak of the
dtype that ran, measured here at the model's shapes. Kernels: the oneDNN primitives a bf16
matmul and a bf16 KD step executed (ONEDNN_VERBOSE; fp32 matmuls run in MKL, which oneDNN
does not report). Profile: the top ops of both KD steps (torch profiler, self time).
On a CPU without bf16 units the script says so and times nothing in bf16 (bf16 is emulated
there; `dtype: auto` stays fp32), unless --smoke. Prints one JSON object.
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
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
    scratch_dir,
    setup_threads,
    tiny_model,
)

BF16 = torch.bfloat16


def onednn_kernels(fn) -> dict[str, int]:
    """{oneDNN implementation name: executions} while fn() runs (its verbose log, read from
    file descriptor 1); {} when oneDNN ran nothing (fp32 matmuls go to MKL)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as f:
        os.dup2(f.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                fn()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        out: dict[str, int] = {}
        for line in f:
            parts = line.split(",")
            if len(parts) > 7 and parts[2] == "primitive" and parts[3] == "exec":
                key = f"{parts[5]}:{parts[6]}"  # e.g. matmul:brg_matmul:avx10_1_512_amx
                out[key] = out.get(key, 0) + 1
    return out


def peaks(shapes: list[tuple[int, int, int]], reps: int) -> dict:
    """fp32 and bf16 GFLOP/s at each (m, k, n), timed interleaved; the best shape of each dtype
    is its peak for this workload."""
    mats = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        mats[f"fp32 {m}x{k}x{n}"] = (a, b, 2 * m * k * n)
        mats[f"bf16 {m}x{k}x{n}"] = (a.to(BF16), b.to(BF16), 2 * m * k * n)
    t = interleaved({k: (lambda a=a, b=b: [torch.mm(a, b) for _ in range(5)])
                     for k, (a, b, _) in mats.items()}, reps)
    by = {k: round(5 * f / t[k] / 1e9, 1) for k, (_, _, f) in mats.items()}
    out = {dt: {"peak_gflops": max(v for k, v in by.items() if k.startswith(dt)),
                "gflops_by_shape": {k.split()[1]: v for k, v in by.items() if k.startswith(dt)}}
           for dt in ("fp32", "bf16")}
    a, b, _ = mats[next(iter(mats)).replace("fp32", "bf16")]
    out["kernels"] = {"fp32": onednn_kernels(lambda: torch.mm(a.float(), b.float())) or "MKL (no oneDNN primitive)",
                      "bf16": onednn_kernels(lambda: torch.mm(a, b))}
    return out


# ---- KD step and teacher step -------------------------------------------------------------------
def _student(preset: str, vocab: int, weights: torch.dtype):
    """The student as `train_student` builds it: the base loaded in `weights`, the LoRA adapter
    and audio rows added, trainable parameters in fp32 (`Runtime.prepare`)."""
    from aligncap_core.model.config import LoraSettings
    from aligncap_core.model.lora import make_student
    from aligncap_core.train.runtime import upcast_trainable

    base = tiny_model(preset, vocab).to(weights)
    torch.manual_seed(1)
    student = make_student(base, list(range(vocab - AUDIO_VOCAB, vocab)), LoraSettings())
    upcast_trainable(student)
    return student.train()


def train_steps(args, reps: int) -> dict:
    from aligncap_core.model.lora import set_lora_input_casting
    from aligncap_core.model.losses import kd_loss
    from aligncap_core.train.loop import param_groups
    from aligncap_core.train.stages import forward_caption, teacher_caption_logits

    vocab = TEXT_VOCAB + AUDIO_VOCAB
    s = caption_batch(args.batch, args.student_len, args.caption_len, vocab, audio=True, spread=0.1)
    t = caption_batch(args.batch, args.teacher_len, args.caption_len, vocab, audio=False, spread=0.1)
    tb = caption_batch(args.batch, args.teacher_len, args.caption_len, vocab, audio=False, seed=1,
                       spread=0.1)
    sides = {}
    # autocast_only: bf16 as it ran before this page's bf16 work (`train.dtype: bf16` on the
    # fp32 base: autocast alone), for the before / after table
    # bf16_compiled (--compile): the bf16 step with the KD loss's forward and backward compiled by
    # torch.compile (Inductor, CPU): can fusing the elementwise chain and casts lower the floor?
    kinds = [("fp32", torch.float32), ("bf16", BF16), ("autocast_only", torch.float32)]
    for dt, weights in kinds + ([("bf16_compiled", BF16)] if args.compile else []):
        def amp(dt=dt):
            return torch.autocast("cpu", dtype=BF16) if dt != "fp32" else contextlib.nullcontext()

        student = _student(args.preset, vocab, weights)
        bf16_path = dt in ("bf16", "bf16_compiled")
        if bf16_path:  # what fit does under autocast (model.lora.set_lora_input_casting)
            set_lora_input_casting(student, False)
        # fit's default: fused AdamW on a CPU training in bf16, the per-parameter loop in fp32
        opt = torch.optim.AdamW(param_groups(student, 0.0), lr=1e-4, fused=bf16_path)
        teacher = tiny_model(args.preset, vocab).train()
        topt = torch.optim.AdamW(param_groups(teacher, 0.1), lr=1e-4, fused=bf16_path)

        def kd_loss_fn(student=student, amp=amp):
            with amp():
                t_cap, _ = teacher_caption_logits(student, t, None)
                s_cap, mask, ce = forward_caption(student, s)
                return ce + kd_loss(s_cap, t_cap, mask, 1.0)

        def kd_step(student=student, opt=opt,
                    loss_fn=torch.compile(kd_loss_fn) if dt == "bf16_compiled" else kd_loss_fn):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], 1.0)
            opt.step()
            return float(loss.detach())

        def teacher_step(teacher=teacher, topt=topt, amp=amp):
            topt.zero_grad(set_to_none=True)
            with amp():
                loss = forward_caption(teacher, tb)[2]
            loss.backward()
            topt.step()

        sides[dt] = {"kd": kd_step, "teacher": teacher_step, "loss_fn": kd_loss_fn, "model": student}
    first, first_s = {}, {}
    for dt in sides:  # same weights and batch: comparable; the compiled side compiles here
        t0 = time.perf_counter()
        first[dt] = round(sides[dt]["kd"](), 4)
        first_s[dt] = round(time.perf_counter() - t0, 2)
    times = interleaved({f"{w}_{dt}": sides[dt][w] for w in ("kd", "teacher") for dt in sides
                         if w == "kd" or dt in ("fp32", "bf16")}, reps)
    flops = {"kd": count_flops(lambda: sides["fp32"]["loss_fn"]().backward()),
             "teacher": count_flops(lambda: forward_caption(tiny_model(args.preset, vocab), tb)[2].backward())}
    kernels = onednn_kernels(sides["bf16"]["kd"])
    prof = {dt: top_ops(sides[dt]["kd"]) for dt in ("fp32", "bf16")} if not args.smoke else {}
    return {"times": times, "flops": flops, "first_loss": first, "first_step_s": first_s,
            "kernels": kernels, "profile": prof}


MATMUL_OPS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::linear"}
RNG_OPS = {"aten::uniform_", "aten::random_", "aten::bernoulli_"}


def top_ops(fn, n: int = 12) -> dict:
    """One profiled fn(): `top` = [op, self ms, share] of the n ops with the most self CPU time,
    `ms` = self time by kind (matmul, attention, rng, other: elementwise ops, casts, copies,
    reductions, Python-side dispatch)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    ev = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ev) or 1
    kinds = {"matmul": 0.0, "attention": 0.0, "rng": 0.0, "other": 0.0}
    for e in ev:
        kind = ("matmul" if e.key in MATMUL_OPS else "attention" if "scaled_dot_product" in e.key
                else "rng" if e.key in RNG_OPS else "other")
        kinds[kind] += e.self_cpu_time_total / 1e3
    return {"top": [[e.key, round(e.self_cpu_time_total / 1e3, 1), round(e.self_cpu_time_total / total, 3)]
                    for e in ev[:n]],
            "ms": {k: round(v, 1) for k, v in kinds.items()}, "total_ms": round(total / 1e3, 1)}


def floor(prof: dict) -> dict | None:
    """What the profiles say about bf16 / fp32 of the step: `if_matmuls_were_free` = the bf16
    step without its matmul time over the fp32 step (both profiled): no faster matrix unit can
    take the ratio below it."""
    if not prof:
        return None
    b, f = prof["bf16"], prof["fp32"]
    return {"profiled_bf16_over_fp32": round(b["total_ms"] / f["total_ms"], 3),
            "if_matmuls_were_free": round((b["total_ms"] - b["ms"]["matmul"]) / f["total_ms"], 3),
            "matmul_share": {"fp32": round(f["ms"]["matmul"] / f["total_ms"], 3),
                             "bf16": round(b["ms"]["matmul"] / b["total_ms"], 3)}}


# ---- DPO step -----------------------------------------------------------------------------------
def dpo_steps(args, reps: int) -> dict:
    from transformers import TrainerCallback

    from aligncap_core.prefs.dpo import DPORoundConfig, build_dpo_trainer
    from bench.dpo_round import _pairs, _StepTimer, _student

    policy, tok = _student(args.preset)
    pairs = _pairs(args.dpo_pairs, args.prompt_len)

    def run(dt: str) -> dict:
        cfg = DPORoundConfig(max_steps=args.dpo_steps, batch_size=args.dpo_batch, lambda_kd=0.5,
                             max_length=None, logging_steps=1000, dtype=dt, weights_dtype=dt)
        p = copy.deepcopy(policy)
        if dt == "bf16":  # what run_dpo_round loads: the frozen base in bf16
            for q in p.parameters():
                if not q.requires_grad:
                    q.data = q.data.to(BF16)
        timer = type("StepTimer", (_StepTimer, TrainerCallback), {})()
        with tempfile.TemporaryDirectory(prefix="bench-bf16-dpo-") as work:
            t0 = time.perf_counter()
            trainer = build_dpo_trainer(p, tok, pairs, None, cfg, work)
            build = time.perf_counter() - t0
            trainer.add_callback(timer)
            trainer.train()
        steps = timer.steps[1:] or timer.steps
        return {"step_s": statistics.median(steps), "build_s": build,
                "loss": trainer.state.log_history[-1].get("train_loss")}

    res: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for _ in range(max(1, reps - 1)):  # interleaved; a round is several steps already
        for dt in res:
            res[dt].append(run(dt))
    return {dt: {k: statistics.median(r[k] for r in v) if v[0][k] is not None else None
                 for k in v[0]} for dt, v in res.items()}


# ---- caption batch ------------------------------------------------------------------------------
def caption_batches(args, reps: int) -> dict:
    from aligncap_core.inference.captioner import Captioner
    from aligncap_core.inference.consistent import DecodingSettings
    from bench.serving import _fix_caption_length, _speechlike, build_checkpoint

    work = scratch_dir("bench-bf16-caption-")
    ckpt = build_checkpoint(work, args.preset, args.smoke)
    _fix_caption_length(ckpt, args.caption_tokens)
    caps = {dt: Captioner.load(ckpt, device="cpu", dtype=dt) for dt in ("fp32", "bf16")}
    waves = [_speechlike(3.0 * (0.8 + 0.4 * (i % 5) / 4), i) for i in range(args.clips)]
    codes = caps["fp32"].encode_waves(waves)
    settings = caps["fp32"].default_settings()
    out = {}
    for strategy in ("greedy", "consistent"):
        d = DecodingSettings(strategy=strategy)
        texts = {dt: c.caption_codes(codes, settings, d) for dt, c in caps.items()}  # + warm-up
        t = interleaved({dt: (lambda c=c, d=d: c.caption_codes(codes, settings, d)) for dt, c in caps.items()}, reps)
        out[strategy] = {"s": {k: round(v, 4) for k, v in t.items()},
                         "bf16_over_fp32": round(t["bf16"] / t["fp32"], 3),
                         "same_captions": sum(a == b for a, b in zip(texts["fp32"], texts["bf16"], strict=True))}
        if strategy == "greedy" and not args.smoke:
            prof = {dt: top_ops(lambda c=c, d=d: c.caption_codes(codes, settings, d)) for dt, c in caps.items()}
            out[strategy].update(floor=floor(prof), profile=prof)
    out["clips"] = len(codes)
    return out


# ---- EnCodec ------------------------------------------------------------------------------------
def bf16_encoder(encoder: torch.nn.Module) -> torch.nn.Module:
    """A bf16 copy of EnCodec's encoder with its weight norm folded into the weights (else every
    call recomputes and re-casts every conv weight)."""
    import torch.nn.utils.parametrize as P

    enc = copy.deepcopy(encoder)
    for mod in enc.modules():
        if P.is_parametrized(mod):
            for name in list(mod.parametrizations.keys()):
                P.remove_parametrizations(mod, name, leave_parametrized=True)
    return enc.to(BF16).eval()


def encodec(args, reps: int) -> dict:
    from aligncap_core.codec import EncodecTokenizer
    from bench.codec_speed import _random_codec, _wavs

    tok = (EncodecTokenizer.from_pretrained(args.data / "codec") if args.data else _random_codec())
    wavs = _wavs(args.data, args.encodec_clips, tok.sample_rate)
    audio_s = sum(len(w) for w in wavs) / tok.sample_rate
    # a fresh copy: deep-copying a parametrized module shares its parametrizations
    src = EncodecTokenizer.from_pretrained(args.data / "codec") if args.data else _random_codec()
    enc16 = bf16_encoder(src.model.encoder)

    @torch.inference_mode()
    def encode16(w: np.ndarray) -> np.ndarray:
        x, (n,) = tok._padded_batch([w])
        h = x.to(BF16)
        for layer in enc16.layers:
            h = layer(h)
        return tok.quantize(h.float()[:, :, :n])[:, 0].numpy().astype(np.int16)

    from aligncap_core.codec.tokenizer import torch_threads

    with torch_threads(1):
        ref = [tok.encode([w], num_threads=1)[0] for w in wavs]
        got = [encode16(w) for w in wavs]
        t = interleaved({"fp32": lambda: [tok.encode([w], num_threads=1) for w in wavs],
                         "bf16": lambda: [encode16(w) for w in wavs]}, reps, warmup=0)
        kernels = onednn_kernels(lambda: encode16(wavs[0]))
    same = [float(np.mean(a == b)) for a, b in zip(ref, got, strict=True)]
    return {"x_realtime_one_thread": {k: round(audio_s / v, 1) for k, v in t.items()},
            "bf16_over_fp32": round(t["bf16"] / t["fp32"], 3),
            "codes_identical_share": round(float(np.mean(same)), 5),
            "clips_bitwise_equal": sum(np.array_equal(a, b) for a, b in zip(ref, got, strict=True)),
            "clips": len(wavs), "audio_s": round(audio_s, 1),
            "codec": "calibrated (--data)" if args.data else "random-init, random codebooks",
            "kernels_bf16": kernels}


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--data", type=Path, default=None, help="a prepared data dir: its codec and clips")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--student-len", type=int, default=256)
    ap.add_argument("--teacher-len", type=int, default=64)
    ap.add_argument("--caption-len", type=int, default=24)
    ap.add_argument("--dpo-pairs", type=int, default=16)
    ap.add_argument("--dpo-batch", type=int, default=8)
    ap.add_argument("--dpo-steps", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=180)
    ap.add_argument("--clips", type=int, default=16, help="clips of the caption batch")
    ap.add_argument("--caption-tokens", type=int, default=24)
    ap.add_argument("--encodec-clips", type=int, default=8)
    ap.add_argument("--only", default="", help="comma-separated parts: train,dpo,caption,encodec")
    ap.add_argument("--compile", action="store_true", help="also time the bf16 KD step with its loss "
                    "compiled by torch.compile (Inductor; compiling takes minutes on 2 cores)")
    args = ap.parse_args(argv)
    threads = setup_threads(args.threads)
    if args.smoke:
        args.preset, args.batch, args.student_len, args.teacher_len, args.caption_len = "micro", 2, 16, 8, 4
        args.dpo_pairs, args.dpo_batch, args.dpo_steps, args.prompt_len = 4, 2, 2, 8
        args.clips, args.caption_tokens, args.encodec_clips = 2, 3, 2
    reps = args.reps or (1 if args.smoke else 3)

    from aligncap_core.precision import cpu_bf16, cpu_flags

    probe = cpu_bf16()
    flags = cpu_flags()
    result: dict = {
        "bf16_units": probe.units, "dtype_auto": "bf16" if probe.use_bf16 else "fp32",
        "probe": {"reason": probe.reason, "fp32_gflops": probe.fp32_gflops,
                  "bf16_gflops": probe.bf16_gflops},
        "cpu_flags": sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2",
                                                              "avx_vnni", "avx512_fp16"))),
    }
    vocab = TEXT_VOCAB + AUDIO_VOCAB
    n_tok = args.batch * (args.student_len + args.caption_len)
    shapes = [(n_tok, 256, 688), (n_tok, 688, 256), (n_tok, 256, 256), (n_tok // 4, 256, vocab)]
    result["peaks"] = peaks(shapes if not args.smoke else [(64, 64, 64)], reps)
    if not probe.units and not args.smoke:
        result["note"] = "no bf16 units: bf16 is emulated on this CPU; dtype auto stays fp32"
        return emit("bf16", result, args.smoke)
    only = set(filter(None, args.only.split(","))) or {"train", "dpo", "caption", "encodec"}
    pk = {dt: result["peaks"][dt]["peak_gflops"] * 1e9 for dt in ("fp32", "bf16")}
    if "train" in only:
        log("bf16: KD step and teacher step")
        tr = train_steps(args, reps)
        t = tr["times"]
        result["kd_step"] = {
            "s": {dt: round(t[f"kd_{dt}"], 4) for dt in ("fp32", "bf16", "autocast_only")},
            "bf16_over_fp32": round(t["kd_bf16"] / t["kd_fp32"], 3), "goal_bf16_over_fp32": 0.40,
            "autocast_only_over_fp32": round(t["kd_autocast_only"] / t["kd_fp32"], 3),
            "gflop": round(tr["flops"]["kd"] / 1e9, 2),
            "mfu": {dt: round(tr["flops"]["kd"] / t[f"kd_{dt}"] / pk[dt], 3) for dt in ("fp32", "bf16")},
            "goal_mfu_bf16": 0.25, "loss_at_same_weights": tr["first_loss"],
            "kernels_bf16": tr["kernels"], "floor": floor(tr["profile"]),
            "profile": tr["profile"]}
        if args.compile:
            result["kd_step"]["compiled"] = {
                "s": round(t["kd_bf16_compiled"], 4),
                "over_bf16_eager": round(t["kd_bf16_compiled"] / t["kd_bf16"], 3),
                "over_fp32": round(t["kd_bf16_compiled"] / t["kd_fp32"], 3),
                "compile_s": tr["first_step_s"]["bf16_compiled"]}
        result["teacher_step"] = {
            "s": {dt: round(t[f"teacher_{dt}"], 4) for dt in ("fp32", "bf16")},
            "bf16_over_fp32": round(t["teacher_bf16"] / t["teacher_fp32"], 3),
            "gflop": round(tr["flops"]["teacher"] / 1e9, 2),
            "mfu": {dt: round(tr["flops"]["teacher"] / t[f"teacher_{dt}"] / pk[dt], 3)
                    for dt in ("fp32", "bf16")}}
    if "dpo" in only:
        log("bf16: DPO step")
        d = dpo_steps(args, reps)
        result["dpo_step"] = {"s": {dt: round(d[dt]["step_s"], 4) for dt in d},
                              "bf16_over_fp32": round(d["bf16"]["step_s"] / d["fp32"]["step_s"], 3),
                              "build_s_incl_reference_pass": {dt: round(d[dt]["build_s"], 3) for dt in d},
                              "train_loss": {dt: d[dt]["loss"] for dt in d}}
    if "caption" in only:
        log("bf16: caption batch")
        result["caption_batch"] = {**caption_batches(args, reps), "goal_bf16_over_fp32": 0.40}
    if "encodec" in only:
        log("bf16: EnCodec")
        result["encodec"] = {**encodec(args, reps), "goal_x_realtime": 50.0}
    result["sizes"] = {"preset": args.preset, "batch": args.batch, "threads": threads,
                       "student_tokens": args.student_len + args.caption_len,
                       "teacher_tokens": args.teacher_len + args.caption_len, "vocab": vocab}
    return emit("bf16", result, args.smoke)


if __name__ == "__main__":
    main()
