"""Cache keys and result storage shared by every aligncap task.

A stage is skipped when its *inputs* are unchanged: the key of a task run is a hash of the stage
config (as JSON) and content fingerprints of its inputs: the prepared data's `fingerprint.json`,
the manifest's sha256, a checkpoint's `meta.json` and file sizes. Never a hash of Python objects,
so the key is the same in every process and on every worker.

Inputs that are artifacts of the store (`aligncap_core.store`: prepared data, checkpoints on
`s3://`) are fingerprinted by their manifest's content hash, read without downloading them, so a
key is the same on every worker. Outputs go to the store under their run key, so a key names the
store root (`store_key`) rather than a worker's folder.

A key is computed before the stage runs, so it cannot see the stage's output; the flows check
that a cached result's output still exists (is committed in the store) and re-run the stage when
it is gone (`flows.common.run_stage`).

Results are persisted (small: URIs and metric dicts) to Prefect's result storage:
`PREFECT_RESULTS_LOCAL_STORAGE_PATH` (a local folder, the default), a storage block named by
`PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK` (S3: `s3-bucket/aligncap-results`, saved by
`python -m tasks.storage`), or `ALIGNCAP_RESULTS_URI` (a shared folder, or a saved block slug;
see `result_storage`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aligncap_core.train.identity import checkpoint_fingerprint  # noqa: F401  (re-exported)
from aligncap_core.utils import sha256_file, stable_json

# Bump to invalidate every cached stage result at once (a task's return shape changed).
CACHE_VERSION = "1"
MANIFEST = "manifest.jsonl"

KeyInputs = Callable[[Mapping[str, Any]], Sequence[Any] | None]


def _is_remote(uri: str) -> bool:
    return "://" in uri


def path_key(uri: str | os.PathLike | None) -> str | None:
    """A location as it goes into a key: absolute for local paths (two runs in different working
    directories must not share `runs/demo`), unchanged for remote URIs."""
    if uri is None:
        return None
    uri = str(uri)
    return uri if _is_remote(uri) else str(Path(uri).resolve())


def store_key(root: str | None, out_dir: str | os.PathLike) -> str:
    """Where a task's outputs are published, as it goes into a key (see `ArtifactStore.open`)."""
    from aligncap_core.store import ArtifactStore

    return ArtifactStore.open(root, out_dir).root


def file_sha(path: str | os.PathLike) -> str | None:
    """sha256 of a local file, None when it does not exist (or is remote: never cached)."""
    p = Path(path)
    if _is_remote(str(path)) or not p.is_file():
        return None
    return sha256_file(p)


def manifest_sha(data: str | os.PathLike) -> str | None:
    """sha256 of a manifest: `data` is the manifest file or a folder holding manifest.jsonl.

    A Hugging Face `save_to_disk` folder (no manifest) is fingerprinted by its JSON metadata,
    which carries the datasets library's own content fingerprint. A remote data dir published to
    the store: its content hash; any other remote location: None (not cached).
    """
    p = Path(data)
    if _is_remote(str(data)):
        from aligncap_core.store import artifact_fingerprint

        return artifact_fingerprint(str(data))
    if p.is_file():
        return sha256_file(p)
    if (p / MANIFEST).is_file():
        return sha256_file(p / MANIFEST)
    meta = sorted(p.rglob("*.json")) if p.is_dir() else []
    if not meta:
        return None
    h = hashlib.sha256()
    for m in meta:
        h.update(str(m.relative_to(p)).encode())
        h.update(m.read_bytes())
    return h.hexdigest()


def prepared_fingerprint(data_dir: str | os.PathLike) -> str | None:
    """The content fingerprint `prepare_dataset` wrote into DATA_DIR/fingerprint.json."""
    path = Path(data_dir) / "fingerprint.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("fingerprint")


def first_row(data_dir: str | os.PathLike) -> dict | None:
    """The manifest's first row (enough to see whether clues / codes were added), or None."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return None
    with path.open() as f:
        line = f.readline().strip()
    return json.loads(line) if line else None


def make_key_fn(stage: str, inputs: KeyInputs) -> Callable[[Any, dict[str, Any]], str | None]:
    """A Prefect `cache_key_fn` for `stage`.

    `inputs(parameters)` returns the list of things the result depends on (config dicts, paths,
    fingerprints), or None when the stage must run (an input is not fingerprintable, e.g. an
    `s3://` source). Any None *inside* the list also disables caching: a missing fingerprint
    must never match another missing fingerprint (so optional settings go inside a dict).
    """
    def key_fn(context: Any, parameters: dict[str, Any]) -> str | None:
        parts = inputs(parameters)
        if parts is None or any(p is None for p in parts):
            return None
        blob = stable_json([CACHE_VERSION, stage, *parts])
        return f"aligncap-{stage}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"

    key_fn.__name__ = f"{stage}_cache_key"
    return key_fn


def result_storage() -> str | Path | None:
    """Task result storage from `ALIGNCAP_RESULTS_URI`, or None for Prefect's settings.

    A path (`/shared/prefect-results`, `./results`) is a local or mounted folder; `TYPE/NAME`
    without a leading `/` or `.` is a saved Prefect storage block (`s3-bucket/results`, with
    prefect-aws on every worker). Prefect only accepts saved blocks as task storage, so an
    `s3://` URL is refused with the way to make such a block (`tasks.storage`).
    """
    uri = os.environ.get("ALIGNCAP_RESULTS_URI")
    if not uri:
        return None
    if "://" in uri:
        from aligncap_core.errors import ConfigError

        raise ConfigError(f"ALIGNCAP_RESULTS_URI={uri}: Prefect stores results only in a saved block. For "
                          "S3 run `aligncap results-storage --bucket BUCKET` once, then set "
                          "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/aligncap-results instead")
    if uri.startswith(("/", ".", "~")):
        return Path(uri).expanduser().resolve()
    return uri


def output_exists(path: str | os.PathLike | None) -> bool:
    """True when an output is there: a local path exists, a remote artifact is committed."""
    from aligncap_core.store import is_committed

    return path is not None and is_committed(path)
