"""Checkpoint I/O: one directory per checkpoint, one loader for every kind and location.

Layout (FORMAT_VERSION 2):
    meta.json          stage, round, step, kind, base model, data fingerprint, metrics, created
    config.yaml        the resolved run config
    tokenizer/         tokenizer with the audio tokens
    adapters/<name>/   kind="adapter": peft adapter(s) (LoRA + trainable audio-token rows)
    audio_rows.safetensors  kind="adapter": base embedding rows of the audio tokens, so the
                       base can be grown to the checkpoint's vocabulary exactly as it was trained
    model/             kind="full": `save_pretrained` of the whole model (the from-scratch
                       teacher trains every weight)
    base/              kind="adapter" on a local base (the from-scratch teacher checkpoint, a
                       local model folder): a copy of it (hard links on the same file system),
                       `meta["base_model"] == "base"`; a hub base is referenced by its hub id
                       and an s3:// base by its URI. So a checkpoint never names a local path:
                       it loads after being copied anywhere (FORMAT_VERSION 2; version 1
                       recorded the base's absolute path, which still loads where it exists)
    trainer_state.pt   optional: optimizer, scheduler, step, RNG states, data position

Written with `utils.atomic_dir` (temporary sibling + rename, files fsync'd first): a crash never
leaves a half checkpoint, and `latest_checkpoint` never sees one. meta.json lists the size of
every file saved with it (`files`), so a checkpoint damaged afterwards (a truncated copy, a full
disk on a network mount) is recognised by `verify_checkpoint` instead of failing deep inside a
loader.
"""

from __future__ import annotations

import copy
import json
import random
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from aligncap_core.codec.prosody import TOKEN_RE as PROSODY_TOKEN_RE
from aligncap_core.errors import ConfigError, StorageError
from aligncap_core.model.base import load_base
from aligncap_core.utils import atomic_dir, atomic_write, link_or_copy

FORMAT_VERSION = 2
EMBEDDED_BASE = "base"  # meta["base_model"] of a checkpoint that holds its base (module doc)
# speech tokens the LM reads but never writes: EnCodec codes and the prosody stream (codec.prosody)
AUDIO_TOKEN_RE = re.compile(r"<a\d+_\d+>|<audio>|</audio>|" + PROSODY_TOKEN_RE.pattern)


def capture_rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters that train (LoRA, new token rows; everything from scratch)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], missing_msg: str) -> None:
    """Copy `state` (from `trainable_state`) into `model`'s parameters of the same names.
    A name the model lacks is a ConfigError: `missing_msg` formatted with `missing` (the first
    three such names), saying whose checkpoint it is and what to do."""
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise ConfigError(missing_msg.format(missing=missing[:3]))
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


def _raw_weight(module: Any) -> torch.Tensor:
    """The frozen base weight under any peft wrappers (TrainableTokensWrapper, LoRA layer)."""
    while True:
        if hasattr(module, "token_adapter"):
            module = module.token_adapter.base_layer
        elif hasattr(module, "base_layer"):
            module = module.base_layer
        else:
            return module.weight


def _audio_ids(tokenizer: Any) -> list[int]:
    return sorted(i for i, t in tokenizer.added_tokens_decoder.items()
                  if AUDIO_TOKEN_RE.fullmatch(t.content))


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def save_checkpoint(out_dir: str | Path, model: Any, tokenizer: Any, *, stage: str, step: int,
                    base_model: str, run_config: dict[str, Any] | None = None,
                    round: int = 0, data_fingerprint: str | None = None,
                    metrics: dict[str, float] | None = None,
                    trainer_state: dict[str, Any] | None = None,
                    full_weights: bool = False, run_key: str | None = None) -> Path:
    """Write a checkpoint directory atomically and return its path.

    model: a PeftModel (kind="adapter": every adapter it holds is saved) or, with
        `full_weights=True`, any model (a PeftModel is merged on a copy first).
    base_model: what the adapters were trained on: a hub id, an s3:// checkpoint URI, a base
        directory or another checkpoint (e.g. the teacher's); a local one is copied into
        `base/` of an adapter checkpoint (`embed_base`), so the checkpoint is self-contained.
    trainer_state: free-form dict for resuming (optimizer/scheduler state_dicts, step, data
        position); the RNG states are added here as `rng`.
    run_key: the key of the training run that made it (`train.identity`), kept in meta.json.
    """
    if not full_weights and not _is_peft(model):
        raise ConfigError("save_checkpoint: model has no adapters; pass full_weights=True to "
                          "save the whole model")
    embed = not full_weights and Path(base_model).exists()
    if Path(base_model).exists():
        base_model = str(Path(base_model).resolve())
    meta = {
        "format_version": FORMAT_VERSION, "kind": "full" if full_weights else "adapter",
        "stage": stage, "round": round, "step": int(step),
        "base_model": EMBEDDED_BASE if embed else base_model,
        "data_fingerprint": data_fingerprint, "run_key": run_key, "metrics": metrics or {},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp / "tokenizer")
        if full_weights:
            # merge_and_unload mutates the base in place; the caller may keep training, so
            # a PeftModel is merged on a copy
            m = copy.deepcopy(model).merge_and_unload() if _is_peft(model) else model
            m.save_pretrained(tmp / "model")
        else:
            _save_adapters(model, tokenizer, tmp, meta)
            if embed:
                embed_base(base_model, tmp / EMBEDDED_BASE)
                _unpath_adapter_configs(tmp)
        with atomic_write(tmp / "config.yaml") as f:
            yaml.safe_dump(run_config or {}, f, sort_keys=False)
        if trainer_state is not None:
            torch.save({**trainer_state, "rng": capture_rng_state()}, tmp / "trainer_state.pt")
        # (config.yaml is left out: a DPO round's is completed afterwards, inherit_student_settings)
        meta["files"] = {p.relative_to(tmp).as_posix(): p.stat().st_size
                         for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != "config.yaml"}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return Path(out_dir)


def embed_base(src: str | Path, dst: str | Path) -> Path:
    """Copy a local base (a checkpoint or a `save_pretrained` folder) to `dst` for loading only:
    files are hard-linked where possible, a checkpoint's trainer_state.pt (optimizer moments,
    2x the weights) is left out, a version-1 adapter checkpoint's own local base is embedded in
    turn and a full checkpoint's local-path provenance is dropped, so nothing under `dst` names
    a path outside it."""
    src, dst = Path(src), Path(dst)
    skip = shutil.ignore_patterns("trainer_state.pt", ".tmp-*", ".old-*", ".lock", "_artifact.json")
    shutil.copytree(src, dst, ignore=skip, copy_function=link_or_copy, dirs_exist_ok=True)
    meta_path = dst / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        base = meta.get("base_model")
        if base and base != EMBEDDED_BASE and Path(base).is_absolute():
            if meta.get("kind") == "adapter":
                embed_base(base, dst / EMBEDDED_BASE)
                meta["base_model"] = EMBEDDED_BASE
            else:  # a full model's base is provenance only: a local path means nothing elsewhere
                meta["base_model"] = None
            meta_path.unlink()  # a hard link to the source's meta.json: never write through it
            meta_path.write_text(json.dumps(meta, indent=2, default=str))
    return dst


def _unpath_adapter_configs(root: Path) -> None:
    """peft writes the base's local path into adapter_config.json (read only by AutoPeftModel,
    never by `load_checkpoint`); the embedded base replaces it, as in meta.json."""
    for cfg in (root / "adapters").rglob("adapter_config.json"):
        d = json.loads(cfg.read_text())
        if Path(str(d.get("base_model_name_or_path") or "")).is_absolute():
            d["base_model_name_or_path"] = EMBEDDED_BASE
            cfg.write_text(json.dumps(d, indent=2))


def _save_adapters(model: Any, tokenizer: Any, tmp: Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    names = list(model.peft_config)
    with_tokens = {n for n in names if model.peft_config[n].trainable_token_indices}
    for name in names:
        if with_tokens and name not in with_tokens:
            # peft 0.21 cannot save a LoRA-only adapter (a "teacher") next to one with
            # trainable tokens (KeyError on the token wrapper): write it in peft's format here
            _save_lora_only(model, name, tmp / "adapters" / name)
            continue
        # one folder per adapter; peft nests non-"default" names under a subfolder itself.
        # save_embedding_layers=False: peft would otherwise store the whole resized embedding
        # (vocab x hidden: GBs for a hub model) in every checkpoint; the audio rows below and
        # the adapter's trainable-token rows are all that differ from the base.
        model.save_pretrained(tmp / "adapters", selected_adapters=[name],
                              save_embedding_layers=False)
    meta["adapters"] = names
    meta["active_adapter"] = model.active_adapter
    ids = _audio_ids(tokenizer)
    if ids:
        base = model.get_base_model()
        idx = torch.tensor(ids)
        rows = {"ids": idx, "input": _raw_weight(base.get_input_embeddings())[idx].detach().cpu()}
        out = base.get_output_embeddings()
        if out is not None and not base.config.get_text_config().tie_word_embeddings:
            rows["output"] = _raw_weight(out)[idx].detach().cpu()
        save_file({k: v.contiguous() for k, v in rows.items()}, str(tmp / "audio_rows.safetensors"))


def _save_lora_only(model: Any, name: str, out: Path) -> None:
    """peft's on-disk format for a plain LoRA adapter: config + weights keyed without the
    adapter name (`...q_proj.lora_A.weight`), loadable by `PeftModel.load_adapter`."""
    from safetensors.torch import save_file

    tag = f".{name}."
    sd = {k.replace(tag, "."): v.detach().cpu().contiguous()
          for k, v in model.state_dict().items() if "lora_" in k and tag in k}
    out.mkdir(parents=True, exist_ok=True)
    model.peft_config[name].save_pretrained(str(out))
    save_file(sd, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})


def _adapter_dir(root: Path, name: str) -> Path:
    return root / "adapters" / name if (root / "adapters" / name).is_dir() else root / "adapters"


def _upgrade_meta(meta: dict[str, Any], root: Path) -> dict[str, Any]:
    """Shim: bring any older meta.json to FORMAT_VERSION. Pre-versioned checkpoints (no
    `format_version`) are read by inspecting what is on disk; add a step per future version."""
    version = meta.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise ConfigError(f"{root}: checkpoint format {version} is newer than this aligncap "
                          f"understands ({FORMAT_VERSION}); upgrade aligncap")
    if version == 1:
        meta["format_version"] = version = 2  # 2 adds the embedded base/; 1's paths still load
    if version == 0:
        meta.setdefault("kind", "full" if (root / "model").is_dir() else "adapter")
        if meta["kind"] == "adapter" and "adapters" not in meta:
            sub = [p.name for p in (root / "adapters").iterdir() if p.is_dir()]
            meta["adapters"] = sub or ["default"]
        meta.setdefault("active_adapter", meta.get("adapters", ["default"])[0])
        for k, v in (("stage", "unknown"), ("round", 0), ("step", 0), ("metrics", {}),
                     ("data_fingerprint", None), ("created", None)):
            meta.setdefault(k, v)
        meta["format_version"] = FORMAT_VERSION
    return meta


def read_meta(uri: str | Path) -> dict[str, Any]:
    root = fetch_to_local(uri)
    path = root / "meta.json"
    if not path.exists():
        raise StorageError(f"{uri}: not a checkpoint (no meta.json)")
    meta = _upgrade_meta(json.loads(path.read_text()), root)
    if meta.get("base_model") == EMBEDDED_BASE:
        # where this copy's base is now, so a caller can load it or save it on (a DPO round)
        meta["base_model"] = str((root / EMBEDDED_BASE).resolve())
    return meta


def load_checkpoint(uri: str | Path, *, dtype: torch.dtype | str | None = None,
                    device: str | torch.device | None = None,
                    trainable: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """Load any checkpoint (local path or `s3://`) -> (model, tokenizer, meta).

    kind="full": the saved model. kind="adapter": the base (`meta["base_model"]`, itself loaded
    with this function when it is a checkpoint) grown to the tokenizer's vocabulary with the
    saved audio rows, then every saved adapter; `meta["active_adapter"]` is active and, with
    `trainable=True`, trainable (to resume training).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = fetch_to_local(uri)
    meta = read_meta(root)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    if meta["kind"] == "full":
        from aligncap_core.model.base import _as_dtype

        model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=_as_dtype(dtype))
        if device is not None:
            model.to(device)
        return model, tokenizer, meta
    model = _load_adapter_base(meta["base_model"], dtype, device)
    _grow_to(model, tokenizer, root)
    from peft import PeftModel

    names = meta["adapters"]
    active = meta["active_adapter"]
    model = PeftModel.from_pretrained(model, _adapter_dir(root, names[0]), adapter_name=names[0],
                                      is_trainable=trainable and names[0] == active)
    for name in names[1:]:
        model.load_adapter(_adapter_dir(root, name), adapter_name=name,
                           is_trainable=trainable and name == active)
    model.set_adapter(active, inference_mode=not trainable)
    if device is not None:
        model.to(device)
    return model, tokenizer, meta


def load_for_generation(uri: str | Path, *, dtype: torch.dtype, device: str | torch.device | None = None,
                        merge_adapters: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """`load_checkpoint` for captioning: (model, tokenizer, meta), the model wholly in `dtype`
    and in eval mode (`precision.for_generation`). merge_adapters: fold the active LoRA adapter
    into the weights (peft `merge_and_unload`): the same function without the adapter's four
    extra ops at every adapted linear, 2.2x faster per caption token on the demo's model
    (docs/PERFORMANCE.md). False keeps the PeftModel, for what needs the base with the adapter
    off (the KL gap's teacher)."""
    from aligncap_core.precision import for_generation

    model, tok, meta = load_checkpoint(uri, dtype=dtype, device=device)
    if merge_adapters and _is_peft(model):
        model = model.merge_and_unload()
    return for_generation(model, dtype), tok, meta


def _load_adapter_base(base_model: str, dtype: Any, device: Any) -> Any:
    try:
        is_ckpt = (fetch_to_local(base_model) / "meta.json").exists()
    except StorageError:
        is_ckpt = False
    if not is_ckpt:
        return load_base(base_model, dtype=dtype, device=device)[0]
    model, _, _ = load_checkpoint(base_model, dtype=dtype, device=device)
    # an adapter checkpoint used as a base (a text-LoRA teacher) is folded into the weights
    return model.merge_and_unload() if _is_peft(model) else model


def _grow_to(model: Any, tokenizer: Any, root: Path) -> None:
    path = root / "audio_rows.safetensors"
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        # the saved rows overwrite what mean_resizing would compute: skip that work
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if not path.exists():
        return
    from safetensors.torch import load_file

    rows = load_file(str(path))
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[rows["ids"]] = rows["input"].to(emb)
        if "output" in rows:
            out = model.get_output_embeddings().weight
            out[rows["ids"]] = rows["output"].to(out)


def load_trainer_state(uri: str | Path, restore_rng: bool = True) -> dict[str, Any] | None:
    """The checkpoint's trainer_state (None if it has none); restores the RNG states by default.

    weights_only=False: the RNG states are numpy/python objects; only load checkpoints you
    wrote yourself.
    """
    path = fetch_to_local(uri) / "trainer_state.pt"
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if restore_rng and "rng" in state:
        restore_rng_state(state["rng"])
    return state


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoints_newest_first(run_dir: str | Path) -> list[Path]:
    """The checkpoints under `run_dir`, highest step first (ties: newest). Temporary `.tmp-*`
    directories of an interrupted save, and anything without a readable meta.json, are ignored."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        if p.name.startswith(".") or not (p / "meta.json").is_file():
            continue
        try:
            meta = _upgrade_meta(json.loads((p / "meta.json").read_text()), p)
        except (ValueError, ConfigError):
            continue
        found.append((int(meta["step"]), str(meta.get("created") or ""), p))
    return [p for *_, p in sorted(found, reverse=True)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step (ties: newest) under `run_dir`, or None."""
    found = checkpoints_newest_first(run_dir)
    return found[0] if found else None


def verify_checkpoint(path: str | Path) -> str | None:
    """What is wrong with a local checkpoint's files (missing, or another size than meta.json
    recorded when it was saved), None when they are as saved. Checkpoints from before the
    `files` record are only checked for meta.json."""
    root = Path(path)
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError) as e:
        return f"meta.json unreadable ({e})"
    for rel, size in (meta.get("files") or {}).items():
        f = root / rel
        if not f.is_file() and rel.rsplit("/", 1)[-1] == "trainer_state.pt":
            continue  # left out of copies made for loading (embed_base, MLflow models)
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes, {size} were saved (truncated or overwritten)"
    return None


def fetch_to_local(uri: str | Path) -> Path:
    """A local directory for a checkpoint `uri`: a local path as it is; an `s3://` artifact of
    the store (or a plain prefix) materialized into the local cache (`aligncap_core.store`)."""
    from aligncap_core.store import materialize

    return materialize(uri)
