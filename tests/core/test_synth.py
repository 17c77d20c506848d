"""The built-in synthetic corpus: determinism, measured labels, zero-shot split, captions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from aligncap_core.data.synth import SynthConfig, plan_corpus, synthesize_corpus
from aligncap_core.data.synth import profiles as P
from aligncap_core.data.synth.checks import THRESHOLDS
from aligncap_core.data.synth.espeak import SAMPLE_RATE, Espeak
from aligncap_core.data.synth.measure import measure
from aligncap_core.data.synth.sentences import SENTENCES
from aligncap_core.errors import ConfigError
from aligncap_core.utils import read_jsonl, sha256_file
from aligncap_core.vocab import ATTRIBUTES, SPLITS, check_attributes

N = 45


def _run(root: Path, name: str, seed: int, workers: int) -> tuple[Path, dict]:
    out = root / name
    summary = synthesize_corpus(n=N, seed=seed, out_dir=out, workers=workers, show_progress=False)
    return out, summary


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    out, summary = _run(root, "a", seed=0, workers=1)
    return root, out, summary, read_jsonl(out / "manifest.jsonl")


def _audio_hashes(out: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted((out / "audio").glob("*.wav"))}


def test_summary_and_files(corpus):
    _, out, summary, rows = corpus
    assert summary["n"] == N == len(rows)
    assert sum(summary["splits"].values()) == N
    assert set(summary["label_check_first_try_pass"]) == {"pitch", "speed", "volume", "all"}
    assert summary["label_check_first_try_pass"]["all"] >= 0.8
    assert summary["fallback_neutral"] == 0
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["thresholds"]["pitch"]["high"][0] == THRESHOLDS["pitch"]["high"][0]
    x, sr = sf.read(out / rows[0]["audio"], dtype="int16")
    assert sr == SAMPLE_RATE and x.ndim == 1 and len(x) > SAMPLE_RATE // 2


def test_same_seed_identical_any_workers_different_seed_differs(corpus):
    root, out, _, _ = corpus
    # Two worker processes: results must not depend on scheduling.
    out2, _ = _run(root, "b", seed=0, workers=2)
    assert (out / "manifest.jsonl").read_bytes() == (out2 / "manifest.jsonl").read_bytes()
    assert (out / "corpus.json").read_bytes() == (out2 / "corpus.json").read_bytes()
    assert _audio_hashes(out) == _audio_hashes(out2)
    out3, _ = _run(root, "c", seed=1, workers=1)
    assert (out / "manifest.jsonl").read_bytes() != (out3 / "manifest.jsonl").read_bytes()
    assert _audio_hashes(out) != _audio_hashes(out3)


def test_rows_follow_the_manifest_contract(corpus):
    _, out, _, rows = corpus
    assert len({r["id"] for r in rows}) == N
    for r in rows:
        assert r["id"] == Path(r["audio"]).stem and (out / r["audio"]).is_file()
        assert r["split"] in SPLITS and r["language"] == "en"
        assert r["transcript"] == P.spoken_text(SENTENCES[r["sentence"]], P.PROFILES[r["attributes"]["emotion"]].tune)
        assert check_attributes(r["attributes"]) is None
        assert {"emotion", "pitch", "speed", "volume", "gender"} <= set(r["attributes"])
        assert r["speaker"] == f"{r['accent']}+{r['voice']}"
        assert {"f0_ratio", "duration_ratio", "level_db_diff"} <= set(r["measured"])
        assert sha256_file(out / r["audio"]) == r["sha256"]


def test_labels_agree_with_independent_measurement(corpus):
    """Re-render each clip's reference and re-measure the written audio from scratch."""
    _, out, _, rows = corpus
    engine = Espeak.get()
    seen = set()
    for r in rows:
        a = r["attributes"]
        voice = P.Voice(r["accent"], next(v for v in P.VARIANTS if v.name == r["voice"]))
        ref = measure(engine.synth(P.spoken_text(r["transcript"]), voice.espeak(),
                                   P.reference_prosody(voice)))
        x, _ = sf.read(out / r["audio"], dtype="int16")
        clip = measure(x)
        f0, dur, db = clip.f0_hz / ref.f0_hz, clip.duration_s / ref.duration_s, clip.level_dbfs - ref.level_dbfs
        assert {"high": f0 >= 1.28, "low": f0 <= 0.80, "normal": 0.94 <= f0 <= 1.065}[a["pitch"]], (r["id"], f0)
        assert {"fast": dur <= 0.76, "slow": dur >= 1.35, "normal": 0.92 <= dur <= 1.085}[a["speed"]], (r["id"], dur)
        assert {"loud": db >= 5.5, "soft": db <= -5.5, "normal": abs(db) <= 1.5}[a["volume"]], (r["id"], db)
        # every clip carries its emotion's signature (the emotion is in the audio)
        assert {k: a[k] for k in ("pitch", "speed", "volume")} == P.labels_of(a["emotion"])
        assert r["voice_quality"] == P.PROFILES[a["emotion"]].quality
        assert r["transcript"].endswith(P.PROFILES[a["emotion"]].tune)
        assert "intensity" not in a
        assert clip.peak < 0.99
        assert abs(f0 - r["measured"]["f0_ratio"]) < 1e-3
        seen.update((k, a[k]) for k in ("pitch", "speed", "volume"))
    # The small corpus still exercises non-normal values of every prosody attribute.
    for attr in ("pitch", "speed", "volume"):
        assert len({v for k, v in seen if k == attr}) == 3, attr


def test_normalised_voices_speak_near_their_gender_centre():
    """voicebank.py pulls each variant's normal F0 towards its gender's centre (so a high-pitched
    clip of any voice is higher than any voice's normal) and profiles.VARIANTS' base volumes put
    every voice's normal level at TARGET_LEVEL_DBFS (docs/experiments/calibrate_voices.py)."""
    engine = Espeak.get()
    f0s = {"male": [], "female": []}
    for variant in P.VARIANTS:
        voice = P.Voice("en-us", variant)
        m = measure(engine.synth(SENTENCES[1], voice.espeak(), P.reference_prosody(voice)))
        f0s[variant.gender].append(m.f0_hz)
        assert abs(m.level_dbfs - P.TARGET_LEVEL_DBFS) < 2.5, (variant.name, m.level_dbfs)
    assert 92 < min(f0s["male"]) and max(f0s["male"]) < 110, f0s["male"]
    assert 188 < min(f0s["female"]) and max(f0s["female"]) < 238, f0s["female"]
    # the widest normal range of a gender is narrower than the gap to "high" (x1.28)
    for g in f0s:
        assert max(f0s[g]) / min(f0s[g]) < 1.28, (g, f0s[g])


def test_every_two_emotions_differ_in_at_least_two_cues():
    import itertools

    for a, b in itertools.combinations(P.PROFILES, 2):
        assert sum(x != y for x, y in zip(P.signature(a), P.signature(b), strict=True)) >= 2, (a, b)


def test_zeroshot_voices_and_sentences_never_in_train(corpus):
    _, _, _, rows = corpus
    plans = plan_corpus(SynthConfig(n=3000, seed=3))
    for split_rows in ([(p.split, f"{p.accent}+{p.variant}", p.sentence) for p in plans],
                       [(r["split"], r["speaker"], r["sentence"]) for r in rows]):
        train_voices = {v for s, v, _ in split_rows if s != "zeroshot"}
        train_sents = {t for s, _, t in split_rows if s != "zeroshot"}
        zs = [(v, t) for s, v, t in split_rows if s == "zeroshot"]
        assert zs, "no zeroshot rows"
        assert not {v for v, _ in zs} & train_voices
        assert not {t for _, t in zs} & train_sents
    counts = {s: sum(p.split == s for p in plans) for s in SPLITS}
    assert counts == {"train": 2100, "valid": 300, "test": 300, "zeroshot": 300}
    # Every held-out variant is absent from all seen voices.
    assert not {v.variant.name for v in P.SEEN_VOICES} & P.HELDOUT_VARIANTS
    assert {v.variant.gender for v in P.ZEROSHOT_VOICES} == {"male", "female"}


def test_captions_distinct_and_consistent_with_attributes(corpus):
    _, _, _, rows = corpus
    for r in rows:
        caps, stated = r["captions"], r["caption_attributes"]
        assert len(caps) >= 3 and len(set(caps)) == len(caps)
        assert len(stated) == len(caps)
        assert sum("emotion" in s for s in stated) >= len(caps) - 1
        for s in stated:
            for attr, value in s.items():
                assert attr in ATTRIBUTES and r["attributes"].get(attr) == value, (r["id"], s)
    # every attribute, normal values included, is stated in most captions
    n = sum(len(r["captions"]) for r in rows)
    for attr in ("emotion", "gender", "pitch", "speed", "volume"):
        rate = sum(attr in s for r in rows for s in r["caption_attributes"]) / n
        assert rate >= 0.85, (attr, rate)
    normal = [s for r in rows for s in r["caption_attributes"] if r["attributes"]["speed"] == "normal"]
    assert sum("speed" in s for s in normal) / len(normal) >= 0.85


# Words that state one value; a caption of a clip with a *different* value must not use them.
_VALUE_WORDS = {
    "pitch": {"high": r"\b(high-pitched|shrill|squeaky|high pitch|high voice|high register)\b",
              "low": r"\b(deep|low-pitched|low pitch|low register)\b"},
    "speed": {"fast": r"\b(quickly|rapidly|fast|hurried(ly)?|rapid|quick)\b",
              "slow": r"\b(slowly|slow|drawn-out|sluggish|unhurried)\b"},
    "volume": {"loud": r"\b(loudly|loud|shouting)\b",
               "soft": r"\b(softly|quietly|quiet|hushed|whispering)\b"},
    "gender": {"female": r"\b(woman|female|lady|she|her)\b", "male": r"\b(man|male|gentleman|he|his)\b"},
}


def test_captions_use_no_contradicting_words(corpus):
    _, _, _, rows = corpus
    for r in rows:
        for attr, banks in _VALUE_WORDS.items():
            for value, pattern in banks.items():
                if r["attributes"][attr] != value:
                    for c in r["captions"]:
                        assert not re.search(pattern, c.lower()), (r["id"], attr, value, c)


def test_measure_units():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    x = 0.1 * np.sin(2 * np.pi * 150 * t)
    m, m2 = measure(x), measure(2 * x)
    assert abs(m.f0_hz - 150) < 1
    assert abs((m2.level_dbfs - m.level_dbfs) - 20 * np.log10(2)) < 0.01
    assert abs(m.duration_s - 1.0) < 0.02


def test_bad_voice_and_config_errors():
    with pytest.raises(ConfigError, match="not found"):
        Espeak.get().synth("Hello.", "en-us+nosuchvoice")
    with pytest.raises(ConfigError):
        SynthConfig(n=0)


def test_voice_bank_is_built_in_an_empty_cache_folder(tmp_path, monkeypatch):
    """A worker on a fresh machine has no cache: the voice bank is built in $ALIGNCAP_CACHE, once,
    and a second build in the same folder reuses it."""
    from aligncap_core.data.synth import voicebank

    monkeypatch.setenv("ALIGNCAP_CACHE", str(tmp_path / "fresh-cache"))
    voicebank.data_dir.cache_clear()
    try:
        data = voicebank.data_dir()
        assert data.is_relative_to(tmp_path / "fresh-cache"), data
        written = sorted(p.name for p in (data / "voices" / "!v").iterdir() if not p.is_symlink())
        assert written and set(written) == set(voicebank.generated_files(data / "voices" / "!v"))
        built = data.parent
        voicebank.data_dir.cache_clear()
        assert voicebank.data_dir() == data and data.parent == built
        assert [p.name for p in (tmp_path / "fresh-cache").iterdir()] == [built.name]  # no temp folders left
    finally:
        voicebank.data_dir.cache_clear()


def test_generator_fingerprint_follows_the_generator_code(tmp_path):
    """A change to the generator's code (here the voice bank's male F0 centre) changes the
    fingerprint the pipeline keys the corpus with; the same code gives the same one."""
    import shutil

    from aligncap_core.data import synth

    src = Path(synth.__file__).parent
    copy = tmp_path / "synth"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert synth.generator_fingerprint(copy) == synth.generator_fingerprint(src)
    before = synth.generator_fingerprint(copy)
    voicebank = copy / "voicebank.py"
    text = voicebank.read_text()
    assert '"male": 100.0' in text
    voicebank.write_text(text.replace('"male": 100.0', '"male": 125.0'))
    synth.generator_fingerprint.cache_clear()
    assert synth.generator_fingerprint(copy) != before
