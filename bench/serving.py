"""Using a model: one 3 s clip's caption latency (warm), the HTTP service's throughput and batch
captioning's throughput, in one run (goal: <= 0.3 s per 3 s clip on 2 cores, default greedy).

    python bench/serving.py [--clips 64] [--concurrency 16] [--caption-tokens 24] [--smoke]

The model is demo-sized and built here (no training: speed does not depend on what the weights
learned): the `tiny` Llama with a ~4k-token text vocabulary plus 2 x 1024 audio tokens, the
student's LoRA adapter, and the full EnCodec 24 kHz architecture with 2 codebooks, of which the
student reads 1 (keep_q=1, as `flows/demo.yaml`). It is saved as a student checkpoint and
loaded through `CaptionEngine` like any champion. Decoding is greedy (--decoding) with the
caption length fixed at --caption-tokens (min = max new tokens, written into the checkpoint's
`generation:` defaults so the service process decodes the same way): random weights would
otherwise run to max_new_tokens, and real captions are ~15-30 tokens. `--model CKPT` times a
trained student instead (e.g. a demo's `runs/demo/champion`, which reads the prosody stream
too), whose captions end where the model ends them.

Figures (medians; the machine is shared, so also compare them as ratios from this one run):
  latency    one 3 s clip, bytes in -> caption + attributes out (`CaptionEngine`), warm; with
             the split into decode+resample, EnCodec, generation and clue parsing
  service    `aligncap serve` in its own process, --clips uploads of 3 s clips from
             --concurrency client threads: clips/s and per-request latency
  batch      `serving.batch.caption_to_jsonl` (what `aligncap caption --out` runs) on a folder
             of the same clips: clips/s
Prints one JSON object.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import emit, log, parser, scratch_dir, setup_threads  # noqa: E402

SR = 24000


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """A voiced-sounding test signal: harmonics of a gliding F0 under a syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(110, 260) * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.2 * x + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def _wav_bytes(x: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV")
    return buf.getvalue()


def build_checkpoint(root: Path, preset: str, smoke: bool) -> Path:
    """A student checkpoint of the demo's shape (module doc) under ROOT/student."""
    from transformers import EncodecConfig, EncodecModel

    from aligncap_core.codec import EncodecTokenizer, audio_token_vocab
    from aligncap_core.inference.speech import attach_codec
    from aligncap_core.model.base import add_audio_tokens, build_tiny_base, load_base
    from aligncap_core.model.checkpoint import save_checkpoint
    from aligncap_core.model.config import LoraSettings
    from aligncap_core.model.lora import make_student
    from aligncap_core.train.config import DEFAULT_INSTRUCTION

    # a BPE vocabulary of the demo's size (~4k): pseudo-words give the trainer enough merges,
    # so the LM head costs what it does in the demo
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnoprstuvwy"), rng.integers(3, 9)))
             for _ in range(200 if smoke else 3000)]
    texts = [DEFAULT_INSTRUCTION] + [" ".join(rng.choice(words, 12)) for _ in range(200 if smoke else 4000)]
    base = build_tiny_base(preset, texts, root / "base")
    model, tok = load_base(base, dtype=torch.float32)
    codebook = 16 if smoke else 1024
    ids = add_audio_tokens(model, tok, audio_token_vocab(2, codebook))
    student = make_student(model, ids, LoraSettings())
    ckpt = save_checkpoint(root / "student", student, tok, stage="student", step=0,
                           base_model=str(base))
    torch.manual_seed(0)
    cfg = {"codebook_size": 16, "num_filters": 4, "hidden_size": 16} if smoke else {}
    enc = EncodecModel(EncodecConfig(**cfg))
    for layer in enc.quantizer.layers[:2]:  # random codebooks: well-spread codes, same speed
        layer.codebook.embed.normal_()
    EncodecTokenizer(enc, n_q=2, meta={"source": "bench-random"}).save(root / "codec")
    return attach_codec(ckpt, str(root / "codec"), instruction=DEFAULT_INSTRUCTION, keep_q=1, n_q=2)


def _fix_caption_length(ckpt: Path, tokens: int) -> None:
    """Every side decodes with the checkpoint's defaults (`Captioner.default_settings`): the
    fixed caption length goes into its config.yaml's `generation:` mapping."""
    import yaml

    path = ckpt / "config.yaml"
    cfg = yaml.safe_load(path.read_text()) or {}
    cfg["generation"] = {"max_new_tokens": tokens, "min_new_tokens": tokens}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _latency(engine, clip: bytes, reps: int) -> dict:
    cap = engine.captioner
    totals, parts = [], {"decode_resample": [], "encode": [], "generate": [], "parse": []}
    for r in range(reps + 1):  # the first round warms up
        t0 = time.perf_counter()
        engine.caption([engine.waveform(clip, "clip.wav")])
        t1 = time.perf_counter()
        wave = engine.waveform(clip, "clip.wav")
        t2 = time.perf_counter()
        codes = cap.encode_waves([wave])  # EnCodec (+ the prosody stream, if the model reads it)
        t3 = time.perf_counter()
        [text] = cap.caption_codes(codes, engine.settings)
        t4 = time.perf_counter()
        engine.parser.parse_many([text + f" #{r}"])  # a new text each round: no parse memo hit
        t5 = time.perf_counter()
        if r:
            totals.append(t1 - t0)
            for k, dt in zip(parts, (t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                parts[k].append(dt)
    q = statistics.quantiles(totals, n=10) if len(totals) >= 2 else totals * 9
    return {"median_s": round(statistics.median(totals), 4), "p90_s": round(q[-1], 4),
            "parts_median_s": {k: round(statistics.median(v), 4) for k, v in parts.items()}}


def _service(ckpt: Path, clips: list[bytes], concurrency: int, work: Path, decoding: str) -> dict:
    import concurrent.futures

    import httpx

    from aligncap_ops import procs

    port = procs.free_port()
    # the same intra-op threads as this process: both throughput sides run alike
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    rec = procs.start([sys.executable, "-m", "aligncap_core.cli", "serve", "--model", str(ckpt), "--port",
                       str(port), "--device", "cpu", "--decoding", decoding], work / "serve.log", env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        procs.wait_healthy("aligncap serve", f"{url}/health", rec, 300)

        def post(data: bytes) -> float:
            t = time.perf_counter()
            with httpx.Client(timeout=600) as c:
                r = c.post(f"{url}/caption", files={"file": ("clip.wav", data, "audio/wav")})
            r.raise_for_status()
            return time.perf_counter() - t

        post(clips[0])  # warm-up
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            lat = list(pool.map(post, clips))
        wall = time.perf_counter() - t0
        health = httpx.get(f"{url}/health").json()
    finally:
        procs.stop([rec])
    return {"clips_per_s": round(len(clips) / wall, 3), "wall_s": round(wall, 2),
            "request_latency_median_s": round(statistics.median(lat), 3),
            "largest_batch": health["largest_batch"], "batches": health["batches"] - 1}


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--clips", type=int, default=64, help="clips for the throughput sides")
    ap.add_argument("--seconds", type=float, default=3.0, help="clip length, s")
    ap.add_argument("--concurrency", type=int, default=16, help="client threads against the service")
    ap.add_argument("--caption-tokens", type=int, default=24, help="caption length, tokens")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--keep", help="build the checkpoint here and keep it (default: a temp folder)")
    ap.add_argument("--model", help="time this trained student checkpoint instead (copied into the "
                    "work folder; its captions end where the model ends them)")
    ap.add_argument("--decoding", default="greedy", choices=("greedy", "consistent"),
                    help="decoding strategy (the goal is greedy's; consistent samples 8 captions)")
    args = ap.parse_args(argv)
    threads = setup_threads(args.threads)
    if args.smoke:
        args.clips, args.concurrency, args.caption_tokens, args.preset = 4, 4, 3, "micro"
    reps = args.reps or (2 if args.smoke else 20)
    from aligncap_core.serving.batch import caption_to_jsonl
    from aligncap_core.serving.engine import CaptionEngine

    work = Path(args.keep) if args.keep else scratch_dir("bench-serving-")
    work.mkdir(parents=True, exist_ok=True)
    if args.model:
        ckpt = work / "model"
        if not ckpt.is_dir():
            shutil.copytree(args.model, ckpt)
        args.caption_tokens = None
    else:
        ckpt = work / "student" if (work / "student" / "codec").is_dir() else build_checkpoint(work, args.preset, args.smoke)
        _fix_caption_length(ckpt, args.caption_tokens)
    engine = CaptionEngine.load(ckpt, device="cpu", decoding=args.decoding)
    log(f"serving bench: {args.clips} clips of {args.seconds} s, {threads} threads, decoding {engine.settings}")
    clip = _wav_bytes(_speechlike(args.seconds, 0))
    latency = _latency(engine, clip, reps)
    log(f"latency {latency}")

    clips = [_wav_bytes(_speechlike(args.seconds * (0.8 + 0.4 * (i % 5) / 4), i)) for i in range(args.clips)]
    folder = work / "clips"
    folder.mkdir(exist_ok=True)
    for i, data in enumerate(clips):
        (folder / f"c{i:04d}.wav").write_bytes(data)
    service = _service(ckpt, clips, args.concurrency, work, args.decoding)
    log(f"service {service}")
    caption_to_jsonl(engine, [folder], work / "warm", show_progress=False)  # warm the batch path
    batch = caption_to_jsonl(engine, [folder], work / "batch", show_progress=False)
    log(f"batch {batch['clips_per_s']} clips/s")
    per_clip = latency["median_s"] * 3.0 / args.seconds
    return emit("serving", {
        "clip_seconds": args.seconds, "caption_tokens": args.caption_tokens,
        "model": args.model or f"built: {args.preset}", "decoding": args.decoding,
        "settings": {k: v for k, v in vars(engine.settings).items()},
        "latency_s_per_3s_clip": round(per_clip, 4), "latency": latency,
        "goal_s_per_3s_clip": 0.3, "meets_goal": per_clip <= 0.3,
        "service_clips_per_s": service["clips_per_s"], "service": service,
        "batch_clips_per_s": batch["clips_per_s"],
        "service_over_batch": round(service["clips_per_s"] / batch["clips_per_s"], 3),
        "clips": args.clips, "concurrency": args.concurrency,
        "lscpu_model": subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split(
            "Model name:")[-1].splitlines()[0].strip() if os.path.exists("/usr/bin/lscpu") else None,
    }, args.smoke)


if __name__ == "__main__":
    main()
