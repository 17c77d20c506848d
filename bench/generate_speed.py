"""Batched candidate generation vs a per-caption `generate` loop, captions per second (goal >= 10x).

    python bench/generate_speed.py [--clips 16] [--n 4] [--batch-size 64] [--smoke]

The preference round's sampling (`prefs.candidates.sample_candidates`: n samples per clip, many
clips per call, each clip's prompt prefilled once and its KV cache shared by its n samples,
audio tokens suppressed) against the plain loop that calls `generate` once per caption, on the
`tiny` preset with the demo's vocabulary and audio prompts of the demo's length. Every side
generates exactly `max_new_tokens` tokens per caption (eos is suppressed too, so a random-weight
model cannot end early on one side only). Also reported: one call per clip (its n samples from
one prefill), and the previous batched path that repeats each prompt n times in one `generate`
batch (every prompt prefilled n times). Prints one JSON object.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import (  # noqa: E402
    AUDIO_VOCAB,
    TEXT_VOCAB,
    emit,
    log,
    parser,
    setup_threads,
    tiny_student,
)


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--n", type=int, default=4, help="candidates per clip")
    ap.add_argument("--batch-size", type=int, default=64, help="rows per batched generate call")
    ap.add_argument("--prompt-len", type=int, default=200, help="prompt tokens (demo: ~180 audio + ~14 text)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    if args.smoke:
        args.clips, args.n, args.batch_size, args.prompt_len, args.max_new_tokens, args.preset = 2, 2, 4, 8, 3, "micro"

    from aligncap_core.model.generate import GenerationSettings, generate_token_ids

    vocab = TEXT_VOCAB + AUDIO_VOCAB
    model = tiny_student(args.preset, vocab).eval()
    tok = SimpleNamespace(eos_token_id=2, pad_token_id=0)
    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(TEXT_VOCAB, vocab, (args.prompt_len - 1,), generator=g).tolist()
               for _ in range(args.clips)]
    suppress = [2, *range(TEXT_VOCAB, vocab)]  # audio tokens (as sample_candidates) + eos

    def run(rows: list[list[int]], batch_size: int, n: int = 1) -> float:
        """Seconds to sample n captions per row of `rows` (n > 1: shared-prefix path)."""
        s = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=True, top_p=0.9,
                               batch_size=batch_size, num_return_sequences=n)
        t = time.perf_counter()
        out = generate_token_ids(model, tok, rows, s, suppress, generator_seed=0)
        dt = time.perf_counter() - t
        assert len(out) == len(rows) * n
        assert all(len(o) == args.max_new_tokens for o in out), "a caption ended early"
        return dt

    expanded = [p for p in prompts for _ in range(args.n)]
    n_caps = len(expanded)
    log(f"generate: {args.clips} clips x {args.n} candidates, prompt {args.prompt_len}, "
        f"{args.max_new_tokens} new tokens")
    run(prompts[:1], args.n, args.n)  # warm-up, both paths
    run(expanded[:2], 2)
    # interleave so that load bursts hit every side; the per-caption loop is timed on a subset
    # of clips (it is the slow side) and scaled per caption
    n_sub = max(1, min(args.clips, 4))
    sub = n_sub * args.n
    t_batched, t_loop, t_clip, t_rep = [], [], [], []
    for _ in range(1 if args.smoke else 2):
        # what sample_candidates does: batch_size rows = batch_size // n clips x n samples
        t_batched.append(run(prompts, args.batch_size, args.n) / n_caps)
        t_loop.append(sum(run([row], 1) for row in expanded[:sub]) / sub)
        t_clip.append(sum(run([p], args.n, args.n) for p in prompts[:n_sub]) / sub)
        t_rep.append(run(expanded, args.batch_size) / n_caps)
    b, lp, cl, rp = min(t_batched), min(t_loop), min(t_clip), min(t_rep)
    return emit("generate_speed", {
        "batched_over_per_caption_loop": round(lp / b, 2),
        "goal_batched_over_loop": 10.0,
        "batched_over_per_clip_calls": round(cl / b, 2),
        "shared_prefix_over_repeated_prompts": round(rp / b, 2),
        "captions_per_s": {"batched": round(1 / b, 2), "per_caption_loop": round(1 / lp, 2),
                           "per_clip_calls": round(1 / cl, 2),
                           "batched_repeated_prompts": round(1 / rp, 2)},
        "sizes": {"clips": args.clips, "n": args.n, "batch_size": args.batch_size,
                  "prompt_len": args.prompt_len, "max_new_tokens": args.max_new_tokens,
                  "preset": args.preset},
    }, args.smoke)


if __name__ == "__main__":
    main()
