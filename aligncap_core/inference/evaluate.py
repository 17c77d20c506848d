"""Evaluate a speech-student checkpoint on held-out clips (ARCHITECTURE.md, method step 7).

    report = evaluate_checkpoint("runs/student/step-00000600", "data/", "eval/report.json")
    report["metrics"]["valid"]["cider"], report["metrics"]["all"]["kl_gap"]

Input: a prepared data dir (its codes are used when they come from the checkpoint's codec) or a
raw manifest / manifest folder (prepared into `<out>.data/prepared`). When codes or acoustic
prompts are missing, the selected rows are copied (absolute audio paths) into
`<out>.data/clips`, tokenized there with the checkpoint's codec and annotated with clues, so the
caller's data dir is never rewritten. Both steps are cached: a re-run encodes nothing new.

Output: `out_json` (metrics per split and "all", plus what was evaluated) and
`predictions.jsonl` beside it: one {id, split, prediction, references, attributes} per clip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from aligncap_core.defaults import EVAL
from aligncap_core.errors import ConfigError, DataError
from aligncap_core.inference.captioner import Captioner
from aligncap_core.inference.consistent import DecodingSettings
from aligncap_core.model.generate import GenerationSettings
from aligncap_core.utils import atomic_write, progress, read_jsonl, write_jsonl

log = logging.getLogger(__name__)
MANIFEST = "manifest.jsonl"


# ---- data --------------------------------------------------------------------------------------
def _is_prepared(source: str) -> bool:
    p = Path(source)
    if not (p.is_dir() and (p / MANIFEST).is_file()):
        return False
    return (p / "fingerprint.json").is_file() or any(r.get("codes") for r in read_jsonl(p / MANIFEST))


def select_rows(rows: Sequence[dict], splits: Sequence[str] | None, limit: int | None) -> list[dict]:
    """Rows of `splits` (default: every split but "train", or all rows when there is no other),
    at most `limit` per split, in manifest order."""
    present = list(dict.fromkeys(str(r.get("split")) for r in rows))
    if splits:
        missing = [s for s in splits if s not in present]
        if missing:
            raise DataError(f"split(s) {', '.join(missing)} not in the data (it has: {', '.join(present)})")
        wanted = list(splits)
    else:
        wanted = [s for s in present if s != "train"] or present
    out, count = [], dict.fromkeys(wanted, 0)
    for r in rows:
        s = str(r.get("split"))
        if s in count and (limit is None or count[s] < limit):
            out.append(r)
            count[s] += 1
    return out


def _absolute_audio(row: dict, data_dir: Path) -> dict:
    audio = str(row.get("audio") or "")
    if audio and not audio.startswith("s3://") and not os.path.isabs(audio):
        audio = str((data_dir / audio).resolve())
    return {k: v for k, v in row.items() if k not in ("codes", "n_frames")} | {"audio": audio}


def eval_data(source: str | os.PathLike, work_dir: Path, cap: Captioner, *,
              splits: Sequence[str] | None, limit: int | None, need_p_act: bool,
              show_progress: bool = True,
              codes_cache: str | os.PathLike | None = None) -> tuple[Path, list[dict], dict]:
    """(data dir, selected rows with codes from the checkpoint's codec (and p_act when
    `need_p_act`), info about what was done). codes_cache: see `evaluate_checkpoint`."""
    from aligncap_core.codec import tokenize_dataset
    from aligncap_core.train.data import read_rows

    source = str(source)
    info: dict[str, Any] = {"source": source}
    if _is_prepared(source):
        data_dir = Path(source)
    else:
        from aligncap_core.data.prepare import prepare_dataset

        data_dir = work_dir / "prepared"
        summary = prepare_dataset(source, data_dir, sample_rate=cap.codec.sample_rate,
                                  progress=show_progress)
        info["prepare"] = {k: summary[k] for k in ("kept", "rejected", "rejects_by_reason")}
        if summary["rejected"]:
            log.warning("%d rows rejected while preparing %s: see %s", summary["rejected"], source,
                        data_dir / "rejects.jsonl")
    rows = select_rows(read_rows(data_dir), splits, limit)
    if not rows:
        raise DataError(f"{source}: no rows to evaluate")
    fp = cap.codec.fingerprint
    has_codes = all((r.get("codes") or {}).get("codec") == fp for r in rows)
    has_p_act = not need_p_act or all(r.get("p_act") for r in rows if r.get("captions"))
    if has_codes and has_p_act:
        return data_dir, rows, info
    clips = work_dir / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    write_jsonl(clips / MANIFEST, [_absolute_audio(r, data_dir.resolve()) for r in rows])
    if not has_p_act:
        from aligncap_core.clues.annotate import add_clues

        add_clues(clips, progress=show_progress)
        info["clues"] = "added (default template)"
    tokenize_dataset(clips, codec=str(cap.speech.codec), n_q=cap.codec.n_q,
                     batch_size=cap.codec_batch_size, cache_dir=codes_cache, progress=show_progress)
    info["tokenized"] = str(clips)
    return clips, read_rows(clips), info


# ---- KL gap ------------------------------------------------------------------------------------
def teacher_adapter_name(meta: dict) -> str | None:
    """The teacher adapter's name when the checkpoint (its meta.json) carries one, else None."""
    from aligncap_core.train.stages import TEACHER_ADAPTER

    return TEACHER_ADAPTER if TEACHER_ADAPTER in meta.get("adapters", []) else None


@torch.no_grad()
def kl_gap_by_split(cap: Captioner, data_dir: Path, rows: Sequence[dict], *, batch_size: int,
                    acoustic_prompt: bool, teacher: tuple[Any, Any] | None = None,
                    show_progress: bool = True) -> dict[str, tuple[float | None, int]]:
    """{split: (mean KL(teacher || student) per caption token, tokens)} over every reference
    caption of the captioned rows.

    Teacher: the student's own base with the student adapter off (or its "teacher" adapter)
    reading transcript + P_act, exactly the KD teacher of training; or `teacher` = (model,
    tokenizer) of another checkpoint, whose tokenizer must give the same caption ids.
    """
    from aligncap_core.eval.kl import kl_gap
    from aligncap_core.model.batching import pad_examples
    from aligncap_core.model.caption_head import caption_logits
    from aligncap_core.train import data
    from aligncap_core.train.stages import teacher_caption_logits

    model, tok = cap.model, cap.tokenizer
    adapter = teacher_adapter_name(cap.meta)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: dict[str, tuple[float | None, int]] = {}
    by_split: dict[str, list[dict]] = {}
    for r in rows:
        if any(c and c.strip() for c in r.get("captions") or []):
            by_split.setdefault(str(r.get("split")), []).append(r)
    with progress(disable=not show_progress) as bar:
        for split, split_rows in by_split.items():
            pairs = data.student_examples(tok, data_dir, split_rows, instruction=cap.speech.instruction,
                                          keep_q=cap.speech.keep_q, max_len=cap.max_len,
                                          acoustic_prompt=acoustic_prompt, with_teacher=True,
                                          prosody=cap.prosody,
                                          teacher_tokenizer=teacher[1] if teacher else None)
            if teacher is not None:
                _check_same_captions(pairs)
            pairs.sort(key=lambda p: -len(p["student"].input_ids))  # little padding per batch
            task = bar.add_task(f"KL gap ({split})", total=len(pairs))
            seen = {"tokens": 0}

            def batches(pairs=pairs, task=task, seen=seen) -> Iterator[tuple]:
                for b in range(0, len(pairs), batch_size):
                    chunk = pairs[b:b + batch_size]
                    s = {k: v.to(cap.device) for k, v in
                         pad_examples([p["student"] for p in chunk], pad).items()}
                    t = {k: v.to(cap.device) for k, v in
                         pad_examples([p["teacher"] for p in chunk], pad).items()}
                    if teacher is None:
                        t_cap, _ = teacher_caption_logits(model, t, adapter)
                    else:
                        t_cap, _ = caption_logits(teacher[0], t["input_ids"], t["attention_mask"],
                                                  t["caption_start"], t["caption_len"])
                    s_cap, mask = caption_logits(model, s["input_ids"], s["attention_mask"],
                                                 s["caption_start"], s["caption_len"])
                    seen["tokens"] += int(mask.sum())
                    bar.update(task, advance=len(chunk))
                    yield s_cap, t_cap.to(s_cap.device), mask

            value = kl_gap(batches())
            out[split] = (value, seen["tokens"])
    return out


def _check_same_captions(pairs: list[dict]) -> None:
    """A separate teacher's tokenizer must encode every caption as the student's does,
    otherwise a token-level KL compares different tokens."""
    for p in pairs:
        s, t = p["student"], p["teacher"]
        if s.input_ids[s.caption_start:] != t.input_ids[t.caption_start:]:
            raise ConfigError("--teacher: its tokenizer encodes the captions differently from the "
                              "student's; the KL gap needs the same vocabulary (use the student's "
                              "own teacher, the default)")


# ---- the evaluation ----------------------------------------------------------------------------
def evaluate_checkpoint(ckpt_uri: str | os.PathLike, manifest_or_data_dir: str | os.PathLike,
                        out_json: str | os.PathLike, *, splits: Sequence[str] | None = None,
                        settings: GenerationSettings | None = None, batch_size: int = EVAL.batch_size,
                        kl_gap: bool = EVAL.kl_gap, teacher_ckpt: str | os.PathLike | None = None,
                        limit: int | None = None, codec_dir: str | os.PathLike | None = None,
                        device: str = "auto", dtype: str = "auto", meteor: bool = EVAL.meteor,
                        codes_cache: str | os.PathLike | None = None,
                        decoding: DecodingSettings | None = None,
                        group_by: str | None = None,
                        show_progress: bool = True) -> dict:
    """Caption the held-out clips, score them, measure the speech-text KL gap; write the report.

    splits: which splits (default every split but "train"); limit: at most N clips per split.
    settings: generation limits (default 64 new tokens); batch_size: clips per generation batch
    and examples per KL forward (overrides settings.batch_size). decoding: greedy or the
    attribute-consistent decoder (default: `DecodingSettings()`, see `inference.consistent`).
    dtype: the student's (and the KL teacher's) dtype, `Captioner.load`'s (auto: bf16 where
    the device has fast bf16); the report says which ran ("dtype").
    kl_gap: also compute KL(teacher || student) on the reference captions (needs captions; rows
    without p_act get clues first). teacher_ckpt: another teacher (default: the student's base).
    codec_dir: codec for a checkpoint without one (default: the data dir's, if it has one).
    codes_cache: the codes folder for clips that must be encoded here (a raw manifest, or codes
    from another codec); default beside the report. Codes are keyed by audio hash and codec, so
    one folder shared by the evaluations of several checkpoints with the same codec (a pipeline's
    stages on real data) encodes each clip once.
    group_by: also score each value of this row field on its own, as metrics
    "<group_by>:<value>" (e.g. per corpus of a real-data manifest). "corpus" uses the row's
    `corpus` field, else its id's prefix before the first "-" ("emodb-03a01Fa" -> emodb).

    Returns the report: {"checkpoint", "data", "generation", "metrics": {split: {...}, "all":
    {...}}}; each metrics dict has `compute_metrics` keys plus kl_gap, kl_tokens, level_withheld,
    voice_withheld, pitch_withheld, voice_told, unlike_withheld, struck and unsure.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    from aligncap_core.eval.meteor import MeteorScorer

    with contextlib.ExitStack() as stack:
        # one METEOR JVM for every split's scores, started now: it loads (~8 s) while the clips
        # are captioned, instead of once per compute_metrics call after them
        scorer = stack.enter_context(MeteorScorer()) if meteor else False
        out_json = Path(out_json)
        settings = dataclasses.replace(settings or GenerationSettings(), batch_size=batch_size)
        cap = Captioner.load(ckpt_uri, device=device, dtype=dtype,
                             codec_dir=codec_dir or _data_codec(ckpt_uri, manifest_or_data_dir))
        acoustic = _acoustic_prompt(cap)
        data_dir, rows, info = eval_data(manifest_or_data_dir, out_json.with_suffix(".data"), cap,
                                         splits=splits, limit=limit, need_p_act=kl_gap and acoustic,
                                         show_progress=show_progress, codes_cache=codes_cache)
        decoding = decoding or DecodingSettings()
        preds, decisions = _caption_rows(cap, data_dir, rows, settings, decoding, show_progress)
        kls = kl_gap_by_split(_with_adapters(cap, ckpt_uri), data_dir, rows, batch_size=batch_size,
                              acoustic_prompt=acoustic, teacher=_kl_teacher(cap, teacher_ckpt),
                              show_progress=show_progress) if kl_gap else {}
        metrics, evaluated_splits = _score(rows, preds, kls, group_by, scorer, decisions)
        report = {
            "checkpoint": str(ckpt_uri), "step": cap.meta.get("step"), "stage": cap.meta.get("stage"),
            "codec": cap.codec.fingerprint, "speech": dataclasses.asdict(cap.speech),
            "data": {**info, "evaluated_from": str(data_dir), "splits": evaluated_splits},
            "generation": dataclasses.asdict(settings), "decoding": decoding.to_dict(),
            "kl_teacher": str(teacher_ckpt or "student base"), "dtype": cap.dtype_name,
            "metrics": metrics,
        }
        _write_report(out_json, report, rows, preds, decisions)
        return report


def _with_adapters(cap: Captioner, ckpt_uri: str | os.PathLike) -> Captioner:
    """`cap` with its checkpoint's model as saved (adapters not merged): the KL gap reads the
    student's base with the adapter off, which the captioning model, merged, no longer has."""
    from aligncap_core.model.checkpoint import load_for_generation

    model, _, _ = load_for_generation(ckpt_uri, dtype=next(cap.model.parameters()).dtype,
                                      device=cap.device, merge_adapters=False)
    return dataclasses.replace(cap, model=model)


def _kl_teacher(cap: Captioner, teacher_ckpt: str | os.PathLike | None) -> tuple[Any, Any] | None:
    """(model, tokenizer) of another teacher for the KL gap, in the student's dtype and device;
    None (the student's own base) without teacher_ckpt."""
    if teacher_ckpt is None:
        return None
    from aligncap_core.model.checkpoint import load_checkpoint

    t_model, t_tok, _ = load_checkpoint(teacher_ckpt, dtype=next(cap.model.parameters()).dtype,
                                        device=cap.device)
    return (t_model.eval(), t_tok)


def _score(rows: Sequence[dict], preds: list[str], kls: dict[str, tuple[float | None, int]],
           group_by: str | None, scorer: Any, decisions: Sequence[Any] | None = None,
           ) -> tuple[dict[str, dict], list[str]]:
    """(metrics per split, per `group_by` value ("<group_by>:<value>") and over "all", each split
    and "all" with its KL gap (token-weighted over the splits) and `level_withheld` (share of
    the clips the level check left volume and emotion out of); the splits, in row order)."""
    from aligncap_core.clues import EmotionClueParser
    from aligncap_core.eval import compute_metrics

    parser = EmotionClueParser()  # one spaCy load for every split
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r.get("split")), []).append(i)
    metrics: dict[str, dict] = {}
    for name, idx in groups.items():
        metrics[name] = compute_metrics([preds[i] for i in idx], [rows[i].get("captions") or [] for i in idx],
                                        [rows[i].get("attributes") for i in idx],
                                        parser=parser, meteor=scorer)
        kl, n = kls.get(name, (None, 0))
        metrics[name].update(kl_gap=kl, kl_tokens=n)
    for value, idx in _groups(rows, group_by).items():
        metrics[f"{group_by}:{value}"] = compute_metrics(
            [preds[i] for i in idx], [rows[i].get("captions") or [] for i in idx],
            [rows[i].get("attributes") for i in idx], parser=parser, meteor=scorer)
    per_clip = [*decisions] if decisions else [None] * len(rows)

    def by(check: str) -> list[bool]:
        return [d is not None and d.withheld is not None and check in d.withheld["checks"]
                for d in per_clip]

    # per clip, whether the decoder withheld / told / struck something or left an unsure statement
    # in: each a share per group
    flags = {"level_withheld": by("level"), "voice_withheld": by("voice"), "pitch_withheld": by("pitch"),
             "voice_told": [d is not None and d.told is not None for d in per_clip],
             "unlike_withheld": by("unlike"),
             "struck": [d is not None and bool(d.struck) for d in per_clip],
             "unsure": [d is not None and bool(d.unsure) for d in per_clip]}
    for name, idx in [*groups.items(), *((f"{group_by}:{v}", i) for v, i in _groups(rows, group_by).items())]:
        metrics[name].update({k: sum(f[i] for i in idx) / len(idx) for k, f in flags.items()})
    if len(groups) == 1:
        metrics["all"] = dict(metrics[next(iter(groups))])
    else:
        metrics["all"] = compute_metrics(preds, [r.get("captions") or [] for r in rows],
                                         [r.get("attributes") for r in rows], parser=parser, meteor=scorer)
        tokens = sum(n for _, n in kls.values())
        weighted = sum(v * n for v, n in kls.values() if v is not None)
        metrics["all"].update(kl_gap=weighted / tokens if tokens else None, kl_tokens=tokens,
                              **{k: sum(f) / len(rows) for k, f in flags.items()})
    return metrics, list(groups)


def _write_report(out_json: Path, report: dict, rows: Sequence[dict], preds: list[str],
                  decisions: list) -> None:
    """predictions.jsonl beside `out_json` (one row per clip), then the report itself."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_json.parent / "predictions.jsonl", (
        {"id": r.get("id"), "split": r.get("split"), "prediction": p,
         "references": r.get("captions") or [], "attributes": r.get("attributes"),
         **({"decision": dataclasses.asdict(d)} if d is not None else {})}
        for r, p, d in zip(rows, preds, decisions, strict=True)))
    with atomic_write(out_json) as f:
        json.dump(report, f, indent=2, default=str)


def _groups(rows: Sequence[dict], group_by: str | None) -> dict[str, list[int]]:
    """{value: row indices} of `group_by` (module doc of `evaluate_checkpoint`); {} when None."""
    if not group_by:
        return {}
    out: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        value = r.get(group_by)
        if value is None and group_by == "corpus":
            value = str(r.get("id", "")).split("-", 1)[0]
        if value is None:
            raise DataError(f"{r.get('id')}: no {group_by!r} field to group the evaluation by")
        out.setdefault(str(value), []).append(i)
    return out


def _caption_rows(cap: Captioner, data_dir: Path, rows: Sequence[dict], settings: GenerationSettings,
                  decoding: DecodingSettings, show_progress: bool) -> tuple[list[str], list]:

    preds: list[str] = []
    decisions: list = []
    chunk = settings.batch_size * 4  # several generation batches per progress update
    with progress(disable=not show_progress) as bar:
        task = bar.add_task(f"caption ({decoding.strategy})", total=len(rows))
        for b in range(0, len(rows), chunk):
            part = rows[b:b + chunk]
            texts, why = cap.decode([row_speech(cap, data_dir, r, decoding) for r in part], settings, decoding)
            preds += texts
            decisions += why
            bar.update(task, advance=len(part))
    return preds, decisions


def row_speech(cap: Captioner, data_dir: Path, row: dict, decoding: DecodingSettings | None = None) -> Any:
    """A row as the student reads it: its codes, its prosody stream when the student reads one,
    its level when the checkpoint records a level range (the level check), and the cues of the
    checks `Captioner.human_checks` turns on for it (formant spacing, median F0)."""
    from aligncap_core.inference.captioner import Speech
    from aligncap_core.inference.domain import clip_band_hz, clip_level_db
    from aligncap_core.train.data import PROSODY_RATE, row_audio, row_streams

    d = decoding or cap.decoding
    checked = bool(cap.speech.level_range or cap.speech.band_range)
    # the audio is read once, for the stream and the checks alike (the checks of recordings
    # unlike the training audio only apply with a level or band range, which read it anyway)
    wav = row_audio(data_dir, row, "the prosody stream or the level, voice and pitch checks") \
        if cap.prosody is not None or checked or d.voice_check or d.pitch_check else None
    codes, stream = row_streams(data_dir, row, cap.prosody, wav)
    level = clip_level_db(wav, PROSODY_RATE) if cap.speech.level_range else None
    band = clip_band_hz(wav, PROSODY_RATE) if cap.speech.band_range else None
    spacing, f0 = cap.check_cues(wav, PROSODY_RATE, level, d, band)
    if stream is None and level is None and spacing is None and f0 is None and band is None:
        return codes
    return Speech(codes, stream, level, spacing, f0, band)


def _acoustic_prompt(cap: Captioner) -> bool:
    """Whether the student was distilled from a teacher reading P_act (its config says)."""
    return bool(cap.config.get("acoustic_prompt", True))


def _data_codec(ckpt_uri: str | os.PathLike, source: str | os.PathLike) -> str | None:
    """The prepared data dir's codec, for a checkpoint that carries none (older runs)."""
    from aligncap_core.inference.speech import find_codec
    from aligncap_core.model.checkpoint import read_meta

    if (read_meta(ckpt_uri).get("speech") or {}).get("codec") or not _is_prepared(str(source)):
        return None
    src = find_codec(source).source
    return src if src and Path(src).is_dir() else None
