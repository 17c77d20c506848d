"""The calibrated offline codec: EnCodec 24 kHz architecture, random init, k-means codebooks.

A random-init EncodecModel has all-zero RVQ codebooks (the original trains them from a k-means
init), so every frame maps to code 0 (ENVIRONMENT.md). Fitting codebook q by k-means on the
residual left by codebooks 0..q-1 over encoder latents of the training audio gives well-spread
codes without any download. The random encoder is a fixed (seeded) projection of the waveform;
the weights are saved, so reproducibility never depends on the RNG of a future torch version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from aligncap_core.codec.tokenizer import (
    EncodecTokenizer,
    length_buckets,
    parallel_map,
    torch_threads,
)

log = logging.getLogger(__name__)
# bump when the procedure changes, so old calibrations are refitted.
# 2: encoder on one intra-op thread (codes independent of the core count), fused k-means assign.
# 3: input gain folded into the first conv, latents whitened by the last conv (keeps the voice).
CALIBRATION_VERSION = 3
# A seeded random encoder is nearly linear at speech levels (|x| ~ 0.01-0.1): its ELUs never
# bend, and the latents keep little more than band energies. Scaling its input by 1e4 (folded
# into the first conv) makes them rectify, like the compressive front of a trained codec. A
# linear probe on pooled latents of unseen voices (docs/experiments/codec_voice.md): gender
# 0.50 -> 0.90 and pitch 0.51 -> 0.75 at gain 1 -> 1e4, volume unchanged (0.98).
DEFAULT_INPUT_GAIN = 1e4
WHITEN_CLIPS = 64  # clips whose latents estimate the whitening (128-d covariance: ~12k frames)


def nearest_centroid(x: torch.Tensor, c: torch.Tensor, chunk: int = 8192,
            x_sq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid index `(N,)` and its squared distance `(N,)`, chunked to bound memory.

    argmin_k |x - c_k|^2 = argmin_k (|c_k|^2 - 2 x.c_k): one fused addmm per chunk instead of
    five passes over an (N, K) matrix (the assign step is memory-bound at K = 1024); |x|^2 is
    added back to the row minimum only. x_sq: precomputed |x|^2 `(N,)` (constant across Lloyd
    iterations). A chunk of 8192 x 1024 floats (32 MB) stays near the 32 MB L3 of these CPUs.
    """
    c_sq = c.pow(2).sum(1)
    x_sq = x.pow(2).sum(1) if x_sq is None else x_sq
    idx, dist = [], []
    for s in range(0, len(x), chunk):
        m = torch.addmm(c_sq[None], x[s : s + chunk], c.T, alpha=-2).min(1)
        idx.append(m.indices)
        dist.append((m.values + x_sq[s : s + chunk]).clamp_min_(0))
    return torch.cat(idx), torch.cat(dist)


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0, init_sample: int = 20000) -> torch.Tensor:
    """k-means++ init + Lloyd iterations. x `(N, D)` float32 -> centroids `(k, D)`.

    With fewer distinct points than k, the extra centroids duplicate data points: they are never
    selected (argmin picks the first of equal distances), i.e. unused codes, not wrong ones.
    Empty clusters are re-seeded at the points worst served by the current centroids.
    """
    g = torch.Generator().manual_seed(seed)
    x = x.float()
    n = len(x)
    if n == 0:
        raise ValueError("kmeans: no points")
    if n <= k:
        extra = torch.randint(n, (k - n,), generator=g)
        return torch.cat([x, x[extra]])
    # k-means++ on a subsample: k sequential D^2-weighted draws.
    sub = x[torch.randperm(n, generator=g)[: max(init_sample, k)]]
    c = torch.empty(k, x.shape[1])
    c[0] = sub[torch.randint(len(sub), (1,), generator=g)]
    sub_sq = sub.pow(2).sum(1)

    def d2_to(centre: torch.Tensor) -> torch.Tensor:  # (len(sub),) squared distances to one point
        return (sub_sq - 2 * (sub @ centre) + centre.pow(2).sum()).clamp_min_(0)

    d2 = d2_to(c[0])
    for j in range(1, k):
        if d2.sum() <= 0:  # fewer distinct points than k: pad with random points
            c[j:] = sub[torch.randint(len(sub), (k - j,), generator=g)]
            break
        c[j] = sub[torch.multinomial(d2, 1, generator=g)]
        d2 = torch.minimum(d2, d2_to(c[j]))
    x_sq = x.pow(2).sum(1)
    for _ in range(iters):
        idx, dist = nearest_centroid(x, c, x_sq=x_sq)
        counts = torch.bincount(idx, minlength=k).float()
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        new = sums / counts.clamp_min(1)[:, None]
        empty = counts == 0
        if empty.any():
            worst = dist.topk(int(empty.sum())).indices
            new[empty] = x[worst]
        shift = (new - c).pow(2).sum(1).max()
        c = new
        if shift < 1e-10:
            break
    return c


def scale_input(model, gain: float) -> None:
    """Make the encoder read `gain * audio`: the first conv is linear in its input (reflect
    padding included), so scaling its weight-norm magnitude scales every output except the bias."""
    conv = model.encoder.layers[0].conv
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(gain)


def whiten_latents(model, latents: Sequence[torch.Tensor], eps: float = 1e-4) -> dict[str, float]:
    """Fold PCA whitening of the encoder's latents into its last (linear) conv, in place.

    latents: `(D, T)` per clip, from this model. Afterwards the encoder outputs
    `W^T (z - mu)`, with mean 0 and identity covariance over these frames (eigenvalues below
    `eps` x the largest are floored there, so near-empty directions are not blown up into noise).
    Why: k-means in raw latent space spends its 1024 codes on the few directions of largest
    variance (the top one holds 35-51% of it); whitened, every direction counts. Bag-of-codes
    probe on unseen voices, gain 1e4: gender 0.887 -> 0.938 and pitch 0.738 -> 0.825 for
    per-channel scaling -> whitening (docs/experiments/codec_voice.md, section 2).
    """
    x = torch.cat([z.T for z in latents]).double()  # (frames, D)
    mu = x.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov((x - mu).T))
    w = evecs / (evals.clamp_min(0) + eps * evals.max()).sqrt()  # (D, D): z' = (z - mu) @ w
    conv = model.encoder.layers[-1].conv
    with torch.no_grad():
        weight = conv.weight.double()  # (D, C_in, K), resolved through weight norm
        new_w = torch.einsum("dc,dik->cik", w, weight).float()
        conv.parametrizations.weight.original1.copy_(new_w)
        conv.parametrizations.weight.original0.copy_(new_w.norm(dim=(1, 2), keepdim=True))
        conv.bias.copy_(((conv.bias.double() - mu) @ w).float())
    return {"frames": len(x), "top_variance_share": round(float(evals.max() / evals.sum()), 4)}


def calibrate_encodec(
    load_wav: Callable[[int], np.ndarray],
    lengths: Sequence[int],
    *,
    n_q: int = 2,
    seed: int = 0,
    data_fingerprint: str = "",
    max_frames: int = 60000,
    iters: int = 25,
    batch_size: int = 1,
    config_overrides: dict | None = None,
    input_gain: float = DEFAULT_INPUT_GAIN,
    whiten: bool = True,
    num_threads: int | None = None,  # clips encoded in parallel (None: usable CPUs), see tokenizer
    on_batch: Callable[[int], None] | None = None,
    return_latents: bool = False,
) -> EncodecTokenizer | tuple[EncodecTokenizer, list[torch.Tensor]]:
    """Build the seeded random EnCodec 24 kHz model and fit its first `n_q` codebooks.

    load_wav(i): clip i as 1-D float32 at 24 kHz; lengths[i]: its length in samples (for bucketing).
    max_frames: latent frames (75/s) subsampled for k-means, 60k ~ 13 min of audio, plenty for
    1024 codes. Returns the tokenizer (`save()` writes weights + codec.json); with return_latents
    also each clip's `(D, T)` encoder latents, so the caller can quantize them instead of
    encoding the calibration clips a second time. input_gain / whiten: see `scale_input` and
    `whiten_latents` (gain 1 and no whitening give the version-2 codec).
    """
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(seed)
    model = EncodecModel(EncodecConfig(**(config_overrides or {})))
    if input_gain != 1.0:
        scale_input(model, input_gain)
    tok = EncodecTokenizer(model, n_q=n_q)
    g = torch.Generator().manual_seed(seed)
    whitening = None
    if whiten:
        # a seeded subsample first: the main pass below then runs the final encoder, so the
        # latents it returns are exactly what `encode` computes later (no re-projection rounding)
        pick = sorted(torch.randperm(len(lengths), generator=g)[:WHITEN_CLIPS].tolist())
        sub = [z for b in parallel_map(lambda i: tok.latents([load_wav(i)]), pick, num_threads) for z in b]
        whitening = whiten_latents(model, sub)
        del sub
    per_clip: list[torch.Tensor] = [torch.empty(0)] * len(lengths)  # (D, T) latents, input order
    buckets = length_buckets(list(lengths), batch_size)
    # load_wav runs on the worker threads too: reading + resampling overlap with encoding
    for batch, lat in zip(buckets, parallel_map(lambda b: tok.latents([load_wav(i) for i in b]), buckets, num_threads), strict=True):
        for i, z in zip(batch, lat, strict=True):
            per_clip[i] = z
        if on_batch:
            on_batch(len(batch))
    with torch_threads(None):  # k-means: large matmuls, all cores
        x = torch.cat([z.T for z in per_clip])  # (frames, D)
        n_total = len(x)
        if n_total > max_frames:
            x = x[torch.randperm(n_total, generator=g)[:max_frames]]
        residual = x
        k = tok.codebook_size
        for q, layer in enumerate(model.quantizer.layers[:n_q]):
            c = kmeans(residual, k, iters=iters, seed=seed + q)
            idx, _ = nearest_centroid(residual, c)
            cb = layer.codebook
            cb.embed.copy_(c)
            cb.embed_avg.copy_(c)
            cb.cluster_size.copy_(torch.bincount(idx, minlength=k).float())
            residual = residual - c[idx]
            log.info("codebook %d: %d codes used, residual rms %.4f", q, int((cb.cluster_size > 0).sum()), residual.pow(2).mean().sqrt())
    tok.meta.update(
        source="calibrated",
        fitted_codebooks=n_q,
        seed=seed,
        calibration={
            "data_fingerprint": data_fingerprint,
            "version": CALIBRATION_VERSION,
            "clips": len(lengths),
            "frames_total": n_total,
            "frames_fit": len(x),
            "max_frames": max_frames,
            "iters": iters,
            "config_overrides": config_overrides or {},
            "input_gain": input_gain,
            "whitening": whitening,
        },
    )
    tok._fp = None
    if return_latents:
        return tok, per_clip
    return tok
