"""Run identity: a training run folder belongs to the settings and inputs that made it.

A run folder holds `run.json`: the stage, a key, and what the key was computed from (the
resolved config minus purely operational fields, the fingerprints of the inputs, and the
stage's code version). `claim_run_dir` is called before training:

- an empty folder (or one without checkpoints) is claimed: `run.json` is written;
- a folder whose `run.json` has the same key is resumed (same settings, same inputs);
- a folder made with other settings or inputs is **never** resumed: `RunMismatchError` names
  what differs and what to do (a new `--out`, or delete the folder). Without this check a
  changed learning rate would silently continue, or return unchanged, the old model.

Flows keep one folder per key (`keyed_run_dir`: OUT/teacher/<key>), so two runs with different
settings into the same `out_dir` train two models side by side, and the same settings twice
find (and resume or reuse) the same folder.

One run at a time: `locked_run_dir` holds the folder's lock (`aligncap_core.locks`) for the
whole run, so a second run into the same folder waits for the first (and then finds it
finished) instead of deleting its temporary checkpoints; after `ALIGNCAP_LOCK_WAIT_S` it fails
naming the holder. The same keys name every other stage output (prepared data, preference
rounds, evaluation reports): `STAGE_VERSIONS` has one entry per stage.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aligncap_core.errors import ConfigError
from aligncap_core.utils import atomic_write, fingerprint

RUN_FILE = "run.json"
KEY_CHARS = 16

# Bump a stage's version when a code change alters what the same config trains, so an old
# run folder is not resumed by new code.
STAGE_VERSIONS = {"teacher": 1, "student": 1, "data": 1, "improve": 1, "evaluate": 1}

# TrainConfig fields that change how a run is executed or logged, not the model it produces.
OPERATIONAL = frozenset({"num_threads", "log_every", "keep_checkpoints", "checkpoint_every",
                         "gradient_checkpointing", "fused_adamw"})


class RunMismatchError(ConfigError):
    """A run folder holds a run made with other settings or inputs."""


@dataclass(frozen=True)
class RunIdentity:
    """What makes a training run: stage, identity config and input fingerprints."""

    stage: str
    config: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return STAGE_VERSIONS.get(self.stage, 1)

    @property
    def key(self) -> str:
        return fingerprint(self.stage, self.version, self.config, self.inputs)[:KEY_CHARS]

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "key": self.key, "version": self.version,
                "config": self.config, "inputs": self.inputs}


def identity_config(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a `to_dict` of a stage config) without the operational `train.*` fields."""
    out = dict(config)
    if isinstance(out.get("train"), dict):
        out["train"] = {k: v for k, v in out["train"].items() if k not in OPERATIONAL}
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def describe_difference(old: dict[str, Any], new: RunIdentity, limit: int = 6) -> str:
    """`train.lr 0.001 -> 0.002; inputs.data 1a2b -> 3c4d` for the keys that differ."""
    a = _flatten({"config": old.get("config", {}), "inputs": old.get("inputs", {}),
                  "version": old.get("version")})
    b = _flatten({"config": new.config, "inputs": new.inputs, "version": new.version})
    diffs = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<unset>") != b.get(k, "<unset>"):
            name = k.removeprefix("config.")
            diffs.append(f"{name} {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}")
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more if diffs else "the stage code version"


def read_run_file(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunMismatchError(f"{path}: unreadable ({e}); delete {run_dir} or use a new --out") from e


def _has_outputs(run_dir: Path, prefixes: tuple[str, ...]) -> bool:
    return any(p.is_dir() and p.name.startswith(prefixes) for p in run_dir.iterdir())


@contextlib.contextmanager
def locked_run_dir(run_dir: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the lock of run folder `run_dir` (created if needed) for the block; see the module
    docstring. Reentrant within a process. Under `accelerate launch` only rank 0 takes it (for
    the whole group: the other ranks wait for rank 0 at its first barrier)."""
    from aligncap_core.locks import hold

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) != "0":
        yield run_dir
        return
    with hold(run_dir / ".lock", f"{what} run {run_dir}"):
        yield run_dir


def claim_run_dir(run_dir: str | os.PathLike, ident: RunIdentity,
                  outputs: tuple[str, ...] = ("step-",)) -> bool:
    """Make `run_dir` the folder of run `ident`; returns True when it already was (resume).

    Raises RunMismatchError when the folder holds outputs (sub-folders named with one of the
    `outputs` prefixes: checkpoints, rounds) of another run (other key, or no `run.json` at all:
    made by an older aligncap), naming what differs.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    old = read_run_file(run_dir)
    if old is not None and old.get("key") == ident.key:
        return True
    if old is not None:
        raise RunMismatchError(
            f"{run_dir} holds a {old.get('stage', '?')} run made with other settings or inputs "
            f"(its key {old.get('key')}, this run's {ident.key}: {describe_difference(old, ident)}). "
            "A run folder is never resumed under new settings: pass a new --out (or delete "
            f"{run_dir} to start over)")
    if _has_outputs(run_dir, outputs):
        raise RunMismatchError(
            f"{run_dir} holds outputs but no {RUN_FILE} (made by an older aligncap), so it "
            "cannot be told whether they were made with these settings: pass a new --out (or "
            f"delete {run_dir} to start over)")
    with atomic_write(run_dir / RUN_FILE) as f:
        json.dump({**ident.to_json(), "created": datetime.now(UTC).isoformat(timespec="seconds")},
                  f, indent=2, default=str)
    return False


def checkpoint_fingerprint(ckpt: str | os.PathLike | None) -> str | None:
    """A checkpoint's identity without hashing its weights: its meta.json (stage, step, run key,
    data fingerprint, metrics) plus the names and sizes of its model files, so a checkpoint re-trained
    at the same path gets a new fingerprint. A remote artifact of the store (`s3://...`): its
    content hash, read from its manifest without downloading it. None for a URI that is not a
    committed artifact, or a folder without meta.json."""
    if ckpt is None:
        return None
    if "://" in str(ckpt):
        from aligncap_core.store import artifact_fingerprint

        return artifact_fingerprint(ckpt)
    root = Path(ckpt)
    if not (root / "meta.json").is_file():
        return None
    from aligncap_core.store import MANIFEST

    # the store's manifest, dot entries (locks) and the resume state are not the model: copies
    # made to load it (an MLflow model, an embedded base) leave trainer_state.pt out
    listing = sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*")
                     if p.is_file() and p.name not in (MANIFEST, "trainer_state.pt")
                     and not p.name.startswith("."))
    return fingerprint((root / "meta.json").read_text(), listing)


def keyed_run_dir(root: str | os.PathLike, ident: RunIdentity) -> Path:
    """The folder of run `ident` under `root` (ROOT/<key>): one folder per distinct run."""
    return Path(root) / ident.key
