"""Speech tokenizers: audio (24 kHz mono float32) -> discrete RVQ codes `(n_q, T)`.

`EncodecTokenizer` wraps `transformers.EncodecModel` (no `encodec` pip package, see
ENVIRONMENT.md). It is used two ways:
  * pretrained weights by hub id or local path (`facebook/encodec_24khz` in production);
  * the calibrated offline codec (see `calibrate.py`): the same architecture, random-init with a
    fixed seed, with its first `n_q` codebooks fitted by k-means on the corpus.

Batch invariance (a clip's codes do not depend on what it is batched with): the 24 kHz EnCodec
encoder is causal (causal convs with left reflect padding, unidirectional LSTM), so latent frame t
depends only on samples < (t + 1) * hop. Each clip is zero-padded *on its own* to a whole number of
hops (and at least `MIN_FRAMES`), so alone or in a longer padded batch its own frames see exactly
the same samples; extra batch padding only affects frames past its end, which are trimmed to
ceil(len / hop) = ceil(len * 75 / 24000). `MIN_FRAMES` covers the left reflect padding of the
deepest conv (kernel 7 at 75 Hz), which for very short clips would otherwise read past the clip.

Threads (docs/PERFORMANCE.md): every op runs on ONE intra-op thread, and parallelism comes from
encoding several clips at once on Python threads (torch releases the GIL inside its kernels).
Two reasons, both measured on the 2-core dev machines:
  * the codes a corpus is trained on must not depend on the machine: oneDNN's conv results differ
    in the last bit between 1 and 2 intra-op threads (enough to flip a code at a near-tie), so
    the data and calibration paths fix the thread count at one;
  * speed on a shared machine: with 2 OpenMP threads and other jobs running, each of the LSTM's
    ~500 small sequential ops waits at a barrier for a descheduled thread: the LSTM ran 20x and
    the conv front 2-6x slower than on one thread. Clip-parallel threads never wait on each other.
The one exception is `encode` given fewer clips than CPUs (one clip to caption, the serving
latency): the idle CPUs become intra-op threads while the machine is idle (`parallel_map`'s
`lend_idle_cpus`), 0.117 s instead of 0.235 s for a 3 s clip (conv front 0.088 vs 0.154, LSTM
0.029 vs 0.081; 2-core Xeon with AMX). Its latents differ from the one-thread ones by <= 1e-5,
and the codes did not differ at all on the demo's calibrated codec (docs/PERFORMANCE.md).
Batching several clips into one call is slower on CPU (a 16 x 32 x 90k conv activation falls out
of the caches: 26x / 19x / 7x real time at batch 1 / 4 / 16); keep batch_size 1 there and raise
it on an accelerator.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aligncap_core.errors import ConfigError, DataError
from aligncap_core.train.threads import threads_for_load, usable_cpus
from aligncap_core.utils import atomic_dir, atomic_write, fingerprint

CODEC_JSON = "codec.json"
# >= the deepest conv's receptive field in frames (last conv: kernel 7 at 75 Hz), see module doc.
MIN_FRAMES = 8


class SpeechTokenizer(abc.ABC):
    """Interface every speech tokenizer implements.

    Attributes: `sample_rate` (Hz of the input audio), `n_q` (codebooks per frame),
    `frame_rate` (code frames per second), `codebook_size` (codes per codebook),
    `fingerprint` (content hash of weights + settings: equal fingerprints give equal codes).
    """

    sample_rate: int
    n_q: int
    frame_rate: float
    codebook_size: int

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str: ...

    @abc.abstractmethod
    def encode(self, wavs: list[np.ndarray], batch_size: int = 1) -> list[np.ndarray]:
        """1-D float32 arrays at `sample_rate` -> int16 arrays `(n_q, ceil(len * frame_rate / sample_rate))`."""

    @abc.abstractmethod
    def save(self, path: str | os.PathLike) -> Path: ...

    def n_frames(self, n_samples: int) -> int:
        return max(1, math.ceil(n_samples * self.frame_rate / self.sample_rate))


def read_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 at `sample_rate` (soxr resampling when needed)."""
    import soundfile as sf

    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types; the user needs the path either way
        raise DataError(f"cannot read audio {path}: {e}") from e
    wav = wav.mean(axis=1)
    if sr != sample_rate:
        import soxr

        wav = soxr.resample(wav, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(wav, dtype=np.float32)


@contextmanager
def torch_threads(n: int | None):
    """Run with `n` intra-op threads (default: the CPUs this process may use), then restore."""
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n or usable_cpus()))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def parallel_map(fn: Callable, items: Sequence, workers: int | None, *,
                 lend_idle_cpus: bool = False) -> Iterator:
    """`fn(item)` for every item on `workers` threads (None/0: the usable CPUs), results in input
    order as they complete. Every op runs on one intra-op thread meanwhile (module doc), except
    with `lend_idle_cpus`: fewer items than CPUs (one clip to caption) then get the CPUs no
    worker uses as intra-op threads, while the machine is idle (`threads_for_load`). On an
    exception or Ctrl-C the items not yet started are cancelled, not run to the end."""
    workers = max(1, min(workers or usable_cpus(), len(items) or 1))
    intra = threads_for_load(usable_cpus() // workers) if lend_idle_cpus else 1
    with torch_threads(intra):
        if workers == 1:
            for it in items:
                yield fn(it)
            return
        ex = ThreadPoolExecutor(workers, thread_name_prefix="codec")
        try:
            futures = [ex.submit(fn, it) for it in items]
            for f in futures:
                yield f.result()
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


def length_buckets(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted, longest first) to minimise padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class EncodecTokenizer(SpeechTokenizer):
    """EnCodec 24 kHz encoder + the first `n_q` RVQ codebooks.

    `meta` is what `codec.json` holds (source, n_q, bandwidth_kbps, calibration info, seed).
    """

    def __init__(self, model, n_q: int, meta: dict[str, Any] | None = None):
        cfg = model.config
        if cfg.audio_channels != 1 or cfg.normalize or cfg.chunk_length_s is not None:
            # The 48 kHz variant (stereo, normalised, chunked) breaks the batch-invariance argument.
            raise ConfigError("only the mono, unchunked EnCodec 24 kHz architecture is supported")
        max_q = len(model.quantizer.layers)
        fitted = (meta or {}).get("fitted_codebooks", max_q)
        if not 1 <= n_q <= min(max_q, fitted):
            raise ConfigError(f"n_q={n_q} not available: this codec has {min(max_q, fitted)} usable codebooks")
        self.model = model.eval()
        self.n_q = n_q
        self.sample_rate = int(cfg.sampling_rate)
        self.hop_length = int(np.prod(cfg.upsampling_ratios))
        self.frame_rate = self.sample_rate / self.hop_length  # 75.0 for 24 kHz
        self.codebook_size = int(cfg.codebook_size)
        self.meta = dict(meta or {})
        self.meta.update(n_q=n_q, bandwidth_kbps=self.bandwidth_kbps)
        self.encoder_calls = 0  # counted so tests and benchmarks can check what was (not) encoded
        self._calls_lock = threading.Lock()  # latents() runs on several threads at once
        self._fp: str | None = None

    @property
    def bandwidth_kbps(self) -> float:
        """n_q * log2(codebook_size) bits * frame_rate: 2 codebooks = 1.5 kbps, 8 = 6 kbps."""
        return self.n_q * math.log2(self.codebook_size) * self.frame_rate / 1000

    # ---- loading / saving -------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, n_q: int | None = None) -> EncodecTokenizer:
        """Load a hub id (`facebook/encodec_24khz`) or a local `save_pretrained` dir.

        A dir with `codec.json` (a calibrated codec) defaults to its saved `n_q`; otherwise `n_q`
        defaults to 2 (1.5 kbps).
        """
        from transformers import EncodecModel

        meta: dict[str, Any] = {"source": str(name_or_path)}
        local = Path(name_or_path)
        if (local / CODEC_JSON).exists():
            meta = json.loads((local / CODEC_JSON).read_text())
        try:
            model = EncodecModel.from_pretrained(str(name_or_path))
        except OSError as e:
            raise ConfigError(
                f"cannot load EnCodec from {name_or_path!r}: {e}. Without hub access use a local dir "
                "or --codec calibrated"
            ) from e
        return cls(model, n_q=n_q or meta.get("n_q", 2), meta=meta)

    def save(self, path: str | os.PathLike) -> Path:
        """`save_pretrained` + `codec.json`, written atomically (a crash leaves no half codec)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp)
            with atomic_write(tmp / CODEC_JSON) as f:
                json.dump({**self.meta, "fingerprint": self.fingerprint}, f, indent=2, sort_keys=True)
        return path

    @property
    def fingerprint(self) -> str:
        """Hash of the encoder weights and the first n_q codebooks (what determines the codes)."""
        if self._fp is None:
            h = hashlib.sha256()
            sd = self.model.state_dict()
            used = [k for k in sorted(sd) if k.startswith("encoder.")]
            used += [f"quantizer.layers.{q}.codebook.embed" for q in range(self.n_q)]
            for k in used:
                h.update(k.encode())
                h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
            self._fp = fingerprint("encodec", h.hexdigest(), self.n_q, self.sample_rate)
        return self._fp

    # ---- encoding ---------------------------------------------------------------------------
    def _padded_batch(self, wavs: list[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        """Zero-pad each clip to whole hops (>= MIN_FRAMES), then to the batch max: `(B, 1, samples)`."""
        n_frames = [self.n_frames(len(w)) for w in wavs]
        width = max(max(n_frames), MIN_FRAMES) * self.hop_length
        x = torch.zeros(len(wavs), 1, width)
        for i, w in enumerate(wavs):
            if w.ndim != 1:
                raise DataError(f"expected 1-D mono audio, got shape {w.shape}")
            x[i, 0, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        return x, n_frames

    @torch.inference_mode()
    def latents(self, wavs: list[np.ndarray]) -> list[torch.Tensor]:
        """Encoder outputs before quantisation for one batch: a `(D, T)` float tensor per clip.

        The conv front (all but the last three layers, >95% of the FLOPs) runs batched: its
        outputs were bit-identical across batch sizes and widths in our checks. The LSTM, the
        last conv and the VQ run per clip on the clip's own frames, because the LSTM's and the
        distance matmuls' float rounding depend on the batch shape (~3e-8 differences, enough to
        flip a code at a near-tie). Per clip they see exactly the shapes of an `encode([clip])`.
        """
        x, n_frames = self._padded_batch(wavs)
        with self._calls_lock:
            self.encoder_calls += 1
        layers = self.model.encoder.layers
        h = x
        for layer in layers[: self._tail_start]:
            h = layer(h)  # (B, C, T_max)
        out = []
        for i, n in enumerate(n_frames):
            hi = h[i : i + 1, :, : max(n, MIN_FRAMES)]
            for layer in layers[self._tail_start :]:
                hi = layer(hi)
            out.append(hi[0, :, :n])
        return out

    @property
    def _tail_start(self) -> int:
        """Index of the encoder's LSTM: layers from here on run per clip."""
        from transformers.models.encodec.modeling_encodec import EncodecLSTM

        return next(i for i, m in enumerate(self.model.encoder.layers) if isinstance(m, EncodecLSTM))

    @torch.inference_mode()
    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """Residual VQ of `(B, D, T)` latents with the first n_q codebooks -> `(n_q, B, T)` codes."""
        residual, codes = latents, []
        for layer in self.model.quantizer.layers[: self.n_q]:
            idx = layer.encode(residual)
            residual = residual - layer.decode(idx)
            codes.append(idx)
        return torch.stack(codes)

    def encode(self, wavs: list[np.ndarray], batch_size: int = 1, num_threads: int | None = None) -> list[np.ndarray]:
        """1-D float32 arrays at 24 kHz -> int16 codes `(n_q, ceil(len * 75 / 24000))` per clip.

        Clips are bucketed by length (longest first) so batches carry little padding; results come
        back in input order and equal encoding each clip alone (see module doc and `latents`).
        num_threads: clips encoded in parallel, each on one intra-op thread (None: usable CPUs);
        CPUs left over (fewer clips than CPUs) become intra-op threads while the machine is idle.
        """
        out: list[np.ndarray | None] = [None] * len(wavs)
        buckets = length_buckets([len(w) for w in wavs], batch_size)
        encoded = parallel_map(lambda b: self._encode_batch([wavs[j] for j in b]), buckets, num_threads,
                               lend_idle_cpus=True)
        for batch, codes in zip(buckets, encoded, strict=True):
            for i, c in zip(batch, codes, strict=True):
                out[i] = c
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _encode_batch(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        return [self.quantize(lat[None])[:, 0].numpy().astype(np.int16) for lat in self.latents(wavs)]
