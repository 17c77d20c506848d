"""Voice-timbre and channel transforms for domain randomisation: the labels stay true.

The built-in corpus speaks through one synthesiser into a perfect channel. A student trained
only on that learns its timbre and its channel as much as the voice's pitch, rate and level,
and reads real recordings badly (docs/experiments/real_speech.md). These transforms randomise
what the labels do not depend on, in the spirit of domain randomisation (Tobin et al. 2017):

| name     | what it does                                                        |
|----------|---------------------------------------------------------------------|
| voice    | another speaker of the same gender: the whole voice's F0 moves by a  |
|          | few semitones (formants put back), so the clip and the voice's      |
|          | normal move together and the pitch label (relative to the voice)    |
|          | stays; the corpus' narrow per-gender F0 becomes a human-like spread |
| formant  | vocal-tract-length warp: the spectral envelope (cepstrally smoothed) |
|          | is stretched by alpha on the frequency axis, the harmonics (F0) stay |
| jitter   | F0 jitter (a slow random wobble of the playback rate, duration kept) |
|          | and shimmer (a random amplitude modulation)                          |
| eq       | microphone / room colouring: a spectral tilt (dB per octave around   |
|          | 1 kHz) and peaking bands                                             |
| bandpass | channel bandwidth: high-pass (50-400 Hz) and low-pass (3-8 kHz)      |
| codec    | a lossy codec round trip: 8 kHz mu-law (telephone), MP3 or Opus      |

Every transform but `voice` keeps F0 (within jitter's wobble); all keep the duration and the
clip's active speech level (each output is scaled back to the input's level over the same speech frames), so pitch,
speed and volume labels stay true; `relabel.augment_clip` checks the level again afterwards.
"""

from __future__ import annotations

import io

import numpy as np

_N_FFT, _HOP = 1024, 256


def _stft(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    win = np.hanning(_N_FFT + 1)[:-1]
    pad = np.concatenate([np.zeros(_N_FFT), x, np.zeros(_N_FFT)])
    frames = np.lib.stride_tricks.sliding_window_view(pad, _N_FFT)[::_HOP] * win
    return np.fft.rfft(frames, axis=1), win


def _istft(spec: np.ndarray, win: np.ndarray, n: int) -> np.ndarray:
    frames = np.fft.irfft(spec, _N_FFT, axis=1) * win
    out = np.zeros((len(frames) - 1) * _HOP + _N_FFT)
    norm = np.zeros_like(out)
    for i, f in enumerate(frames):
        out[i * _HOP: i * _HOP + _N_FFT] += f
        norm[i * _HOP: i * _HOP + _N_FFT] += win * win
    out /= np.maximum(norm, 1e-8)
    return out[_N_FFT: _N_FFT + n]


def _keep_level(y: np.ndarray, x: np.ndarray, sr: int) -> np.ndarray:
    """`y` scaled so its power over x's speech frames equals x's (the volume label's level)."""
    from aligncap_core.data.augment.transforms import active_mask, level_over

    mask = active_mask(x, sr)
    return y * 10.0 ** ((level_over(x, mask, sr) - level_over(y, mask, sr)) / 20.0)


def voice_shift(x: np.ndarray, semitones: float, sr: int) -> tuple[np.ndarray, float]:
    """F0 x 2^(st/12), duration and formants kept: WSOLA pitch shift (which moves the formants
    with F0), then the envelope warped back by the inverse factor. Returns (y, exact st)."""
    from aligncap_core.data.augment.transforms import pitch_shift

    y, exact = pitch_shift(np.asarray(x, dtype=np.float64), semitones, sr)
    return formant_warp(y, 2.0 ** (-exact / 12.0), sr), exact


def formant_warp(x: np.ndarray, alpha: float, sr: int) -> np.ndarray:
    """Move the formants by `alpha` (> 1: a shorter vocal tract, higher formants) and keep F0:
    per STFT frame, the log spectrum's cepstrum up to 2 ms (below any voice's pitch period) is
    the envelope; the envelope is resampled at f / alpha, the fine structure kept."""
    x = np.asarray(x, dtype=np.float64)
    spec, win = _stft(x)
    mag, phase = np.abs(spec), np.angle(spec)
    logmag = np.log(mag + 1e-9)
    cep = np.fft.irfft(logmag, _N_FFT, axis=1)
    lifter = int(0.002 * sr)
    cep[:, lifter: _N_FFT - lifter] = 0.0
    env = np.fft.rfft(cep, axis=1).real
    bins = np.arange(mag.shape[1], dtype=np.float64)
    warped = np.stack([np.interp(bins / alpha, bins, e) for e in env])
    y = _istft(np.exp(logmag - env + warped) * np.exp(1j * phase), win, len(x))
    return _keep_level(y, x, sr)


def _smooth_noise(rng: np.random.Generator, n: int, rate_hz: float, sr: int) -> np.ndarray:
    """Gaussian noise interpolated from `rate_hz` knots: a smooth random curve of unit sd."""
    knots = rng.standard_normal(int(n / sr * rate_hz) + 2)
    return np.interp(np.arange(n) / sr * rate_hz, np.arange(len(knots)), knots)


def jitter_shimmer(x: np.ndarray, rng: np.random.Generator, jitter: float, shimmer: float,
                   sr: int) -> np.ndarray:
    """F0 jitter: the playback rate wobbles by `jitter` (sd, e.g. 0.01 = 1%) at ~12 Hz, with the
    time map rescaled so the clip keeps its length; shimmer: the amplitude by `shimmer` (sd) at
    ~40 Hz."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    rate = 1.0 + jitter * _smooth_noise(rng, n, 12.0, sr)
    t = np.cumsum(rate)
    t = (t - t[0]) * (n - 1) / max(t[-1] - t[0], 1e-9)
    y = np.interp(t, np.arange(n), x)
    y *= 1.0 + shimmer * _smooth_noise(rng, n, 40.0, sr)
    return _keep_level(y, x, sr)


def _shape(x: np.ndarray, gain_db: np.ndarray) -> np.ndarray:
    spec = np.fft.rfft(x)
    return np.fft.irfft(spec * 10.0 ** (gain_db / 20.0), len(x))


def equalise(x: np.ndarray, tilt_db_per_octave: float, peaks: list[tuple[float, float]],
             sr: int) -> np.ndarray:
    """Zero-phase EQ: `tilt` dB per octave around 1 kHz plus peaking bands (centre Hz, gain dB;
    one octave wide), level restored."""
    x = np.asarray(x, dtype=np.float64)
    f = np.fft.rfftfreq(len(x), 1 / sr)
    octaves = np.log2(np.maximum(f, 20.0) / 1000.0)
    gain = tilt_db_per_octave * octaves
    for centre, g in peaks:
        gain += g * np.exp(-0.5 * (np.log2(np.maximum(f, 20.0) / centre) / 0.5) ** 2)
    return _keep_level(_shape(x, gain), x, sr)


def bandpass(x: np.ndarray, low_hz: float, high_hz: float, sr: int) -> np.ndarray:
    """A channel's bandwidth: ~24 dB per octave roll-offs below `low_hz` and above `high_hz`."""
    x = np.asarray(x, dtype=np.float64)
    f = np.maximum(np.fft.rfftfreq(len(x), 1 / sr), 1.0)
    gain = -10 * np.log10(1 + (low_hz / f) ** 8) - 10 * np.log10(1 + (f / high_hz) ** 8)
    return _keep_level(_shape(x, gain), x, sr)


CODECS = ("mulaw", "mp3", "opus")


def codec_roundtrip(x: np.ndarray, codec: str, sr: int) -> np.ndarray:
    """Encode and decode with a lossy codec (`CODECS`): mulaw = 8 kHz G.711 (telephone), mp3 and
    opus through libsndfile at low bit rates. Same length and level as the input."""
    import soundfile as sf

    from aligncap_core.data import audio

    x = np.asarray(x, dtype=np.float64)
    peak = float(np.max(np.abs(x))) or 1.0
    z = (x / peak * 0.9).astype(np.float32)  # codecs want [-1, 1]; undone below by _keep_level
    if codec == "mulaw":
        low = audio.resample(z, sr, 8000)
        mu = 255.0
        q = np.round(np.sign(low) * np.log1p(mu * np.abs(low)) / np.log1p(mu) * 127) / 127
        y = audio.resample((np.sign(q) * np.expm1(np.abs(q) * np.log1p(mu)) / mu).astype(np.float32),
                           8000, sr)
    else:
        rate = 24000 if codec == "mp3" else 48000
        z2 = audio.resample(z, sr, rate) if rate != sr else z
        buf = io.BytesIO()
        if codec == "mp3":
            sf.write(buf, z2, rate, format="MP3", subtype="MPEG_LAYER_III", compression_level=0.9)
        else:
            sf.write(buf, z2, rate, format="OGG", subtype="OPUS", compression_level=0.9)
        buf.seek(0)
        y, r = sf.read(buf, dtype="float32")
        y = audio.resample(y, r, sr) if r != sr else y
    y = np.asarray(y, dtype=np.float64)
    y = y[: len(x)] if len(y) >= len(x) else np.concatenate([y, np.zeros(len(x) - len(y))])
    return _keep_level(y, x, sr)

