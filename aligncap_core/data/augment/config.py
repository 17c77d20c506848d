"""Augmentation settings: `AugmentConfig` (one section per transform) and its validation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from aligncap_core.data.synth.checks import MAX_PEAK
from aligncap_core.errors import ConfigError

PROSODY = ("speed", "tempo", "pitch", "gain")  # applied first, then re-measured and relabelled
# applied after, in this order (voice, channel, room, noise); labels kept, level checked
DEGRADE = ("voice", "formant", "jitter", "eq", "bandpass", "resample", "codec", "reverb", "noise")
ORDER = PROSODY + DEGRADE  # the order transforms are applied in
# each transform's random stream number (append new transforms: the old ones keep their seeds)
STREAMS = ("speed", "tempo", "pitch", "gain", "resample", "reverb", "noise", "formant", "jitter",
           "eq", "bandpass", "codec", "voice")

MIN_SNR_DB = 10.0


def _pair(key: str, v: Any, lo: float | None = None, hi: float | None = None) -> tuple[float, float]:
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_num(x) for x in v)):
        raise ConfigError(f"{key} must be a [min, max] pair of numbers, got {v!r}")
    a, b = float(v[0]), float(v[1])
    if a > b:
        raise ConfigError(f"{key} must be [min, max] with min <= max, got {v!r}")
    if (lo is not None and a < lo) or (hi is not None and b > hi):
        raise ConfigError(f"{key} must lie within [{lo}, {hi}], got {v!r}")
    return a, b


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _common(name: str, c: Any) -> None:
    if not isinstance(c.enabled, bool):
        raise ConfigError(f"{name}.enabled must be true or false, got {c.enabled!r}")
    if not (_is_num(c.p) and 0.0 <= c.p <= 1.0):
        raise ConfigError(f"{name}.p must be a probability in [0, 1], got {c.p!r}")
    mode = getattr(c, "mode", "range")
    if mode not in ("range", "target"):
        raise ConfigError(f"{name}.mode must be 'range' or 'target', got {mode!r}")


def _positive(key: str, v: Any) -> float:
    if not (_is_num(v) and v > 0):
        raise ConfigError(f"{key} must be a number > 0, got {v!r}")
    return float(v)


@dataclass
class SpeedConfig:
    """Speed perturbation (pitch and tempo together): factor s > 1 is faster and higher."""

    enabled: bool = True
    p: float = 0.2
    factor: tuple[float, float] = (0.95, 1.05)

    def __post_init__(self) -> None:
        _common("speed", self)
        self.factor = _pair("speed.factor", self.factor, 0.5, 2.0)


@dataclass
class TempoConfig:
    """Time-stretch without pitch change: factor f > 1 is faster (duration / f)."""

    enabled: bool = True
    p: float = 0.3
    mode: str = "target"
    factor: tuple[float, float] = (0.9, 1.1)  # range mode
    jitter: float = 0.06  # target mode: duration ratio drawn in TARGET x exp(+-jitter)
    max_factor: float = 1.6  # target mode: largest stretch (either way) used to reach a target

    def __post_init__(self) -> None:
        _common("tempo", self)
        self.factor = _pair("tempo.factor", self.factor, 0.5, 2.0)
        self.jitter = _positive("tempo.jitter", self.jitter) if self.jitter else 0.0
        if _positive("tempo.max_factor", self.max_factor) < 1 or self.max_factor > 2:
            raise ConfigError(f"tempo.max_factor must be in [1, 2], got {self.max_factor!r}")


@dataclass
class PitchConfig:
    """Pitch shift in semitones, duration kept."""

    enabled: bool = True
    p: float = 0.3
    mode: str = "target"
    semitones: tuple[float, float] = (-2.0, 2.0)  # range mode
    jitter: float = 0.06  # target mode: F0 ratio drawn in TARGET x exp(+-jitter)
    # target mode: largest shift used to reach a target. The resampling moves the formants with
    # F0 (by 2^(st/12)) while the gender label is kept, so large shifts are not offered.
    max_semitones: float = 5.0
    # warp the spectral envelope back after the shift (channel.voice_shift): the vocal tract,
    # and with it the voice's gender cue, stays where it was while F0 and the label move
    keep_formants: bool = False

    def __post_init__(self) -> None:
        _common("pitch", self)
        if not isinstance(self.keep_formants, bool):
            raise ConfigError(f"pitch.keep_formants must be true or false, got {self.keep_formants!r}")
        self.semitones = _pair("pitch.semitones", self.semitones, -12.0, 12.0)
        self.jitter = _positive("pitch.jitter", self.jitter) if self.jitter else 0.0
        if _positive("pitch.max_semitones", self.max_semitones) > 12:
            raise ConfigError(f"pitch.max_semitones must be in (0, 12], got {self.max_semitones!r}")


@dataclass
class GainConfig:
    """Level change in dB; the volume label is re-derived from the measured level."""

    enabled: bool = True
    p: float = 0.5
    mode: str = "target"
    db: tuple[float, float] = (-8.0, 8.0)  # range mode
    jitter_db: float = 1.5  # target mode: level drawn in TARGET +- jitter_db
    max_db: float = 14.0  # target mode: largest gain (either way) used to reach a target
    max_peak: float = 0.95  # target mode: targets whose predicted peak exceeds this are skipped

    def __post_init__(self) -> None:
        _common("gain", self)
        self.db = _pair("gain.db", self.db, -40.0, 40.0)
        self.jitter_db = _positive("gain.jitter_db", self.jitter_db) if self.jitter_db else 0.0
        _positive("gain.max_db", self.max_db)
        if not (_is_num(self.max_peak) and 0 < self.max_peak < MAX_PEAK):
            raise ConfigError(f"gain.max_peak must be in (0, {MAX_PEAK}), got {self.max_peak!r}")


@dataclass
class ResampleConfig:
    """Band-limiting chain sr -> rate -> sr (a telephone / wideband channel)."""

    enabled: bool = True
    p: float = 0.2
    rates: tuple[int, ...] = (8000, 16000)

    def __post_init__(self) -> None:
        _common("resample", self)
        if (not isinstance(self.rates, (list, tuple)) or not self.rates
                or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 2000 for r in self.rates)):
            raise ConfigError(f"resample.rates must be a non-empty list of rates in Hz (integers >= 2000), "
                              f"got {self.rates!r}")
        self.rates = tuple(self.rates)


@dataclass
class ReverbConfig:
    """Room reverberation: decaying-noise impulse response, RT60 in seconds, wet share."""

    enabled: bool = True
    p: float = 0.3
    rt60: tuple[float, float] = (0.2, 0.6)
    wet: tuple[float, float] = (0.1, 0.4)

    def __post_init__(self) -> None:
        _common("reverb", self)
        self.rt60 = _pair("reverb.rt60", self.rt60, 0.05, 3.0)
        self.wet = _pair("reverb.wet", self.wet, 0.0, 1.0)


@dataclass
class NoiseConfig:
    """Additive noise at an SNR (dB, against the active speech level) from a list."""

    enabled: bool = True
    p: float = 0.4
    snr_db: tuple[float, ...] = (30.0, 20.0, 10.0)
    colors: tuple[str, ...] = ("white", "pink")

    def __post_init__(self) -> None:
        _common("noise", self)
        if (not isinstance(self.snr_db, (list, tuple)) or not self.snr_db
                or not all(_is_num(s) for s in self.snr_db)):
            raise ConfigError(f"noise.snr_db must be a non-empty list of numbers (dB), got {self.snr_db!r}")
        if min(self.snr_db) < MIN_SNR_DB:
            raise ConfigError(f"noise.snr_db must be >= {MIN_SNR_DB:g} dB (below that the pitch and "
                              f"speed labels are no longer plainly audible), got {list(self.snr_db)}")
        self.snr_db = tuple(float(s) for s in self.snr_db)
        if (not isinstance(self.colors, (list, tuple)) or not self.colors
                or any(c not in ("white", "pink") for c in self.colors)):
            raise ConfigError(f"noise.colors must be a non-empty list of 'white' / 'pink', got {self.colors!r}")
        self.colors = tuple(self.colors)


@dataclass
class VoiceConfig:
    """Another speaker of the same gender: the whole voice's F0 moves by semitones drawn from the
    clip's gender's range (formants kept; the pitch label, relative to the voice, stays). The
    defaults widen the corpus' normal F0 (male ~100 Hz, female ~210 Hz) to ~90-135 Hz and
    ~155-235 Hz, the spread of adult voices."""

    enabled: bool = True
    p: float = 0.5
    male: tuple[float, float] = (-2.0, 5.0)
    female: tuple[float, float] = (-5.0, 2.0)

    def __post_init__(self) -> None:
        _common("voice", self)
        self.male = _pair("voice.male", self.male, -12.0, 12.0)
        self.female = _pair("voice.female", self.female, -12.0, 12.0)


@dataclass
class FormantConfig:
    """Vocal-tract-length warp of the spectral envelope by alpha (F0 kept; channel.py)."""

    enabled: bool = True
    p: float = 0.5
    alpha: tuple[float, float] = (0.88, 1.14)

    def __post_init__(self) -> None:
        _common("formant", self)
        self.alpha = _pair("formant.alpha", self.alpha, 0.7, 1.4)


@dataclass
class JitterConfig:
    """F0 jitter (playback-rate wobble, sd) and shimmer (amplitude wobble, sd)."""

    enabled: bool = True
    p: float = 0.3
    jitter: tuple[float, float] = (0.003, 0.012)
    shimmer: tuple[float, float] = (0.02, 0.12)

    def __post_init__(self) -> None:
        _common("jitter", self)
        self.jitter = _pair("jitter.jitter", self.jitter, 0.0, 0.03)
        self.shimmer = _pair("jitter.shimmer", self.shimmer, 0.0, 0.3)


@dataclass
class EqConfig:
    """Microphone / room colouring: spectral tilt (dB per octave) and up to `max_peaks` peaking
    bands of gain_db at 150-6000 Hz."""

    enabled: bool = True
    p: float = 0.5
    tilt_db_per_octave: tuple[float, float] = (-4.0, 3.0)
    gain_db: tuple[float, float] = (-9.0, 9.0)
    max_peaks: int = 2

    def __post_init__(self) -> None:
        _common("eq", self)
        self.tilt_db_per_octave = _pair("eq.tilt_db_per_octave", self.tilt_db_per_octave, -12.0, 12.0)
        self.gain_db = _pair("eq.gain_db", self.gain_db, -24.0, 24.0)
        if not isinstance(self.max_peaks, int) or isinstance(self.max_peaks, bool) or not 0 <= self.max_peaks <= 4:
            raise ConfigError(f"eq.max_peaks must be an integer in [0, 4], got {self.max_peaks!r}")


@dataclass
class BandpassConfig:
    """Channel bandwidth: high-pass corner in low_hz, low-pass corner in high_hz."""

    enabled: bool = True
    p: float = 0.3
    low_hz: tuple[float, float] = (60.0, 350.0)
    high_hz: tuple[float, float] = (3200.0, 8000.0)

    def __post_init__(self) -> None:
        _common("bandpass", self)
        self.low_hz = _pair("bandpass.low_hz", self.low_hz, 20.0, 1000.0)
        self.high_hz = _pair("bandpass.high_hz", self.high_hz, 2000.0, 12000.0)


@dataclass
class CodecConfig:
    """A lossy codec round trip, one of `codecs` (mulaw: 8 kHz telephone; mp3; opus)."""

    enabled: bool = True
    p: float = 0.3
    codecs: tuple[str, ...] = ("mulaw", "mp3", "opus")

    def __post_init__(self) -> None:
        from aligncap_core.data.augment.channel import CODECS

        _common("codec", self)
        if (not isinstance(self.codecs, (list, tuple)) or not self.codecs
                or any(c not in CODECS for c in self.codecs)):
            raise ConfigError(f"codec.codecs must be a non-empty list from {list(CODECS)}, got {self.codecs!r}")
        self.codecs = tuple(self.codecs)


_SECTIONS = {"speed": SpeedConfig, "tempo": TempoConfig, "pitch": PitchConfig, "gain": GainConfig,
             "resample": ResampleConfig, "reverb": ReverbConfig, "noise": NoiseConfig,
             "voice": VoiceConfig, "formant": FormantConfig, "jitter": JitterConfig, "eq": EqConfig,
             "bandpass": BandpassConfig, "codec": CodecConfig}


@dataclass
class AugmentConfig:
    """What `augment_dataset` does; `from_dict` builds one from YAML, naming any bad key."""

    copies: int = 1  # augmented copies per train clip (0 = copy the dataset unchanged)
    seed: int = 0
    # Reject copies whose new pitch / speed / volume label is not the one of the clip's emotion
    # signature (profiles.PROFILES), e.g. a loud "sad" clip; emotions not in the
    # profiles (other data) are not constrained. Target modes only aim at allowed labels.
    emotion_consistent: bool = True
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    tempo: TempoConfig = field(default_factory=TempoConfig)
    pitch: PitchConfig = field(default_factory=PitchConfig)
    gain: GainConfig = field(default_factory=GainConfig)
    resample: ResampleConfig = field(default_factory=ResampleConfig)
    reverb: ReverbConfig = field(default_factory=ReverbConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    formant: FormantConfig = field(default_factory=FormantConfig)
    jitter: JitterConfig = field(default_factory=JitterConfig)
    eq: EqConfig = field(default_factory=EqConfig)
    bandpass: BandpassConfig = field(default_factory=BandpassConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)

    def __post_init__(self) -> None:
        for k in ("copies", "seed"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{k} must be an integer >= 0, got {v!r}")
        if not isinstance(self.emotion_consistent, bool):
            raise ConfigError(f"emotion_consistent must be true or false, got {self.emotion_consistent!r}")
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a mapping of {cls.__name__} keys")
        if self.copies and not any(getattr(self, n).enabled for n in ORDER):
            raise ConfigError("every transform is disabled (enabled: false); enable one or set copies: 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AugmentConfig:
        """Build from a (YAML) mapping; unknown keys at any depth raise ConfigError naming them."""
        from aligncap_core.config import from_dict

        return from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists


def load_augment_config(path: str | os.PathLike | None = None, **overrides: Any) -> AugmentConfig:
    """AugmentConfig from a YAML file (or defaults) with non-None `overrides` (copies, seed) on top."""
    from aligncap_core.utils import read_yaml_mapping

    d = read_yaml_mapping(path, "augment config") if path else {}
    d.update({k: v for k, v in overrides.items() if v is not None})
    return AugmentConfig.from_dict(d)
