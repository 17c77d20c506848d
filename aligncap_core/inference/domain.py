"""Domain checks: a caption does not state what the clip's measurable cues contradict.

**The level check** (on by default): a clip far louder or quieter than every training clip is
not read for volume or emotion.

A student learns "loud" and "soft" from the absolute level of its training audio (the built-in
corpus renders loud speech by raising the amplitude, and its volume labels are measured that
way), and it reads emotion partly from the same level (anger and joy loud, sadness and calm
soft). A real recording's level is set by the microphone and its gain, not by the speaker:
EmoDB's clips are normalised to peak, 3-35 dB above every clip of the demo corpus, and a student
reads all of them as loud and nearly all as "happy" (docs/experiments/realdata_transfer.md,
"The level check"). Such a caption is an extrapolation stated as a fact.

So a checkpoint records the level range of its training clips (`SpeechSettings.level_range`,
dBFS: the 0.5th and 99.5th percentile of `clip_level_db` over the train split) and decoding
leaves volume and emotion out of the caption of a clip whose level is more than
`DecodingSettings.level_margin_db` outside it (`level_verdict`). The caption says less; the
decision (`Decision.withheld`) says what was left out and why, with the figures, so a user can
check it (and turn the check off, `level_check: false`, for audio recorded like the training
audio).

**The voice check** (on by default, `DecodingSettings.voice_check`): a caption does not state a
gender the clip's vocal tract contradicts. The student reads gender mostly from F0, which
separates the built-in corpus' men and women perfectly, but not human ones (acted emotional
speech puts men at 150-260 Hz). The formant spacing (`codec.prosody.formant_spacing`, a
vocal-tract-length cue) reads a real speaker's gender 0.92-0.93 when fitted on synthetic voices
(docs/experiments/realdata_transfer.md). A student checkpoint records the spacing boundary
between its training men and women (`SpeechSettings.voice_boundary`, `voice_boundary`); when the
candidates' gender contradicts the side of it the clip falls on, gender is withheld, with the
figures (`voice_verdict`). The corpus' own voices overlap on the cue (the boundary reads its
train split ~0.8), so on synthetic voices it also withholds gender from clips the model had
right; it was off by default until the 600-step student, where it costs less than it saves: on
400 fresh synthetic zeroshot clips hallucination 0.080 -> 0.055 and gender stated 0.963 -> 0.833
(right when stated 0.964 -> 0.991); on the demo's 80 zeroshot clips gender stated 0.950 -> 0.912;
on the 107 real clips wrong genders 0.187 -> 0.056 of clips, gender stated 0.785 -> 0.636 and
right when stated 0.762 -> 0.912 (docs/experiments/realdata_transfer.md, "The voice check on
every clip"). A caption may say less; it must not say something false.

**The pitch check** (off by default, `DecodingSettings.pitch_check`): a caption states a pitch
only where the clip's F0 tells it whatever the speaker's normal voice. A pitch label is
relative to the speaker's own normal F0 (`data.synth.checks.THRESHOLDS`: high >= 1.28x, low
<= 0.80x), which one clip of an unknown speaker does not carry. The corpus' voices keep their
normal F0 within ~8% of their gender's centre (`data.synth.voicebank`), so there F0 and gender
tell it; human speakers' normal F0 spreads far wider. `pitch_probability` is the chance that the
stated label is true given the clip's median F0 and the gender, with the speaker's normal F0
drawn from the adult speaking-F0 population (`HUMAN_F0_HZ`, `HUMAN_F0_SPREAD`: round figures
of the voice literature, not fitted on any evaluation clip); the pitch is withheld when that
chance is below the decoder's own bar for a statement, risk / (1 + risk) (`pitch_verdict`).
Off by default because it applies human voices' spread to every clip: on the corpus' voices it
withholds pitch from about half of the clips, which it reads right 0.98 of the time.

**Recordings unlike the training audio** (`DecodingSettings.ood_checks`, on by default): a clip
whose level is outside the training audio's level range (the level check's verdict), or whose
band edge is more than `band_margin_hz` outside the training clips' range (`clip_band_hz`: the
frequency below which all but -60 dB of the clip's energy lies, a property of the recording
chain; the checkpoint records the range, `SpeechSettings.band_range`), is a recording made
unlike the training audio (`unlike_reason`). It gets the pitch check (and the voice check,
should it be turned off) whatever `pitch_check` / `voice_check` say (`Captioner.human_checks`):
the cues those checks read (the vocal tract, F0 against human voices) are the ones that carry
over to human speech. And with `ood_gender` (on by default) its caption states the gender the
clip's formant spacing reads instead of the model's (`voice_told`, `Told`; the decoder's side:
`inference.consistent`): on the 107 real clips the students' own gender is right 0.76 of the
time when stated, the spacing's side of the boundary fitted on the training voices 0.94; on the
training voices it is the other way round (the student 0.99, the spacing 0.87-0.90), which is
why this is for recordings unlike them only. With `ood_emotion` (on by default) such a clip is
also captioned without emotion (`unlike_withheld`): the students' emotion on the 107 real clips
is right 0.16-0.18 of the time when stated, below the majority class (0.27), mostly "happy"
whatever the clip. The built-in corpus renders at 22.05 kHz (band
edges 10.3-10.7 kHz); EmoDB's 16 kHz recordings stop near 7.7 kHz and RAVDESS's 48 kHz ones
reach 11.6 kHz, so every real clip is flagged and no clip of the demo's synthetic valid /
zeroshot splits, nor of 400 fresh zeroshot clips, is: synthetic captions do not change
(docs/experiments/realdata_transfer.md, "The band edge, and the gender the tract tells").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aligncap_core.errors import DataError

log = logging.getLogger(__name__)

# what a student reads from the absolute level: the volume itself and (in part) the emotion
LEVEL_ATTRS: tuple[str, ...] = ("volume", "emotion")
RANGE_PERCENTILES = (0.5, 99.5)
MAX_FIT_CLIPS = 2000
BAND_REL = 1e-6  # the band edge: all but this share of a clip's energy lies below it (-60 dB)


@dataclass(frozen=True)
class Withheld:
    """Attributes a caption leaves out whatever the model believes, and why (for the user)."""

    attributes: tuple[str, ...]
    reason: str
    checks: tuple[str, ...] = ("level",)  # which checks withheld them: "level", "voice", "pitch"

    def to_dict(self) -> dict:
        return {"attributes": list(self.attributes), "reason": self.reason, "checks": list(self.checks)}

    def merge(self, other: Withheld | None) -> Withheld:
        """Both withholdings in one (attributes in order, reasons joined)."""
        if other is None:
            return self
        attrs = tuple(dict.fromkeys((*self.attributes, *other.attributes)))
        return Withheld(attrs, f"{self.reason}; {other.reason}", tuple(dict.fromkeys((*self.checks, *other.checks))))


def merged(first: Withheld | None, then: Withheld | None) -> Withheld | None:
    """`first.merge(then)`, either of them alone when the other is None."""
    return then if first is None else first.merge(then)


def fit_sample(rows: Sequence[dict], seed: int = 0) -> list[dict]:
    """The training rows a check is fitted on: all of them, or a seeded sample of MAX_FIT_CLIPS
    in their order."""
    rows = list(rows)
    if len(rows) <= MAX_FIT_CLIPS:
        return rows
    pick = np.random.default_rng(seed).choice(len(rows), MAX_FIT_CLIPS, replace=False)
    return [rows[i] for i in sorted(pick)]


def clip_level_db(wav: np.ndarray, sample_rate: int) -> float:
    """The clip's level as the corpus measures its volume labels: mean power of the 10 ms frames
    within 35 dB of the loudest, dBFS (`data.synth.measure`)."""
    from aligncap_core.data.synth.measure import active_level_db, frame_levels_db

    return active_level_db(frame_levels_db(np.asarray(wav, dtype=np.float64), sample_rate))


def level_range(levels: Sequence[float]) -> list[float]:
    """[low, high] dBFS: the 0.5th and 99.5th percentile of the training clips' levels."""
    if not len(levels):
        raise DataError("no training clip to take the level range from")
    lo, hi = np.percentile(np.asarray(levels, dtype=np.float64), RANGE_PERCENTILES)
    return [round(float(lo), 2), round(float(hi), 2)]


def training_ranges(data_dir: str | os.PathLike, rows: Sequence[dict], sample_rate: int = 24_000,
                    seed: int = 0) -> tuple[list[float] | None, list[float] | None]:
    """(`level_range`, `band_range`) of the rows' audio (at most MAX_FIT_CLIPS of them, a seeded
    sample), each clip read once: what a student trained on `rows` has heard. (None, None),
    with a warning, when no row's audio file is there (codes without audio): the checkpoint
    then records neither and its clips are not checked. DataError naming the row when some
    rows have their audio and others do not."""
    from aligncap_core.codec.tokenizer import read_audio
    from aligncap_core.train.data import row_audio_path

    rows = fit_sample(rows, seed)
    paths = [row_audio_path(data_dir, r) for r in rows]
    found = [p.is_file() for p in paths]
    if not any(found):
        log.warning("%s: no training clip's audio is there; the student records no level or band "
                    "range and its captions are not level-checked (inference.domain)", data_dir)
        return None, None
    if not all(found):
        i = found.index(False)
        raise DataError(f"{rows[i].get('id')}: audio file not found: {paths[i]} (the level and band "
                        "ranges of the training audio are read from every clip's audio)")
    levels, edges = [], []
    for p in paths:
        wav = read_audio(p, sample_rate)
        levels.append(clip_level_db(wav, sample_rate))
        edges.append(clip_band_hz(wav, sample_rate))
    out = level_range(levels), band_range(edges)
    log.info("%d training clips: level %.1f to %.1f dBFS, band edge %.0f to %.0f Hz", len(levels),
             *out[0], *out[1])
    return out


def clip_band_hz(wav: np.ndarray, sample_rate: int) -> float:
    """The clip's band edge, Hz: the highest frequency with more than BAND_REL (-60 dB) of the
    clip's energy at or above it (Welch spectrum, 512-sample Hann segments). A property of the
    recording chain: the built-in corpus' synthesizer renders at 22.05 kHz (edges 10.3-10.7 kHz),
    a 16 kHz recording stops near 7.8 kHz, a 44.1 / 48 kHz one reaches past 11 kHz. nan for
    digital silence."""
    from scipy.signal import welch

    x = np.asarray(wav, dtype=np.float64)
    if not np.any(x):
        return float("nan")
    f, p = welch(x, sample_rate, nperseg=min(512, len(x)))
    above = np.cumsum(p[::-1])[::-1]  # energy at and above each bin
    return float(f[np.flatnonzero(above > BAND_REL * above[0])[-1]])


def band_range(edges: Sequence[float]) -> list[float]:
    """[low, high] Hz: the 0.5th and 99.5th percentile of the training clips' band edges."""
    x = np.asarray(edges, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        raise DataError("no training clip with a measurable band edge to take the range from")
    lo, hi = np.percentile(x, RANGE_PERCENTILES)
    return [round(float(lo), 1), round(float(hi), 1)]


def outside(value: float | None, trained: Sequence[float] | None, margin: float) -> bool:
    """Whether a clip's measured `value` is more than `margin` outside the `trained` [low, high]
    range; False when either is unknown (unmeasured, nan, or a checkpoint without the range)."""
    if value is None or not trained or not np.isfinite(value):
        return False
    return not trained[0] - margin <= value <= trained[1] + margin


def unlike_reason(level_db: float | None, level_range: Sequence[float] | None, level_margin_db: float,
                  band_hz: float | None, band_range: Sequence[float] | None,
                  band_margin_hz: float) -> str | None:
    """Why a clip is a recording unlike the training audio (its level, then its band edge, more
    than the margin outside the training clips' range), or None: inside both, or unknown."""
    why = []
    if outside(level_db, level_range, level_margin_db):
        why.append(f"its level ({level_db:.1f} dBFS) is outside the training audio's "
                   f"({level_range[0]:.1f} to {level_range[1]:.1f} dBFS, margin {level_margin_db:g} dB)")
    if outside(band_hz, band_range, band_margin_hz):
        why.append(f"its spectrum ends at {band_hz / 1000:.1f} kHz, the training audio's at "
                   f"{band_range[0] / 1000:.1f} to {band_range[1] / 1000:.1f} kHz (margin "
                   f"{band_margin_hz / 1000:g} kHz)")
    return " and ".join(why) or None


# what a recording unlike the training audio is not read for: the students' emotion on the 107 real
# clips is right 0.16-0.18 of the time when stated (majority class 0.27; "happy" for 96 of EmoDB's
# 101 stated emotions over three seeds, whatever the clip's), docs/experiments/realdata_transfer.md
UNLIKE_ATTRS: tuple[str, ...] = ("emotion",)


def unlike_withheld(unlike: str | None) -> Withheld | None:
    """`Withheld(UNLIKE_ATTRS, why)` for a recording unlike the training audio (`unlike`: its
    `unlike_reason`); None for one like it."""
    if unlike is None:
        return None
    return Withheld(UNLIKE_ATTRS, f"the clip is a recording unlike the training audio ({unlike}), on "
                                  "which the model's reading of emotion does not carry over: emotion "
                                  "is not stated", ("unlike",))


def level_verdict(level_db: float | None, trained: Sequence[float] | None,
                  margin_db: float) -> Withheld | None:
    """`Withheld(LEVEL_ATTRS, why)` when the clip's level is more than `margin_db` outside the
    `trained` range; None when it is inside, or when either is unknown (a checkpoint saved
    before the range was recorded)."""
    if not outside(level_db, trained, margin_db):
        return None
    lo, hi = trained
    side = "louder" if level_db > hi else "quieter"
    return Withheld(LEVEL_ATTRS, f"the clip's level ({level_db:.1f} dBFS) is {side} than the "
                                 f"training audio's ({lo:.1f} to {hi:.1f} dBFS, margin "
                                 f"{margin_db:g} dB): volume and emotion are not read from it")


# --- the voice check -----------------------------------------------------------------------

VOICE_ATTR = "gender"
MIN_VOICE_CLIPS = 10  # per gender, for a boundary


def clip_cues(wav: np.ndarray | None, sample_rate: int, prosody: Any = None, spacing: bool = True,
              f0: bool = True) -> tuple[float | None, float | None]:
    """(formant spacing, median F0), Hz, of the span of the clip the student reads
    (`codec.prosody.active_span` with the student's trim; the whole clip without one): each nan
    when unmeasurable, None when not asked for. One trim and one YIN track serve both."""
    from aligncap_core.codec.prosody import active_span, formant_spacing
    from aligncap_core.data.synth.measure import yin_track

    if not (spacing or f0):
        return None, None
    x = np.asarray(wav, dtype=np.float64)
    if prosody is not None:
        x = x[slice(*active_span(x, sample_rate, prosody))]
    nan = float("nan")
    if not np.any(x):  # digital silence: YIN's dips are all zero there, and LPC has no frames
        return (nan if spacing else None), (nan if f0 else None)
    track, hop = yin_track(x, sample_rate)
    voiced = track[~np.isnan(track)]
    return (formant_spacing(x, sample_rate, track, hop) if spacing else None,
            (float(np.median(voiced)) if len(voiced) else nan) if f0 else None)


def clip_spacing_hz(wav: np.ndarray, sample_rate: int, prosody: Any = None) -> float:
    """The formant spacing (Hz, nan when unmeasurable) of the span of the clip the student reads
    (`clip_cues`)."""
    return clip_cues(wav, sample_rate, prosody, f0=False)[0]


def voice_boundary(spacings: Sequence[float], genders: Sequence[str]) -> dict | None:
    """The formant spacing (Hz) where a logistic regression on log spacing, fitted on clips of
    known gender, moves from "male" (below) to "female"; with its accuracy on those clips.
    None (with a warning) when either gender has fewer than MIN_VOICE_CLIPS measurable clips."""
    from sklearn.linear_model import LogisticRegression

    x = np.log(np.asarray(spacings, dtype=np.float64))
    male = np.asarray([g == "male" for g in genders])
    known = np.isfinite(x) & np.isin(np.asarray(genders, dtype=object), ["male", "female"])
    if min(int((known & male).sum()), int((known & ~male).sum())) < MIN_VOICE_CLIPS:
        log.warning("voice boundary: fewer than %d measurable clips of a gender; none recorded",
                    MIN_VOICE_CLIPS)
        return None
    clf = LogisticRegression(C=1e4).fit(x[known, None], male[known])
    cut = -float(clf.intercept_[0]) / float(clf.coef_[0, 0])
    accuracy = float(np.mean((x[known] < cut) == male[known]))
    return {"threshold_hz": round(float(np.exp(cut)), 1), "train_accuracy": round(accuracy, 3),
            "clips": int(known.sum())}


def training_voice_boundary(data_dir: str | os.PathLike, rows: Sequence[dict], prosody: Any = None,
                            sample_rate: int = 24_000, seed: int = 0) -> dict | None:
    """`voice_boundary` of the rows' audio (at most MAX_FIT_CLIPS, a seeded sample; rows with a
    gender attribute only). None when no row's audio is there or too few have a gender."""
    from aligncap_core.codec.tokenizer import read_audio
    from aligncap_core.train.data import row_audio_path

    rows = fit_sample([r for r in rows if (r.get("attributes") or {}).get(VOICE_ATTR) in ("male", "female")],
                      seed)
    paths = [row_audio_path(data_dir, r) for r in rows]
    if not rows:
        log.warning("%s: no training clip has a gender label; the student records no voice "
                    "boundary (inference.domain)", data_dir)
        return None
    if not all(p.is_file() for p in paths):
        log.warning("%s: not every training clip with a gender has its audio here; the student "
                    "records no voice boundary (inference.domain)", data_dir)
        return None
    spacings = [clip_spacing_hz(read_audio(p, sample_rate), sample_rate, prosody) for p in paths]
    out = voice_boundary(spacings, [r["attributes"][VOICE_ATTR] for r in rows])
    if out:
        log.info("voice boundary of %d training clips: %.0f Hz (reads their gender %.3f)",
                 out["clips"], out["threshold_hz"], out["train_accuracy"])
    return out


def voice_reading(spacing_hz: float | None, boundary: dict | None) -> str | None:
    """"male" / "female": the side of the boundary the clip's spacing is on, at least the
    boundary's `margin` (log ratio, 0 when absent; `DecodingSettings.voice_margin`) past it;
    None when either is unknown (an unmeasurable clip, a checkpoint without a boundary) or the
    clip is within the margin."""
    if spacing_hz is None or not boundary or not np.isfinite(spacing_hz):
        return None
    margin = float(boundary.get("margin", 0.0))
    if spacing_hz < boundary["threshold_hz"] * np.exp(-margin):
        return "male"
    if spacing_hz > boundary["threshold_hz"] * np.exp(margin):
        return "female"
    return None


def voice_verdict(said: str | None, spacing_hz: float | None, boundary: dict | None) -> Withheld | None:
    """`Withheld((gender,), why)` when the gender a caption would state contradicts the clip's
    voice reading; None otherwise."""
    reads = voice_reading(spacing_hz, boundary)
    if said is None or reads is None or said == reads:
        return None
    return Withheld((VOICE_ATTR,), f"the caption would say {said}, but the clip's formant spacing "
                                   f"({spacing_hz:.0f} Hz) reads {reads} (boundary "
                                   f"{boundary['threshold_hz']:.0f} Hz, fitted on the training "
                                   f"voices{_margin_text(boundary)}): gender is not stated", ("voice",))


@dataclass(frozen=True)
class Told:
    """Attribute values a caption states from a measured cue of the clip instead of the model's
    own reading (`attributes`: attribute -> value), and why (for the user)."""

    attributes: dict[str, str]
    reason: str

    def to_dict(self) -> dict:
        return {"attributes": dict(self.attributes), "reason": self.reason}


def voice_told(spacing_hz: float | None, boundary: dict | None, unlike: str) -> Told | None:
    """`Told({gender: the clip's voice reading}, why)` for a recording unlike the training audio
    (`unlike`: `unlike_reason`); None when the clip has no reading (unmeasurable, no boundary,
    within the margin). On human recordings the model's gender does not carry over from the
    synthetic training voices (right 0.76 of the time when stated on the 107 real clips), the
    spacing's side of the boundary fitted on those voices does (0.94); on the training voices
    themselves it is the other way round, so this is for recordings unlike them only."""
    reads = voice_reading(spacing_hz, boundary)
    if reads is None or boundary is None:
        return None
    return Told({VOICE_ATTR: reads}, f"the clip is a recording unlike the training audio ({unlike}), "
                                     f"on which the model's own reading of gender does not carry over "
                                     f"and the formant spacing's does: the caption states {reads}, "
                                     f"the side of the boundary ({boundary['threshold_hz']:.0f} Hz, "
                                     f"fitted on the training voices{_margin_text(boundary)}) its "
                                     f"spacing ({spacing_hz:.0f} Hz) is on")


def _margin_text(boundary: dict) -> str:
    m = float(boundary.get("margin", 0.0))
    return f", margin {np.expm1(m):.0%}" if m else ""


# Adult speaking F0 (Hz, the centre of each gender's population) and its spread within a
# gender (sd of log F0, ~2.6 semitones): round figures of the voice literature (men ~120 Hz,
# women ~210 Hz; e.g. Titze 1994, "Principles of Voice Production").
HUMAN_F0_HZ = {"male": 120.0, "female": 210.0}
HUMAN_F0_SPREAD = 0.15
PITCH_ATTR = "pitch"


def clip_f0_hz(wav: np.ndarray, sample_rate: int, prosody: Any = None) -> float:
    """The median F0 (Hz; nan without voiced frames) of the span of the clip the student reads
    (`clip_cues`)."""
    return clip_cues(wav, sample_rate, prosody, spacing=False)[1]


def pitch_probability(label: str, f0_hz: float, gender: str | None) -> float:
    """P(the clip's pitch label is `label` | its median F0, the speaker's gender): the speaker's
    normal F0 log-normal around HUMAN_F0_HZ[gender] (both genders, equally likely, when None),
    the label's band of F0 / normal from `data.synth.checks.THRESHOLDS`."""
    from scipy.stats import norm

    from aligncap_core.data.synth.checks import THRESHOLDS

    lo, hi = THRESHOLDS[PITCH_ATTR][label]
    # F0 / normal in [lo, hi]  <=>  normal in [F0 / hi, F0 / lo]
    a = np.log(f0_hz / hi) if np.isfinite(hi) else -np.inf
    b = np.log(f0_hz / lo) if lo > 0 else np.inf
    genders = [gender] if gender in HUMAN_F0_HZ else list(HUMAN_F0_HZ)
    return float(np.mean([norm.cdf((b - np.log(HUMAN_F0_HZ[g])) / HUMAN_F0_SPREAD)
                          - norm.cdf((a - np.log(HUMAN_F0_HZ[g])) / HUMAN_F0_SPREAD) for g in genders]))


def pitch_verdict(said: str | None, f0_hz: float | None, gender: str | None,
                  threshold: float) -> Withheld | None:
    """`Withheld(("pitch",), why)` when a caption would state pitch `said` but its chance given
    the clip's F0 (`pitch_probability`) is under `threshold`; None otherwise (no pitch stated, a
    label the thresholds do not know, or no F0 measured)."""
    from aligncap_core.data.synth.checks import THRESHOLDS

    if said not in THRESHOLDS[PITCH_ATTR] or f0_hz is None or not np.isfinite(f0_hz):
        return None
    q = pitch_probability(said, f0_hz, gender)
    if q >= threshold:
        return None
    who = f"a {gender} speaker" if gender in HUMAN_F0_HZ else "a speaker of either gender"
    return Withheld((PITCH_ATTR,), f"the caption would say {said} pitch, but at {f0_hz:.0f} Hz that "
                                   f"is true for {q:.0%} of {who}'s normal voices (a statement needs "
                                   f"{threshold:.0%}): pitch is not stated", (PITCH_ATTR,))


def clip_verdict(said: dict, spacing_hz: float | None = None, boundary: dict | None = None,
                 f0_hz: float | None = None, pitch_threshold: float | None = None) -> Withheld | None:
    """The voice check (with a `boundary`) and the pitch check (with a `pitch_threshold`) of
    the attributes a caption would state (`said`: attribute -> label), merged. The pitch check
    takes the stated gender unless the voice check withholds it (then either gender)."""
    voice = voice_verdict(said.get(VOICE_ATTR), spacing_hz, boundary) if boundary else None
    if pitch_threshold is None:
        return voice
    gender = None if voice is not None else said.get(VOICE_ATTR)
    return merged(voice, pitch_verdict(said.get(PITCH_ATTR), f0_hz, gender, pitch_threshold))
