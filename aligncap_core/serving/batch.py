"""Batch captioning: files, folders and manifests (local or s3://) -> predictions.jsonl.

    caption_to_jsonl(engine, ["clips/", "s3://bucket/more/", "extra.jsonl", "one.wav"], "out/")

Inputs:
  a file (`.wav`, `.flac`, `.ogg`, `.mp3`, ...)    one clip, id = its file name
  a folder or an s3:// prefix                    every audio file under it (recursive), id = the
                                                 path below the folder; other files are counted
                                                 in the summary's `ignored`, never read
  a manifest (`*.jsonl`, local or s3://)         one clip per row: `audio` (relative to the
                                                 manifest's folder, absolute or s3://), `id`
Writes OUT/predictions.jsonl, one line per captioned clip, in input order:
    {"id", "audio", "caption", "attributes", "withheld", "told", "struck", "unsure", "seconds"}
    (seconds: the clip's duration; withheld: None, or what the checks left out and why; told:
    None, or the gender stated from the clip's vocal tract and why; struck / unsure: the
    attributes deleted from the caption / still stated in it below the candidates' agreement
    bar, `CaptionEngine.caption`)
and OUT/rejects.jsonl, one line per clip that could not be captioned (missing or unreadable
audio, a bad manifest row) with its reason: bad clips are reported and skipped, never fatal and
never dropped silently (captioned + rejected = clips found). Clips are read a chunk at a time,
so memory does not grow with the input; within a chunk they are batched by length
(`CaptionEngine.caption`).
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligncap_core.data import storage
from aligncap_core.errors import AlignCapError, DataError

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff",
                              ".aifc", ".au", ".w64", ".caf", ".wv"})


@dataclass(frozen=True)
class ClipRef:
    """One clip to caption, or (`error` set) one that can be reported but not read."""

    id: str
    audio: str  # path or s3:// URI
    error: str | None = None


def _is_audio(name: str) -> bool:
    return posixpath.splitext(name.lower())[1] in AUDIO_EXTENSIONS


def _manifest_refs(uri: str) -> Iterator[ClipRef]:
    base = storage.parent_uri(uri)
    try:
        lines = storage.read_bytes(uri).decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{uri}: manifest is not UTF-8 text ({e}); pass a JSON Lines file") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{uri} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield ClipRef(f"line-{n}", where, f"{where}: bad JSON ({e.msg}); fix the row")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("audio"), str) or not row["audio"]:
            yield ClipRef(str(row.get("id", f"line-{n}")) if isinstance(row, dict) else f"line-{n}",
                          where, f"{where}: no \"audio\" path; every row needs one")
            continue
        yield ClipRef(str(row.get("id") or f"line-{n}"), storage.resolve(base, row["audio"]))


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[ClipRef], list[str]]:
    """(clips, ignored files) of the inputs (module doc). Ids are made unique with `#2`, `#3`.
    A folder or prefix with no audio file is a DataError naming it."""
    refs: list[ClipRef] = []
    ignored: list[str] = []
    for raw in inputs:
        s = str(raw)
        if s.endswith(".jsonl"):
            refs.extend(_manifest_refs(s))
            continue
        is_folder = os.path.isdir(s) if not storage.is_s3(s) else not storage.exists(s)
        if not is_folder:
            refs.append(ClipRef(posixpath.basename(s.rstrip("/")) or s, s))
            continue
        prefix = s.rstrip("/") + "/" if storage.is_s3(s) else s
        found = storage.list_uris(prefix)
        audio = [u for u in found if _is_audio(u)]
        ignored += [u for u in found if not _is_audio(u)]
        if not audio:
            raise DataError(f"{s}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) under it")
        cut = len(prefix.rstrip("/")) + 1
        refs.extend(ClipRef(u[cut:].replace(os.sep, "/"), u) for u in audio)
    seen: dict[str, int] = {}
    unique = []
    for r in refs:
        seen[r.id] = seen.get(r.id, 0) + 1
        unique.append(r if seen[r.id] == 1 else ClipRef(f"{r.id}#{seen[r.id]}", r.audio, r.error))
    return unique, ignored


def _read(engine: Any, ref: ClipRef) -> Any:
    if ref.error:
        raise DataError(ref.error)
    try:
        return engine.waveform(ref.audio, label=f"{ref.id} ({ref.audio})")
    except storage.StorageError as e:
        raise DataError(f"{ref.id}: {e}") from e


def caption_to_jsonl(engine: Any, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                     *, chunk_size: int = 64, show_progress: bool = True,
                     refs: Sequence[ClipRef] | None = None) -> dict[str, Any]:
    """Caption every clip of `inputs` with `engine` (a `CaptionEngine`) into OUT_DIR (module
    doc); returns the summary (counts, files, clips/s). refs: clips already expanded."""
    from aligncap_core.utils import progress

    ignored: list[str] = []
    if refs is None:
        refs, ignored = expand_inputs(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred_path, rej_path = out / "predictions.jsonl", out / "rejects.jsonl"
    tmp_pred, tmp_rej = out / ".predictions.jsonl.partial", out / ".rejects.jsonl.partial"
    t0 = time.perf_counter()
    n_ok = n_bad = n_held = n_struck = n_unsure = 0
    audio_s = 0.0
    with open(tmp_pred, "w", encoding="utf-8") as fp, open(tmp_rej, "w", encoding="utf-8") as fr, \
            progress(disable=not show_progress) as bar:
        task = bar.add_task("caption", total=len(refs))
        for start in range(0, len(refs), chunk_size):
            chunk, waves, rows = refs[start:start + chunk_size], [], []
            for ref in chunk:
                try:
                    waves.append(_read(engine, ref))
                    rows.append(ref)
                except (AlignCapError, OSError) as e:
                    fr.write(json.dumps({"id": ref.id, "audio": ref.audio, "reason": str(e)},
                                        ensure_ascii=False) + "\n")
                    n_bad += 1
            for ref, wav, res in zip(rows, waves, engine.caption(waves), strict=True):
                seconds = round(len(wav) / engine.sample_rate, 3)
                fp.write(json.dumps({"id": ref.id, "audio": ref.audio, **res, "seconds": seconds},
                                    ensure_ascii=False) + "\n")
                audio_s += seconds
                n_held += res.get("withheld") is not None
                n_struck += bool(res.get("struck"))
                n_unsure += bool(res.get("unsure"))
            n_ok += len(rows)
            fp.flush()
            fr.flush()
            elapsed = time.perf_counter() - t0
            bar.update(task, advance=len(chunk),
                       description=f"caption {n_ok / elapsed:.1f} clips/s, {n_bad} bad")
    os.replace(tmp_pred, pred_path)
    os.replace(tmp_rej, rej_path)
    wall = time.perf_counter() - t0
    return {"predictions": str(pred_path), "rejects": str(rej_path), "clips": len(refs),
            "captioned": n_ok, "rejected": n_bad, "withheld": n_held, "struck": n_struck,
            "unsure": n_unsure, "ignored": ignored,
            "audio_seconds": round(audio_s, 2),
            "wall_s": round(wall, 2), "clips_per_s": round(n_ok / wall, 2) if wall else None,
            "model": engine.model.uri, "model_version": engine.version}
