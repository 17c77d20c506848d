"""Caption metrics (aligncap_core.eval): hand-computed values, edge cases, METEOR failure modes."""

from __future__ import annotations

import math
import shutil
import stat

import pytest
import torch

from aligncap_core.errors import DataError
from aligncap_core.eval import (
    compute_metrics,
    format_table,
    format_text,
    kl_gap,
    metric_keys,
    tokenize,
)
from aligncap_core.eval.meteor import MeteorScorer
from aligncap_core.model.losses import kd_loss

CAPTION = "A woman speaks quickly in a high, trembling voice, sounding excited."


@pytest.fixture(scope="module")
def parser():
    from aligncap_core.clues import EmotionClueParser

    return EmotionClueParser()


def metrics(preds, refs=None, attrs=None, parser=None):
    return compute_metrics(preds, refs, attrs, parser=parser, meteor=False)


@pytest.mark.slow
def test_identical_captions_score_perfectly_with_meteor(parser):
    preds = [CAPTION, "A man speaks slowly and softly, sounding sad."]
    m = compute_metrics(preds, [[p] for p in preds], parser=parser, meteor=True)
    assert list(m) == metric_keys()
    for k in ("bleu1", "bleu4", "coco_bleu1", "coco_bleu4", "rouge_l", "clue_precision", "clue_recall", "clue_f1"):
        assert m[k] == pytest.approx(1.0, abs=1e-6), k
    if shutil.which("java") is None:
        assert m["meteor"] is None and "java" in m["meteor_error"]
    else:
        assert m["meteor_error"] is None
        assert 0.0 < m["meteor"] <= 1.0


def test_tokenizer_lowercases_and_drops_punctuation():
    assert tokenize("Don\u2019t SHOUT, caf\u00e9!  (ok)") == ["don't", "shout", "caf\u00e9", "ok"]
    assert tokenize(None) == [] and tokenize("...") == []


def test_bleu_matches_hand_computation(parser):
    # unigram precision 3/3; brevity penalty exp(1 - 6/3) = e^-1
    m = metrics(["The cat sat."], [["the cat sat on the mat"]], parser=parser)
    assert m["bleu1"] == pytest.approx(math.exp(-1), abs=1e-9)
    assert m["coco_bleu1"] == pytest.approx(math.exp(-1), abs=1e-6)
    # clipping: "the" counts at most once (the reference has one) -> 1/4; hyp longer, BP = 1
    m = metrics(["the the the the"], [["the cat"]], parser=parser)
    assert m["bleu1"] == pytest.approx(0.25)
    assert m["coco_bleu1"] == pytest.approx(0.25, abs=1e-6)


def test_distinct2_by_hand(parser):
    # bigrams (a b) (b c) (a b) (b d): 3 distinct of 4
    assert metrics(["A b, c.", "a B d"], parser=parser)["distinct2"] == pytest.approx(0.75)


def test_hallucination(parser):
    cap = ["a man speaks loudly"]
    assert metrics(cap, attrs=[{"gender": "female"}], parser=parser)["hallucination_rate"] == 1.0
    assert metrics(cap, attrs=[{"gender": "male", "volume": "soft"}], parser=parser)["hallucination_rate"] == 1.0
    assert metrics(cap, attrs=[{"gender": "male"}], parser=parser)["hallucination_rate"] == 0.0
    # normal vs non-normal is a contradiction; an unmentioned attribute is not
    assert metrics(cap, attrs=[{"volume": "normal"}], parser=parser)["hallucination_rate"] == 1.0
    assert metrics(cap, attrs=[{"pitch": "high", "emotion": "sad"}], parser=parser)["hallucination_rate"] == 0.0
    # rows without attributes are not counted; none at all -> None
    m = metrics(cap * 2, attrs=[None, {"gender": "female"}], parser=parser)
    assert m["hallucination_rate"] == 1.0 and m["n_with_attributes"] == 1
    assert metrics(cap, parser=parser)["hallucination_rate"] is None


def _wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval by its formula (Wilson 1927), to check the library's."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_hallucination_rate_comes_with_its_interval(parser):
    from aligncap_core.eval.clue_metrics import rate_interval

    # 9 of 80 clips: the demo's zeroshot split; the interval is wide (0.060-0.200)
    low, high = rate_interval(9 / 80, 80)
    assert (low, high) == pytest.approx(_wilson(9, 80), abs=1e-6)
    assert low < 0.10 < high
    # it narrows with the clips: 45 of 400 reads the same rate far more tightly
    low4, high4 = rate_interval(45 / 400, 400)
    assert high4 - low4 < 0.5 * (high - low)
    assert rate_interval(0.0, 5) == pytest.approx(_wilson(0, 5), abs=1e-6) and rate_interval(0.0, 5)[0] == 0.0
    assert rate_interval(None, 10) == (None, None) and rate_interval(0.5, 0) == (None, None)
    # compute_metrics reports it over the clips with attributes (here 1 of 2 contradicts)
    m = metrics(["a man speaks loudly"] * 3, attrs=[None, {"gender": "female"}, {"gender": "male"}], parser=parser)
    assert m["hallucination_rate"] == 0.5
    assert (m["hallucination_low"], m["hallucination_high"]) == pytest.approx(_wilson(1, 2), abs=1e-6)
    assert metrics(["a man"], parser=parser)["hallucination_low"] is None


def test_attribute_accuracy_counts_unmentioned_as_wrong(parser):
    m = metrics(["a man speaks loudly"] * 2,
                attrs=[{"gender": "male", "volume": "loud", "pitch": "high"}, {"gender": "female"}], parser=parser)
    assert m["acc_gender"] == 0.5 and m["mention_gender"] == 1.0
    assert m["acc_volume"] == 1.0 and m["mention_volume"] == 1.0
    assert m["acc_pitch"] == 0.0 and m["mention_pitch"] == 0.0
    assert m["acc_emotion"] is None and m["mention_emotion"] is None


def test_hearing_apart_from_phrasing(parser):
    """acc_stated (what it heard), mention (what it chose to say), contradiction (what it said
    wrongly) and the no-audio baselines, computed by hand on four captions."""
    caps = ["A man speaks loudly, sounding angry.",   # gender right, volume right, emotion right
            "A woman speaks loudly, sounding sad.",   # gender wrong, volume wrong, emotion right
            "Someone speaks, sounding happy.",        # states neither gender nor volume
            "A man speaks softly."]                   # gender right, volume right, no emotion
    attrs = [{"gender": "male", "volume": "loud", "emotion": "angry"},
             {"gender": "male", "volume": "soft", "emotion": "sad"},
             {"gender": "female", "volume": "soft", "emotion": "sad"},
             {"gender": "male", "volume": "soft", "emotion": "sad"}]
    m = metrics(caps, attrs=attrs, parser=parser)
    assert m["mention_gender"] == 0.75 and m["acc_gender"] == 0.5
    assert m["acc_stated_gender"] == pytest.approx(2 / 3) and m["contradiction_gender"] == 0.25
    assert m["acc_stated_volume"] == pytest.approx(2 / 3) and m["contradiction_volume"] == 0.25
    assert m["mention_emotion"] == 0.75 and m["acc_stated_emotion"] == pytest.approx(2 / 3)
    assert m["contradiction_emotion"] == 0.25  # "happy" for a sad clip
    # baselines: majority class of the truths, uniform guess over the vocabulary
    assert m["majority_gender"] == 0.75 and m["chance_gender"] == 0.5
    assert m["majority_emotion"] == 0.75 and m["chance_emotion"] == pytest.approx(1 / 9)
    assert m["majority_volume"] == 0.75 and m["chance_volume"] == pytest.approx(1 / 3)
    # no caption states pitch and no clip has it
    assert m["acc_stated_pitch"] is None and m["chance_pitch"] is None
    # per caption: 2 (happy) and 1 (woman / loud / sad-right) contradict -> 2 of 4
    assert m["hallucination_rate"] == 0.5
    # always "male, soft, sad": wrong on clip 1 (loud, angry) and clip 3 (female)
    assert m["majority_hallucination_rate"] == 0.5
    for a in ("gender", "volume", "emotion"):  # the identities the docstring promises
        assert m[f"acc_{a}"] == pytest.approx(m[f"mention_{a}"] * m[f"acc_stated_{a}"])
        assert m[f"mention_{a}"] == pytest.approx(m[f"acc_{a}"] + m[f"contradiction_{a}"])


def test_generic_captions(parser):
    preds = ["A person is speaking.", "Someone says something.", "A man is talking.",
             "A man speaks, not loudly.", "A woman speaks sadly."]
    assert metrics(preds, parser=parser)["generic_rate"] == pytest.approx(4 / 5)


def test_clue_scores_use_normalised_keys(parser):
    # "rapidly" and "quickly" both map to (speed, fast); modifiers do not matter
    m = metrics(["A man speaks very quickly and loudly."],
                [["He talks rapidly.", "A man speaks rapidly in a soft voice."]], parser=parser)
    # caption {speed fast, volume loud}; references {speed fast, volume soft}
    assert m["clue_precision"] == 0.5 and m["clue_recall"] == 0.5 and m["clue_f1"] == 0.5


def test_edge_cases_do_not_crash(parser):
    m = compute_metrics([], [], [], parser=parser, meteor=True)
    assert m["n"] == 0 and all(m[k] is None for k in metric_keys() if k not in ("n", "n_with_refs",
                                                                          "n_with_attributes", "meteor_error"))
    preds = ["", "Ein Mann spricht laut, \u00e9nerv\u00e9.", None, "A woman speaks softly."]
    refs = [["a man speaks"], ["a man speaks loudly", "ein mann spricht", "  "], [], None]
    m = metrics(preds, refs, [None, {"gender": "male"}, None, None], parser=parser)
    assert m["n"] == 4 and m["n_with_refs"] == 2
    assert 0.0 <= m["bleu1"] <= 1.0 and 0.0 <= m["rouge_l"] <= 1.0 and m["cider"] >= 0.0
    m = metrics(["a man speaks"], [[]], parser=parser)
    assert m["bleu1"] is None and m["meteor_error"] == "not computed (meteor=False)"
    with pytest.raises(DataError, match="2 references for 1 predictions"):
        metrics(["x"], [["x"], ["y"]], parser=parser)


def _fake_java(tmp_path, body: str) -> str:
    java = tmp_path / "java"
    java.write_text(f"#!/bin/sh\n{body}\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="needs a Java runtime")
def test_a_shared_meteor_scorer_is_reused_and_left_running(parser):
    preds = [CAPTION, "A man speaks slowly and softly, sounding sad."]
    refs = [["A woman speaks fast and sounds excited."], ["A man talks slowly, sad and soft."]]
    own = compute_metrics(preds, refs, parser=parser, meteor=True)
    with MeteorScorer() as s:
        first = compute_metrics(preds, refs, parser=parser, meteor=s)
        jvm = s._meteor.meteor_p
        second = compute_metrics(preds[::-1], refs[::-1], parser=parser, meteor=s)
        assert s._meteor is not None and jvm.poll() is None  # still the same running JVM
    assert jvm.poll() is not None  # the context manager stopped it
    assert first["meteor_error"] is None and 0 < first["meteor"] < 1
    assert first["meteor"] == pytest.approx(own["meteor"], abs=1e-9)
    assert second["meteor"] == pytest.approx(own["meteor"], abs=1e-9)  # corpus score: order-free


def test_missing_java_reports_none_with_reason(monkeypatch, tmp_path, parser):
    monkeypatch.setenv("PATH", str(tmp_path))
    m = compute_metrics(["a man speaks"], [["a man speaks"]], parser=parser, meteor=True)
    assert m["meteor"] is None and "java not found" in m["meteor_error"]
    assert m["bleu1"] == pytest.approx(1.0)


def test_failing_or_hanging_jar_reports_none(monkeypatch, tmp_path):
    sleep = shutil.which("sleep")  # resolved now: PATH will hold only the fake java
    monkeypatch.setenv("PATH", _fake_java(tmp_path, "echo 'Error: broken jar' >&2; exit 1"))
    with MeteorScorer() as s:
        score, err = s.score(["a b"], [["a b"]])
    assert score is None and "METEOR jar failed" in err and "broken jar" in err
    monkeypatch.setenv("PATH", _fake_java(tmp_path, f"exec {sleep} 30"))
    with MeteorScorer(timeout_s=1) as s:
        score, err = s.score(["a b"], [["a b"]])
    assert score is None and "no answer within 1 s" in err


def test_kl_gap():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    assert kl_gap([(t, t, mask)]) == pytest.approx(0.0, abs=1e-7)
    assert kl_gap([(s, t, mask)]) == pytest.approx(float(kd_loss(s, t, mask, temperature=1.0)), rel=1e-6)
    # token-weighted: batching (here 1 + 2 rows, 5 and 8 tokens) does not change the value
    split = kl_gap(((s[a:b], t[a:b], mask[a:b]) for a, b in ((0, 1), (1, 3))))
    assert split == pytest.approx(float(kd_loss(s, t, mask)), rel=1e-6)
    assert kl_gap([(s, t, torch.zeros(3, 5, dtype=torch.bool))]) is None


def test_format_table_one_or_several_sets():
    m = {"n": 2, "bleu1": 0.5, "meteor": None, "meteor_error": "java not found on PATH"}
    assert format_table(m).row_count == 3
    text = format_text({"valid": m, "test": dict(m, bleu1=0.25)})
    assert "valid" in text and "test" in text and "0.2500" in text and "-" in text
    assert "meteor_error (valid): java" in text and "meteor_error (test): java" in text


def test_evaluation_groups_rows_by_a_field_or_the_id_prefix():
    from aligncap_core.errors import DataError
    from aligncap_core.inference.evaluate import _groups

    rows = [{"id": "emodb-03a01Fa"}, {"id": "ravdess-01-01"}, {"id": "emodb-09b02", "corpus": "EmoDB"}]
    assert _groups(rows, "corpus") == {"emodb": [0], "ravdess": [1], "EmoDB": [2]}
    assert _groups(rows, None) == {}
    with pytest.raises(DataError, match="speaker"):
        _groups(rows, "speaker")
