"""Preference building blocks without a model: pair strategies, the rubric judge, and the
OpenAI judge against a real chat-completions server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aligncap_core.errors import ConfigError, DataError
from aligncap_core.prefs.candidates import dedupe
from aligncap_core.prefs.judges import JudgeItem, Judgment, RubricJudge, make_judge
from aligncap_core.prefs.openai_judge import (
    JudgeReplyError,
    OpenAIJudge,
    OpenAIJudgeConfig,
    parse_judge_reply,
)
from aligncap_core.prefs.pairs import build_preference_pairs, judge_clips, read_pairs, write_pairs

PROV = dict(round=2, policy="runs/round-1/ckpt", judge="rubric")


def J(score, skipped=False):
    if skipped:
        return Judgment.failed("rubric", "HTTP 500")
    return Judgment(score, {"faithfulness": score}, "", "rubric")


def clip(cands, refs=(("The golden caption.", 9.0),), clip_id="c1"):
    return {"id": clip_id, "prompt": "P", "teacher_text": "T",
            "candidates": [(t, s if isinstance(s, Judgment) else J(s)) for t, s in cands],
            "references": [(t, J(s)) for t, s in refs]}


# ---------------------------------------------------------------- pairs


def test_golden_vs_sample_margin_order_cap_and_skipped():
    row = clip([("near", 8.5), ("high", 9.5), ("mid", 5.0), ("low", 2.0), ("ok", 8.0),
                ("broken", J(0, skipped=True)), ("the golden caption.", 1.0)])
    pairs = build_preference_pairs([row], "golden_vs_sample", min_margin=1.0,
                                   max_pairs_per_clip=2, **PROV)
    assert [p["rejected"] for p in pairs] == ["low", "mid"]  # lowest score first, cap 2
    assert all(p["chosen"] == "The golden caption." and p["margin"] >= 1.0 for p in pairs)
    every = build_preference_pairs([row], "golden_vs_sample", min_margin=1.0,
                                   max_pairs_per_clip=10, **PROV)
    # within the margin (near, high), skipped (broken), a copy of the reference: never rejected
    assert [p["rejected"] for p in every] == ["low", "mid", "ok"]
    p = pairs[0]
    assert p["provenance"] == {"round": 2, "policy": "runs/round-1/ckpt", "judge": "rubric",
                               "strategy": "golden_vs_sample", "min_margin": 1.0}
    assert (p["chosen_score"], p["rejected_score"], p["margin"]) == (9.0, 2.0, 7.0)
    assert p["teacher_text"] == "T" and p["prompt"] == "P" and p["id"] == "c1"


def test_faithful_vs_contradicting_pairs_contrast_the_false_statement():
    from aligncap_core.clues import EmotionClueParser

    attrs = {"emotion": "sad", "gender": "female", "speed": "slow"}
    row = {**clip([("A woman speaks slowly, sounding sad.", 6.0),      # faithful
                   ("A woman speaks slowly, sounding happy.", 7.0),    # emotion wrong
                   ("A man speaks quickly, sounding happy.", 2.0),     # 3 wrong
                   ("Someone is speaking.", 5.0),                      # says nothing: neither
                   ("A woman talks slowly and sadly.", 8.0)],          # faithful, best score
                  refs=[("A woman speaks slowly, sounding sad.", 9.0)]), "attributes": attrs}
    parser = EmotionClueParser()
    pairs = build_preference_pairs([row], "faithful_vs_contradicting", max_pairs_per_clip=2,
                                   parser=parser, **PROV)
    assert [p["rejected"] for p in pairs] == ["A man speaks quickly, sounding happy.",
                                              "A woman speaks slowly, sounding happy."]
    assert {p["chosen"] for p in pairs} == {"A woman talks slowly and sadly."}  # on-policy
    assert pairs[0]["provenance"]["contradicts"] == ["emotion", "gender", "speed"]
    assert pairs[1]["provenance"]["chosen_from"] == "sample"
    # no faithful sample: the best faithful reference is chosen; no evidence: no pairs
    row2 = {**row, "candidates": [c for c in row["candidates"] if "happy" in c[0]]}
    pairs2 = build_preference_pairs([row2], "faithful_vs_contradicting", parser=parser, **PROV)
    assert {p["chosen"] for p in pairs2} == {"A woman speaks slowly, sounding sad."}
    assert pairs2[0]["provenance"]["chosen_from"] == "reference"
    bare = {**row, "attributes": None, "references": []}
    assert build_preference_pairs([bare], "faithful_vs_contradicting", parser=parser, **PROV) == []
    # without known attributes the references' unanimous statements are the evidence
    refs_only = {**row, "attributes": None}
    assert len(build_preference_pairs([refs_only], "faithful_vs_contradicting", parser=parser,
                                      **PROV)) == 2


def test_golden_vs_sample_needs_scored_reference():
    with pytest.raises(ConfigError, match="score the references"):
        build_preference_pairs([{"id": "c", "candidates": [("a", J(1))], "references": ["ref"]}],
                               "golden_vs_sample", **PROV)
    skipped_ref = {"id": "c", "candidates": [("a", J(1))], "references": [("r", J(0, True))]}
    assert build_preference_pairs([skipped_ref], "golden_vs_sample", **PROV) == []


def test_best_vs_worst_margin_cap_and_deterministic_ties():
    cands = [("b", 7.0), ("a", 7.0), ("top", 9.0), ("c", 3.0), ("d", 3.0), ("x", J(0, True))]
    pairs = build_preference_pairs([clip(cands)], "best_vs_worst", min_margin=1.0,
                                   max_pairs_per_clip=3, **PROV)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("top", "d"), ("a", "c")]
    for _ in range(5):  # input order never changes the result
        random.shuffle(cands)
        again = build_preference_pairs([clip(cands)], "best_vs_worst", min_margin=1.0,
                                       max_pairs_per_clip=3, **PROV)
        assert again == pairs
    strict = build_preference_pairs([clip(cands)], "best_vs_worst", min_margin=5.0,
                                    max_pairs_per_clip=3, **PROV)
    assert [(p["chosen"], p["rejected"]) for p in strict] == [("top", "d")]
    capped = build_preference_pairs([clip(cands)], "best_vs_worst", min_margin=0.0,
                                    max_pairs_per_clip=1, **PROV)
    assert len(capped) == 1
    ties = build_preference_pairs([clip([("p", 5.0), ("q", 5.0)])], "best_vs_worst",
                                  min_margin=0.0, **PROV)
    assert [(p["chosen"], p["rejected"]) for p in ties] == [("p", "q")]  # never with itself
    assert all(p["provenance"]["strategy"] == "best_vs_worst" for p in pairs)


def test_pairs_file_round_trip_and_validation(tmp_path):
    pairs = build_preference_pairs([clip([("low", 2.0)])], "golden_vs_sample", **PROV)
    path = write_pairs(tmp_path / "pairs.jsonl", pairs)
    assert read_pairs(path) == json.loads(json.dumps(pairs))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "c1", "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match="line 1"):
        read_pairs(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="unknown pair strategy"):
        build_preference_pairs([], "random", **PROV)


def test_dedupe_normalises_case_and_whitespace():
    assert dedupe(["A man  speaks.", "a man speaks.", " A MAN speaks. ", "She whispers."]) == [
        "A man  speaks.", "She whispers."]


# ---------------------------------------------------------------- rubric judge

REFS = ("A man speaks slowly in a low, heavy voice, sounding sad.",)
ATTRS = {"emotion": "sad", "pitch": "low", "speed": "slow", "gender": "male"}


@pytest.fixture(scope="module")
def rubric():
    return RubricJudge()


def _score(judge, *cands, transcript="Kids are talking by the door."):
    return judge.score([JudgeItem("c1", c, references=REFS, transcript=transcript,
                                  attributes=ATTRS) for c in cands])


def test_rubric_factual_richness_fluency(rubric):
    good, wrong, generic, loop, copy, empty = _score(
        rubric, "A man speaks slowly in a low voice, sounding sad.",
        "A man speaks quickly in a high voice, sounding happy.",
        "A person is speaking.",
        "A man speaks slowly slowly slowly, sad sad sad sad sad.",
        "Kids are talking by the door.", "")
    assert wrong.criteria["factual"] < good.criteria["factual"]
    assert "contradicts" in wrong.reason and wrong.score < generic.score < good.score
    assert generic.criteria["richness"] < good.criteria["richness"]
    assert loop.criteria["fluency"] < good.criteria["fluency"]
    assert copy.criteria["faithfulness"] < good.criteria["faithfulness"]
    assert empty.score == 1.0 and not any(j.skipped for j in (good, wrong, empty))
    for j in (good, wrong, generic, loop, copy, empty):
        assert 1.0 <= j.score <= 10.0 and set(j.criteria) == {
            "faithfulness", "factual", "richness", "fluency"}
        assert all(1.0 <= v <= 10.0 for v in j.criteria.values())


def test_rubric_is_deterministic_and_uses_reference_attributes(rubric):
    cands = ["A man speaks slowly, sounding sad.", "She shouts angrily <a0_3>."]
    assert _score(rubric, *cands) == _score(RubricJudge(parser=rubric.parser), *cands)
    # no labels: the references' attributes are the evidence
    a, b = rubric.score([JudgeItem("c", c, references=REFS) for c in
                         ("He sounds sad and slow.", "He sounds happy and fast.")])
    assert b.criteria["factual"] < a.criteria["factual"]


def test_rubric_contradictions_match_eval_hallucination_definition(rubric):
    from aligncap_core.eval.clue_metrics import hallucination_rate
    from aligncap_core.prefs.judges import contradicted

    texts = ["A man speaks slowly, sounding sad.", "A woman speaks at a normal pace.",
             "He shouts loudly and angrily.", "A person is speaking."]
    for r in rubric.parser.parse_many(texts):
        assert bool(contradicted(r, ATTRS)) == (hallucination_rate([r], [ATTRS]) == 1.0)


def test_make_judge():
    assert isinstance(make_judge({"kind": "rubric", "weights": {"factual": 0.5}}), RubricJudge)
    assert make_judge(None).name == "rubric"
    with pytest.raises(ConfigError, match="unknown judge kind"):
        make_judge({"kind": "gpt5"})
    with pytest.raises(ConfigError, match="unknown keys"):
        make_judge({"kind": "rubric", "temperature": 0})


def test_judge_clips_scores_references_with_the_same_judge(rubric):
    judged = judge_clips(rubric, [{"id": "c1", "prompt": "P", "references": list(REFS),
                                   "attributes": ATTRS,
                                   "candidates": ["A person is speaking.",
                                                  "A woman shouts quickly, sounding happy."]}])
    (text, ref_j), = judged[0]["references"]
    assert text == REFS[0] and ref_j.score > 8
    pairs = build_preference_pairs(judged, "golden_vs_sample", **PROV)
    assert [p["rejected"] for p in pairs] == ["A woman shouts quickly, sounding happy.",
                                              "A person is speaking."]


# ---------------------------------------------------------------- OpenAI judge

def test_parse_judge_reply_is_robust():
    crit, reason = parse_judge_reply('Sure!\n```json\n{"faithfulness": "8", "factual": 12, '
                                     '"richness": "7/10", "fluency": 0, "reason": "ok"}\n```')
    assert crit == {"faithfulness": 8.0, "factual": 10.0, "richness": 7.0, "fluency": 1.0}
    assert reason == "ok"
    crit, _ = parse_judge_reply('Scores: {"Faithfulness": 5, "factual": 6, "richness": 7, '
                                '"fluency": 8} -- done')
    assert crit["faithfulness"] == 5.0
    for bad in ("", "no json here", '{"faithfulness": 5, "factual": 6}',
                '{"faithfulness": "high", "factual": 6, "richness": 7, "fluency": 8}'):
        with pytest.raises(JudgeReplyError):
            parse_judge_reply(bad)


SECRET = "sk-test-SECRET-4711"


class _FakeChat(BaseHTTPRequestHandler):
    """POST /v1/chat/completions; the candidate text selects an injected fault."""

    counts: dict[str, int] = {}
    auth: set[str] = set()
    lock = threading.Lock()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        cand = json.loads(user.split("Candidate caption:\n", 1)[1])
        with self.lock:
            n = self.counts[cand] = self.counts.get(cand, 0) + 1
            self.auth.add(self.headers.get("Authorization", ""))
        first = n == 1
        if cand == "timeout once" and first:
            time.sleep(1.2)  # the client gives up at 0.4 s
            return self._reply(200, "{}")
        if cand == "rate limited once" and first:
            return self._json(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        if (cand == "server error once" and first) or cand == "always fails":
            return self._json(500, {"error": {"message": "boom"}})
        content = json.dumps({"faithfulness": 8, "factual": 7, "richness": str(len(cand) % 9 + 1),
                              "fluency": 9, "reason": "fine"})
        if cand == "garbled once" and first:
            content = "I would rate this caption highly."
        self._reply(200, content)

    def _reply(self, code, content):
        self._json(code, {"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": content}}]})

    def _json(self, code, obj, headers=None):
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and closed the connection


@pytest.fixture
def fake_server():
    _FakeChat.counts, _FakeChat.auth = {}, set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeChat)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", _FakeChat
    server.shutdown()
    server.server_close()


def test_openai_judge_retries_caches_and_skips(fake_server, tmp_path, monkeypatch, caplog):
    url, handler = fake_server
    monkeypatch.setenv("FAKE_JUDGE_KEY", SECRET)
    caplog.set_level(logging.DEBUG)  # every logger, openai's and httpx's included
    cfg = {"kind": "openai", "base_url": url, "model": "fake-judge",
           "api_key_env": "FAKE_JUDGE_KEY", "max_retries": 3, "timeout": 0.4,
           "backoff_base": 0.01, "backoff_max": 0.05, "max_concurrency": 4,
           "cache_path": str(tmp_path / "judge.sqlite")}
    judge = make_judge(cfg)
    cands = ["A man speaks slowly, sounding sad.", "timeout once", "rate limited once",
             "server error once", "garbled once", "always fails", "She whispers softly."]
    items = [JudgeItem(f"c{i}", c, references=REFS, attributes=ATTRS) for i, c in enumerate(cands)]
    out = judge.score(items)

    assert [j.skipped for j in out] == [c == "always fails" for c in cands]
    bad = out[cands.index("always fails")]
    assert bad.score is None and "HTTP 500" in bad.error and "4 attempts" in bad.error
    ok = out[0]
    assert ok.judge == "openai:fake-judge" and ok.reason == "fine"
    assert ok.criteria == {"faithfulness": 8.0, "factual": 7.0,
                           "richness": float(len(cands[0]) % 9 + 1), "fluency": 9.0}
    assert 1.0 <= ok.score <= 10.0
    counts = dict(handler.counts)
    assert counts == {cands[0]: 1, "timeout once": 2, "rate limited once": 2,
                      "server error once": 2, "garbled once": 2, "always fails": 4,
                      "She whispers softly.": 1}
    assert judge.stats["retries"] == 4 + 3 and judge.stats["skipped"] == 1
    assert "1 of 7 candidates skipped" in caplog.text
    assert handler.auth == {f"Bearer {SECRET}"}  # the key was used ...

    # ... a second judge on the same cache pays for nothing it already has
    again = make_judge(cfg)
    out2 = again.score(items)
    assert [j.to_dict() for j in out2 if not j.skipped] == [j.to_dict() for j in out if not j.skipped]
    assert again.stats["cache_hits"] == 6
    assert {k: v for k, v in handler.counts.items() if k != "always fails"} == {
        k: v for k, v in counts.items() if k != "always fails"}
    again.score([it for it, j in zip(items, out, strict=True) if not j.skipped])
    assert handler.counts == {**counts, "always fails": 8}  # only the skipped one is retried

    # ... and never leaks into logs or the cache file
    assert SECRET not in caplog.text
    assert SECRET.encode() not in (tmp_path / "judge.sqlite").read_bytes()


def test_openai_judge_requires_key_env(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        OpenAIJudge(OpenAIJudgeConfig(api_key_env="NO_SUCH_KEY_VAR", cache_path=""))
    with pytest.raises(ConfigError, match="max_concurrency"):
        OpenAIJudgeConfig(max_concurrency=0)
