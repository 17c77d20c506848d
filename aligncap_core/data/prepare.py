"""Ingest a dataset: validate rows, normalise audio, write a clean manifest + rejects.

    prepare_dataset("data/manifest.jsonl", "runs/prep")       # local manifest
    prepare_dataset("s3://bucket/sets/a/manifest.jsonl", out)  # S3 manifest (+ S3 audio)
    prepare_dataset("hf_saved_dataset/", out, split="train")   # save_to_disk folder

Output folder:
    manifest.jsonl    kept rows: original keys + audio (relative to OUT), duration_s,
                      sample_rate, source_audio (resolved original path/URI), audio_sha256,
                      source_sha256
    rejects.jsonl     one row per rejected line: line, id, reason (manifest.REASONS), message, raw
    fingerprint.json  content hash of the kept rows (incl. audio hashes) + prepare settings
    audio/<id>.wav    mono float32 WAV at `sample_rate` (see audio.encode_wav for why float)

kept + rejected == non-blank lines read: nothing is dropped silently. Files are written
atomically (temp + rename) and the manifest last, so an interrupted run leaves the previous
output readable; a re-run reuses converted audio whose source hash and settings match.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aligncap_core.data import audio, storage
from aligncap_core.data.manifest import Reject, RowValidator, parse_manifest
from aligncap_core.errors import ConfigError, DataError
from aligncap_core.utils import (
    atomic_write,
    fingerprint,
    sha256_bytes,
    sha256_file,
    stable_json,
    write_jsonl,
)
from aligncap_core.utils import progress as progress_bar

# Bump when the output audio encoding changes: converted audio is only reused on a match.
AUDIO_FORMAT = "wav-float32-mono-v1"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class _Item:
    line: int
    row: dict  # validated manifest row
    payload: Any  # local path / s3 URI (str), or a callable reading an HF cell (hf.iter_hf_rows)
    source: str  # resolved original location, recorded as source_audio
    label: str  # "manifest line" / "dataset row", for messages


def safe_name(row_id: str) -> str:
    """A file name for an id: unsafe characters replaced, plus a short hash when anything was
    changed (so `a/b` and `a_b` never collide)."""
    name = _SAFE.sub("_", row_id).lstrip(".")[:120]
    if name != row_id:
        name = f"{name}-{sha256_bytes(row_id.encode())[:8]}"
    return name


def _read_source(source: str, split: str | None, audio_column: str, caption_column: str,
                 columns: dict | None, storage_config: dict | None
                 ) -> tuple[list[_Item], list[Reject], int, str]:
    """(items to convert, rejects so far, rows read, kind) for a manifest or HF folder."""
    if storage.is_s3(source):
        return _read_manifest(source, storage.read_bytes(source, storage_config), split)
    p = Path(source)
    if not p.exists():
        raise DataError(f"{source}: not found; pass a manifest .jsonl file, an s3://bucket/key "
                        "URI, or a dataset folder saved with datasets' save_to_disk")
    from aligncap_core.data import hf

    if hf.is_hf_dataset_dir(p):
        return _read_hf(p, split, audio_column, caption_column, columns)
    if p.is_dir():
        if (p / "manifest.jsonl").is_file():
            p = p / "manifest.jsonl"
        else:
            raise DataError(f"{source}: a folder with neither manifest.jsonl nor a saved Hugging "
                            "Face dataset (dataset_dict.json / state.json) in it")
    p = p.resolve()
    return _read_manifest(str(p), storage.read_bytes(p), split)


def _read_manifest(uri: str, data: bytes, split: str | None):
    parsed = parse_manifest(data, default_split=split)
    base = storage.parent_uri(uri)
    items = []
    for line, row in parsed.rows:
        resolved = storage.resolve(base, row["audio"])
        items.append(_Item(line, row, resolved, resolved, "manifest line"))
    return items, parsed.rejects, parsed.lines_read, "manifest"


def _read_hf(path: Path, split, audio_column, caption_column, columns):
    from aligncap_core.data.hf import iter_hf_rows

    validator = RowValidator(split, label="dataset row")
    items, rejects, n = [], [], 0
    for n, raw, fetch in iter_hf_rows(path, audio_column=audio_column, caption_column=caption_column,
                                      split=split, columns=columns):
        row, reject = validator.validate(raw, n)
        if reject is not None:
            rejects.append(reject)
        else:
            items.append(_Item(n, row, fetch, row["audio"], "dataset row"))
    return items, rejects, n, "hf"


class _Converter:
    """Converts one item to a kept row or a Reject (runs in worker threads)."""

    def __init__(self, out: Path, sample_rate: int, min_d: float, max_d: float,
                 previous: dict[str, dict], storage_config: dict | None) -> None:
        self.out, self.sr, self.min_d, self.max_d = out, sample_rate, min_d, max_d
        self.previous, self.storage_config = previous, storage_config
        self.reused = 0
        self._lock = threading.Lock()

    def __call__(self, it: _Item) -> dict | Reject:
        rid = it.row["id"]
        where = f"({it.label} {it.line})"
        try:
            return self._convert(it)
        except audio.AudioProblem as p:
            return Reject(it.line, rid, p.code, f"{rid}: {it.row['audio']}: {p.message} {where}", it.row)
        except storage.StorageError as e:
            if e.kind in ("not_found", "no_bucket"):
                shown = it.row["audio"] + (f" ({e.uri})" if e.uri and e.uri != it.row["audio"] else "")
                return Reject(it.line, rid, "missing_file",
                              f"{rid}: audio file not found: {shown} {where}; fix the path or remove the row",
                              it.row)
            if e.kind in ("credentials", "endpoint"):
                raise  # concerns every row: stop instead of rejecting them all
            return Reject(it.line, rid, "storage_error", f"{rid}: {e} {where}", it.row)

    def _fetch(self, it: _Item) -> tuple[Any, str, str]:
        """(decodable source, sha256 of the original bytes, source location)."""
        p, where = it.payload, it.source
        if callable(p):  # a Hugging Face cell, read lazily
            path, p = p()
            where = path or where
            if p is None:
                raise storage.StorageError(f"{where}: the audio cell is empty", uri=where, kind="not_found")
        if isinstance(p, tuple):
            x, rate = p
            data = np.ascontiguousarray(x, dtype=np.float32).tobytes() + str(rate).encode()
            return p, sha256_bytes(data), where
        if isinstance(p, bytes):
            return p, sha256_bytes(p), where
        if storage.is_s3(p):
            data = storage.read_bytes(p, self.storage_config)
            return data, sha256_bytes(data), p
        if not os.path.isfile(p):
            if not os.path.exists(p):
                raise storage.StorageError(f"{p}: file not found", uri=p, kind="not_found")
            raise storage.StorageError(f"{p}: is a folder or special file, not an audio file; "
                                       "point 'audio' at the file", uri=p, kind="other")
        if os.path.getsize(p) == 0:
            raise audio.AudioProblem("empty_audio", "the file is empty (0 bytes); re-export the clip")
        return p, sha256_file(p), p  # decode from the path: the header is checked before reading

    def _convert(self, it: _Item) -> dict:
        src, src_hash, where = self._fetch(it)
        rel = f"audio/{safe_name(it.row['id'])}.wav"
        dest = self.out / rel
        prev = self.previous.get(it.row["id"])
        if (prev and prev.get("source_sha256") == src_hash and prev.get("audio") == rel
                and self.min_d <= float(prev.get("duration_s", -1)) <= self.max_d
                and dest.is_file() and sha256_file(dest) == prev.get("audio_sha256")):
            with self._lock:
                self.reused += 1
            return self._row(it, rel, prev["duration_s"], prev["audio_sha256"], src_hash, where)
        if isinstance(src, tuple):
            x, rate = src
            if x.size == 0:
                raise audio.AudioProblem("empty_audio", "audio has no samples")
            audio.check_duration(x.shape[0] / rate, self.min_d, self.max_d)
        else:
            x, rate = audio.decode(src, min_duration=self.min_d, max_duration=self.max_d)
        y = audio.normalise(x, rate, self.sr)
        wav = audio.encode_wav(y, self.sr)
        storage.write_bytes(dest, wav)
        return self._row(it, rel, round(y.shape[0] / self.sr, 4), sha256_bytes(wav), src_hash, where)

    def _row(self, it: _Item, rel: str, duration: float, wav_hash: str, src_hash: str, where: str) -> dict:
        # `codes` of a row copied from another prepared dir points at that dir's shards (and
        # at audio before this normalisation): kept, it would pass for this dir's codes
        kept = {k: v for k, v in it.row.items() if k not in STALE_KEYS}
        return {**kept, "audio": rel, "duration_s": duration, "sample_rate": self.sr,
                "source_audio": where, "audio_sha256": wav_hash, "source_sha256": src_hash}


STALE_KEYS = ("codes",)  # derived from a prepared dir's own files; re-made by `data tokenize`


def commit_prepared(out: Path, rows: list[dict], rejects: Iterable[dict], settings: dict,
                    source: str, kind: str) -> str:
    """Write a prepared dir's rejects.jsonl, fingerprint.json and manifest.jsonl (last: the
    commit point of the run), then delete audio/ files that no row references (earlier runs).
    Returns the fingerprint: of `settings` and the rows without their location."""
    hashed = [{k: v for k, v in r.items() if k != "source_audio"} for r in rows]  # location-free
    fp = fingerprint(settings, hashed)
    write_jsonl(out / "rejects.jsonl", rejects)
    with atomic_write(out / "fingerprint.json") as f:
        json.dump({"fingerprint": fp, "content_sha256": sha256_bytes(stable_json([settings, hashed]).encode()),
                   "kept": len(rows), "settings": settings, "source": source, "source_kind": kind},
                  f, indent=2)
    write_jsonl(out / "manifest.jsonl", rows)
    referenced = {r["audio"].split("/", 1)[1] for r in rows}
    for p in (out / "audio").iterdir():
        if p.name not in referenced and (p.suffix == ".wav" or p.name.endswith(".tmp")):
            p.unlink(missing_ok=True)
    return fp


def _previous_rows(out: Path, settings: dict) -> dict[str, dict]:
    """Rows of an earlier prepare into the same folder, if its settings allow reuse."""
    try:
        fp = json.loads((out / "fingerprint.json").read_text())
        if fp["settings"]["audio_format"] != AUDIO_FORMAT or fp["settings"]["sample_rate"] != settings["sample_rate"]:
            return {}
        with open(out / "manifest.jsonl", encoding="utf-8") as f:
            return {r["id"]: r for r in map(json.loads, filter(str.strip, f))}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _default_workers(is_remote: bool) -> int:
    # Decoding/resampling release the GIL (libsndfile, soxr, numpy), so threads scale with
    # cores; S3 fetches are I/O bound and benefit from more.
    cores = os.cpu_count() or 1
    return 8 if is_remote else max(1, min(cores, 4))


def prepare_dataset(source: str | os.PathLike, out_dir: str | os.PathLike, *, sample_rate: int = 24000,
                    min_duration: float = 0.3, max_duration: float = 30.0, audio_column: str = "audio",
                    caption_column: str = "caption", split: str | None = None, progress: bool = True,
                    workers: int | None = None, storage_config: dict | None = None,
                    columns: dict[str, str] | None = None) -> dict:
    """Validate and normalise a dataset into `out_dir` (see the module docstring for the layout).

    source: manifest path, `s3://bucket/key` manifest, a folder holding manifest.jsonl, or a
      `save_to_disk` folder. Relative audio paths resolve against the manifest's folder (its
      key prefix on S3). split: default split for rows without one; for a DatasetDict, the
      one split to read (all when None). audio_column / caption_column / columns: HF only.
    sample_rate: output rate, Hz. min_duration / max_duration: seconds, bounds of kept clips.
    workers: decoding threads (default: cores, max 4; 8 for S3). storage_config: see storage.

    Returns {kept, rejected, rejects_by_reason, lines_read, reused, clips_per_s, seconds,
    total_audio_s, fingerprint, out_dir}. Raises ConfigError for bad settings, DataError for a
    source that cannot be read at all, StorageError when S3 is unreachable or refuses the
    credentials. Bad rows never raise: they go to rejects.jsonl.
    """
    t0 = time.perf_counter()
    if sample_rate <= 0:
        raise ConfigError(f"sample_rate must be positive (Hz), got {sample_rate}")
    if min_duration < 0 or max_duration <= min_duration:
        raise ConfigError(f"need 0 <= min_duration < max_duration (seconds), got {min_duration}, {max_duration}")
    source = str(source)
    out = Path(out_dir).resolve()
    if not storage.is_s3(source) and Path(source).resolve() in (out / "manifest.jsonl", out):
        raise ConfigError(f"--out {out_dir} would overwrite the source manifest {source}; choose another folder")
    settings = {"sample_rate": sample_rate, "min_duration": min_duration, "max_duration": max_duration,
                "audio_format": AUDIO_FORMAT}

    items, rejects, lines_read, kind = _read_source(source, split, audio_column, caption_column,
                                                    columns, storage_config)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    conv = _Converter(out, sample_rate, min_duration, max_duration, _previous_rows(out, settings),
                      storage_config)
    n_workers = workers or _default_workers(storage.is_s3(source) or any(
        isinstance(i.payload, str) and storage.is_s3(i.payload) for i in items[:50]))

    results: list[dict | Reject] = []
    show = progress and sys.stderr.isatty()
    pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="prepare")
    try:
        with progress_bar(disable=not show) as bar:
            task = bar.add_task("prepare", total=len(items))
            window: deque[Future] = deque()
            it = iter(items)
            kept_n = 0
            while True:  # bounded in-flight window: memory stays flat on large datasets
                while len(window) < 4 * n_workers and (nxt := next(it, None)) is not None:
                    window.append(pool.submit(conv, nxt))
                if not window:
                    break
                res = window.popleft().result()
                results.append(res)
                kept_n += isinstance(res, dict)
                rate = len(results) / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, advance=1, description=f"prepare kept {kept_n} rejected "
                           f"{len(results) - kept_n + len(rejects)} ({rate:.0f} clips/s)")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    kept = [r for r in results if isinstance(r, dict)]
    rejects = sorted(rejects + [r for r in results if isinstance(r, Reject)], key=lambda r: r.line)
    if len(kept) + len(rejects) != lines_read:  # an invariant, checked because it is the contract
        raise DataError(f"internal error: {lines_read} rows read but {len(kept)} kept + {len(rejects)} rejected")

    fp = commit_prepared(out, kept, (r.to_dict() for r in rejects), settings, source, kind)

    seconds = time.perf_counter() - t0
    by_reason = dict(sorted(Counter(r.reason for r in rejects).items()))
    summary = {
        "kept": len(kept), "rejected": len(rejects), "rejects_by_reason": by_reason,
        "lines_read": lines_read, "reused": conv.reused,
        "clips_per_s": round(lines_read / seconds, 1) if seconds > 0 else 0.0,
        "seconds": round(seconds, 3), "total_audio_s": round(sum(r["duration_s"] for r in kept), 2),
        "fingerprint": fp, "out_dir": str(out),
    }
    if show:
        from rich.console import Console

        reasons = ", ".join(f"{k} {v}" for k, v in by_reason.items()) or "none"
        Console(stderr=True).print(f"prepare: kept {len(kept)}, rejected {len(rejects)} ({reasons}) "
                                   f"in {seconds:.1f} s -> {out}")
    return summary
