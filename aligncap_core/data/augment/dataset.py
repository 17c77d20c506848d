"""`augment_dataset`: reads a prepared dataset, writes the copies, manifest, rejects and counts."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aligncap_core.data import audio
from aligncap_core.data.augment.config import AugmentConfig
from aligncap_core.data.augment.plan import _id_key, plan_copy
from aligncap_core.data.augment.relabel import (
    REJECT_REASONS,
    Outcome,
    _gates,
    augment_clip,
    has_reference,
)
from aligncap_core.data.prepare import AUDIO_FORMAT, STALE_KEYS, commit_prepared, safe_name
from aligncap_core.data.synth.captions import write_captions
from aligncap_core.data.synth.checks import QUANTITY
from aligncap_core.data.synth.measure import measure
from aligncap_core.errors import ConfigError, DataError
from aligncap_core.utils import (
    atomic_write,
    sha256_bytes,
    sha256_file,
)
from aligncap_core.utils import progress as progress_bar

_CAPTIONS_STREAM = 100  # rng stream of rewritten captions (numbers are part of the seed)


def _read_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path} line {n}: bad JSON ({e}); is this a prepared dataset?") from e
            if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not isinstance(r.get("audio"), str):
                raise DataError(f"{path} line {n}: not a prepared row (needs id and audio); "
                                "run `aligncap data prepare` first")
            rows.append(r)
    return rows


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    with atomic_write(path, "wb") as f:
        f.write(data)


def _copy_source(src: Path, dest: Path, sha: str | None) -> str:
    """Copy a source clip (skipped when dest already holds it); returns its sha256."""
    sha = sha or sha256_file(src)
    if not (dest.is_file() and dest.stat().st_size == src.stat().st_size and sha256_file(dest) == sha):
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:  # on disk before the rename commits it
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    return sha


_COPY_DROP = ("sha256", "source_audio", "source_sha256")
_CLUE_KEYS = ("clues", "clue_attributes", "p_act")


def _source_rows(data: Path, out: Path, out_dir: str | os.PathLike, cfg: AugmentConfig) -> list[dict]:
    """The prepared rows of `data`, checked: a manifest, unique ids, no copy id taken already."""
    manifest = data / "manifest.jsonl"
    if not manifest.is_file():
        raise DataError(f"{manifest} not found: augment a prepared dataset (`aligncap data prepare`)")
    if out == data:
        raise ConfigError(f"OUT {out_dir} is the source dataset; choose another folder")
    rows = _read_rows(manifest)
    ids = {r["id"] for r in rows}
    if len(ids) != len(rows):
        raise DataError(f"{manifest}: duplicate ids; re-run `aligncap data prepare`")
    clash = sorted(f"{r['id']}-aug{k}" for r in rows if r.get("split") == "train"
                   for k in range(1, cfg.copies + 1) if f"{r['id']}-aug{k}" in ids)
    if clash:
        raise DataError(f"{manifest}: ids {', '.join(clash[:5])} already exist; augment the original "
                        "dataset, not an augmented one")
    return rows


@dataclass
class _Tally:
    """What augmenting wrote and rejected, and the counts the summary reports."""

    written: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    applied: Counter = field(default_factory=Counter)
    changes: Counter = field(default_factory=Counter)
    relabeled: int = 0
    regenerated: int = 0
    produced: int = 0

    @property
    def kept(self) -> int:
        return self.produced - len(self.rejects)

    def reject(self, r: dict, new_id: str, res: Outcome, record: dict) -> None:
        self.reasons[res.reason] += 1
        self.rejects.append({"id": new_id, "augmented_from": r["id"], "reason": res.reason,
                             "message": f"{new_id}: {res.message}", "augment": record,
                             "measured": res.measured, "check": res.check or None,
                             "attributes": r["attributes"]})

    def keep(self, r: dict, row: dict, res: Outcome, plan: list[dict], record: dict) -> None:
        self.written.append(row)
        for t in plan:
            self.applied[t["name"]] += 1
        changed = {a: f"{r['attributes'][a]}->{res.attributes[a]}" for a in QUANTITY
                   if r["attributes"][a] != res.attributes[a]}
        self.relabeled += bool(changed)
        self.changes.update(f"{a} {c}" for a, c in changed.items())
        self.regenerated += record["captions"] == "regenerated"

    def counts(self, rows: list[dict], train: list[dict], skipped: Counter) -> dict:
        return {
            "rows_read": len(rows), "train_rows": len(train), "skipped": dict(sorted(skipped.items())),
            "produced": self.produced, "kept": self.kept, "rejected": len(self.rejects),
            "rejects_by_reason": dict(sorted(self.reasons.items())), "relabeled": self.relabeled,
            "label_changes": dict(sorted(self.changes.items())), "captions_regenerated": self.regenerated,
            "transforms": dict(sorted(self.applied.items())), "written": len(self.written),
        }


def _augment_copies(r: dict, src: Path, out: Path, cfg: AugmentConfig, tally: _Tally,
                    advance: Callable[[], None]) -> None:
    """The `cfg.copies` augmented copies of train row `r` (audio at `src`): each kept (row and
    audio written) or rejected (with its reason)."""
    x, sr = _read_audio(src)
    clip = measure(x, sr)
    for k in range(1, cfg.copies + 1):
        new_id = f"{r['id']}-aug{k}"
        plan = plan_copy(r, k, cfg, sr)
        res = augment_clip(r, x, sr, plan, emotion_consistent=cfg.emotion_consistent,
                           signal_seed=[cfg.seed, _id_key(r["id"]), k], clip_measurement=clip)
        tally.produced += 1
        record = {"copy": k, "seed": cfg.seed, "transforms": plan}
        if res.reason is not None:
            tally.reject(r, new_id, res, record)
        else:
            tally.keep(r, _copy_row(r, new_id, k, res, record, sr, out, cfg.seed, str(src)), res, plan, record)
        advance()


def augment_dataset(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    cfg: AugmentConfig | None = None, progress: bool = True,
                    copies_only: bool = False) -> dict:
    """Write `data_dir`'s rows plus augmented copies of its train rows to `out_dir` (with
    `copies_only`, the copies alone: a preference round's clips, `improve.steps`).

    See the package docstring for the output layout and the labelling rules. Returns {rows_read,
    train_rows, skipped, produced, kept, rejected, rejects_by_reason, relabeled, label_changes,
    captions_regenerated, transforms, written, seconds, out_dir}. Raises DataError when data_dir
    is not a prepared dataset or an audio file is missing, ConfigError for bad settings.
    """
    t0 = time.perf_counter()
    cfg = cfg or AugmentConfig()
    data = Path(data_dir).resolve()
    out = Path(out_dir).resolve()
    rows = _source_rows(data, out, out_dir, cfg)
    (out / "audio").mkdir(parents=True, exist_ok=True)

    train = [r for r in rows if r.get("split") == "train"]
    eligible = [r for r in train if has_reference(r)] if cfg.copies else []
    skipped = Counter()
    if cfg.copies and len(eligible) < len(train):
        skipped["no_reference"] = len(train) - len(eligible)
    eligible_ids = {r["id"] for r in eligible}

    tally = _Tally()
    show = progress and sys.stderr.isatty()
    with progress_bar(disable=not show) as bar:
        task = bar.add_task("augment", total=len(eligible) * cfg.copies)

        def advance() -> None:
            rate = tally.produced / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, description=f"augment kept {tally.kept} rejected "
                       f"{len(tally.rejects)} ({rate:.1f} copies/s)")

        for r in rows:  # every row is copied as it is; eligible train rows get their copies
            src = Path(r["audio"]) if os.path.isabs(r["audio"]) else data / r["audio"]
            if not src.is_file():
                raise DataError(f"{r['id']}: audio file not found: {src}; re-run `aligncap data prepare`")
            if not copies_only:
                rel = f"audio/{safe_name(r['id'])}.wav"
                sha = _copy_source(src, out / rel, r.get("audio_sha256"))
                tally.written.append({**{k: v for k, v in r.items() if k not in STALE_KEYS},
                                      "audio": rel, "audio_sha256": sha})
            if r["id"] in eligible_ids:
                _augment_copies(r, src, out, cfg, tally, advance)

    kept, rejects, written = tally.kept, tally.rejects, tally.written
    sources = 0 if copies_only else len(rows)
    if kept + len(rejects) != tally.produced or len(written) != sources + kept:  # the contract
        raise DataError(f"internal error: {tally.produced} copies produced but {kept} kept + "
                        f"{len(rejects)} rejected")
    counts = tally.counts(rows, train, skipped)
    settings = {"audio_format": AUDIO_FORMAT, "sample_rate": _rate_of(written), "augment": cfg.to_dict()}
    with atomic_write(out / "augment.json") as f:
        json.dump({"config": cfg.to_dict(), "reject_reasons": REJECT_REASONS, **counts}, f, indent=2, sort_keys=True)
    commit_prepared(out, written, rejects, settings, str(data), "augment")
    seconds = time.perf_counter() - t0
    summary = {**counts, "copies": cfg.copies, "seed": cfg.seed, "seconds": round(seconds, 2),
               "out_dir": str(out)}
    if show:
        from rich.console import Console

        why = ", ".join(f"{k} {v}" for k, v in tally.reasons.items()) or "none"
        Console(stderr=True).print(f"augment: kept {kept} of {tally.produced} copies, rejected "
                                   f"{len(rejects)} ({why}) in {seconds:.1f} s -> {out}")
    return summary


def _rate_of(rows: list[dict]) -> int | None:
    rates = {r.get("sample_rate") for r in rows}
    return rates.pop() if len(rates) == 1 else None


def _read_audio(path: Path) -> tuple[np.ndarray, int]:
    try:
        x, sr = audio.decode(str(path))
    except audio.AudioProblem as e:
        raise DataError(f"{path}: {e.message}; re-run `aligncap data prepare`") from e
    return audio.to_mono(x).astype(np.float64), int(sr)


def _copy_row(r: dict, new_id: str, k: int, res: Outcome, record: dict, sr: int, out: Path,
              seed: int, source: str) -> dict:
    """The manifest row of a kept copy; writes its audio."""
    wav = audio.encode_wav(res.samples, sr)
    rel = f"audio/{safe_name(new_id)}.wav"
    _write_if_changed(out / rel, wav)
    attrs = res.attributes
    row = {k2: v for k2, v in r.items() if k2 not in STALE_KEYS and k2 not in _COPY_DROP}
    changed = {a: r["attributes"][a] for a in QUANTITY if r["attributes"][a] != attrs[a]}
    if changed or _gates(res.measured) != _gates(r["measured"]):
        rng = np.random.default_rng([seed, _id_key(r["id"]), k, _CAPTIONS_STREAM])
        n = max(len(r.get("captions") or []), 1)
        captions, stated = write_captions(rng, attrs, res.measured, n=n)
        row.update(captions=captions, caption_attributes=stated)
        for key in _CLUE_KEYS:
            row.pop(key, None)
        record["captions"] = "regenerated"
    else:
        record["captions"] = "kept"
    if changed:
        record["labels_before"] = changed
    if res.check:
        record["check"] = res.check
    row.update({
        "id": new_id, "audio": rel, "attributes": attrs, "measured": res.measured,
        "duration_s": round(len(res.samples) / sr, 4), "sample_rate": sr,
        "source_audio": source, "source_sha256": r.get("audio_sha256"),
        "audio_sha256": sha256_bytes(wav), "augmented_from": r["id"], "augment": record,
    })
    return row
