"""A second synthesizer: CMU flite's voices, built from recordings of people.

espeak-ng is formant synthesis: its voice variants set F0 and timbre independently, and four
of the corpus' women speak through a tract as long as a man's (their formant spacing sits
among the men's). flite's voices are built from one speaker's recordings each, so a voice keeps
that speaker's vocal tract at any F0: measured with the student's own cue, kal16 973 Hz,
awb 983, slt 1,170 (a woman), where real speakers sit (men ~980-1,020, women ~1,180;
docs/experiments/realdata_transfer.md). Training on them shows the student voices whose tract
and gender agree as human ones do.

flite is optional and found at run time (`available()`): Debian's `flite` package (2.2) puts
it on PATH with the voices used here. The corpus uses it only when asked
(`SynthConfig.synthesizers`), says so in `corpus.json`, and fails with an install hint when
asked for it where it is absent. Rendering goes through the command line (one process per
rendering, ~15-45 ms): flite keeps no state between runs, so each rendering is reproducible
whatever rendered before.

An emotion's signature is realised with flite's own prosody controls, measured here (the
module's voices, one sentence; `--setf` feature = value):

- `int_f0_target_mean` (Hz): the rendered median F0 lands within 1-2% of it (kal16, awb, slt;
  `rms` ignores it, so it is not used);
- `int_f0_target_stddev` (Hz): the F0 spread, i.e. the pitch range (0 = monotone);
- `duration_stretch`: active duration x0.59-0.65 at 0.65, x1.45 at 1.6.

Level is set after synthesis: the clip's active level is measured and scaled to the corpus'
normal level (`profiles.TARGET_LEVEL_DBFS`) plus the volume label's offset, so a loud clip is
loud by measurement. flite has no breathy or harsh voice: its clips are modal whatever the
emotion (the row's `voice_quality` says so); every two emotions still differ in at least one
other cue (`profiles.signature`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache

import numpy as np
import soundfile as sf

from aligncap_core.data.audio import resample, to_mono
from aligncap_core.errors import ConfigError

from . import profiles as P
from .espeak import SAMPLE_RATE
from .measure import active_level_db, frame_levels_db
from .voicebank import pitch_scale

NAME = "flite"
INSTALL_HINT = "install it (Debian/Ubuntu: `apt-get install flite`) or leave it out of synthesizers"


@dataclass(frozen=True)
class FliteVoice:
    name: str  # flite -voice NAME
    gender: str
    accent: str  # the profiles.ACCENTS key nearest to the speaker's accent
    f0_hz: float  # median F0 at flite's defaults (one sentence)

    @property
    def normal_f0(self) -> float:
        """The F0 the corpus renders this voice's normal speech at: pulled towards its gender's
        centre like the espeak variants (`voicebank.pitch_scale`)."""
        return self.f0_hz * pitch_scale(self.gender, self.f0_hz)

    @property
    def speaker(self) -> str:
        return f"flite-{self.name}"


VOICES: tuple[FliteVoice, ...] = (
    FliteVoice("kal16", "male", "en-us", 88.9),
    FliteVoice("awb", "male", "en-gb-scotland", 132.3),
    FliteVoice("slt", "female", "en-us", 174.0),
)
BY_NAME = {v.name: v for v in VOICES}

# Label -> interval of the prosody control (jittered per clip; centred on checks.THRESHOLDS' bands
# and profiles.TARGET, from the measurements in the module docstring).
F0_FACTOR = {"low": (0.62, 0.74), "normal": (0.975, 1.025), "high": (1.35, 1.55)}
STRETCH = {"slow": (1.7, 2.0), "normal": (0.98, 1.02), "fast": (0.64, 0.72)}
LEVEL_DB = {"soft": (-10.5, -7.5), "normal": (-0.25, 0.25), "loud": (7.2, 8.9)}
# F0 standard deviation as a share of the mean at espeak's default range (50); the profiles'
# range scales it linearly (0 = monotone). 0.12 gives kal16 ~4 st, slt ~2.3 st of spread.
STD_AT_RANGE_50 = 0.12


@dataclass(frozen=True)
class FliteProsody:
    """flite controls for one rendering, and the level the clip is scaled to."""

    f0_mean: float  # Hz
    f0_std: float  # Hz
    stretch: float
    level_dbfs: float

    def rounded(self) -> FliteProsody:
        return FliteProsody(round(self.f0_mean, 2), round(self.f0_std, 2), round(self.stretch, 4),
                            round(self.level_dbfs, 2))


@cache
def available() -> str | None:
    """flite's version string when the `flite` command and every voice in `VOICES` are here,
    else None."""
    exe = shutil.which("flite")
    if exe is None:
        return None
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        listed = subprocess.run([exe, "-lv"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    voices = set(listed.stdout.split(":", 1)[-1].split())
    if not all(v.name in voices for v in VOICES):
        return None
    m = re.search(r"version:\s*(\S+)", version.stdout + version.stderr)
    return m[1] if m else "unknown"


def require() -> str:
    """flite's version; a ConfigError saying what to install when it is not usable here."""
    version = available()
    if version is None:
        names = ", ".join(v.name for v in VOICES)
        raise ConfigError(f"synthesizer 'flite' was asked for but the `flite` command with the "
                          f"voices {names} was not found on PATH: {INSTALL_HINT}")
    return version


def reference_prosody(voice: FliteVoice) -> FliteProsody:
    """The voice's normal rendering: its normal F0, the range of espeak's default, no stretch,
    at the corpus' normal level."""
    f0 = voice.normal_f0
    return FliteProsody(f0, f0 * STD_AT_RANGE_50, 1.0, P.TARGET_LEVEL_DBFS)


def sample_prosody(rng: np.random.Generator, voice: FliteVoice, emotion: str,
                   correction: P.Correction = P.Correction()) -> FliteProsody:
    """flite controls realising `emotion`'s signature for this voice, with random jitter (the
    correction is `profiles.Correction`: pitch in espeak units, rate a factor on speaking rate)."""
    prof = P.PROFILES[emotion]
    labels = P.labels_of(emotion)
    prange = int(rng.integers(prof.range[0], prof.range[1] + 1))
    f0 = (voice.normal_f0 * rng.uniform(*F0_FACTOR[labels["pitch"]])
          * np.exp(P.LN_F0_PER_PITCH * correction.pitch))
    stretch = rng.uniform(*STRETCH[labels["speed"]]) / correction.rate
    level = P.TARGET_LEVEL_DBFS + rng.uniform(*LEVEL_DB[labels["volume"]]) + correction.level_db
    return FliteProsody(float(f0), float(f0 * STD_AT_RANGE_50 * prange / 50), float(stretch),
                        float(level)).rounded()


def synth(text: str, voice: FliteVoice, prosody: FliteProsody) -> np.ndarray:
    """Render `text` (float32 at the corpus' SAMPLE_RATE, scaled to `prosody.level_dbfs`)."""
    exe = shutil.which("flite")
    if exe is None:
        raise ConfigError(f"the `flite` command is not on PATH: {INSTALL_HINT}")
    fd, path = tempfile.mkstemp(suffix=".wav", prefix="aligncap-flite-")
    os.close(fd)
    try:
        cmd = [exe, "-voice", voice.name, "-t", text, "-o", path,
               "--setf", f"int_f0_target_mean={prosody.f0_mean}",
               "--setf", f"int_f0_target_stddev={prosody.f0_std}",
               "--setf", f"duration_stretch={prosody.stretch}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"flite failed (exit {done.returncode}) on {text[:40]!r} with voice "
                               f"{voice.name}: {done.stderr.strip()[:300]}")
        x, sr = sf.read(path, dtype="float32")
    finally:
        os.unlink(path)
    x = resample(to_mono(x), int(sr), SAMPLE_RATE)
    level = active_level_db(frame_levels_db(x, SAMPLE_RATE))
    if level <= -100:
        raise RuntimeError(f"flite rendered silence for {text[:40]!r} with voice {voice.name}")
    return (x * 10 ** ((prosody.level_dbfs - level) / 20)).astype(np.float32)
