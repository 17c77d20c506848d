"""Self-contained student checkpoints: the speech tokenizer and prompt settings travel with them.

A student reads `instruction + <audio> codes </audio>`; captioning raw audio therefore needs the
exact codec the training codes came from (same weights, same n_q), the instruction and keep_q.
`attach_codec` stores all of it in the checkpoint:

    ckpt/codec/           the codec directory (EncodecTokenizer.save layout: weights + codec.json)
    ckpt/meta.json        "speech": {instruction, keep_q, n_q, codec, codec_fingerprint}

`codec` is "codec" (the folder above) or, for a pretrained hub codec, its hub id (loadable by
name, so it is not copied). The calibrated EnCodec is ~90 MB (encoder + decoder weights); files
are hard-linked from the data dir where the file system allows it, so the checkpoints of one
run share them on local disk and each is still a complete copy when uploaded (s3, MLflow).

Older checkpoints (no "speech" entry) load with `resolve_speech(..., codec_dir=DATA_DIR/codec)`;
instruction and keep_q then come from the checkpoint's config.yaml.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from aligncap_core.errors import ConfigError, DataError
from aligncap_core.utils import atomic_dir, atomic_write, link_or_copy

log = logging.getLogger(__name__)
CODEC_SUBDIR = "codec"
CODEC_JSON = "codec.json"  # same name as codec.tokenizer.CODEC_JSON (kept import-free: no torch)


@dataclass(frozen=True)
class SpeechCodec:
    """Where a dataset's codes came from: `source` is a local codec dir or a hub id (None when
    unknown, e.g. codes written by hand in tests); `fingerprint` names the codes' codec."""

    source: str | None
    fingerprint: str | None
    n_q: int


@dataclass(frozen=True)
class SpeechSettings:
    """What a student checkpoint needs to turn audio into its prompt."""

    instruction: str
    keep_q: int | None
    n_q: int | None  # codebooks the codec emits (keep_q of them are read)
    codec: str | None  # local dir or hub id of the codec; None: none recorded
    codec_fingerprint: str | None
    prosody: dict | None = None  # ProsodySettings of the prosody stream it reads; None: none
    # [low, high] dBFS of its training clips' levels (`domain.level_range`); None: not recorded
    level_range: list[float] | None = None
    # formant spacing between its training men and women (`domain.voice_boundary`); None: none
    voice_boundary: dict | None = None
    # [low, high] Hz of its training clips' band edges (`domain.band_range`); None: not recorded
    band_range: list[float] | None = None


def _codes_meta(data_dir: Path) -> dict:
    """codec.json of the codes folder the manifest's rows point to ({} when there is none)."""
    from aligncap_core.train.data import read_rows

    coded = [r for r in read_rows(data_dir) if r.get("codes")]
    if not coded:
        raise DataError(f"{data_dir}: no row has codes; run `aligncap data tokenize` first")
    shard = Path(coded[0]["codes"]["shard"])
    shard = shard if shard.is_absolute() else data_dir / shard
    path = shard.parent / CODEC_JSON
    meta = json.loads(path.read_text()) if path.is_file() else {}
    meta.setdefault("fingerprint", coded[0]["codes"]["codec"])
    return meta


def find_codec(data_dir: str | os.PathLike) -> SpeechCodec:
    """The codec that tokenized `data_dir`: DATA_DIR/codec for a calibrated codec (checked
    against the codes' fingerprint), the recorded local dir or hub id for a pretrained one.

    source is None (with a warning) when the codec cannot be located; checkpoints then record
    the settings without a codec and need `--codec-dir` to caption audio.
    """
    from aligncap_core.train.data import codec_layout, read_rows

    data_dir = Path(data_dir)
    meta = _codes_meta(data_dir)
    n_q = codec_layout(data_dir, read_rows(data_dir))[0]
    fp, src = meta.get("fingerprint"), meta.get("source")
    if src == "calibrated":
        cdir = data_dir / CODEC_SUBDIR
        saved = json.loads((cdir / CODEC_JSON).read_text()) if (cdir / CODEC_JSON).is_file() else {}
        # a codec recalibrated after tokenizing would give different codes: only the same one
        # counts (an n_q change keeps the weights but changes the fingerprint: compare weights)
        if saved.get("fingerprint") == fp or (saved and saved.get("calibration") == meta.get("calibration")):
            return SpeechCodec(str(cdir.resolve()), fp, n_q)
        log.warning("%s: the calibrated codec that produced the codes (%s) is not at %s; "
                    "checkpoints will need --codec-dir to caption audio", data_dir, fp, cdir)
        return SpeechCodec(None, fp, n_q)
    if src:
        local = Path(src)
        return SpeechCodec(str(local.resolve()) if local.is_dir() else src, fp, n_q)
    log.warning("%s: codes carry no codec source; checkpoints will need --codec-dir", data_dir)
    return SpeechCodec(None, fp, n_q)


def attach_codec(ckpt_dir: str | os.PathLike, codec: SpeechCodec | str | os.PathLike | None, *,
                 instruction: str, keep_q: int | None, n_q: int | None = None,
                 prosody: Any = None, level_range: Sequence[float] | None = None,
                 voice_boundary: dict | None = None, band_range: Sequence[float] | None = None,
                 ) -> Path:
    """Make a student checkpoint self-contained; returns `ckpt_dir`.

    codec: a `SpeechCodec` (from `find_codec`), a local codec dir (copied into ckpt/codec),
    a hub id (recorded), or None (only the settings are recorded). The copy is atomic (built
    under a temporary name); meta.json gains "speech" only once the codec is in place.
    prosody: the ProsodySettings of the prosody stream the student reads (None: it reads none).
    level_range, band_range: the training audio's level and band-edge ranges
    (`domain.training_ranges`; None: the level check, resp. the band half of the check for
    recordings unlike the training audio, is off for this checkpoint). voice_boundary:
    `domain.training_voice_boundary` (None: the voice check is off for this checkpoint).
    """
    ckpt = Path(ckpt_dir)
    meta_path = ckpt / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{ckpt}: not a checkpoint (no meta.json)")
    if not isinstance(codec, SpeechCodec):
        codec = SpeechCodec(str(codec) if codec is not None else None, None, n_q or 0)
    fp, recorded = codec.fingerprint, codec.source
    if codec.source and Path(codec.source).is_dir():
        src = Path(codec.source)
        if not (src / CODEC_JSON).is_file():
            raise DataError(f"{src}: not a saved codec (no {CODEC_JSON})")
        fp = fp or json.loads((src / CODEC_JSON).read_text()).get("fingerprint")
        with atomic_dir(ckpt / CODEC_SUBDIR) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True, copy_function=link_or_copy)
        recorded = CODEC_SUBDIR
    meta = json.loads(meta_path.read_text())
    meta["speech"] = asdict(SpeechSettings(instruction, keep_q, n_q or codec.n_q or None,
                                           recorded, fp, prosody.to_dict() if prosody else None,
                                           [float(v) for v in level_range] if level_range else None,
                                           dict(voice_boundary) if voice_boundary else None,
                                           [float(v) for v in band_range] if band_range else None))
    with atomic_write(meta_path) as f:
        json.dump(meta, f, indent=2, default=str)
    return ckpt


def resolve_speech(ckpt_root: str | os.PathLike,
                   codec_dir: str | os.PathLike | None = None) -> SpeechSettings:
    """Speech settings of a local checkpoint directory, codec resolved to a loadable location.

    codec_dir overrides the checkpoint's codec (and is required for a checkpoint without one).
    Raises ConfigError naming the checkpoint and the option to use.
    """
    root = Path(ckpt_root)
    meta = json.loads((root / "meta.json").read_text())
    speech = meta.get("speech")
    cfg = yaml.safe_load((root / "config.yaml").read_text()) if (root / "config.yaml").is_file() else {}
    if speech is None and (cfg or {}).get("policy"):
        # a DPO round's checkpoint: same prompt and codec as the policy it was trained from
        from aligncap_core.model.checkpoint import fetch_to_local

        return resolve_speech(fetch_to_local(cfg["policy"]), codec_dir)
    if speech is None:  # older checkpoint: the prompt settings are in its resolved config
        from aligncap_core.train.config import DEFAULT_INSTRUCTION

        speech = {"instruction": (cfg or {}).get("instruction", DEFAULT_INSTRUCTION),
                  "keep_q": (cfg or {}).get("keep_q"), "n_q": None, "codec": None,
                  "codec_fingerprint": None}
    s = SpeechSettings(**speech)
    if s.prosody is None and (cfg or {}).get("prosody"):
        # trained on the prosody stream but recorded without it (a preference round saved before
        # round checkpoints inherited it): captioning from the codes alone would be garbage
        raise ConfigError(f"{root}: config.yaml says this student reads the prosody stream, but "
                          "meta.json's speech settings record none; re-run the round that made it")
    codec = s.codec
    if codec_dir is not None:
        cdir = Path(codec_dir)
        if not (cdir / CODEC_JSON).is_file():
            raise ConfigError(f"--codec-dir {cdir}: no {CODEC_JSON} there; pass the folder of a "
                              "saved codec (e.g. DATA_DIR/codec of the training data)")
        codec = str(cdir)
    elif codec == CODEC_SUBDIR:
        codec = str(root / CODEC_SUBDIR)
    elif codec is None:
        raise ConfigError(f"{root}: checkpoint has no speech codec; pass --codec-dir DATA_DIR/codec "
                          "(the codec its training data was tokenized with)")
    return dataclasses.replace(s, codec=codec)
