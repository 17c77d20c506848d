"""Parse and validate manifest rows (ARCHITECTURE.md, "Manifest").

A manifest is JSON Lines, one clip per line. Blank lines are not rows. Every other line either
becomes a validated row or a `Reject` with its 1-based line number, the id when readable, a
reason code from `REASONS` and a message that names the row and what to do. Nothing raises on
bad content: undecodable bytes, bad JSON and bad fields are all rejects.

Validation: `id` (non-empty string, unique), `audio` (non-empty string), `split` (in
vocab.SPLITS; a `default_split` fills rows without one), `captions` (a list of non-empty
strings; one string is wrapped into a list; at least one required for CAPTIONED_SPLITS),
`transcript` (string, may be empty or missing), `attributes` (vocab.check_attributes).
Unknown keys are kept as they are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aligncap_core.vocab import CAPTIONED_SPLITS, SPLITS, check_attributes

# Every reject reason prepare can write, with what it means.
REASONS: dict[str, str] = {
    "invalid_json": "the line is not a JSON object (NaN/Infinity are not JSON either)",
    "not_utf8": "the line is not valid UTF-8 text (or escapes an unpaired surrogate, \\ud800)",
    "missing_field": "a required key (id, audio, split) is absent or empty",
    "bad_field": "a key has the wrong type (e.g. captions not a list of strings)",
    "duplicate_id": "the id was already used by an earlier row",
    "unknown_split": "split is not one of " + ", ".join(SPLITS),
    "no_caption": "a train/valid row has no caption",
    "bad_attribute": "an attribute value is outside the vocabulary",
    "missing_file": "the audio file or S3 object does not exist",
    "storage_error": "the audio could not be fetched (permissions, S3 error)",
    "unreadable_audio": "the audio cannot be decoded",
    "empty_audio": "the audio has no samples",
    "silent_audio": "the audio is digital silence",
    "nan_audio": "the audio contains NaN or infinite samples",
    "clipped_audio": "the audio is heavily clipped",
    "too_short": "the clip is shorter than min_duration",
    "too_long": "the clip is longer than max_duration",
}

REQUIRED = ("id", "audio")


@dataclass
class Reject:
    """One rejected row. `raw` is the parsed row (dict) or the raw line text."""

    line: int  # 1-based line in the manifest (row number for HF datasets)
    id: str | None
    reason: str  # a key of REASONS
    message: str
    raw: Any = None

    def to_dict(self) -> dict:
        return {"line": self.line, "id": self.id, "reason": self.reason, "message": self.message,
                "raw": self.raw}


@dataclass
class ParsedManifest:
    rows: list[tuple[int, dict]] = field(default_factory=list)  # (line, validated row)
    rejects: list[Reject] = field(default_factory=list)
    lines_read: int = 0  # non-blank lines = len(rows) + len(rejects)


def _where(line: int, row_id: str | None, label: str) -> str:
    return f"{row_id} ({label} {line})" if row_id else f"{label} {line}"


class RowValidator:
    """Validates rows one at a time, remembering ids seen so far (for `duplicate_id`).

    `label` names the position in messages ("manifest line", "dataset row").
    """

    def __init__(self, default_split: str | None = None, label: str = "manifest line") -> None:
        self.default_split = default_split
        self.label = label
        self.seen: dict[str, int] = {}

    def validate(self, obj: Any, line: int) -> tuple[dict | None, Reject | None]:
        """Return `(normalised_row, None)` or `(None, Reject)`; never raises on bad content."""
        if not isinstance(obj, dict):
            return None, Reject(line, None, "invalid_json",
                                f"{self.label} {line}: expected a JSON object, got {type(obj).__name__}",
                                obj)
        raw_id = obj.get("id")
        row_id = raw_id if isinstance(raw_id, str) and raw_id and _encodable(raw_id) else None
        where = _where(line, row_id, self.label)

        def rej(reason: str, msg: str) -> tuple[None, Reject]:
            return None, Reject(line, row_id, reason, f"{where}: {msg}", obj)

        bad_key = _unencodable_key(obj)
        if bad_key is not None:
            # valid JSON ("\ud800") but not valid text: it cannot be written to UTF-8 files
            # (and would crash every later stage), so the row is rejected here, with its raw
            # form made printable
            obj = _sanitize(obj)
            return None, Reject(line, row_id, "not_utf8",
                                f"{where}: '{bad_key}' holds an unpaired UTF-16 surrogate escape "
                                "(like \\ud800), which is not text; fix the encoding of that value",
                                obj)

        for key in REQUIRED:
            v = obj.get(key)
            if v is None or v == "":
                return rej("missing_field", f"required key '{key}' is missing or empty; add it to the row")
            if not isinstance(v, str):
                return rej("bad_field", f"'{key}' must be a string, got {type(v).__name__} {v!r}")
        if row_id in self.seen:
            return rej("duplicate_id", f"id already used on {self.label} {self.seen[row_id]}; "
                       "ids must be unique, rename one of them")

        row = dict(obj)
        split = row.get("split")
        if split is None or split == "":
            if self.default_split is None:
                return rej("missing_field", "required key 'split' is missing; add it "
                           f"({', '.join(SPLITS)}) or pass --split")
            split = row["split"] = self.default_split
        if split not in SPLITS:
            return rej("unknown_split", f"split {split!r} is not one of {', '.join(SPLITS)}")

        captions = row.get("captions")
        if isinstance(captions, str):
            captions = [captions]
        if captions is None:
            captions = []
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            return rej("bad_field", "'captions' must be a list of strings (or one string)")
        if any(not c.strip() for c in captions):
            return rej("bad_field", "'captions' contains an empty caption; remove it")
        wordless = next((i for i, c in enumerate(captions, 1) if not any(ch.isalnum() for ch in c)), None)
        if wordless is not None:
            return rej("bad_field", f"caption {wordless} ({captions[wordless - 1][:40]!r}) has no "
                       "letters or digits; write a caption or remove it")
        if split in CAPTIONED_SPLITS and not captions:
            return rej("no_caption", f"split '{split}' needs at least one caption in 'captions'")
        if "captions" in row or captions:
            row["captions"] = captions

        transcript = row.get("transcript")
        if transcript is not None and not isinstance(transcript, str):
            return rej("bad_field", f"'transcript' must be a string, got {type(transcript).__name__}")

        problem = check_attributes(row.get("attributes"))
        if problem:
            return rej("bad_attribute", problem)

        self.seen[row_id] = line
        return row, None


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _unencodable_key(obj: dict) -> str | None:
    """The first top-level key whose key or value (at any depth) is not encodable as UTF-8."""
    for k, v in obj.items():
        try:
            json.dumps({k: v}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return k.encode("utf-8", "backslashreplace").decode() if isinstance(k, str) else str(k)
    return None


def _sanitize(v: Any) -> Any:
    """A copy of a parsed JSON value with unencodable strings escaped (`\\ud800` as text)."""
    if isinstance(v, str):
        return _printable(v)
    if isinstance(v, dict):
        return {_sanitize(k): _sanitize(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_sanitize(x) for x in v]
    return v


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON; use null or a finite number")


def _finite_float(text: str) -> float:
    x = float(text)
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} overflows a float; use a finite number")
    return x


def parse_lines(lines: Iterable[bytes], default_split: str | None = None) -> Iterator[tuple[int, dict | None, Reject | None]]:
    """Yield `(line, row, None)` or `(line, None, Reject)` per non-blank line of raw bytes."""
    validator = RowValidator(default_split)
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield n, None, Reject(n, None, "not_utf8",
                                  f"manifest line {n}: not valid UTF-8 (byte {e.start}); "
                                  "re-save the manifest as UTF-8",
                                  raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            continue
        text = text.lstrip("\ufeff") if n == 1 else text  # tolerate a UTF-8 byte-order mark
        try:
            obj = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
        except json.JSONDecodeError as e:
            yield n, None, Reject(n, None, "invalid_json",
                                  f"manifest line {n}: bad JSON ({e.msg} at column {e.colno}); fix the line",
                                  _printable(text.rstrip("\r\n")))
            continue
        except (ValueError, RecursionError) as e:  # NaN/Infinity/1e999, or absurd nesting
            msg = str(e) if isinstance(e, ValueError) else "nested too deeply"
            yield n, None, Reject(n, None, "invalid_json",
                                  f"manifest line {n}: bad JSON ({msg}); fix the line",
                                  _printable(text.rstrip("\r\n")))
            continue
        row, reject = validator.validate(obj, n)
        yield n, row, reject


def _printable(text: str) -> str:
    """`text` as it can be written to a UTF-8 rejects file (lone surrogates escaped)."""
    return text if _encodable(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_manifest(data: bytes, default_split: str | None = None) -> ParsedManifest:
    """Parse a whole manifest (raw bytes) into validated rows and rejects."""
    out = ParsedManifest()
    for line, row, reject in parse_lines(data.splitlines(), default_split):
        out.lines_read += 1
        if reject is not None:
            out.rejects.append(reject)
        else:
            out.rows.append((line, row))
    return out
