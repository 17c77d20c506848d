"""Encoding speed of a speech tokenizer in x real time: batched vs one clip at a time.

    python bench/codec_speed.py DATA_DIR [--codec DIR] [--n 100] [--batch-sizes 1,4,16]

DATA_DIR: a prepared dataset (manifest.jsonl); --codec: a saved codec dir (default DATA_DIR/codec).
Audio is read and resampled before timing, so only encoding is measured. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from aligncap_core.codec import EncodecTokenizer, read_audio
from aligncap_core.utils import read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--codec", type=Path, default=None)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-sizes", default="1,4,16")
    args = ap.parse_args()
    tok = EncodecTokenizer.from_pretrained(args.codec or args.data_dir / "codec")
    rows = read_jsonl(args.data_dir / "manifest.jsonl")[: args.n]
    wavs = [read_audio(args.data_dir / r["audio"], tok.sample_rate) for r in rows]
    audio_s = sum(len(w) for w in wavs) / tok.sample_rate
    tok.encode(wavs[:2], batch_size=2)  # warm-up (allocator, oneDNN primitive cache)
    out = {"clips": len(wavs), "audio_s": round(audio_s, 1), "threads": torch.get_num_threads(), "n_q": tok.n_q}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        t = time.perf_counter()
        if bs == 1:
            for w in wavs:  # the per-clip loop
                tok.encode([w], batch_size=1)
        else:
            tok.encode(wavs, batch_size=bs)
        dt = time.perf_counter() - t
        out[f"x_realtime_bs{bs}"] = round(audio_s / dt, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
