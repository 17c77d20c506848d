"""Decode, check and normalise audio: any soundfile format -> mono float32 at a target rate.

Samples are float32 in [-1, 1] (full scale), shape `(frames,)` after downmix. Resampling uses
soxr's VHQ polyphase filter (band-limited, no aliasing), never linear interpolation.

Problems a person can fix are raised as `AudioProblem(code, message)` with a code from the
prepare reject vocabulary: `unreadable_audio`, `empty_audio`, `nan_audio`, `silent_audio`,
`clipped_audio`, `too_short`, `too_long`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

# Peak below -70 dBFS: nothing a listener (or a codec) can use; 16-bit dither alone is ~-90 dBFS.
SILENCE_PEAK = 10 ** (-70 / 20)
# A sample at or above this magnitude counts as clipped (16-bit full scale is 32767/32768).
CLIP_LEVEL = 0.999
# Heavy clipping: more than 1% of samples pinned at full scale. Real speech corpora sit far
# below this (the RAVDESS/EmoDB clips in shared/realdata peak at 0.004%).
CLIP_FRACTION = 0.01


class AudioProblem(Exception):
    """A clip that cannot be used; `code` is a prepare reject reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class AudioInfo:
    sample_rate: int  # Hz of the source
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _open(source: bytes | str | os.PathLike):
    import soundfile as sf

    try:
        return sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types for bad input
        raise AudioProblem("unreadable_audio", f"cannot decode audio ({_short(e)}); "
                           "use WAV/FLAC/OGG or convert the file") from e


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def decode(source: bytes | str | os.PathLike, *, min_duration: float = 0.0,
           max_duration: float = float("inf")) -> tuple[np.ndarray, int]:
    """Decode a file path or encoded bytes to `(samples (frames, channels) float32, rate Hz)`.

    The duration is checked from the header before the samples are read, so an over-long file
    is rejected without decoding it. Raises AudioProblem (`unreadable_audio`, `empty_audio`,
    `too_short`, `too_long`).
    """
    with _open(source) as f:
        info = AudioInfo(f.samplerate, f.channels, f.frames)
        if info.frames <= 0:
            raise AudioProblem("empty_audio", "audio has no samples (0 frames); re-export the clip")
        check_duration(info.duration_s, min_duration, max_duration)
        try:
            x = f.read(dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001
            raise AudioProblem("unreadable_audio", f"audio data is corrupt ({_short(e)})") from e
    if x.shape[0] == 0:
        raise AudioProblem("empty_audio", "audio has no samples; re-export the clip")
    return x, info.sample_rate


def check_duration(duration_s: float, min_duration: float, max_duration: float) -> None:
    """Raise AudioProblem `too_short` / `too_long` outside [min_duration, max_duration] s."""
    if duration_s < min_duration:
        raise AudioProblem("too_short", f"clip is {duration_s:.3f} s, shorter than min_duration "
                           f"{min_duration} s; drop it or lower --min-duration")
    if duration_s > max_duration:
        raise AudioProblem("too_long", f"clip is {duration_s:.1f} s, longer than max_duration "
                           f"{max_duration} s; split it or raise --max-duration")


def to_mono(x: np.ndarray) -> np.ndarray:
    """(frames, channels) or (frames,) -> (frames,) float32 by averaging channels."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise AudioProblem("unreadable_audio", f"expected audio of shape (frames, channels), got {x.shape}")
    return x[:, 0].copy() if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)


def check_signal(x: np.ndarray) -> None:
    """Raise AudioProblem for empty, NaN/inf, silent or heavily clipped mono float audio."""
    if x.size == 0:
        raise AudioProblem("empty_audio", "audio has no samples; re-export the clip")
    finite = np.isfinite(x)
    if not finite.all():
        bad = int((~finite).sum())
        raise AudioProblem("nan_audio", f"audio has {bad} NaN/inf samples of {x.size}; "
                           "the file is corrupt or was written from a broken float buffer")
    peak = float(np.abs(x).max())
    if peak < SILENCE_PEAK:
        db = 20 * np.log10(peak) if peak > 0 else float("-inf")
        raise AudioProblem("silent_audio", f"audio is silent (peak {db:.0f} dBFS); check the recording")
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL))
    if clipped > CLIP_FRACTION:
        raise AudioProblem("clipped_audio", f"{clipped:.1%} of samples are clipped at full scale "
                           f"(limit {CLIP_FRACTION:.0%}); re-record or use an unclipped source")


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling with soxr VHQ; (frames,) float32 -> (frames * out/in,) float32."""
    if rate_in == rate_out:
        return np.asarray(x, dtype=np.float32)
    import soxr

    return soxr.resample(np.ascontiguousarray(x, dtype=np.float32), rate_in, rate_out,
                         quality="VHQ").astype(np.float32, copy=False)


def normalise(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Downmix, check (see `check_signal`) and resample: the full per-clip audio pipeline."""
    mono = to_mono(x)
    check_signal(mono)
    return resample(mono, rate_in, rate_out)


def encode_wav(x: np.ndarray, rate: int) -> bytes:
    """A float32 WAV (IEEE float, mono) in memory; the same samples always give the same bytes.

    Float rather than PCM_16: no second quantisation after resampling, and the resampler's
    inter-sample overshoot above full scale survives instead of being hard-clipped. It costs
    2x the disk of PCM_16 (96 kB per second at 24 kHz), small next to what training reads.
    Written with scipy, not soundfile: libsndfile adds a PEAK chunk holding a timestamp to
    float WAVs, which would change the file hash (and the dataset fingerprint) on every run.
    """
    from scipy.io import wavfile

    buf = io.BytesIO()
    wavfile.write(buf, int(rate), np.ascontiguousarray(x, dtype=np.float32))
    return buf.getvalue()
