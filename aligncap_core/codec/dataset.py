"""Tokenize a prepared dataset: manifest rows -> cached codes, manifest rows -> code locations.

Cache layout (resumable, content-addressed):
    DATA_DIR/codes/<codec_fp>/codec.json          which codec produced these codes
    DATA_DIR/codes/<codec_fp>/shard-00000-<rand>.npz   {audio_sha256: int16 (n_q, T)}
A shard is written atomically every `shard_size` clips, so after a kill -9 every finished shard
is intact and a re-run encodes only clips whose key is in no shard. The key is the audio content
hash, so renamed or duplicated files are not re-encoded; the codec fingerprint (weights + n_q) is
the folder, so a different codec never reads stale codes. The manifest is rewritten atomically at
the end with `codes: {codec, shard, key}` and `n_frames` per row.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from aligncap_core.codec.calibrate import CALIBRATION_VERSION, calibrate_encodec
from aligncap_core.codec.tokenizer import (
    CODEC_JSON,
    EncodecTokenizer,
    parallel_map,
    read_audio,
    torch_threads,
)
from aligncap_core.errors import ConfigError, DataError
from aligncap_core.utils import (
    atomic_write,
    fingerprint,
    progress,
    read_jsonl,
    sha256_file,
    write_jsonl,
)

log = logging.getLogger(__name__)
MANIFEST = "manifest.jsonl"
_SR = 24000  # EnCodec's sample rate: clips are read (and their lengths counted) at it
MAX_CALIBRATION_CLIPS = 800  # ~30 min of speech: far more frames than k-means needs (max_frames)


def _audio_path(data_dir: Path, row: dict, line: int) -> Path:
    audio = row.get("audio")
    if not audio:
        raise DataError(f"{row.get('id', '?')}: no 'audio' (manifest line {line})")
    if str(audio).startswith("s3://"):
        raise DataError(f"{row.get('id')}: s3 audio must be prepared locally first (aligncap data prepare)")
    p = Path(audio) if os.path.isabs(audio) else data_dir / audio
    if not p.is_file():
        raise DataError(f"{row.get('id')}: audio file not found: {audio} (manifest line {line})")
    return p


def _n_samples(path: Path, sample_rate: int) -> int:
    import soundfile as sf

    info = sf.info(str(path))
    return int(round(info.frames * sample_rate / info.samplerate))


def shard_index(codes_dir: Path) -> dict[str, Path]:
    """key -> shard path for every finished shard (temporary files of a killed run are ignored)."""
    index: dict[str, Path] = {}
    for shard in sorted(codes_dir.glob("shard-*.npz")):
        try:
            with np.load(shard) as z:
                index.update(dict.fromkeys(z.files, shard))
        except Exception as e:  # an unreadable shard costs a re-encode, not the run
            log.warning("ignoring unreadable shard %s: %s", shard, e)
    return index


def _write_shard(codes_dir: Path, codes: dict[str, np.ndarray]) -> Path:
    n = len(list(codes_dir.glob("shard-*.npz")))
    # random suffix: two concurrent runs never overwrite each other's shard
    path = codes_dir / f"shard-{n:05d}-{uuid.uuid4().hex[:6]}.npz"
    with atomic_write(path, "wb") as f:
        np.savez(f, **codes)
    return path


def resolve_codec(
    codec: str,
    data_dir: Path,
    rows: list[dict],
    keys: list[str],
    lengths: list[int],
    paths: list[Path],
    *,
    n_q: int,
    calibrate_on_split: str,
    codec_dir: Path | None,
    seed: int,
    batch_size: int,
    show_progress: bool,
    num_threads: int | None = None,
) -> tuple[EncodecTokenizer, dict[str, np.ndarray]]:
    """"calibrated" -> DATA_DIR/codec (reused when its calibration fingerprint matches, else fitted);
    anything else -> a hub id or local save_pretrained dir. Also returns {key: codes} of clips
    already encoded as a by-product of calibration."""
    if codec != "calibrated":
        return EncodecTokenizer.from_pretrained(codec, n_q=n_q), {}
    cdir = codec_dir or data_dir / "codec"
    train = [i for i, r in enumerate(rows) if r.get("split") == calibrate_on_split]
    if len(train) > MAX_CALIBRATION_CLIPS:
        train = sorted(random.Random(seed).sample(train, MAX_CALIBRATION_CLIPS))
    calib_fp = fingerprint(sorted(keys[i] for i in train), n_q, seed, CALIBRATION_VERSION)
    saved = json.loads((cdir / CODEC_JSON).read_text()) if (cdir / CODEC_JSON).exists() else None
    if saved and (saved.get("calibration", {}).get("data_fingerprint") == calib_fp or not train):
        if not train:
            log.warning("no %r rows: reusing the calibrated codec at %s as is", calibrate_on_split, cdir)
        return EncodecTokenizer.from_pretrained(cdir, n_q=n_q), {}
    if saved and codec_dir is not None and cdir.resolve() != (data_dir / "codec").resolve():
        # An explicit folder holding a codec fitted on other audio: refitting would overwrite it,
        # and the codes and checkpoints made with it elsewhere would then silently disagree with
        # the codec saved beside them.
        raise DataError(
            f"{cdir} holds a codec calibrated on other audio (calibration "
            f"{saved.get('calibration', {}).get('data_fingerprint')!r}, fingerprint "
            f"{saved.get('fingerprint')!r}; this data's {calibrate_on_split} split is {calib_fp!r}). "
            f"Encode with it as it is: --codec {cdir}; or calibrate a new one into an empty "
            "--codec-dir (or the default DATA_DIR/codec)")
    if not train:
        raise DataError(
            f"{data_dir}: no rows with split={calibrate_on_split!r} to calibrate the codec on and no "
            f"calibrated codec at {cdir}; pass --codec PATH of a saved codec"
        )
    with progress(disable=not show_progress) as bar:
        task = bar.add_task("calibrate codec (encoder latents)", total=len(train))
        tok, latents = calibrate_encodec(
            lambda j: read_audio(paths[train[j]], _SR),
            [lengths[i] for i in train],
            n_q=n_q,
            seed=seed,
            data_fingerprint=calib_fp,
            batch_size=batch_size,
            num_threads=num_threads,
            on_batch=lambda k: bar.update(task, advance=k),
            return_latents=True,
        )
    tok.save(cdir)
    log.info("calibrated codec saved to %s (fingerprint %s)", cdir, tok.fingerprint)
    # the calibration clips' latents are already computed: quantize them rather than re-encode
    with torch_threads(1):  # the same single-threaded VQ as `encode`, so the same codes
        codes = {keys[i]: tok.quantize(z[None])[:, 0].numpy().astype(np.int16) for i, z in zip(train, latents, strict=True)}
    return tok, codes


def tokenize_dataset(
    data_dir: str | os.PathLike,
    *,
    codec: str = "calibrated",
    n_q: int = 2,
    batch_size: int = 1,
    calibrate_on_split: str = "train",
    codec_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    shard_size: int = 256,
    flush_s: float = 60.0,
    seed: int = 0,
    num_threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every clip of DATA_DIR/manifest.jsonl into RVQ codes, cached and resumable.

    codec: "calibrated" (fit on the `calibrate_on_split` rows, saved at `codec_dir` or
    DATA_DIR/codec, reused while the training audio is unchanged), a hub id, or a local path.
    n_q: codebooks (2 = 1.5 kbps: 150 tokens/s, the most a small LLM's context affords).
    batch_size: clips per encoder call. On CPU 1 is fastest (the 24 kHz conv activations of a
    big batch fall out of cache: 26x / 19x / 7x real time at 1 / 4 / 16 on 2 cores); raise it on
    a GPU. Codes do not depend on it.
    num_threads: clips encoded in parallel, each op on one intra-op thread (None: the usable
    CPUs); see `codec.tokenizer` for why. Codes do not depend on it.
    shard_size / flush_s: a shard is written atomically every shard_size clips or flush_s seconds.
    Returns {n, encoded, cached, seconds, audio_seconds, x_realtime, codec, n_q, codes_dir}.
    """
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    manifest = data_dir / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{manifest} not found: run `aligncap data prepare` (or synth) first")
    if n_q < 1:
        raise ConfigError(f"--n-q must be >= 1, got {n_q}")
    rows = read_jsonl(manifest)
    paths = [_audio_path(data_dir, r, i + 1) for i, r in enumerate(rows)]
    keys = [r.get("audio_sha256") or sha256_file(p) for r, p in zip(rows, paths, strict=True)]
    lengths = [_n_samples(p, _SR) for p in paths]

    tok, precomputed = resolve_codec(
        codec, data_dir, rows, keys, lengths, paths, n_q=n_q, calibrate_on_split=calibrate_on_split,
        codec_dir=Path(codec_dir) if codec_dir else None, seed=seed, batch_size=batch_size,
        show_progress=progress, num_threads=num_threads,
    )
    codes_dir = _codes_dir(tok, Path(cache_dir or data_dir / "codes"))
    index = shard_index(codes_dir)
    todo, precomputed = _to_encode(keys, index, precomputed, codes_dir)
    cached = len(rows) - sum(1 for k in keys if k in todo)
    todo_idx = sorted((i for k, i in todo.items() if k not in precomputed), key=lambda i: -lengths[i])  # little padding
    audio_s = sum(lengths[i] for i in todo_idx) / _SR
    enc_s = _encode_into_shards(tok, todo_idx, paths, keys, lengths, codes_dir, index,
                                batch_size=batch_size, num_threads=num_threads,
                                shard_size=shard_size, flush_s=flush_s, show_progress=progress)
    _point_rows_at_codes(data_dir, rows, keys, index, tok.fingerprint)
    write_jsonl(manifest, rows)
    return {
        "n": len(rows),
        "encoded": len(todo),  # unique audio encoded in this run, calibration clips included
        "encoded_during_calibration": len(precomputed),
        "cached": cached,
        "seconds": round(time.perf_counter() - t0, 3),
        "encode_seconds": round(enc_s, 3),
        "audio_seconds": round(audio_s, 3),
        "x_realtime": round(audio_s / enc_s, 2) if todo_idx and enc_s > 0 else None,
        "codec": tok.fingerprint,
        "n_q": tok.n_q,
        "codes_dir": str(codes_dir),
    }


def _codes_dir(tok: EncodecTokenizer, cache_root: Path) -> Path:
    """CACHE_ROOT/<codec fingerprint>, created with its codec.json on first use."""
    fp = tok.fingerprint
    codes_dir = cache_root / fp
    codes_dir.mkdir(parents=True, exist_ok=True)
    if not (codes_dir / CODEC_JSON).exists():
        with atomic_write(codes_dir / CODEC_JSON) as f:
            json.dump({**tok.meta, "fingerprint": fp}, f, indent=2, sort_keys=True)
    return codes_dir


def _to_encode(keys: list[str], index: dict[str, Path], precomputed: dict[str, np.ndarray],
               codes_dir: Path) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """({key: first row index} of the audio with no codes in `index` (duplicate audio is
    encoded once), the precomputed codes among them). Those precomputed codes (the calibration
    clips') are written to a shard here and added to `index`."""
    todo: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in index and k not in todo:
            todo[k] = i
    if precomputed := {k: c for k, c in precomputed.items() if k in todo}:
        index.update(dict.fromkeys(precomputed, _write_shard(codes_dir, precomputed)))
    return todo, precomputed


def _encode_into_shards(tok: EncodecTokenizer, todo_idx: list[int], paths: list[Path],
                        keys: list[str], lengths: list[int], codes_dir: Path,
                        index: dict[str, Path], *, batch_size: int, num_threads: int | None,
                        shard_size: int, flush_s: float, show_progress: bool) -> float:
    """Encode the rows `todo_idx` (in parallel, `num_threads`) into shards of `codes_dir`,
    adding each key's shard to `index`; seconds spent."""
    t_enc, done_s, pending = time.perf_counter(), 0.0, {}
    t_flush = t_enc
    with progress_bar(show_progress) as bar:
        task = bar.add_task("encode", total=len(todo_idx))
        batches = [todo_idx[s : s + batch_size] for s in range(0, len(todo_idx), batch_size)]

        def encode(batch: list[int]) -> list[np.ndarray]:  # runs on a worker thread
            return tok.encode([read_audio(paths[i], _SR) for i in batch], batch_size=batch_size, num_threads=1)

        n_done = 0
        for batch, codes in zip(batches, parallel_map(encode, batches, num_threads), strict=True):
            n_done += len(batch)
            pending.update({keys[i]: c for i, c in zip(batch, codes, strict=True)})
            # flush by count, and by time so a kill -9 on a slow machine loses at most ~a minute
            if len(pending) >= shard_size or (pending and time.perf_counter() - t_flush > flush_s):
                shard = _write_shard(codes_dir, pending)
                index.update(dict.fromkeys(pending, shard))
                pending, t_flush = {}, time.perf_counter()
            done_s += sum(lengths[i] for i in batch) / _SR
            dt = max(time.perf_counter() - t_enc, 1e-9)
            bar.update(task, advance=len(batch), description=f"encode {n_done / dt:.1f} clips/s {done_s / dt:.0f}x rt")
        if pending:
            shard = _write_shard(codes_dir, pending)
            index.update(dict.fromkeys(pending, shard))
    return time.perf_counter() - t_enc


def _point_rows_at_codes(data_dir: Path, rows: list[dict], keys: list[str],
                         index: dict[str, Path], fp: str) -> None:
    """Set each row's `codes` (codec fingerprint, shard path relative to DATA_DIR when inside
    it, key) and `n_frames` (read back from the shard: exact, also for cached clips)."""
    for r, k in zip(rows, keys, strict=True):
        shard = index[k]
        rel = os.path.relpath(shard, data_dir) if _inside(shard, data_dir) else str(shard.resolve())
        r["codes"] = {"codec": fp, "shard": rel, "key": k}
        r["n_frames"] = int(load_codes(data_dir, r).shape[1])  # exact, also for cached clips


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def progress_bar(enabled: bool):
    return progress(disable=not enabled)


@functools.lru_cache(maxsize=8)
def _load_shard(path: str, mtime: float) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_codes(data_dir: str | os.PathLike, row: dict) -> np.ndarray:
    """Codes of a tokenized manifest row -> int64 `(n_q, n_frames)` at 75 frames/s."""
    loc = row.get("codes")
    if not loc:
        raise DataError(f"{row.get('id')}: row has no codes; run `aligncap data tokenize` first")
    p = Path(loc["shard"])
    p = p if p.is_absolute() else Path(data_dir) / p
    if not p.is_file():
        raise DataError(f"{row.get('id')}: codes shard missing: {p}; re-run `aligncap data tokenize`")
    shard = _load_shard(str(p), p.stat().st_mtime)
    if loc["key"] not in shard:
        raise DataError(f"{row.get('id')}: key {loc['key'][:12]} not in {p}; re-run `aligncap data tokenize`")
    return shard[loc["key"]].astype(np.int64)
