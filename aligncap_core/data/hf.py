"""Read a Hugging Face dataset saved with `save_to_disk` (Dataset or DatasetDict) as manifest rows.

Audio is never decoded through `datasets`: its Audio decoding/encoding needs `torchcodec`,
which is not installed here. An `Audio` column is cast to `Audio(decode=False)` and read as
the stored file bytes (or path); a plain struct column `{"array": [...], "sampling_rate": int}`
is taken as samples; a string is a path (relative paths are relative to the dataset folder);
raw bytes are an encoded file. Everything then goes through `aligncap_core.data.audio`.

Columns: `audio_column` (required), `caption_column` (string or list of strings; required),
and optional `id`, `split`, `transcript`, `attributes` columns (names configurable through
`columns={"id": ..., "split": ..., "transcript": ..., "attributes": ...}`). Other columns with
JSON-able values pass through into the row.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from aligncap_core.errors import DataError

# Common split names in hub datasets -> our SPLITS.
SPLIT_ALIASES = {"validation": "valid", "dev": "valid", "val": "valid"}
OPTIONAL_COLUMNS = ("id", "split", "transcript", "attributes")


def is_hf_dataset_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in ("dataset_dict.json", "state.json"))


def _load(path: Path):
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets raises many types for a bad folder
        raise DataError(f"{path}: cannot load the Hugging Face dataset ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); save it with save_to_disk") from e


def _select_splits(ds, path: Path, split: str | None) -> list[tuple[str | None, Any]]:
    """[(split name or None, Dataset)] to read."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            return list(ds.items())
        if split in ds:
            return [(split, ds[split])]
        raise DataError(f"{path}: split '{split}' is not in this dataset (it has: "
                        f"{', '.join(ds.keys())}); pass --split with one of them, or none for all")
    return [(split, ds)]


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool | list | dict)


def audio_payload(value: Any, base: Path) -> tuple[str | None, Any]:
    """Map one audio cell to `(source path or None, payload)`.

    payload is `bytes` (an encoded file), a `str` path, or `(samples float32, rate Hz)`.
    Returns `(None, None)` when the cell holds no audio.
    """
    if isinstance(value, bytes | bytearray):
        return None, bytes(value)
    if isinstance(value, str):
        p = value if os.path.isabs(value) or value.startswith("s3://") else str(base / value)
        return value, p
    if isinstance(value, dict):
        if value.get("array") is not None and value.get("sampling_rate"):
            x = np.asarray(value["array"], dtype=np.float32)
            if x.ndim == 2 and x.shape[0] < x.shape[1]:  # (channels, frames) -> (frames, channels)
                x = x.T
            return value.get("path"), (x, int(value["sampling_rate"]))
        if value.get("bytes"):
            return value.get("path"), bytes(value["bytes"])
        if value.get("path"):
            return audio_payload(value["path"], base)
    return None, None


def _fetch_audio(d, index: int, column: str, base: Path) -> tuple[str | None, Any]:
    """Read one audio cell on demand (from a worker thread), see `audio_payload`."""
    return audio_payload(d[index][column], base)


def iter_hf_rows(path: str | os.PathLike, *, audio_column: str = "audio", caption_column: str = "caption",
                 split: str | None = None, columns: dict[str, str] | None = None
                 ) -> Iterator[tuple[int, dict, Callable[[], tuple[str | None, Any]]]]:
    """Yield `(row_number, raw_row, fetch_audio)` for every row, 1-based across splits.

    `raw_row` is a manifest-shaped dict (`id`, `audio` = `<folder>::<split>[<index>]`,
    `captions`, `split`, optional fields, pass-through columns) still to be validated.
    `fetch_audio()` reads the audio cell lazily, so a large dataset is never held in memory,
    and returns `audio_payload`'s `(path or None, payload or None)`.
    Raises DataError for a folder that is not a dataset, or a missing audio/caption column.
    """
    import datasets

    base = Path(path)
    cols = {k: k for k in OPTIONAL_COLUMNS} | (columns or {})
    used = {audio_column, caption_column, *cols.values()}
    n = 0
    for split_name, d in _select_splits(_load(base), base, split):
        names = list(d.column_names)
        for need, what in ((audio_column, "--audio-column"), (caption_column, "--caption-column")):
            if need not in names:
                raise DataError(f"{base}: column '{need}' not found (columns: {', '.join(names)}); "
                                f"pass {what}")
        if isinstance(d.features[audio_column], datasets.Audio):
            d = d.cast_column(audio_column, datasets.Audio(decode=False))
        audio_only = d.select_columns([audio_column])
        row_split = SPLIT_ALIASES.get(split_name, split_name) if split_name else None
        tag = f"{base.name}-{split_name}" if split_name else base.name
        for i, rec in enumerate(d.remove_columns([audio_column])):
            n += 1
            rid = rec.get(cols["id"])
            row: dict[str, Any] = {
                "id": str(rid) if isinstance(rid, int) else (rid if rid is not None else f"{tag}-{i:06d}"),
                "audio": f"{base}::{split_name or 'data'}[{i}]",
            }
            if rec.get(caption_column) is not None:
                row["captions"] = rec[caption_column]
            for field in ("transcript", "attributes", "split"):
                if rec.get(cols[field]) is not None:
                    row[field] = rec[cols[field]]
            if "split" not in row and row_split:
                row["split"] = row_split
            for k, v in rec.items():
                if k not in used and k not in row and _jsonable(v):
                    row[k] = v
            yield n, row, functools.partial(_fetch_audio, audio_only, i, audio_column, base)
