"""EnCodec tokenization speed in x real time: the dataset path vs a per-clip loop (goal >= 50x).

    python bench/codec_speed.py [DATA_DIR] [--codec DIR] [--n 48] [--smoke]

DATA_DIR: a prepared dataset (manifest.jsonl) and its codec (default DATA_DIR/codec); without
it, `--n` clips of the built-in espeak corpus are synthesized into a temporary folder and a
random-init EnCodec with random codebooks is used (speed does not depend on the codebooks).
Audio is read and resampled before timing, so only encoding is measured. Sides, timed
interleaved on the same clips:
  parallel   `EncodecTokenizer.encode` as `tokenize_dataset` runs it: one clip per call, each op
             on one intra-op thread, clips on parallel threads (codec.tokenizer module doc);
  per_clip   a loop of `encode([clip])` on one thread;
  batch4/16  length-bucketed batches of 4 / 16 clips per encoder call (parallel over buckets);
  legacy     the previous default: one clip at a time on 2 intra-op threads (first 8 clips).
Also: encoder FLOPs per audio second and the measured matmul peak, whose ratio bounds the x
real time this machine can reach in fp32; and the k-means assign step, fused vs the previous one.
Prints one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import emit, interleaved, log, matmul_peak, parser, scratch_dir, setup_threads  # noqa: E402


def _random_codec():
    from transformers import EncodecConfig, EncodecModel

    from aligncap_core.codec import EncodecTokenizer

    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig())
    for layer in model.quantizer.layers[:2]:
        layer.codebook.embed.normal_()
    return EncodecTokenizer(model, n_q=2)


def _wavs(data_dir: Path | None, n: int, sr: int) -> list[np.ndarray]:
    from aligncap_core.codec import read_audio
    from aligncap_core.utils import read_jsonl

    if data_dir is None:
        from aligncap_core.data.synth.corpus import synthesize_corpus

        data_dir = scratch_dir("bench-codec-")
        synthesize_corpus(n=n, seed=0, out_dir=data_dir, workers=1, show_progress=False)
    rows = read_jsonl(data_dir / "manifest.jsonl")[:n]
    return [read_audio(data_dir / r["audio"], sr) for r in rows]


def _encoder_flops(tok, wav: np.ndarray) -> int:
    """Multiply-add FLOPs (x2) of the encoder's convs and LSTM on `wav`, from forward hooks
    (FlopCounterMode trips over the weight-norm parametrization of EnCodec's convs)."""
    total = 0

    def conv(m, inp, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0]

    def lstm(m, inp, out):
        nonlocal total
        steps = inp[0].shape[0] * inp[0].shape[1]  # (T, B, C): time-major in EncodecLSTM
        for layer in range(m.num_layers):
            n_in = m.input_size if layer == 0 else m.hidden_size
            total += 2 * steps * 4 * m.hidden_size * (n_in + m.hidden_size)

    hooks = [mod.register_forward_hook(conv if isinstance(mod, torch.nn.Conv1d) else lstm)
             for mod in tok.model.encoder.modules() if isinstance(mod, torch.nn.Conv1d | torch.nn.LSTM)]
    try:
        tok.encode([wav], num_threads=1)
    finally:
        for h in hooks:
            h.remove()
    return total


def _old_sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # calibration v1's assign
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)[None]).clamp_min_(0)


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("data_dir", type=Path, nargs="?")
    ap.add_argument("--codec", type=Path, default=None)
    ap.add_argument("--n", type=int, default=32, help="clips")
    args = ap.parse_args(argv)
    threads = setup_threads(args.threads)
    if args.smoke:
        args.n = 2
    reps = args.reps or (1 if args.smoke else 2)

    from aligncap_core.codec import EncodecTokenizer
    from aligncap_core.codec.calibrate import nearest_centroid
    from aligncap_core.codec.tokenizer import torch_threads

    if args.data_dir is not None:
        tok = EncodecTokenizer.from_pretrained(args.codec or args.data_dir / "codec")
    else:
        tok = _random_codec()
    wavs = _wavs(args.data_dir, args.n, tok.sample_rate)
    audio_s = sum(len(w) for w in wavs) / tok.sample_rate
    log(f"codec: {len(wavs)} clips, {audio_s:.0f} s of audio, {reps} reps")

    few = wavs[:8]  # the legacy side can run below 1x real time on a loaded machine
    few_s = sum(len(w) for w in few) / tok.sample_rate

    def legacy() -> None:
        with torch_threads(2):
            for w in few:
                tok._encode_batch([w])

    ref = tok.encode(wavs, batch_size=1, num_threads=1)  # also the warm-up
    sides = {
        "parallel": lambda: tok.encode(wavs, batch_size=1),
        "per_clip": lambda: [tok.encode([w], batch_size=1, num_threads=1) for w in wavs],
        "batch4": lambda: tok.encode(wavs, batch_size=4),
        "batch16": lambda: tok.encode(wavs, batch_size=16),
        "legacy_2_intraop_threads": legacy,
    }
    times = interleaved(sides, reps, warmup=0)
    same = all(np.array_equal(a, b) for a, b in zip(ref, tok.encode(wavs, batch_size=4), strict=True))
    xrt = {k: round((few_s if k.startswith("legacy") else audio_s) / v, 1) for k, v in times.items()}

    one_s = np.random.default_rng(0).standard_normal(tok.sample_rate).astype(np.float32) * 0.1
    flops_per_audio_s = _encoder_flops(tok, one_s)
    # the encoder runs one clip per core on single-threaded ops: its bound is one core's matmul
    # peak times the usable cores
    from aligncap_core.codec.tokenizer import usable_cpus

    with torch_threads(1):
        peak = matmul_peak([(4096, 512, 512), (8192, 128, 1024)] if not args.smoke else [(64, 64, 64)],
                           reps=reps)
    cores = usable_cpus()

    # k-means assign (calibration): one chunk, fused (v2) vs five passes (v1)
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(4096 if args.smoke else 16384, 128, generator=g), torch.randn(1024, 128, generator=g)
    t_assign = interleaved({"fused": lambda: nearest_centroid(x, c),
                            "v1": lambda: _old_sq_dists(x, c).min(1)}, reps)
    return emit("codec_speed", {
        "x_realtime": xrt["parallel"],
        "goal_x_realtime": 50.0,
        "parallel_over_per_clip": round(times["per_clip"] / times["parallel"], 2),
        "x_realtime_by_side": xrt,
        "codes_equal_across_batching": same,
        "encoder_gflop_per_audio_s": round(flops_per_audio_s / 1e9, 2),
        "x_realtime_bound_at_peak": round(cores * peak["peak_gflops"] * 1e9 / max(flops_per_audio_s, 1), 1),
        "peak_gflops_per_core": peak["peak_gflops"], "cores": cores,
        "gflops_by_shape_one_core": peak["gflops_by_shape"],
        "kmeans_assign_v1_over_fused": round(t_assign["v1"] / t_assign["fused"], 2),
        "sizes": {"clips": len(wavs), "audio_s": round(audio_s, 1), "n_q": tok.n_q,
                  "encode_threads": threads},
    }, args.smoke)


if __name__ == "__main__":
    main()
