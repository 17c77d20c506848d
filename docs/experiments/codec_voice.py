"""Does the calibrated random EnCodec keep the voice? (issue #10, docs/experiments/codec_voice.md)

    .venv/bin/python docs/experiments/codec_voice.py DATA_DIR [--gains 1,100,1e4] [--train 200]

DATA_DIR is a prepared + tokenized built-in corpus (e.g. `runs/demo/data`). For each input gain,
the seeded random encoder of DATA_DIR/codec (its saved weights, before any calibration change)
encodes `--train` train clips and every zeroshot clip; a logistic regression on each clip's
pooled latents (mean and std per channel, log length), fitted on train, is scored on zeroshot per
attribute. A pooled log-spectrum (64 bands) is the reference of what one clip's spectrum carries.
With --kmeans, per gain also 1024 k-means codes fitted on the train frames, raw and PCA-whitened
(`codec.calibrate.whiten_latents`' transform), probed as a bag of codes. Then the bag-of-codes
probe (`aligncap_core.codec.probe`) of DATA_DIR's own codes, 1 and 2 codebooks. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from aligncap_core.codec.calibrate import kmeans, nearest_centroid
from aligncap_core.codec.probe import code_features, probe_dataset
from aligncap_core.codec.tokenizer import EncodecTokenizer, parallel_map, read_audio

ATTRS = ("gender", "pitch", "speed", "volume", "emotion")


def probe(x: dict[str, np.ndarray], rows: dict[str, list[dict]], scale: bool = True,
          C: float = 1.0) -> dict[str, float]:
    """Zeroshot accuracy per attribute of a logistic regression fitted on x["train"]."""
    if scale:  # pooled latents; code histograms are proportions already (see codec.probe)
        sc = StandardScaler().fit(x["train"])
        x = {s: sc.transform(v) for s, v in x.items()}
    out = {}
    for a in ATTRS:
        y = {s: np.array([r["attributes"][a] for r in rows[s]]) for s in rows}
        clf = LogisticRegression(C=C, max_iter=3000).fit(x["train"], y["train"])
        out[a] = round(float((clf.predict(x["zeroshot"]) == y["zeroshot"]).mean()), 3)
    return out


def log_spectrum(w: np.ndarray) -> np.ndarray:
    """Mean and std over 13 ms hops of the log power in 64 bands of a 1024-point STFT."""
    frames = np.lib.stride_tricks.sliding_window_view(w, 1024)[::320] * np.hanning(1024)
    p = np.log(np.abs(np.fft.rfft(frames, axis=1))[:, :512] ** 2 + 1e-10)
    bands = p.reshape(len(p), 64, 8).mean(2)
    return np.concatenate([bands.mean(0), bands.std(0)])


def code_bags(lat: dict[str, list[np.ndarray]], rows: dict[str, list[dict]], whiten: bool) -> dict[str, float]:
    """Bag-of-codes probe of 1024 k-means codes fitted on the train frames (`(T, D)` per clip)."""
    frames = np.concatenate(lat["train"])
    mu, w = frames.mean(0), np.eye(frames.shape[1])
    if whiten:
        evals, evecs = np.linalg.eigh(np.cov((frames - mu).T))
        w = evecs / np.sqrt(np.clip(evals, 0, None) + 1e-4 * evals.max())
    sub = frames[np.random.default_rng(0).permutation(len(frames))[:40000]]
    c = kmeans(torch.from_numpy((sub - mu) @ w).float(), 1024, iters=15)

    def bag(z: np.ndarray) -> np.ndarray:
        idx, _ = nearest_centroid(torch.from_numpy((z - mu) @ w).float(), c)
        return code_features(idx.numpy()[None].astype(np.int64))

    return probe({s: np.stack([bag(z) for z in v]) for s, v in lat.items()}, rows, scale=False, C=100.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--gains", default="1,100,1e4")
    ap.add_argument("--train", type=int, default=200, help="train clips for the latent probes")
    ap.add_argument("--kmeans", action="store_true", help="also probe k-means codes of the latents")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.data / "manifest.jsonl")]
    by = {"train": [r for r in rows if r["split"] == "train"][: args.train],
          "zeroshot": [r for r in rows if r["split"] == "zeroshot"]}
    wavs = {s: [read_audio(args.data / r["audio"], 24000) for r in v] for s, v in by.items()}
    meta = json.loads((args.data / "codec" / "codec.json").read_text())
    out: dict = {"codec_calibration": meta.get("calibration"), "n": {s: len(v) for s, v in by.items()}}
    out["log_spectrum"] = probe({s: np.stack([log_spectrum(w) for w in v]) for s, v in wavs.items()}, by)
    tok = EncodecTokenizer.from_pretrained(args.data / "codec")
    torch.set_num_threads(1)
    for gain in (float(g) for g in args.gains.split(",")):
        t = time.perf_counter()
        lat = {s: list(parallel_map(lambda w, g=gain: tok.latents([w * np.float32(g)])[0].numpy().T, v, None))
               for s, v in wavs.items()}
        x = {s: np.stack([np.concatenate([z.mean(0), z.std(0), [np.log(len(z))]]) for z in v]) for s, v in lat.items()}
        out[f"latents_gain_{gain:g}"] = probe(x, by)
        if args.kmeans:
            out[f"codes_gain_{gain:g}"] = code_bags(lat, by, whiten=False)
            out[f"codes_whitened_gain_{gain:g}"] = code_bags(lat, by, whiten=True)
        print(f"gain {gain:g}: {out[f'latents_gain_{gain:g}']} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    for q in (1, 2):
        r = probe_dataset(args.data, eval_split="zeroshot", keep_q=q)
        out[f"codes_bag_q{q}"] = {a: r[a]["accuracy"] for a in ATTRS if a in r}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
