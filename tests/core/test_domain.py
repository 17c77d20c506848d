"""The domain checks (inference.domain). The level check: the level the corpus measures its
volume labels with, the training audio's range, and the verdict a clip far outside it gets. The
voice check: the formant-spacing boundary between the training men and women, and the verdict
on a caption whose gender the clip's vocal tract contradicts. The pitch check: the chance of a
pitch label given the clip's F0 and human voices' spread of normal F0, and its verdict."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf

from aligncap_core.errors import DataError
from aligncap_core.inference.domain import (
    HUMAN_F0_HZ,
    LEVEL_ATTRS,
    band_range,
    clip_band_hz,
    clip_f0_hz,
    clip_level_db,
    clip_verdict,
    level_range,
    level_verdict,
    pitch_probability,
    pitch_verdict,
    training_ranges,
    training_voice_boundary,
    unlike_reason,
    unlike_withheld,
    voice_boundary,
    voice_reading,
    voice_told,
    voice_verdict,
)
from tests.helpers.audio_corpus import vowel

SR = 24_000


def _speechlike(amp: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A 150 Hz tone in bursts with silence between them (amplitude `amp`)."""
    t = np.arange(int(SR * seconds)) / SR
    gate = (np.sin(2 * np.pi * 3 * t) > 0).astype(np.float64)
    noise = np.random.default_rng(seed).normal(0, 1e-5, t.shape)
    return amp * np.sin(2 * np.pi * 150 * t) * gate + noise


def test_level_is_the_mean_power_of_the_active_frames_and_follows_the_gain():
    # a sine of amplitude a has power a^2 / 2: -3 dB re full scale at a = 1; silence is not counted
    assert clip_level_db(_speechlike(1.0), SR) == pytest.approx(-3.01, abs=0.2)
    quiet, loud = clip_level_db(_speechlike(0.05), SR), clip_level_db(_speechlike(0.1), SR)
    assert loud - quiet == pytest.approx(6.02, abs=0.05)
    from aligncap_core.data.synth.measure import measure

    assert measure(_speechlike(0.1), SR).level_dbfs == pytest.approx(loud)  # the volume labels' level


def test_the_verdict_withholds_volume_and_emotion_only_outside_the_margin():
    trained = level_range(list(np.linspace(-40, -20, 201)))
    assert trained == pytest.approx([-39.9, -20.1], abs=0.01)
    assert level_verdict(-30.0, trained, 3.0) is None
    assert level_verdict(-17.5, trained, 3.0) is None  # inside the margin
    loud = level_verdict(-12.0, trained, 3.0)
    assert loud.attributes == LEVEL_ATTRS and "louder" in loud.reason and "-12.0 dBFS" in loud.reason
    assert "quieter" in level_verdict(-50.0, trained, 3.0).reason
    assert level_verdict(-12.0, trained, 10.0) is None
    assert level_verdict(-12.0, None, 3.0) is None and level_verdict(None, trained, 3.0) is None
    with pytest.raises(DataError, match="no training clip"):
        level_range([])


def test_training_range_is_read_from_the_rows_audio(tmp_path, caplog):
    rows = []
    for i, amp in enumerate([0.02, 0.05, 0.1, 0.2]):
        sf.write(tmp_path / f"c{i}.wav", _speechlike(amp, seed=i).astype(np.float32), SR)
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav"})
    (lo, hi), band = training_ranges(tmp_path, rows)
    assert lo == pytest.approx(clip_level_db(_speechlike(0.02), SR), abs=0.3)
    assert hi == pytest.approx(clip_level_db(_speechlike(0.2), SR), abs=0.3)
    from aligncap_core.codec.tokenizer import read_audio

    edges = [clip_band_hz(read_audio(tmp_path / r["audio"], SR), SR) for r in rows]
    assert band == band_range(edges) and min(edges) <= band[0] < band[1] <= max(edges)
    with pytest.raises(DataError, match="c9: audio file not found"):
        training_ranges(tmp_path, [*rows, {"id": "c9", "audio": "c9.wav"}])
    with caplog.at_level(logging.WARNING):  # codes without audio: no range, said out loud
        assert training_ranges(tmp_path / "none", rows) == (None, None)
    assert "not level-checked" in caplog.text
    json.dumps([lo, hi, *band])  # recorded in meta.json as plain floats


def _chain(x: np.ndarray, rate: int) -> np.ndarray:
    """`x` (at SR) recorded at `rate` and read back at SR with the project's resampler: what
    a recording chain at that rate keeps of it (everything above rate / 2 is gone)."""
    from aligncap_core.data.audio import resample

    return resample(resample(x, SR, rate), rate, SR)


def test_the_band_edge_tells_the_recording_chain():
    """A full-band clip reaches SR / 2; the same clip through a 22.05 kHz chain (the built-in
    corpus' synthesizer) stops below 11.025 kHz, through a 16 kHz one below 8 kHz."""
    noise = np.random.default_rng(0).normal(0, 0.05, SR) + _speechlike(0.1)
    full, synth, wide = clip_band_hz(noise, SR), clip_band_hz(_chain(noise, 22_050), SR), \
        clip_band_hz(_chain(noise, 16_000), SR)
    assert full > 11_500 and 9_500 < synth < 11_025 and 7_000 < wide < 8_000
    assert np.isnan(clip_band_hz(np.zeros(SR), SR))
    assert band_range([10_000.0, float("nan"), 10_500.0]) == pytest.approx([10_002.5, 10_497.5])
    with pytest.raises(DataError, match="band edge"):
        band_range([float("nan")])


def test_a_recording_unlike_the_training_audio_says_why():
    """Outside the level range or the band range by more than their margins: the reason names
    each with its figures; inside both, or nothing recorded, None."""
    levels, bands = [-40.0, -20.0], [10_350.0, 10_640.0]
    assert unlike_reason(-30.0, levels, 3.0, 10_500.0, bands, 500.0) is None
    assert unlike_reason(-30.0, levels, 3.0, 11_100.0, bands, 500.0) is None  # inside the margin
    why = unlike_reason(-30.0, levels, 3.0, 7_700.0, bands, 500.0)
    assert why == ("its spectrum ends at 7.7 kHz, the training audio's at 10.3 to 10.6 kHz "
                   "(margin 0.5 kHz)")
    both = unlike_reason(-10.0, levels, 3.0, 11_600.0, bands, 500.0)
    assert both.startswith("its level (-10.0 dBFS) is outside") and " and its spectrum ends at 11.6 kHz" in both
    assert unlike_reason(-10.0, None, 3.0, 11_600.0, None, 500.0) is None  # nothing recorded
    assert unlike_reason(None, levels, 3.0, float("nan"), bands, 500.0) is None  # nothing measured
    # such a recording is not read for emotion
    held = unlike_withheld(why)
    assert held.attributes == ("emotion",) and held.checks == ("unlike",) and why in held.reason
    assert unlike_withheld(None) is None


def test_on_a_recording_unlike_the_training_audio_the_tract_tells_the_gender():
    b = {"threshold_hz": 1080.0, "train_accuracy": 0.8, "clips": 100}
    t = voice_told(1010.0, b, "its spectrum ends at 7.7 kHz")
    assert t.attributes == {"gender": "male"} and t.to_dict()["attributes"] == {"gender": "male"}
    assert "(its spectrum ends at 7.7 kHz)" in t.reason and "states male" in t.reason
    assert "1010 Hz" in t.reason and "1080 Hz" in t.reason
    assert voice_told(1150.0, b, "x").attributes == {"gender": "female"}
    assert voice_told(1070.0, {**b, "margin": 0.03}, "x") is None  # within the margin: no reading
    assert voice_told(float("nan"), b, "x") is None and voice_told(1010.0, None, "x") is None


def test_voice_boundary_lies_between_the_training_men_and_women():
    rng = np.random.default_rng(0)
    men, women = rng.normal(1000, 25, 40), rng.normal(1170, 25, 40)
    b = voice_boundary([*men, *women, float("nan")], ["male"] * 40 + ["female"] * 40 + ["male"])
    assert 1050 < b["threshold_hz"] < 1120 and b["train_accuracy"] == 1.0 and b["clips"] == 80
    json.dumps(b)  # recorded in meta.json
    # a corpus whose voices overlap on the cue says so in its accuracy
    mixed = voice_boundary([*men, *women], ["male", "female"] * 40)
    assert mixed is None or mixed["train_accuracy"] < 0.7
    assert voice_boundary([1000.0] * 5 + [1170.0] * 40, ["male"] * 5 + ["female"] * 40) is None  # too few men


def test_voice_verdict_withholds_only_the_gender_the_tract_contradicts():
    b = {"threshold_hz": 1080.0, "train_accuracy": 0.9, "clips": 100}
    assert voice_reading(1010.0, b) == "male" and voice_reading(1150.0, b) == "female"
    assert voice_verdict("male", 1010.0, b) is None  # agrees
    w = voice_verdict("female", 1010.0, b)
    assert w.attributes == ("gender",) and w.checks == ("voice",)
    assert "would say female" in w.reason and "1010 Hz" in w.reason and "reads male" in w.reason
    # nothing to check: no gender stated, unmeasurable clip, checkpoint without a boundary
    assert voice_verdict(None, 1010.0, b) is None
    assert voice_verdict("female", float("nan"), b) is None and voice_verdict("female", 1010.0, None) is None
    level = level_verdict(-12.0, [-40.0, -20.0], 3.0)
    both = level.merge(w)
    assert both.attributes == (*LEVEL_ATTRS, "gender") and both.checks == ("level", "voice")
    assert both.to_dict()["reason"].startswith(level.reason) and w.reason in both.reason
    # with a margin, a clip just past the boundary contradicts nothing; one far past it does
    m = {**b, "margin": 0.03}  # 1080 Hz x e^-0.03 = 1048 Hz, x e^0.03 = 1113 Hz
    assert voice_reading(1060.0, m) is None and voice_reading(1100.0, m) is None
    assert voice_reading(1040.0, m) == "male" and voice_reading(1120.0, m) == "female"
    assert voice_verdict("female", 1060.0, m) is None
    far = voice_verdict("female", 1040.0, m)
    assert far.attributes == ("gender",) and "margin 3%" in far.reason


def test_decoding_voice_margin_reaches_the_checks():
    from aligncap_core.errors import ConfigError
    from aligncap_core.inference.consistent import DecodingSettings

    assert DecodingSettings(voice_margin=0.03).to_dict()["voice_margin"] == 0.03
    with pytest.raises(ConfigError, match="voice_margin"):
        DecodingSettings(voice_margin=-0.01)


def test_pitch_probability_follows_the_human_f0_spread():
    # at a gender's centre "normal" is the likeliest label and neither extreme is likely
    for g, f0 in HUMAN_F0_HZ.items():
        p = {lab: pitch_probability(lab, f0, g) for lab in ("low", "normal", "high")}
        assert p["normal"] > max(p["low"], p["high"]) and max(p["low"], p["high"]) < 0.1
        assert sum(p.values()) < 1.0  # the gaps between the bands hold the rest
    # "high" grows with F0, and is judged against the stated gender's voices
    highs = [pitch_probability("high", f, "female") for f in (180, 220, 260, 300, 360)]
    assert highs == sorted(highs) and highs[0] < 0.01 and highs[-1] > 0.95
    assert pitch_probability("high", 220.0, "male") > 0.95 > 0.2 > pitch_probability("high", 220.0, "female")
    # no gender: both populations, equally likely
    both = pitch_probability("high", 220.0, None)
    assert both == pytest.approx((pitch_probability("high", 220.0, "male")
                                  + pitch_probability("high", 220.0, "female")) / 2)


def test_pitch_verdict_withholds_a_pitch_the_f0_does_not_tell():
    w = pitch_verdict("high", 220.0, "female", 0.75)
    assert w.attributes == ("pitch",) and w.checks == ("pitch",)
    assert "would say high pitch" in w.reason and "220 Hz" in w.reason and "75%" in w.reason
    assert pitch_verdict("high", 330.0, "female", 0.75) is None
    assert pitch_verdict("low", 80.0, "male", 0.75) is None and pitch_verdict("low", 110.0, "male", 0.75)
    assert pitch_verdict("normal", 210.0, "female", 0.75) is not None  # never 75% sure for a stranger
    # nothing to check: no pitch stated, a label the bands do not know, no F0
    assert pitch_verdict(None, 220.0, "female", 0.75) is None
    assert pitch_verdict("shrill", 220.0, "female", 0.75) is None
    assert pitch_verdict("high", float("nan"), "female", 0.75) is None
    # with the voice check: a gender the tract contradicts is withheld, and pitch is then judged
    # against either gender's voices
    b = {"threshold_hz": 1080.0, "train_accuracy": 0.9, "clips": 100}
    said = {"gender": "male", "pitch": "high"}
    assert clip_verdict(said, 1010.0, b, 220.0, 0.75) is None  # a man at 220 Hz: high
    both = clip_verdict(said, 1150.0, b, 220.0, 0.75)
    assert both.attributes == ("gender", "pitch") and both.checks == ("voice", "pitch")
    assert clip_verdict(said, 1150.0, b, 220.0, None).checks == ("voice",)  # pitch check off
    assert clip_verdict({"pitch": "high"}, None, None, 220.0, 0.75).checks == ("pitch",)


def test_clip_f0_is_the_median_f0_of_the_span_the_student_reads():
    from aligncap_core.codec.prosody import ProsodySettings

    x = np.concatenate([np.zeros(SR // 2), vowel(180.0, 1180.0, sr=SR), np.zeros(SR // 2)])
    assert clip_f0_hz(x, SR) == pytest.approx(180.0, rel=0.03)
    assert clip_f0_hz(x, SR, ProsodySettings(trim_db=35)) == pytest.approx(180.0, rel=0.03)
    assert np.isnan(clip_f0_hz(np.zeros(SR), SR))  # silence
    assert np.isnan(clip_f0_hz(np.random.default_rng(0).normal(0, 0.1, SR), SR))  # noise: unvoiced


def test_training_voice_boundary_is_read_from_the_rows_audio(tmp_path, caplog):
    """Steady vowels through a man's (1,000 Hz spacing) and a woman's (1,180 Hz) tract, at F0s
    that do not give the gender away: the boundary falls between the tracts."""
    rows = []
    for i in range(24):
        male = i % 2 == 0
        x = vowel(f0=(110.0, 160.0, 220.0)[i % 3], spacing=(1000.0 if male else 1180.0) * (1 + 0.01 * (i % 4)),
                  seconds=0.6)
        sf.write(tmp_path / f"v{i}.wav", x, SR)
        rows.append({"id": f"v{i}", "audio": f"v{i}.wav", "attributes": {"gender": "male" if male else "female"}})
    rows.append({"id": "nogender", "audio": "missing.wav", "attributes": {}})  # not a gendered clip: skipped
    b = training_voice_boundary(tmp_path, rows)
    assert 1030 < b["threshold_hz"] < 1170 and b["train_accuracy"] == 1.0 and b["clips"] == 24
    with caplog.at_level(logging.WARNING):
        assert training_voice_boundary(tmp_path / "none", rows) is None
    assert "no voice boundary" in caplog.text
