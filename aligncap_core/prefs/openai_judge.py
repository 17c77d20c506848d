"""An OpenAI-compatible LLM judge (AlignCap's GPT-3.5 scoring, ARCHITECTURE.md step 6).

    judge = OpenAIJudge(OpenAIJudgeConfig(base_url="http://host:8000/v1", model="qwen2.5-7b"))
    judgments = judge.score(items)      # never raises for a failed item: it comes back skipped

- One chat-completions request per candidate, `max_concurrency` in flight (threads).
- Retries (ours, not the SDK's: its `max_retries=0`) with exponential backoff and jitter on
  timeouts, connection errors, 429, 5xx and replies that are not the JSON the rubric asks for;
  a 429's Retry-After is honoured (capped). 4xx other than 408/409/429 fail at once.
- After the retries an item is returned `skipped=True` with the error; the batch completes and
  one warning reports how many were skipped.
- Successful judgments are cached in SQLite, keyed by sha256(clip id, candidate, rubric version,
  judge model), so a judgment is never paid for twice (skipped ones are retried next time).
- The API key is read from the environment variable named by `api_key_env` and handed to the
  client only: never logged, never stored, never part of an error message or cache row.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligncap_core.errors import ConfigError
from aligncap_core.prefs.judge_types import (
    CRITERIA,
    MAX_SCORE,
    MIN_SCORE,
    RUBRIC_VERSION,
    JudgeItem,
    Judgment,
    RubricWeights,
    clamp,
)
from aligncap_core.store import cache_root
from aligncap_core.utils import sha256_bytes, stable_json

log = logging.getLogger(__name__)

SYSTEM_PROMPT = """You are an expert annotator of speech emotion captions. A caption must \
describe HOW the speaker sounds (emotion, pitch, speaking rate, volume, tone, voice quality), \
not what is said. Score the candidate caption against the evidence on four criteria, each an \
integer from 1 (very poor) to 10 (excellent):
- faithfulness: it follows the instruction: one sentence describing the speaker's voice and \
emotion; not a copy of the transcript, no markup or tokens, not empty.
- factual: it agrees with the evidence (reference captions, known attributes); every attribute \
that contradicts the evidence (wrong emotion, pitch, speed, volume, gender) is a serious error.
- richness: it names specific emotional clues (e.g. "trembling", "high-pitched", "rapidly"), \
not a generic statement such as "a person is speaking".
- fluency: it is grammatical and natural, without repeated words or phrases.
Reply with JSON only, exactly: {"faithfulness": n, "factual": n, "richness": n, "fluency": n, \
"reason": "<one short sentence>"}"""


def user_prompt(item: JudgeItem) -> str:
    evidence = {"instruction": item.instruction, "reference_captions": list(item.references),
                "transcript": item.transcript, "known_attributes": dict(item.attributes)}
    return (f"Evidence:\n{json.dumps(evidence, ensure_ascii=False, indent=1)}\n\n"
            f"Candidate caption:\n{json.dumps(item.candidate, ensure_ascii=False)}")


class JudgeReplyError(ValueError):
    """The judge's reply is not the JSON object the rubric asks for (retried)."""


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _to_score(key: str, v: Any) -> float:
    if isinstance(v, bool) or v is None:
        raise JudgeReplyError(f"{key}: not a number: {v!r}")
    if isinstance(v, str):  # "8", "8/10", "8.5 points"
        m = _NUMBER.search(v)
        if not m:
            raise JudgeReplyError(f"{key}: not a number: {v[:40]!r}")
        v = m.group()
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise JudgeReplyError(f"{key}: not a number: {v!r}") from None
    if x != x:  # nan
        raise JudgeReplyError(f"{key}: nan")
    return clamp(x, MIN_SCORE, MAX_SCORE)  # out-of-range scores are clamped, not rejected


def parse_judge_reply(text: str) -> tuple[dict[str, float], str]:
    """(criteria, reason) from an LLM reply. Tolerates code fences, text around the JSON object,
    numbers as strings and out-of-range values (clamped to 1-10); a reply without a JSON object
    holding all four criteria raises JudgeReplyError."""
    if not isinstance(text, str) or not text.strip():
        raise JudgeReplyError("empty reply")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    dec = json.JSONDecoder()
    for chunk in candidates:
        for start in (i for i, ch in enumerate(chunk) if ch == "{"):
            try:
                obj, _ = dec.raw_decode(chunk[start:])
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and any(k in obj for k in CRITERIA):
                lowered = {str(k).strip().lower(): v for k, v in obj.items()}
                missing = [k for k in CRITERIA if k not in lowered]
                if missing:
                    raise JudgeReplyError(f"reply JSON lacks {missing}")
                reason = str(lowered.get("reason", ""))[:300]
                return {k: _to_score(k, lowered[k]) for k in CRITERIA}, reason
    raise JudgeReplyError(f"no JSON object with the criteria in reply: {text[:80]!r}")


@dataclass
class OpenAIJudgeConfig:
    """base_url: the endpoint's /v1 root (None: api.openai.com). model: the judge model name.
    api_key_env: name of the environment variable holding the key (the key itself is never in
        a config). max_concurrency: requests in flight. max_retries: our retries per item after
        the first attempt. timeout: seconds per request. backoff_base / backoff_max: the n-th
        retry waits min(max, base * 2**n) scaled by a jitter in [0.5, 1). cache_path: SQLite
        file of judgments (None: ~/.cache/aligncap/judge-cache.sqlite; "" disables caching).
    temperature: 0 for reproducible scores. max_tokens: the reply is a short JSON object.
    json_mode: send response_format={"type": "json_object"} (not every server supports it).
    weights: overall-score weights (the same `RubricWeights` as the rubric judge).
    """

    model: str = "gpt-3.5-turbo"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 4
    max_retries: int = 4
    timeout: float = 30.0
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    cache_path: str | None = None
    temperature: float = 0.0
    max_tokens: int = 200
    json_mode: bool = False
    weights: dict | None = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("openai judge: model is empty")
        if self.max_concurrency < 1:
            raise ConfigError(f"openai judge: max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_retries < 0:
            raise ConfigError(f"openai judge: max_retries must be >= 0, got {self.max_retries}")
        if self.timeout <= 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ConfigError("openai judge: timeout must be > 0, backoff_base/backoff_max >= 0")


class JudgmentCache:
    """Judgments in one SQLite table keyed by sha256. Each insert is its own transaction, so
    the file is always consistent; safe across threads (one connection per call)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS judgments "
                        "(key TEXT PRIMARY KEY, judgment TEXT NOT NULL, created REAL NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    @staticmethod
    def key(clip_id: str, candidate: str, rubric_version: str, model: str) -> str:
        return sha256_bytes(stable_json([clip_id, candidate, rubric_version, model]).encode())

    def get(self, key: str) -> Judgment | None:
        with self._lock, self._connect() as con:
            row = con.execute("SELECT judgment FROM judgments WHERE key = ?", (key,)).fetchone()
        return Judgment.from_dict(json.loads(row[0])) if row else None

    def put(self, key: str, judgment: Judgment) -> None:
        with self._lock, self._connect() as con:
            con.execute("INSERT OR REPLACE INTO judgments VALUES (?, ?, ?)",
                        (key, json.dumps(judgment.to_dict()), time.time()))


def _retryable(e: BaseException) -> tuple[bool, float | None]:
    """(retry?, server-suggested wait in seconds)."""
    import openai

    # a body that is not JSON at all (a proxy's error page, a truncated reply) is as transient
    # as a garbled rubric reply: retried
    if isinstance(e, JudgeReplyError | openai.APITimeoutError | openai.APIConnectionError
                  | openai.APIResponseValidationError | json.JSONDecodeError):
        return True, None
    if isinstance(e, openai.APIStatusError):
        code = e.status_code
        wait = None
        if code == 429:
            try:
                wait = float(e.response.headers.get("retry-after", ""))
            except (TypeError, ValueError):
                wait = None
        return code in (408, 409, 429) or code >= 500, wait
    return False, None


def _describe(e: BaseException) -> str:
    import openai

    if isinstance(e, openai.APIStatusError):
        return f"HTTP {e.status_code} from judge endpoint"
    return f"{type(e).__name__}: {str(e)[:200]}"


class OpenAIJudge:
    """Scores captions with an OpenAI-compatible chat-completions endpoint (see module doc).

    `stats` counts requests, retries, cache hits and skipped items since construction."""

    def __init__(self, cfg: OpenAIJudgeConfig, client: Any = None):
        self.cfg = cfg
        self.name = f"openai:{cfg.model}"
        self.weights = RubricWeights(**(cfg.weights or {}))
        if client is None:
            import openai

            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ConfigError(f"openai judge: environment variable {cfg.api_key_env} is not "
                                  "set; export the API key there (or name another variable in "
                                  "api_key_env)")
            # max_retries=0: the retry count and backoff are ours (one place, counted, logged)
            client = openai.OpenAI(api_key=key, base_url=cfg.base_url, timeout=cfg.timeout,
                                   max_retries=0)
        self._client = client
        path = cfg.cache_path if cfg.cache_path is not None else cache_root() / "judge-cache.sqlite"
        self.cache = JudgmentCache(path) if path != "" else None
        self.stats = {"requests": 0, "retries": 0, "cache_hits": 0, "skipped": 0}
        self._stats_lock = threading.Lock()
        self._rng = random.Random()

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def _request(self, item: JudgeItem) -> Judgment:
        kwargs: dict[str, Any] = dict(
            model=self.cfg.model, temperature=self.cfg.temperature,
            max_tokens=self.cfg.max_tokens,
            messages=[{"role": "system", "content": SYSTEM_PROMPT},
                      {"role": "user", "content": user_prompt(item)}])
        if self.cfg.json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        self._count("requests")
        resp = self._client.chat.completions.create(**kwargs)
        try:
            content = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise JudgeReplyError("reply has no choices[0].message.content") from None
        criteria, reason = parse_judge_reply(content or "")
        return Judgment(self.weights.overall(criteria), criteria, reason, self.name)

    def _judge_one(self, item: JudgeItem) -> Judgment:
        error = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self._count("retries")
            try:
                return self._request(item)
            except Exception as e:  # every failure becomes a retry or a skipped item
                retry, wait = _retryable(e)
                error = _describe(e)
                if not retry or attempt == self.cfg.max_retries:
                    break
                backoff = min(self.cfg.backoff_max, self.cfg.backoff_base * 2**attempt)
                delay = min(self.cfg.backoff_max, wait) if wait else backoff
                log.debug("judge %s: attempt %d failed (%s); retrying in %.2fs",
                          item.clip_id, attempt + 1, error, delay)
                time.sleep(delay * (0.5 + 0.5 * self._rng.random()))
        return Judgment.failed(self.name, f"{error} (after {attempt + 1} attempts)")

    def score(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        keys = [JudgmentCache.key(it.clip_id, it.candidate, RUBRIC_VERSION, self.cfg.model)
                for it in items]
        out: dict[str, Judgment] = {}
        todo: dict[str, JudgeItem] = {}
        for k, it in zip(keys, items, strict=True):
            if k in out or k in todo:
                continue  # the same candidate of the same clip twice in a batch: one request
            hit = self.cache.get(k) if self.cache else None
            if hit is not None:
                out[k] = hit
                self._count("cache_hits")
            else:
                todo[k] = it
        if todo:
            with ThreadPoolExecutor(max_workers=self.cfg.max_concurrency) as pool:
                results = dict(zip(todo, pool.map(self._judge_one, todo.values()), strict=True))
            for k, j in results.items():
                out[k] = j
                if not j.skipped and self.cache:
                    self.cache.put(k, j)
            skipped = sum(j.skipped for j in results.values())
            if skipped:
                self._count("skipped", skipped)
                log.warning("openai judge %s: %d of %d candidates skipped after up to %d retries "
                            "(e.g. %s); the round goes on without them", self.cfg.model, skipped,
                            len(results), self.cfg.max_retries,
                            next(j.error for j in results.values() if j.skipped))
        return [out[k] for k in keys]
