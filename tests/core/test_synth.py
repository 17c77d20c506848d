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
        assert r["split"] in SPLITS and r["language"] == "en" and r["transcript"] in SENTENCES
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
        ref = measure(engine.synth(r["transcript"], voice.name, P.reference_prosody(voice)))
        x, _ = sf.read(out / r["audio"], dtype="int16")
        clip = measure(x)
        f0, dur, db = clip.f0_hz / ref.f0_hz, clip.duration_s / ref.duration_s, clip.level_dbfs - ref.level_dbfs
        assert {"high": f0 >= 1.15, "low": f0 <= 0.87, "normal": 0.93 <= f0 <= 1.075}[a["pitch"]], (r["id"], f0)
        assert {"fast": dur <= 0.83, "slow": dur >= 1.2, "normal": 0.91 <= dur <= 1.10}[a["speed"]], (r["id"], dur)
        assert {"loud": db >= 4.0, "soft": db <= -4.0, "normal": abs(db) <= 2.0}[a["volume"]], (r["id"], db)
        assert clip.peak < 0.99
        assert abs(f0 - r["measured"]["f0_ratio"]) < 1e-3
        seen.update((k, a[k]) for k in ("pitch", "speed", "volume"))
    # The small corpus still exercises non-normal values of every prosody attribute.
    for attr in ("pitch", "speed", "volume"):
        assert len({v for k, v in seen if k == attr}) == 3, attr


def test_voice_genders_match_measured_f0():
    engine = Espeak.get()
    for variant in P.VARIANTS:
        f0 = measure(engine.synth(SENTENCES[1], f"en-us+{variant.name}", P.reference_prosody(P.Voice("en-us", variant)))).f0_hz
        assert (f0 < 140) if variant.gender == "male" else (f0 > 160), (variant.name, f0)


def test_zeroshot_voices_and_sentences_never_in_train(corpus):
    _, _, _, rows = corpus
    plans = plan_corpus(SynthConfig(n=3000, seed=3))
    for split_rows in ([(p.split, f"{p.accent}+{p.variant}", p.sentence) for p in plans],
                       [(r["split"], r["speaker"], SENTENCES.index(r["transcript"])) for r in rows]):
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
        for attr in ("pitch", "speed", "volume"):
            if r["attributes"][attr] != "normal":
                assert sum(attr in s for s in stated) >= 1, (r["id"], attr)


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
