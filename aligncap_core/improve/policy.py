"""What a policy checkpoint needs to read a clip, and making a DPO checkpoint carry it on.

A student checkpoint records its instruction, keep_q, codec and acoustic-prompt setting (meta
`speech` + config.yaml). `prefs.run_dpo_round` saves the new policy with only the DPO run config,
so `inherit_student_settings` copies those settings (and the codec) from the round's starting
policy: every round's checkpoint stays a self-contained student that `Captioner` and
`evaluate_checkpoint` load like the distilled one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aligncap_core.errors import ConfigError
from aligncap_core.model.checkpoint import fetch_to_local, read_meta
from aligncap_core.utils import atomic_write


@dataclass(frozen=True)
class PolicyPrompt:
    """instruction / keep_q: the student's prompt; acoustic_prompt: whether its KD teacher read
    P_act; max_len: the config's token budget (None: the model's positions);
    codec_fingerprint: the codec its codes must come from (None: not recorded); prosody: the
    ProsodySettings dict of the prosody stream it reads after the codes (None: none)."""

    instruction: str
    keep_q: int | None
    acoustic_prompt: bool
    max_len: int | None
    codec_fingerprint: str | None
    prosody: dict | None = None


def _config(root: Path) -> dict[str, Any]:
    path = root / "config.yaml"
    return (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}


def policy_prompt(ckpt: str | os.PathLike) -> PolicyPrompt:
    """The prompt settings of a student / DPO checkpoint (older ones: from config.yaml)."""
    from aligncap_core.train.config import DEFAULT_INSTRUCTION

    root = fetch_to_local(ckpt)
    meta, cfg = read_meta(root), _config(root)
    if meta.get("stage") == "teacher":
        raise ConfigError(f"{ckpt}: a teacher checkpoint reads text, not audio; self-improvement "
                          "starts from a student (distill) checkpoint or a round's policy")
    speech = meta.get("speech") or {}
    return PolicyPrompt(
        instruction=speech.get("instruction") or cfg.get("instruction") or DEFAULT_INSTRUCTION,
        keep_q=speech["keep_q"] if "keep_q" in speech else cfg.get("keep_q"),
        acoustic_prompt=bool(cfg.get("acoustic_prompt", True)),
        max_len=(cfg.get("train") or {}).get("max_len"),
        codec_fingerprint=speech.get("codec_fingerprint"), prosody=speech.get("prosody"))


def teacher_adapter_of(meta: dict) -> str | None:
    """The KD teacher inside a student checkpoint: its "teacher" adapter (hub base) or None
    (from-scratch base: the base itself with the student adapter off)."""
    from aligncap_core.train.stages import TEACHER_ADAPTER

    return TEACHER_ADAPTER if TEACHER_ADAPTER in meta.get("adapters", []) else None


def inherit_student_settings(policy_ckpt: str | os.PathLike, new_ckpt: str | os.PathLike,
                             data_dir: str | os.PathLike) -> Path:
    """Make `new_ckpt` (saved by `run_dpo_round`) a self-contained student like `policy_ckpt`:
    its config.yaml gains the policy's student settings under the DPO keys, and its meta the
    policy's speech settings and codec (the data dir's codec when the policy records none)."""
    from aligncap_core.codec.prosody import ProsodySettings
    from aligncap_core.inference.speech import attach_codec, find_codec

    policy_root, new = fetch_to_local(policy_ckpt), Path(new_ckpt)
    # the DPO run keys (dpo, policy, pairs, ...) win: they describe how this checkpoint was made
    merged = {**_config(policy_root), **_config(new)}
    with atomic_write(new / "config.yaml") as f:
        yaml.safe_dump(merged, f, sort_keys=False)
    prompt = policy_prompt(policy_root)
    speech = read_meta(policy_root).get("speech") or {}
    codec = policy_codec(policy_root) or find_codec(data_dir)  # an older student: the data dir's
    # the round's policy reads exactly what its starting policy read (the prosody stream too)
    # and keeps its training audio's level and band ranges and voice boundary (inference.domain)
    attach_codec(new, codec, instruction=prompt.instruction, keep_q=prompt.keep_q,
                 n_q=speech.get("n_q") or codec.n_q or None,
                 prosody=ProsodySettings.coerce(prompt.prosody), level_range=speech.get("level_range"),
                 voice_boundary=speech.get("voice_boundary"), band_range=speech.get("band_range"))
    return new


def policy_codec(ckpt: str | os.PathLike) -> Any:
    """The codec a policy checkpoint reads (`inference.speech.SpeechCodec`: the checkpoint's own
    copy, or the local dir / hub id it records); None for an older student that records none."""
    from aligncap_core.inference.speech import CODEC_SUBDIR, SpeechCodec

    root = fetch_to_local(ckpt)
    speech = read_meta(root).get("speech") or {}
    if not speech.get("codec"):
        return None
    source = str(root / CODEC_SUBDIR) if speech["codec"] == CODEC_SUBDIR else speech["codec"]
    return SpeechCodec(source, speech.get("codec_fingerprint"), speech.get("n_q") or 0)


def check_codec(ckpt: str | os.PathLike, prompt: PolicyPrompt, rows: list[dict]) -> None:
    """The rows' codes must come from the codec the policy was trained on (when it records one)."""
    if prompt.codec_fingerprint is None:
        return
    wrong = sorted({(r.get("codes") or {}).get("codec") for r in rows} - {prompt.codec_fingerprint},
                   key=str)
    if wrong:
        raise ConfigError(f"{ckpt} was trained on codes of codec {prompt.codec_fingerprint}, but the "
                          f"data's codes come from {wrong}; tokenize the data with the policy's codec")


def round_checkpoint(uri: str | os.PathLike) -> str:
    """`--from` may name a finished round's folder (with round.json): its checkpoint. Any other
    path or URI is returned unchanged."""
    p = Path(str(uri))
    if not str(uri).startswith("s3://") and (p / "round.json").is_file():
        ckpt = json.loads((p / "round.json").read_text()).get("checkpoint")
        if not ckpt:
            raise ConfigError(f"{p}/round.json names no checkpoint")
        return str(ckpt)
    return str(uri)
