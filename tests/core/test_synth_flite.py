"""The second synthesizer (flite): planning, the missing-binary errors, and, where the `flite`
command is installed, clips whose labels hold and whose espeak-ng clips are unchanged."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from aligncap_core.data.synth import (
    SynthConfig,
    plan_corpus,
    resolve_synthesizers,
    synthesize_corpus,
)
from aligncap_core.data.synth import flite as F
from aligncap_core.data.synth.checks import check
from aligncap_core.data.synth.measure import measure
from aligncap_core.data.synth.sentences import SEEN_SENTENCES
from aligncap_core.errors import ConfigError
from aligncap_core.utils import read_jsonl

needs_flite = pytest.mark.skipif(F.available() is None, reason="the `flite` command (apt-get install flite) "
                                 "is not installed here")


def test_flite_adds_train_clips_and_leaves_every_espeak_clip_alone():
    base = plan_corpus(SynthConfig(n=1000, seed=4))
    mixed = plan_corpus(SynthConfig(n=1000, seed=4, synthesizers=("espeak-ng", "flite"), other_share=0.3))
    # the n espeak-ng clips, every split, are planned exactly as without flite
    assert mixed[:1000] == base
    flite = mixed[1000:]
    n_train = sum(p.split == "train" for p in base)
    assert len(flite) == round(0.3 * n_train)
    assert all(p.synth == "flite" and p.split == "train" for p in flite)
    assert [p.index for p in flite] == list(range(1000, 1000 + len(flite)))
    # emotions balanced, half of the clips in flite's one woman's voice, seen sentences only
    emotions = Counter(p.emotion for p in flite)
    assert max(emotions.values()) - min(emotions.values()) <= 1
    genders = Counter(F.BY_NAME[p.variant].gender for p in flite)
    assert abs(genders["female"] - genders["male"]) <= 1
    assert {p.variant for p in flite} == {v.name for v in F.VOICES}
    assert {p.sentence for p in flite} <= set(SEEN_SENTENCES)


def test_synthesizer_settings_fail_loudly(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="espeak-ng"):
        SynthConfig(synthesizers=("flite",))
    with pytest.raises(ConfigError, match="festival"):
        resolve_synthesizers(["espeak-ng", "festival"])
    with pytest.raises(ConfigError, match="other_share"):
        SynthConfig(other_share=1.5)
    # a machine without flite: "auto" falls back to espeak-ng alone, naming flite is an error
    monkeypatch.setenv("PATH", str(tmp_path))
    F.available.cache_clear()
    try:
        assert resolve_synthesizers("auto") == ("espeak-ng",)
        with pytest.raises(ConfigError, match="apt-get install flite"):
            resolve_synthesizers(["espeak-ng", "flite"])
    finally:
        monkeypatch.undo()
        F.available.cache_clear()


def test_cli_synth_without_flite_says_what_to_install(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from aligncap_core.cli import app

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    F.available.cache_clear()
    try:
        named = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "named"), "--n", "8",
                                         "--workers", "1", "--synthesizers", "espeak-ng,flite"])
        assert isinstance(named.exception, ConfigError) and "apt-get install flite" in str(named.exception)
        assert not (tmp_path / "named" / "manifest.jsonl").exists()
        auto = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "auto"), "--n", "8",
                                        "--workers", "1", "--synthesizers", "auto"])
        assert auto.exit_code == 0, auto.output
        meta = json.loads((tmp_path / "auto" / "corpus.json").read_text())
        assert meta["config"]["synthesizers"] == ["espeak-ng"] and meta["synthesizers"] == {"espeak-ng": 8}
    finally:
        monkeypatch.undo()
        F.available.cache_clear()


def test_pipeline_data_params_name_synthesizers_and_key_the_corpus_by_them():
    from flows.params import DataParams
    from tasks.data import data_identity

    with pytest.raises(ValueError, match="synthesizers"):
        DataParams(synthesizers=["espeak-ng", "festival"])
    espeak = data_identity(DataParams().model_dump()).key
    assert data_identity(DataParams(synthesizers=["espeak-ng"]).model_dump()).key == espeak
    if F.available() is None:
        assert data_identity(DataParams(synthesizers="auto").model_dump()).inputs["source"] == \
            data_identity(DataParams().model_dump()).inputs["source"]
    else:  # "auto" here means flite too: another corpus, another key
        assert data_identity(DataParams(synthesizers="auto").model_dump()).inputs["source"] != \
            data_identity(DataParams().model_dump()).inputs["source"]


@needs_flite
def test_flite_renders_the_requested_f0_rate_and_level():
    slt = F.BY_NAME["slt"]
    text = "The old clock on the wall had stopped at a quarter past nine."
    ref = measure(F.synth(text, slt, F.reference_prosody(slt)))
    assert ref.level_dbfs == pytest.approx(-32.0, abs=0.05)
    assert ref.f0_hz == pytest.approx(slt.normal_f0, rel=0.05)
    low = measure(F.synth(text, slt, F.FliteProsody(slt.normal_f0 * 0.68, 10.0, 1.8, -41.0)))
    assert low.f0_hz / ref.f0_hz < 0.8 and low.duration_s / ref.duration_s > 1.35
    assert low.level_dbfs == pytest.approx(-41.0, abs=0.05)


@needs_flite
def test_flite_clips_carry_their_labels_and_espeak_clips_are_unchanged(tmp_path):
    n = 36
    only = synthesize_corpus(n=n, seed=2, out_dir=tmp_path / "espeak", workers=1, show_progress=False)
    mixed = synthesize_corpus(n=n, seed=2, out_dir=tmp_path / "mixed", workers=1, show_progress=False,
                              synthesizers=["espeak-ng", "flite"], other_share=0.5)
    assert only["synthesizers"] == {"espeak-ng": n}
    assert mixed["synthesizers"] == {"espeak-ng": n, "flite": round(0.5 * only["splits"]["train"])}
    meta = json.loads((tmp_path / "mixed" / "corpus.json").read_text())
    assert meta["config"]["synthesizers"] == ["espeak-ng", "flite"]
    assert meta["synthesizer_versions"]["flite"] == F.available()
    rows = read_jsonl(tmp_path / "mixed" / "manifest.jsonl")
    before = {r["id"]: r for r in read_jsonl(tmp_path / "espeak" / "manifest.jsonl")}
    for r in rows:
        if r["synthesizer"] == "espeak-ng":
            assert r["sha256"] == before[r["id"]]["sha256"]
            continue
        voice = F.BY_NAME[r["voice"]]
        assert r["split"] == "train" and r["speaker"] == voice.speaker
        assert r["attributes"]["gender"] == voice.gender and r["voice_quality"] == "modal"
        assert set(r["flite"]) == {"f0_mean", "f0_std", "stretch", "level_dbfs"}
        # the stored measurement passes the label checks, and so does measuring the file again
        # against the voice's normal rendering of the same sentence
        labels = {a: r["attributes"][a] for a in ("pitch", "speed", "volume")}
        assert all(check(labels, r["measured"]).values())
        import soundfile as sf

        x, _ = sf.read(tmp_path / "mixed" / r["audio"], dtype="int16")
        again = measure(x)
        assert again.f0_hz == pytest.approx(r["measured"]["f0_hz"], rel=0.02)
        assert np.isclose(again.level_dbfs, r["measured"]["level_dbfs"], atol=0.1)
