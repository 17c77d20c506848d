"""The level check (inference.domain): the level the corpus measures its volume labels with,
the training audio's range, and the verdict a clip far outside it gets."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf

from aligncap_core.errors import DataError
from aligncap_core.inference.domain import (
    LEVEL_ATTRS,
    clip_level_db,
    level_range,
    level_verdict,
    training_level_range,
)

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
    lo, hi = training_level_range(tmp_path, rows)
    assert lo == pytest.approx(clip_level_db(_speechlike(0.02), SR), abs=0.3)
    assert hi == pytest.approx(clip_level_db(_speechlike(0.2), SR), abs=0.3)
    with pytest.raises(DataError, match="c9: audio file not found"):
        training_level_range(tmp_path, [*rows, {"id": "c9", "audio": "c9.wav"}])
    with caplog.at_level(logging.WARNING):  # codes without audio: no range, said out loud
        assert training_level_range(tmp_path / "none", rows) is None
    assert "not level-checked" in caplog.text
    json.dumps([lo, hi])  # recorded in meta.json as plain floats
