"""Augmentation of the built-in corpus: only train rows, seeded, labels re-measured, no silent drops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from aligncap_core.data.augment import (
    DEGRADE,
    ORDER,
    REJECT_REASONS,
    AugmentConfig,
    active_mask,
    add_noise,
    augment_clip,
    augment_dataset,
    band_limit,
    level_over,
    load_augment_config,
    reference,
)
from aligncap_core.data.prepare import prepare_dataset
from aligncap_core.data.synth import synthesize_corpus
from aligncap_core.data.synth.checks import QUANTITY, check, compare
from aligncap_core.data.synth.measure import measure, yin_track
from aligncap_core.errors import ConfigError
from aligncap_core.utils import read_jsonl, sha256_file, write_jsonl
from aligncap_core.vocab import check_attributes

N = 16  # seed 0: 10 train, 2 valid, 2 test, 2 zeroshot


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("augment")
    synthesize_corpus(n=N, seed=0, out_dir=root / "corpus", workers=1, show_progress=False)
    prepare_dataset(root / "corpus" / "manifest.jsonl", root / "data", progress=False, workers=1)
    return root / "data"


@pytest.fixture(scope="module")
def augmented(prepared, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("aug") / "a"
    summary = augment_dataset(prepared, out, _cfg(seed=0), progress=False)
    return out, summary


def _cfg(seed: int) -> AugmentConfig:
    # the voice-timbre / channel transforms have their own test below; here the prosody
    # transforms and the classic degradations are checked against independent re-measurement
    channel = {n: {"enabled": False} for n in ("voice", "formant", "jitter", "eq", "bandpass", "codec")}
    return AugmentConfig.from_dict({"copies": 2, "seed": seed, **channel})


def _rows(d: Path) -> list[dict]:
    return read_jsonl(d / "manifest.jsonl")


def _load(d: Path, row: dict) -> tuple[np.ndarray, int]:
    x, sr = sf.read(d / row["audio"], dtype="float32")
    return x.astype(np.float64), sr


def _pick(prepared: Path, **labels: str) -> dict:
    for r in _rows(prepared):
        if r["split"] == "train" and all(r["attributes"][k] == v for k, v in labels.items()):
            return r
    raise AssertionError(f"the test corpus has no train row with {labels}")


def test_only_train_rows_are_augmented(prepared, augmented):
    out, summary = augmented
    src, rows = _rows(prepared), _rows(out)
    by_id = {r["id"]: r for r in src}
    copies = [r for r in rows if "augmented_from" in r]
    assert copies and summary["train_rows"] == sum(r["split"] == "train" for r in src)
    assert {by_id[c["augmented_from"]]["split"] for c in copies} == {"train"}
    assert all(c["split"] == "train" and c["id"].startswith(c["augmented_from"] + "-aug") for c in copies)
    # Every source row is written unchanged (audio copied byte for byte), in order.
    originals = [r for r in rows if "augmented_from" not in r]
    assert [r["id"] for r in originals] == [r["id"] for r in src]
    for r in originals:
        assert r == by_id[r["id"]]
        assert sha256_file(out / r["audio"]) == r["audio_sha256"] == sha256_file(prepared / r["audio"])
    held_out = {r["id"] for r in src if r["split"] != "train"}
    assert held_out and not held_out & {c["augmented_from"] for c in copies}
    assert not (out / "rejects.jsonl").read_text() or all(
        by_id[j["augmented_from"]]["split"] == "train" for j in read_jsonl(out / "rejects.jsonl"))


def test_copies_are_well_formed_and_labels_agree_with_measurement(prepared, augmented):
    out, _ = augmented
    src = {r["id"]: r for r in _rows(prepared)}
    copies = [r for r in _rows(out) if "augmented_from" in r]
    remeasured = 0
    for c in copies:
        s = src[c["augmented_from"]]
        assert sha256_file(out / c["audio"]) == c["audio_sha256"]
        x, sr = _load(out, c)
        assert sr == 24000 and x.ndim == 1 and abs(len(x) / sr - c["duration_s"]) < 1e-3
        assert sf.info(out / c["audio"]).subtype == "FLOAT"
        assert check_attributes(c["attributes"]) is None
        assert all(check(c["attributes"], c["measured"]).values()), c["id"]
        assert c["augment"]["transforms"] and c["augment"]["copy"] in (1, 2)
        assert len(c["captions"]) == len(s["captions"]) == len(c["caption_attributes"])
        for stated in c["caption_attributes"]:  # captions never name a value the clip lacks
            assert all(c["attributes"].get(a) == v for a, v in stated.items()), (c["id"], stated)
        if c["augment"]["captions"] == "kept":
            assert c["captions"] == s["captions"]
        names = {t["name"] for t in c["augment"]["transforms"]}
        if names & {"speed", "tempo", "pitch", "gain"} and not names & set(DEGRADE):
            # Independent re-measurement of the written file against the rebuilt reference.
            sx, _ = _load(prepared, s)
            again = compare(measure(x, sr), reference(s, measure(sx, sr)))
            for q in QUANTITY.values():
                assert abs(again[q] - c["measured"][q]) < 0.02, (c["id"], q)
            remeasured += 1
        elif not names & {"speed", "tempo", "pitch", "gain"}:
            assert c["attributes"] == s["attributes"] and c["measured"] == s["measured"]
    assert remeasured


def test_same_seed_identical_output_other_seed_differs(prepared, augmented, tmp_path):
    out, summary = augmented
    again = augment_dataset(prepared, tmp_path / "b", _cfg(seed=0), progress=False)
    assert (out / "manifest.jsonl").read_bytes() == (tmp_path / "b" / "manifest.jsonl").read_bytes()
    assert (out / "rejects.jsonl").read_bytes() == (tmp_path / "b" / "rejects.jsonl").read_bytes()
    assert (out / "augment.json").read_bytes() == (tmp_path / "b" / "augment.json").read_bytes()
    assert {k: v for k, v in again.items() if k not in ("seconds", "out_dir")} == {
        k: v for k, v in summary.items() if k not in ("seconds", "out_dir")}
    # A re-run into the same folder leaves every file as it was.
    before = {p.name: sha256_file(p) for p in (out / "audio").iterdir()}
    augment_dataset(prepared, out, _cfg(seed=0), progress=False)
    assert {p.name: sha256_file(p) for p in (out / "audio").iterdir()} == before
    augment_dataset(prepared, tmp_path / "c", _cfg(seed=1), progress=False)
    # with every transform on (the channel ones too), the same seed gives the same bytes
    full = AugmentConfig(copies=1, seed=3)
    a = augment_dataset(prepared, tmp_path / "d", full, progress=False)
    b = augment_dataset(prepared, tmp_path / "e", full, progress=False)
    assert (tmp_path / "d" / "manifest.jsonl").read_bytes() == (tmp_path / "e" / "manifest.jsonl").read_bytes()
    assert a["kept"] == b["kept"] > 0
    assert (out / "manifest.jsonl").read_bytes() != (tmp_path / "c" / "manifest.jsonl").read_bytes()


def test_nothing_is_dropped_silently(prepared, tmp_path):
    # One train row without a reference (not augmentable: counted, not dropped), and +3 dB
    # gain copies, which land many clips in the 2..4 dB gap between "normal" and "loud".
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    rows = _rows(data)
    bare = next(r for r in rows if r["split"] == "train")
    del bare["measured"]
    write_jsonl(data / "manifest.jsonl", rows)
    off = {n: {"enabled": False} for n in ORDER if n != "gain"}
    cfg = AugmentConfig.from_dict({"copies": 2, "emotion_consistent": False,
                                   "gain": {"mode": "range", "db": [3, 3], "p": 1.0}, **off})
    s = augment_dataset(data, tmp_path / "out", cfg, progress=False)
    eligible = sum(r["split"] == "train" for r in rows) - 1
    assert s["skipped"] == {"no_reference": 1}
    assert s["produced"] == 2 * eligible == s["kept"] + s["rejected"]
    assert s["rejected"] > 0 and s["kept"] > 0
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    out_rows = _rows(tmp_path / "out")
    assert len(rejects) == s["rejected"] and len(out_rows) == len(rows) + s["kept"]
    assert sum(s["rejects_by_reason"].values()) == s["rejected"]
    assert {j["reason"] for j in rejects} <= set(REJECT_REASONS)
    for j in rejects:
        assert j["augmented_from"] and j["message"].startswith(j["id"])
        assert j["augment"]["transforms"] == [{"name": "gain", "db": 3.0}]
    # Every produced id is either kept or rejected, exactly once.
    produced = {f"{r['id']}-aug{k}" for r in rows if r["split"] == "train" and "measured" in r for k in (1, 2)}
    kept = {r["id"] for r in out_rows if "augmented_from" in r}
    assert kept | {j["id"] for j in rejects} == produced and not kept & {j["id"] for j in rejects}
    assert not any(r["augmented_from"] == bare["id"] for r in out_rows if "augmented_from" in r)


def test_gain_relabels_volume_by_measurement(prepared):
    row = _pick(prepared, volume="normal")
    x, sr = _load(prepared, row)
    res = augment_clip(row, x, sr, [{"name": "gain", "db": 8.0}], emotion_consistent=False)
    assert res.reason is None or res.reason == "clipped"
    if res.reason is None:
        assert res.attributes["volume"] == "loud"
        assert abs(res.measured["level_db_diff"] - (row["measured"]["level_db_diff"] + 8.0)) < 0.05
        assert {a: res.attributes[a] for a in ("pitch", "speed")} == {a: row["attributes"][a] for a in ("pitch", "speed")}
    # With the emotion check on, the copy is loud or rejected for the emotion: never "normal".
    res = augment_clip(row, x, sr, [{"name": "gain", "db": 8.0}])
    assert (res.reason is None and res.attributes["volume"] == "loud") or res.reason in ("clipped", "emotion_inconsistent")
    # -8 dB: soft.
    res = augment_clip(row, x, sr, [{"name": "gain", "db": -8.0}], emotion_consistent=False)
    assert res.reason is None and res.attributes["volume"] == "soft"


def test_speed_tempo_and_pitch_relabel_by_measurement(prepared):
    row = _pick(prepared, pitch="normal", speed="normal")
    x, sr = _load(prepared, row)
    m = row["measured"]
    res = augment_clip(row, x, sr, [{"name": "speed", "factor": 1.4}], emotion_consistent=False)
    assert res.reason is None, res.message
    # the median F0 of a faster clip is taken over fewer voiced frames: within ~7% of the factor
    assert abs(res.measured["f0_ratio"] / m["f0_ratio"] - 1.4) < 0.11
    assert abs(res.measured["duration_ratio"] / m["duration_ratio"] - 1 / 1.4) < 0.03
    assert (res.attributes["pitch"], res.attributes["speed"]) == ("high", "fast")
    res = augment_clip(row, x, sr, [{"name": "tempo", "factor": 1.4}], emotion_consistent=False)
    assert res.reason is None, res.message
    assert abs(res.measured["duration_ratio"] / m["duration_ratio"] - 1 / 1.4) < 0.03
    assert abs(res.measured["f0_ratio"] / m["f0_ratio"] - 1) < 0.08  # WSOLA keeps F0 (median over fewer frames)
    assert (res.attributes["pitch"], res.attributes["speed"]) == ("normal", "fast")
    res = augment_clip(row, x, sr, [{"name": "pitch", "semitones": -5.0}], emotion_consistent=False)
    assert res.reason is None, res.message
    assert abs(res.measured["f0_ratio"] / m["f0_ratio"] - 2 ** (-5 / 12)) < 0.03
    assert abs(res.measured["duration_ratio"] / m["duration_ratio"] - 1) < 0.03
    assert (res.attributes["pitch"], res.attributes["speed"]) == ("low", "normal")
    # A change into the gap between two bands is rejected, not guessed.
    res = augment_clip(row, x, sr, [{"name": "pitch", "semitones": 3.0}], emotion_consistent=False)
    assert res.reason == "ambiguous" and "pitch" in res.message


def test_noise_at_the_requested_snr(prepared):
    row = _pick(prepared)
    x, sr = _load(prepared, row)
    speech_db = level_over(x, active_mask(x, sr), sr)
    for snr, color in ((20.0, "white"), (10.0, "pink")):
        y = add_noise(x, np.random.default_rng(0), snr, color, sr)
        noise_db = 10 * np.log10(np.mean((y - x) ** 2))
        assert abs((speech_db - noise_db) - snr) < 0.5
    res = augment_clip(row, x, sr, [{"name": "noise", "snr_db": 10.0, "color": "white"}], signal_seed=[1])
    if res.reason is None:  # labels kept, the volume check passed on the noisy clip
        assert res.attributes == row["attributes"] and res.measured == row["measured"]
        assert abs(res.check["level_db_diff"] - row["measured"]["level_db_diff"]) < 2.0
        n = res.samples.astype(np.float64) - x
        assert abs(speech_db - 10 * np.log10(np.mean(n ** 2)) - 10.0) < 0.5
    else:
        assert res.reason == "volume_changed"


def test_reverb_lengthens_the_tail(prepared):
    row = _pick(prepared)
    x, sr = _load(prepared, row)
    res = augment_clip(row, x, sr, [{"name": "reverb", "rt60_s": 0.5, "wet": 0.3}], signal_seed=[2])
    assert res.reason is None, res.message
    y = res.samples.astype(np.float64)
    assert len(y) == len(x) + int(0.5 * sr) - 1
    end = int(np.flatnonzero(active_mask(x, sr))[-1] + 1) * int(0.01 * sr)  # end of the speech
    a, b = end + int(0.05 * sr), end + int(0.25 * sr)
    dry = np.concatenate([x, np.zeros(len(y) - len(x))])
    assert 10 * np.log10(np.mean(y[a:b] ** 2) / (np.mean(dry[a:b] ** 2) + 1e-20)) > 10
    assert res.attributes == row["attributes"]


def test_resampling_chain_removes_energy_above_the_intermediate_nyquist():
    sr = 24000
    x = np.random.default_rng(0).standard_normal(sr) * 0.1
    for rate in (8000, 16000):
        y = band_limit(x, sr, rate)
        assert len(y) == len(x)
        spec = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
        f = np.fft.rfftfreq(len(y), 1 / sr)
        above = spec[f > rate / 2 * 1.05].sum() / spec.sum()
        below = spec[f < rate / 2 * 0.9].sum() / (np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2)[f < rate / 2 * 0.9].sum()
        assert above < 1e-5 and abs(below - 1) < 0.02, (rate, above, below)


def test_config_errors_name_the_bad_key(tmp_path):
    cases = [({"copiez": 2}, "copiez"), ({"noise": {"snr": [10]}}, "noise.snr"),
             ({"noise": {"snr_db": [5]}}, "noise.snr_db"), ({"gain": {"db": [5, 1]}}, "gain.db"),
             ({"reverb": {"p": 2}}, "reverb.p"), ({"tempo": {"mode": "fast"}}, "tempo.mode"),
             ({"copies": -1}, "copies"), ({"resample": {"rates": [8000.5]}}, "resample.rates"),
             ({"pitch": "on"}, "pitch"), ({"noise": {"colors": ["brown"]}}, "noise.colors"),
             ({"pitch": {"keep_formants": "yes"}}, "pitch.keep_formants")]
    for d, key in cases:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            AugmentConfig.from_dict(d)
    off = {n: {"enabled": False} for n in ORDER}
    with pytest.raises(ConfigError, match="disabled"):
        AugmentConfig.from_dict(off)
    (tmp_path / "a.yaml").write_text("copies: 2\nreverb:\n  rt60: [0.1, 0.3]\n  wett: [0, 1]\n")
    with pytest.raises(ConfigError, match=r"reverb\.wett"):
        load_augment_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("copies: 2\nseed: 4\nnoise: {snr_db: [20]}\n")
    cfg = load_augment_config(tmp_path / "b.yaml", copies=3, seed=None)
    assert (cfg.copies, cfg.seed, cfg.noise.snr_db) == (3, 4, (20.0,))


def test_cli_augment(prepared, tmp_path):
    from typer.testing import CliRunner

    from aligncap_core.cli import app

    (tmp_path / "cfg.yaml").write_text("reverb: {enabled: false}\n")
    res = CliRunner().invoke(app, ["data", "augment", str(prepared), str(tmp_path / "o"), "--copies", "1",
                                   "--seed", "3", "--config", str(tmp_path / "cfg.yaml")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["seed"] == 3 and summary["kept"] + summary["rejected"] == summary["produced"]
    assert "reverb" not in summary["transforms"]
    res = CliRunner().invoke(app, ["data", "augment", str(prepared), str(prepared)])
    assert res.exit_code != 0


def test_channel_transforms_keep_f0_duration_and_level(prepared):
    """Domain randomisation (formant warp, jitter, EQ, band-pass, codecs) changes the timbre and
    the channel, not what the labels measure: F0, active duration and active level."""
    from aligncap_core.data.augment import channel

    row = _pick(prepared, emotion="neutral")  # a modal voice: a steady F0 to compare against
    x, sr = _load(prepared, row)
    m0 = measure(x, sr)
    f0_x = yin_track(x, sr)[0]
    rng = np.random.default_rng(0)
    spectra = []
    for y in (channel.formant_warp(x, 0.88, sr), channel.formant_warp(x, 1.14, sr),
              channel.jitter_shimmer(x, rng, 0.01, 0.1, sr),
              channel.equalise(x, -3.0, [(800.0, 6.0), (3000.0, -6.0)], sr),
              channel.bandpass(x, 120.0, 6000.0, sr),
              *(channel.codec_roundtrip(x, c, sr) for c in channel.CODECS)):
        m = measure(y, sr)
        assert len(y) == len(x)
        # F0 frame by frame, over the frames voiced in both (a clip's median moves with which
        # frames pass the voicing threshold; the harmonics themselves stay where they were)
        both = ~np.isnan(f0_x) & ~np.isnan(f0_y := yin_track(y, sr)[0])
        assert both.sum() > 20 and abs(np.median(f0_y[both] / f0_x[both]) - 1) < 0.02
        assert abs(m.duration_s / m0.duration_s - 1) < 0.03
        assert abs(m.level_dbfs - m0.level_dbfs) < 0.5
        spec = np.abs(np.fft.rfft(y))
        spectra.append((spec * np.fft.rfftfreq(len(y), 1 / sr)).sum() / spec.sum())
    # a voice shift moves the whole voice's F0 (the clip and its normal together), not its timbre
    y, _ = channel.voice_shift(x, 3.0, sr)
    assert abs(measure(y, sr).f0_hz / m0.f0_hz - 2 ** 0.25) < 0.03
    assert abs(measure(y, sr).duration_s / m0.duration_s - 1) < 0.03
    spec = np.abs(np.fft.rfft(y))
    assert abs((spec * np.fft.rfftfreq(len(y), 1 / sr)).sum() / spec.sum() / _centroid(x, sr) - 1) < 0.05
    # the formant warps really move the spectral centroid, in opposite directions
    centroid = _centroid(x, sr)
    assert spectra[0] < 0.95 * centroid < centroid < 1.05 * centroid < spectra[1]


def test_pitch_shift_with_formants_kept_moves_the_label_not_the_voice(prepared):
    """`pitch.keep_formants`: the copy gets the target pitch label while its formant spacing (the
    vocal tract, the voice's gender cue) stays; the plain shift moves the tract with F0."""
    from aligncap_core.codec.prosody import formant_spacing
    from aligncap_core.data.augment.plan import plan_copy

    row = _pick(prepared, pitch="normal", gender="male")
    x, sr = _load(prepared, row)
    kept = augment_clip(row, x, sr, [{"name": "pitch", "semitones": 6.4, "formants": "kept"}],
                        emotion_consistent=False)
    plain = augment_clip(row, x, sr, [{"name": "pitch", "semitones": 6.4}], emotion_consistent=False)
    for res in (kept, plain):
        assert res.reason is None, res.message
        assert res.attributes["pitch"] == "high" and res.attributes["gender"] == "male"
        assert abs(res.measured["f0_ratio"] / row["measured"]["f0_ratio"] - 2 ** (6.4 / 12)) < 0.05
    tract = formant_spacing(np.asarray(x, dtype=np.float64), sr)
    assert abs(formant_spacing(kept.samples.astype(np.float64), sr) / tract - 1) < 0.07
    centroid = _centroid(x, sr)
    assert abs(_centroid(kept.samples, sr) / centroid - 1) < 0.05
    assert _centroid(plain.samples, sr) / centroid > 1.15  # the whole envelope moved up with F0
    # the setting reaches the plan: every pitch step of such a config keeps the formants
    cfg = AugmentConfig.from_dict({"copies": 1, "pitch": {"p": 1.0, "keep_formants": True, "max_semitones": 8.0},
                                   **{n: {"enabled": False} for n in ORDER if n != "pitch"}})
    steps = [plan_copy(r, 0, cfg, sr) for r in _rows(prepared) if r["split"] == "train"]
    assert steps and all(s == [{**s[0], "formants": "kept"}] and s[0]["name"] == "pitch" for s in steps)


def _centroid(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x))
    return float((spec * np.fft.rfftfreq(len(x), 1 / sr)).sum() / spec.sum())
