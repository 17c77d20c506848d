"""Read and write bytes at a local path or an `s3://bucket/key` URI.

S3 settings come from an explicit `config` dict when given, else from the environment:
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (any S3-compatible server: MinIO, moto, Ceph),
`AWS_REGION` / `AWS_DEFAULT_REGION`, and boto3's usual credential chain (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, profiles, instance roles). Config keys:
`endpoint_url`, `region_name`, `aws_access_key_id`, `aws_secret_access_key`,
`aws_session_token`, `max_attempts`, `connect_timeout`, `read_timeout`.

Every failure is a `StorageError` that names the URI and says what to do; its `kind` tells the
caller whether it concerns one object (`not_found`, `no_bucket`, `access_denied`) or the whole
connection (`credentials`, `endpoint`, `other`). Only transient failures (throttling, 5xx,
dropped connections) are retried, by botocore's "standard" retry mode. Credentials are never
logged or put into messages.
"""

from __future__ import annotations

import os
import posixpath
import threading
from pathlib import Path
from typing import Any

from aligncap_core.errors import StorageError as _BaseStorageError
from aligncap_core.utils import atomic_write

S3_PREFIX = "s3://"

_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()


class StorageError(_BaseStorageError):
    """`aligncap_core.errors.StorageError` with a `kind` and the `uri` it concerns."""

    def __init__(self, message: str, *, uri: str = "", kind: str = "other") -> None:
        super().__init__(message)
        self.uri = uri
        self.kind = kind


def is_s3(uri: str | os.PathLike) -> bool:
    return isinstance(uri, str) and uri.startswith(S3_PREFIX)


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b.wav` -> (`bucket`, `a/b.wav`). Raises StorageError without a bucket."""
    rest = uri[len(S3_PREFIX):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: not a valid S3 URI (expected s3://bucket/key)", uri=uri, kind="other")
    return bucket, key


def parent_uri(uri: str | os.PathLike) -> str:
    """The folder holding a file: `s3://b/x/m.jsonl` -> `s3://b/x`, `/d/m.jsonl` -> `/d`."""
    if is_s3(uri):
        return posixpath.dirname(str(uri))
    return str(Path(uri).parent)


def resolve(base_dir: str | os.PathLike, ref: str) -> str:
    """Resolve a manifest's audio reference against the manifest's folder.

    `s3://` URIs and absolute local paths are returned as they are; a relative path is joined
    to `base_dir` (a local folder or an `s3://bucket/prefix`), `..` segments normalised.
    """
    if is_s3(ref) or os.path.isabs(ref):
        return ref
    if is_s3(base_dir):
        bucket, prefix = split_s3(str(base_dir))
        key = posixpath.normpath(posixpath.join(prefix, ref)).lstrip("/")
        return f"{S3_PREFIX}{bucket}/{key}"
    return str(Path(base_dir) / ref)


def _settings(config: dict | None) -> dict[str, Any]:
    c = dict(config or {})
    env = os.environ
    return {
        "endpoint_url": c.get("endpoint_url") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
        "region_name": c.get("region_name") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        "aws_access_key_id": c.get("aws_access_key_id"),
        "aws_secret_access_key": c.get("aws_secret_access_key"),
        "aws_session_token": c.get("aws_session_token"),
        # Env credentials are part of the cache key so a changed environment gets a new client.
        "_env_key": (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"), env.get("AWS_PROFILE")),
        "max_attempts": int(c.get("max_attempts", 4)),  # total tries incl. the first; transient errors only
        "connect_timeout": float(c.get("connect_timeout", 5)),
        "read_timeout": float(c.get("read_timeout", 60)),
    }


def s3_client(config: dict | None = None):
    """A cached, thread-safe boto3 S3 client for these settings (see module docstring)."""
    s = _settings(config)
    key = tuple(sorted((k, str(v)) for k, v in s.items()))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(
                # total_max_attempts counts the first try; botocore's `max_attempts` would count
                # retries only (one attempt more than configured)
                retries={"total_max_attempts": s["max_attempts"], "mode": "standard"},
                connect_timeout=s["connect_timeout"],
                read_timeout=s["read_timeout"],
            )
            kwargs = {k: s[k] for k in ("endpoint_url", "region_name", "aws_access_key_id",
                                         "aws_secret_access_key", "aws_session_token") if s[k]}
            client = boto3.session.Session().client("s3", config=cfg, **kwargs)
            _CLIENTS[key] = client
    return client


def _endpoint_hint(config: dict | None) -> str:
    ep = _settings(config)["endpoint_url"]
    return f"endpoint {ep}" if ep else "the default AWS endpoint (set AWS_ENDPOINT_URL for another)"


def _translate(exc: Exception, uri: str, action: str, config: dict | None) -> StorageError:
    """Turn a botocore exception into a StorageError with a message a person can act on."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )
    from botocore.exceptions import ConnectTimeoutError as _ConnectTimeout

    bucket = split_s3(uri)[0] if is_s3(uri) else ""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return StorageError(
            f"{uri}: no usable S3 credentials to {action}; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment",
            uri=uri, kind="credentials")
    if isinstance(exc, EndpointConnectionError | _ConnectTimeout | ConnectionClosedError | ReadTimeoutError):
        return StorageError(
            f"{uri}: cannot reach {_endpoint_hint(config)} to {action} ({type(exc).__name__}); "
            "check that the S3 server is running and AWS_ENDPOINT_URL is right",
            uri=uri, kind="endpoint")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return StorageError(f"{uri}: bucket '{bucket}' does not exist at {_endpoint_hint(config)}; "
                                "create it or fix the URI", uri=uri, kind="no_bucket")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return StorageError(f"{uri}: object not found; check the key (and the bucket '{bucket}')",
                                uri=uri, kind="not_found")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return StorageError(f"{uri}: S3 rejected the credentials ({code}) while trying to {action}; "
                                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY", uri=uri, kind="credentials")
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            return StorageError(f"{uri}: access denied while trying to {action}; the credentials lack "
                                "permission for this bucket or key", uri=uri, kind="access_denied")
        return StorageError(f"{uri}: S3 error {code or status} while trying to {action}: "
                            f"{err.get('Message', '')}".rstrip(": "), uri=uri, kind="other")
    return StorageError(f"{uri}: cannot {action}: {type(exc).__name__}: {exc}", uri=uri, kind="other")


def read_bytes(uri: str | os.PathLike, config: dict | None = None) -> bytes:
    """The whole content of a local file or S3 object. Missing -> StorageError(kind='not_found')."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            return s3_client(config).get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as e:  # noqa: BLE001 - translated below
            raise _translate(e, uri, "read", config) from e
    try:
        return Path(uri).read_bytes()
    except FileNotFoundError as e:
        raise StorageError(f"{uri}: file not found", uri=uri, kind="not_found") from e
    except IsADirectoryError as e:
        raise StorageError(f"{uri}: is a folder, expected a file", uri=uri, kind="other") from e
    except PermissionError as e:
        raise StorageError(f"{uri}: permission denied", uri=uri, kind="access_denied") from e


def write_bytes(uri: str | os.PathLike, data: bytes, config: dict | None = None) -> None:
    """Write `data` to a local file (atomically: temp + rename) or an S3 object."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client(config).put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as e:  # noqa: BLE001
            raise _translate(e, uri, "write", config) from e
        return
    try:
        with atomic_write(uri, "wb") as f:
            f.write(data)
    except OSError as e:
        raise StorageError(f"{uri}: cannot write: {e.strerror or e}", uri=uri, kind="other") from e


def exists(uri: str | os.PathLike, config: dict | None = None) -> bool:
    """True if the local file/folder or S3 object exists. A missing bucket is False too."""
    uri = str(uri)
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = split_s3(uri)
    try:
        s3_client(config).head_object(Bucket=bucket, Key=key)
        return True
    except Exception as e:  # noqa: BLE001
        err = _translate(e, uri, "check", config)
        if err.kind in ("not_found", "no_bucket"):
            return False
        raise err from e


def list_uris(prefix: str | os.PathLike, config: dict | None = None) -> list[str]:
    """All files under a local folder (recursive) or S3 keys under a prefix, sorted."""
    prefix = str(prefix)
    if not is_s3(prefix):
        root = Path(prefix)
        if not root.exists():
            raise StorageError(f"{prefix}: folder not found", uri=prefix, kind="not_found")
        return sorted(str(p) for p in root.rglob("*") if p.is_file())
    bucket, key = split_s3(prefix)
    out: list[str] = []
    try:
        for page in s3_client(config).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            out.extend(f"{S3_PREFIX}{bucket}/{o['Key']}" for o in page.get("Contents", []))
    except Exception as e:  # noqa: BLE001
        raise _translate(e, prefix, "list", config) from e
    return sorted(out)


# ---- whole files and conditional writes (the artifact store and its locks build on these) ------
def upload_file(local: str | os.PathLike, uri: str, config: dict | None = None) -> None:
    """Copy a local file to a local path (atomically, fsync'd) or an S3 object (multipart for
    large files, by boto3's transfer manager)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client(config).upload_file(str(local), bucket, key)
        except Exception as e:  # noqa: BLE001
            raise _translate(e, uri, "upload", config) from e
        return
    try:
        with atomic_write(uri, "wb") as f, open(local, "rb") as src:
            while block := src.read(1 << 20):
                f.write(block)
    except OSError as e:
        raise StorageError(f"{uri}: cannot write: {e.strerror or e}", uri=uri, kind="other") from e


def download_file(uri: str, local: str | os.PathLike, config: dict | None = None) -> None:
    """Copy a local file or an S3 object to the local path `local` (not atomic: callers write
    into a temporary folder and verify before they commit it)."""
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client(config).download_file(bucket, key, str(local))
        except Exception as e:  # noqa: BLE001
            raise _translate(e, uri, "download", config) from e
        return
    try:
        import shutil

        shutil.copyfile(uri, local)
    except FileNotFoundError as e:
        raise StorageError(f"{uri}: file not found", uri=uri, kind="not_found") from e


def _is_precondition_failure(e: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return False
    code = str(e.response.get("Error", {}).get("Code", ""))
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409") or status in (409, 412)


def create_exclusive(uri: str, data: bytes, config: dict | None = None) -> bool:
    """Create `uri` with `data` only if nothing is there yet; False when something is.

    Local: the content goes to a temporary file (fsync'd) that is hard-linked into place, so a
    reader never sees a half-written file and two creators cannot both succeed. S3: a PUT with
    `If-None-Match: *` (conditional writes; AWS S3 and moto honour it)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client(config).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except Exception as e:  # noqa: BLE001
            if _is_precondition_failure(e):
                return False
            raise _translate(e, uri, "create", config) from e
    import tempfile

    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def read_tagged(uri: str, config: dict | None = None) -> tuple[bytes, str] | None:
    """(content, tag) of a local file or S3 object, None when it does not exist. The tag (S3:
    the ETag; local: the content's sha256) names this exact content for `replace_if`/`delete_if`."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            r = s3_client(config).get_object(Bucket=bucket, Key=key)
            return r["Body"].read(), str(r["ETag"])
        except Exception as e:  # noqa: BLE001
            err = _translate(e, uri, "read", config)
            if err.kind == "not_found":
                return None
            raise err from e
    try:
        data = Path(uri).read_bytes()
    except FileNotFoundError:
        return None
    import hashlib

    return data, hashlib.sha256(data).hexdigest()


def replace_if(uri: str, data: bytes, tag: str, config: dict | None = None) -> bool:
    """Overwrite `uri` with `data` only while it still holds the content named by `tag`; False
    when it changed or vanished. (Local files: checked, then replaced atomically; the gap between
    the two is what a same-host lock can tolerate, S3 checks it server-side with If-Match.)"""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            s3_client(config).put_object(Bucket=bucket, Key=key, Body=data, IfMatch=tag)
            return True
        except Exception as e:  # noqa: BLE001
            if _is_precondition_failure(e) or getattr(_translate(e, uri, "x", config), "kind", "") == "not_found":
                return False
            raise _translate(e, uri, "replace", config) from e
    now = read_tagged(uri)
    if now is None or now[1] != tag:
        return False
    write_bytes(uri, data)
    return True


def delete_if(uri: str, tag: str | None = None, config: dict | None = None) -> bool:
    """Delete `uri` (only while it holds the content named by `tag`, when given); False when it
    was not there or had changed."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        kwargs = {"IfMatch": tag} if tag else {}
        try:
            s3_client(config).delete_object(Bucket=bucket, Key=key, **kwargs)
            return True
        except Exception as e:  # noqa: BLE001
            if _is_precondition_failure(e) or getattr(_translate(e, uri, "x", config), "kind", "") == "not_found":
                return False
            raise _translate(e, uri, "delete", config) from e
    if tag is not None:
        now = read_tagged(uri)
        if now is None or now[1] != tag:
            return False
    try:
        Path(uri).unlink()
        return True
    except FileNotFoundError:
        return False
