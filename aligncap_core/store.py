"""The artifact store: stage outputs published under keys, exchanged as URIs, materialized locally.

    store = ArtifactStore.open(None, "runs/pipeline")   # $ALIGNCAP_STORE, else the out_dir itself
    rel = f"teacher/{ident.key}"                        # the key: train.identity.RunIdentity
    with store.lock(rel):
        if store.committed(rel) is None:
            ...train into store.local(rel)...
            uri = store.publish(f"{rel}/step-00000400")
    path = store.materialize(uri)                       # on any worker: a local folder

Layout. A store root is a local folder or `s3://bucket/prefix`. An artifact is the folder
ROOT/REL (REL = `<stage>/<key>[/...]`), committed by its manifest `_artifact.json`, written last:
every file's size and sha256, a content hash over them, and an optional small `result` (what the
stage returned). No manifest, no artifact: a reader never takes half an upload for a result. A
committed artifact is never rewritten: a second publisher of the same REL keeps the first commit
(the key says both are the same output).

Work folder. Stages build their outputs in a local folder laid out like the store (WORK/REL), and
`publish(REL)` uploads WORK/REL to ROOT/REL. When ROOT is WORK (the default: a run's out_dir is
its own store, as in `make demo`) nothing is copied: publishing writes the manifest only.

Materializing. `materialize(uri)` returns a local folder with an artifact's files: a local URI as
it is; an S3 one downloaded into CACHE/artifacts/<content hash> (`ALIGNCAP_CACHE`, default
~/.cache/aligncap), every file checked against the manifest before a rename commits the folder,
and reused by every later call for the same content. An S3 prefix without a manifest (a folder
uploaded by hand) is downloaded as it is, keyed by its listing (keys, sizes, ETags).

Every S3 call goes through `aligncap_core.data.storage` (boto3; endpoint and credentials from the
usual AWS_* environment), the one S3 code path of the project.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aligncap_core.data import storage
from aligncap_core.data.storage import StorageError
from aligncap_core.utils import atomic_write, fsync_dir, fsync_tree, sha256_file, stable_json

log = logging.getLogger(__name__)

MANIFEST = "_artifact.json"
LOCKS = ".locks"
FORMAT = 1


ENV_CACHE = "ALIGNCAP_CACHE"  # the one cache folder of aligncap


def cache_root() -> Path:
    """Where materialized artifacts are kept: $ALIGNCAP_CACHE, else ~/.cache/aligncap."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "aligncap")


def is_remote(uri: str | os.PathLike) -> bool:
    return "://" in str(uri)


def join(root: str, rel: str) -> str:
    """ROOT/REL for a local folder or an s3:// prefix."""
    rel = rel.strip("/")
    if is_remote(root):
        return posixpath.join(root.rstrip("/"), rel) if rel else root.rstrip("/")
    return str(Path(root) / rel) if rel else str(root)


def read_manifest(uri: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of the artifact at `uri` (None: not a committed artifact)."""
    found = storage.read_tagged(join(str(uri), MANIFEST))
    if found is None:
        return None
    try:
        return json.loads(found[0])
    except ValueError as e:
        raise StorageError(f"{uri}/{MANIFEST}: unreadable manifest ({e}); delete that artifact "
                           "and run its stage again", uri=str(uri)) from e


def is_committed(uri: str | os.PathLike) -> bool:
    """True when `uri` is a committed artifact (or, for a plain local path, exists at all:
    outputs written without a store are files and folders)."""
    if not is_remote(uri) and not (Path(uri) / MANIFEST).is_file():
        return Path(uri).exists()
    return read_manifest(uri) is not None


def artifact_fingerprint(uri: str | os.PathLike) -> str | None:
    """The content hash of a committed artifact (16 hex chars), None when `uri` is none."""
    m = read_manifest(uri)
    return m["content"][:16] if m else None


def _skipped(rel: str, skip: tuple[str, ...]) -> bool:
    parts = rel.split("/")
    # dot entries: locks, temporary saves (.tmp-*), work folders of an unfinished step
    return (any(p.startswith(".") for p in parts) or rel == MANIFEST
            or any(rel == s or rel.startswith(s.rstrip("/") + "/") for s in skip))


def scan(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """{relative posix path: {size, sha256}} of the files an artifact of `folder` holds."""
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not _skipped(rel, skip):
            files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return files


def content_hash(files: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256(stable_json(sorted((k, v["sha256"]) for k, v in files.items())).encode()).hexdigest()


def _producer() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "flow_run": os.environ.get("PREFECT__FLOW_RUN_ID")}


def materialize(uri: str | os.PathLike) -> Path:
    """A local folder with the files of the artifact (or plain folder) at `uri`; see the module
    docstring. Raises StorageError naming the URI (and the file) when it cannot."""
    uri = str(uri)
    if not is_remote(uri):
        if not Path(uri).exists():
            raise StorageError(f"{uri}: not found (a local path: was it written on another machine? "
                               "Stages on other workers need a shared store: set ALIGNCAP_STORE)",
                               uri=uri, kind="not_found")
        return Path(uri)
    if not storage.is_s3(uri):
        raise StorageError(f"{uri}: unsupported scheme; use a local path or s3://bucket/prefix", uri=uri)
    m = read_manifest(uri)
    if m is None:
        return _materialize_prefix(uri)
    dest = cache_root() / "artifacts" / m["content"][:32]
    if (dest / MANIFEST).is_file():
        return dest
    size = sum(e["size"] for e in m["files"].values())
    log.info("materializing %s (%d files, %.1f MB) into %s", uri, len(m["files"]), size / 1e6, dest)
    _fill(dest, {rel: join(uri, rel) for rel in m["files"]}, m["files"], m)
    return dest


def _fill(dest: Path, sources: dict[str, str], expected: dict[str, dict] | None,
          manifest: dict | None) -> None:
    """Download `sources` ({rel: uri}) into a temporary sibling of `dest`, check them against
    `expected`, write `manifest`, and rename into place (a concurrent identical fill wins ties)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    try:
        for rel, src in sources.items():
            target = tmp / rel
            storage.download_file(src, target)
            want = (expected or {}).get(rel)
            if want and (target.stat().st_size != want["size"] or sha256_file(target) != want["sha256"]):
                raise StorageError(f"{src}: content does not match its manifest (size "
                                   f"{target.stat().st_size} vs {want['size']}); the artifact is "
                                   "damaged: delete it and run its stage again", uri=src)
        if manifest is not None:
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        fsync_tree(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
            # another process materialized the same content meanwhile: keep theirs
        fsync_dir(dest.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _materialize_prefix(uri: str) -> Path:
    bucket, prefix = storage.split_s3(uri)
    prefix = prefix.strip("/")
    if not prefix:
        raise StorageError(f"{uri}: expected s3://bucket/prefix", uri=uri)
    try:
        pages = storage.s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
        objs = [(o["Key"], o["Size"], o.get("ETag", "")) for page in pages for o in page.get("Contents", [])]
    except Exception as e:  # noqa: BLE001
        raise storage._translate(e, uri, "list", None) from e
    if not objs:
        raise StorageError(f"{uri}: no objects under this prefix (and no {MANIFEST})", uri=uri,
                           kind="not_found")
    key = hashlib.sha256(stable_json([uri, sorted(objs)]).encode()).hexdigest()[:32]
    dest = cache_root() / "prefixes" / key
    if not dest.is_dir():
        _fill(dest, {k[len(prefix) + 1:]: f"s3://{bucket}/{k}" for k, _, _ in objs}, None, None)
    return dest


@dataclass(frozen=True)
class ArtifactStore:
    """A store root (local folder or s3:// prefix) and this process's work folder (see module)."""

    root: str
    work: Path

    @classmethod
    def open(cls, root: str | os.PathLike | None, work: str | os.PathLike) -> ArtifactStore:
        """`root`, else $ALIGNCAP_STORE, else `work` itself (a local run is its own store)."""
        root = str(root or os.environ.get("ALIGNCAP_STORE") or work)
        if not is_remote(root):
            root = str(Path(root).expanduser().resolve())
        elif not storage.is_s3(root):
            from aligncap_core.errors import ConfigError

            raise ConfigError(f"store {root}: use a local folder or s3://bucket/prefix")
        return cls(root.rstrip("/") if is_remote(root) else root, Path(work).expanduser().resolve())

    @property
    def in_place(self) -> bool:
        """The work folder is the store: publishing writes manifests only."""
        return not is_remote(self.root) and Path(self.root) == self.work

    def uri(self, rel: str) -> str:
        return join(self.root, rel)

    def local(self, rel: str) -> Path:
        return self.work / rel.strip("/")

    def rel_of(self, path: str | os.PathLike) -> str:
        """REL of a path inside the work folder (ValueError outside it)."""
        return Path(path).resolve().relative_to(self.work).as_posix()

    def committed(self, rel: str) -> dict[str, Any] | None:
        """The manifest of ROOT/REL, None when nothing is committed there."""
        return read_manifest(self.uri(rel))

    def lock(self, rel: str, what: str | None = None, **kwargs: Any):
        """The lock of output REL (see `aligncap_core.locks.hold`), kept under ROOT/.locks."""
        from aligncap_core.locks import hold

        return hold(join(self.root, f"{LOCKS}/{rel.strip('/')}.lock"), what or f"{rel} in {self.root}",
                    **kwargs)

    def publish(self, rel: str, *, skip: tuple[str, ...] = (), result: dict[str, Any] | None = None) -> str:
        """Commit WORK/REL as the artifact ROOT/REL (files under `skip`, dot entries and the
        manifest itself excluded); returns its URI. Call it under the output's lock."""
        src = self.local(rel)
        if not src.is_dir():
            raise StorageError(f"{src}: nothing to publish (no such folder)", uri=str(src), kind="not_found")
        files = scan(src, skip)
        manifest = {"format": FORMAT, "content": content_hash(files), "files": files,
                    "result": result, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "producer": _producer()}
        dest = self.uri(rel)
        existing = self.committed(rel)
        if existing is not None:
            if existing["content"] == manifest["content"]:
                return dest
            if not self.in_place:
                log.warning("%s is already committed (by %s) with other content; keeping that one "
                            "(same key, same stage output), not %s", dest, existing.get("producer"), src)
                return dest
            # in place, the files *are* the store and they changed (a stage re-ran): say so
            log.warning("%s: re-published with new content (it was committed as %s)", dest,
                        existing["content"][:16])
            with atomic_write(src / MANIFEST) as f:
                json.dump(manifest, f, indent=1)
            return dest
        data = json.dumps(manifest, indent=1).encode()
        if not self.in_place:
            total = sum(e["size"] for e in files.values())
            log.info("publishing %s (%d files, %.1f MB) to %s", src, len(files), total / 1e6, dest)
            for f in files:
                storage.upload_file(src / f, join(dest, f))
        if not storage.create_exclusive(join(dest, MANIFEST), data):
            log.warning("%s was committed by another producer meanwhile; keeping theirs", dest)
        elif not self.in_place:
            with atomic_write(src / MANIFEST, "wb") as f:  # this work copy is that artifact
                f.write(data)
        return dest

    def materialize(self, uri: str | os.PathLike) -> Path:
        """`materialize(uri)`, but an artifact this worker published is used from its work
        folder (when its content is what the store holds) instead of being downloaded again."""
        uri = str(uri)
        if is_remote(uri) and uri.startswith(self.root + "/"):
            local = self.local(uri[len(self.root) + 1:])
            try:
                mine = json.loads((local / MANIFEST).read_text())["content"]
            except (OSError, ValueError, KeyError):
                mine = None
            remote = read_manifest(uri) if mine else None
            if remote is not None and remote["content"] == mine:
                return local
        return materialize(uri)
