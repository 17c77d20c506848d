"""Preference rounds on randomised copies of their clips (`improve.augment`).

A 16-clip espeak corpus (real audio with measured labels, so the copies can be re-measured),
its clues, a tiny calibrated codec, the micro teacher and student trained on it (so the student
carries that codec exactly as in a real run), and one real round: sampling, the rubric judge,
pairs and DPO (+KD) run on the copies; evaluation is a stub (the round evaluates on the data dir).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from aligncap_core.clues.annotate import add_clues
from aligncap_core.codec import calibrate_encodec, read_audio, tokenize_dataset
from aligncap_core.data.prepare import prepare_dataset
from aligncap_core.data.synth import synthesize_corpus
from aligncap_core.errors import ConfigError, DataError
from aligncap_core.improve import ImproveConfig, round_clips_step, self_improve
from aligncap_core.improve import steps as steps_mod
from aligncap_core.model.checkpoint import read_meta
from aligncap_core.train import stages
from aligncap_core.train.config import StudentConfig, TeacherConfig
from aligncap_core.utils import read_jsonl, write_jsonl
from tests.helpers.audio_corpus import TINY_CODEC
from tests.helpers.training import quick

N = 16  # seed 0: 10 train, 2 valid, 2 test, 2 zeroshot
CFG = {"n": 3, "max_new_tokens": 12, "clips_per_round": 6, "eval_splits": ["valid"],
       "eval_limit": 2, "min_margin": 0.5, "augment": {},
       "dpo": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "lambda_kd": 0.5,
               "max_length": 256, "logging_steps": 1}}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("round-clips")
    synthesize_corpus(n=N, seed=0, out_dir=root / "corpus", workers=1, show_progress=False)
    d = root / "data"
    prepare_dataset(root / "corpus" / "manifest.jsonl", d, progress=False, workers=1)
    add_clues(d, progress=False)
    rows = read_jsonl(d / "manifest.jsonl")
    wavs = [read_audio(d / r["audio"], 24_000) for r in rows if r["split"] == "train"]
    codec = calibrate_encodec(lambda i: wavs[i], [len(w) for w in wavs], n_q=2, iters=5,
                              config_overrides=TINY_CODEC)
    codec.save(d / "codec")
    tokenize_dataset(d, codec=str(d / "codec"), n_q=2, progress=False)
    return d


@pytest.fixture(scope="module")
def student(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    teacher = stages.train_teacher(data, out / "teacher",
                                   TeacherConfig(preset="micro", train=quick(max_steps=10, eval_every=0)),
                                   show_progress=False)
    return stages.train_student(data, teacher, out / "student",
                                # one codebook: a clip fits the micro model's 256 positions
                                StudentConfig(keep_q=1, train=quick(max_steps=4, eval_every=0)),
                                show_progress=False)


def _cfg(**kw) -> dict:
    return ImproveConfig.from_dict({**CFG, **kw}).to_dict()


def test_the_round_samples_randomised_copies_coded_with_the_policys_codec(data, student, tmp_path):
    train = {r["id"]: r for r in read_jsonl(data / "manifest.jsonl") if r["split"] == "train"}
    picked = {r["id"] for r in steps_mod.select_clips(data, CFG["clips_per_round"], 0 + 1)}
    pool = Path(round_clips_step(str(student), str(data), str(tmp_path / "clips"), _cfg(), 1))
    assert pool == tmp_path / "clips"
    rows, record = read_jsonl(pool / "manifest.jsonl"), json.loads((pool / "pool.json").read_text())
    # one copy of each clip the round picked (the same subsample as without augment), nothing else
    assert {r["augmented_from"] for r in rows} <= picked and rows
    assert all(r["id"] == f"{r['augmented_from']}-aug1" and r["split"] == "train" for r in rows)
    assert (record["clips"], record["kept"], record["rejected"]) == (len(picked), len(rows), len(picked) - len(rows))
    assert record["augment"]["seed"] == 1  # improve.seed + round
    fingerprint = read_meta(student)["speech"]["codec_fingerprint"]
    for r in rows:
        src = train[r["augmented_from"]]
        assert r["audio_sha256"] != src["audio_sha256"]  # other audio ...
        assert r["attributes"]["gender"] == src["attributes"]["gender"]  # ... of the same speaker
        assert r["codes"]["codec"] == fingerprint  # what the policy reads
        assert r["p_act"] and r["clues"]
        if r["augment"]["captions"] == "kept":  # the same captions give the same prompt
            assert r["p_act"] == src["p_act"]
    assert not (pool / "source").exists()
    # seeded: the same round gives the same copies, another round other ones
    again = Path(round_clips_step(str(student), str(data), str(tmp_path / "again"), _cfg(), 1))
    assert [r["audio_sha256"] for r in read_jsonl(again / "manifest.jsonl")] == [r["audio_sha256"] for r in rows]
    other = Path(round_clips_step(str(student), str(data), str(tmp_path / "r2"), _cfg(), 2))
    assert {r["audio_sha256"] for r in read_jsonl(other / "manifest.jsonl")}.isdisjoint(r["audio_sha256"] for r in rows)


def test_a_finished_pool_is_reused_and_no_augment_means_the_data_dir(data, student, tmp_path, monkeypatch):
    pool = round_clips_step(str(student), str(data), str(tmp_path / "clips"), _cfg(), 1)

    def boom(*a, **k):
        raise AssertionError("a finished pool was augmented again")

    monkeypatch.setattr("aligncap_core.data.augment.augment_dataset", boom)
    assert round_clips_step(str(student), str(data), str(tmp_path / "clips"), _cfg(), 1) == pool
    assert round_clips_step(str(student), str(data), str(tmp_path / "none"), _cfg(augment=None), 1) == str(data)
    assert not (tmp_path / "none").exists()


def test_augment_settings_are_checked_before_any_round():
    with pytest.raises(ConfigError, match="improve.augment.seed is set by each round"):
        ImproveConfig.from_dict({"augment": {"seed": 3}})
    with pytest.raises(ConfigError, match="improve.augment.copies must be >= 1"):
        ImproveConfig.from_dict({"augment": {"copies": 0}})
    with pytest.raises(ConfigError, match="improve.augment: .*pitchh"):
        ImproveConfig.from_dict({"augment": {"pitchh": {"p": 1.0}}})
    assert ImproveConfig.from_dict({"augment": {"copies": 2}}).augment_config(3).seed == 3


def test_clues_made_another_way_are_refused(data, student, tmp_path):
    other = tmp_path / "data"
    shutil.copytree(data, other)
    rows = read_jsonl(other / "manifest.jsonl")
    write_jsonl(other / "manifest.jsonl", [{**r, "p_act": f"<{r['p_act']}>"} for r in rows])
    cfg = _cfg(augment={"voice": {"p": 1.0}, **{n: {"enabled": False} for n in ("speed", "pitch", "tempo", "gain")}})
    with pytest.raises(DataError, match="default template"):
        round_clips_step(str(student), str(other), str(tmp_path / "clips"), cfg, 1)


def test_clips_without_measured_labels_are_refused_with_the_reason(data, student, tmp_path):
    other = tmp_path / "data"
    shutil.copytree(data, other)
    rows = read_jsonl(other / "manifest.jsonl")
    write_jsonl(other / "manifest.jsonl", [{k: v for k, v in r.items() if k != "measured"} for r in rows])
    with pytest.raises(DataError, match="carries measured labels"):
        round_clips_step(str(student), str(other), str(tmp_path / "clips"), _cfg(), 1)


def test_a_policy_without_a_codec_is_refused(data, student, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(student, old)
    meta = read_meta(old)
    meta["speech"] = {k: v for k, v in meta["speech"].items() if k != "codec"}
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="records no codec"):
        round_clips_step(str(old), str(data), str(tmp_path / "clips"), _cfg(), 1)


def test_one_round_learns_from_the_copies_and_is_evaluated_on_the_data(data, student, tmp_path):
    calls = []

    def stub_eval(ckpt, data_dir, out_json, splits, limit):
        calls.append((int(re.search(r"round-(\d+)", out_json).group(1)), data_dir))
        return {s: {"n": limit, "clue_f1": 0.5, "hallucination_rate": 0.1} for s in splits}

    out = tmp_path / "out"
    summary = self_improve(str(student), str(data), str(out), {**CFG, "rounds": 1, "patience": 0},
                           evaluate_fn=stub_eval)
    rdir = out / "round-1"
    rec = json.loads((rdir / "round.json").read_text())
    assert rec["clips"] == str(rdir / "clips") and rec["seconds"]["clips"] >= 0
    copies = {r["id"] for r in read_jsonl(rdir / "clips" / "manifest.jsonl")}
    sampled = {r["id"] for r in read_jsonl(rdir / "candidates.jsonl")}
    assert sampled and sampled <= copies  # (a clip longer than the policy reads at once sits out)
    assert rec["pairs"]["n_pairs"] > 0, "the rubric judge found no pair on the copies"
    meta = read_meta(rdir / "policy")
    assert meta["stage"] == "dpo" and "kd_loss" in meta["metrics"]  # KD read the copies' prompts
    assert meta["speech"]["codec_fingerprint"] == read_meta(student)["speech"]["codec_fingerprint"]
    assert calls == [(0, str(data)), (1, str(data))]  # the policy is scored on the data, not the copies
    assert summary["rounds"][1]["checkpoint"] == str(rdir / "policy")
