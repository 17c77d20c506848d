"""Caption raw audio with a speech-student checkpoint.

    cap = Captioner.load("runs/student/step-00000600")        # or s3://..., codec_dir=...
    cap.caption_files(["a.wav", "b.flac"])                     # attribute-consistent decoding
    cap.caption_files(["a.wav"], decoding=DecodingSettings(strategy="greedy"))
    cap.caption_codes([codes_a, codes_b])                      # (n_q, T) int arrays

Audio path: decode (any soundfile format, any rate), downmix, resample to the codec's rate
(data/audio.py), encode with the checkpoint's codec (batched), then `instruction + <audio>...`
prompts through batched generation. The codec runs on the CPU (its batching is written for
CPU tensors); the LM runs on `device`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aligncap_core.errors import ConfigError, DataError
from aligncap_core.inference.consistent import (
    Decision,
    DecodingSettings,
    consistent_captions,
    greedy_captions,
)
from aligncap_core.inference.speech import SpeechSettings, resolve_speech
from aligncap_core.model.generate import GenerationSettings, generate_captions

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return torch.device(device)


def check_clip(path: str | os.PathLike) -> None:
    """Fail fast (before a model loads) on a missing or undecodable file: reads the header only."""
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: audio file not found")
    try:
        info = sf.info(str(p))
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types for bad input
        raise DataError(f"{path}: cannot decode audio ({str(e).splitlines()[0][:200]}); "
                        "use WAV/FLAC/OGG or convert the file") from e
    if info.frames <= 0:
        raise DataError(f"{path}: audio has no samples; re-export the clip")


def read_clip(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of an audio file at `sample_rate` Hz; DataError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: audio file not found")
    return decode_clip(p, sample_rate, label=str(path))


def decode_clip(source: bytes | str | os.PathLike, sample_rate: int, *, label: str = "audio",
                max_seconds: float = float("inf")) -> np.ndarray:
    """Mono float32 samples at `sample_rate` Hz of a local file or encoded bytes (any format
    soundfile reads). DataError starting with `label` on undecodable, empty, non-finite or
    (checked from the header, before decoding) longer than `max_seconds` audio."""
    from aligncap_core.data.audio import AudioProblem, decode, resample, to_mono

    try:
        x, rate = decode(source, max_duration=max_seconds)
        x = to_mono(x)
    except AudioProblem as e:
        raise DataError(f"{label}: {e.message}") from e
    if not np.isfinite(x).all():
        raise DataError(f"{label}: audio has NaN/inf samples; the file is corrupt")
    return resample(x, rate, sample_rate)


@dataclass
class Captioner:
    """A loaded student (model + tokenizer), its speech codec and prompt settings."""

    model: Any
    tokenizer: Any
    codec: Any  # a codec.SpeechTokenizer
    speech: SpeechSettings
    meta: dict
    config: dict  # the checkpoint's resolved run config (config.yaml; {} when absent)
    max_len: int  # tokens a sequence may hold (the model's positions, capped by the train config)
    codec_batch_size: int = 4  # CPU EnCodec is fastest at small batches (codec.dataset)
    decoding: DecodingSettings = dataclasses.field(default_factory=DecodingSettings)
    _parser: Any = None
    _warned: set = dataclasses.field(default_factory=set)  # warnings given once per captioner

    @classmethod
    def load(cls, ckpt_uri: str | os.PathLike, device: str = "auto",
             codec_dir: str | os.PathLike | None = None,
             dtype: torch.dtype | str | None = "auto", merge_adapters: bool = True) -> Captioner:
        """Load a student checkpoint (local path or s3://) and its codec.

        codec_dir: a saved codec folder, for checkpoints without one (older runs) or to
        override it; its fingerprint must match the one the checkpoint records, if any.
        dtype: the LM's weights and generation: "auto" (None alike) = bf16 on a GPU that
        supports it and on a CPU whose bf16 units are measured faster (`precision.cpu_bf16`:
        AMX, AVX512-BF16), else fp32; "fp32", "bf16" or a torch dtype force one. Every
        caption goes through `decode` whatever the dtype. The codec always encodes in fp32
        (its codes are what the student was trained on).
        merge_adapters: fold the LoRA adapter into the weights (`load_for_generation`).
        """
        from aligncap_core.codec import EncodecTokenizer
        from aligncap_core.model.checkpoint import fetch_to_local, load_for_generation, read_meta

        root = fetch_to_local(ckpt_uri)
        if not (root / "meta.json").is_file():
            raise ConfigError(f"{ckpt_uri}: not a checkpoint (no meta.json); pass a student "
                              "checkpoint folder such as RUN/step-00000600")
        if read_meta(root).get("stage") == "teacher":
            raise ConfigError(f"{ckpt_uri}: a teacher checkpoint reads text, not audio; pass a "
                              "student checkpoint")
        speech = resolve_speech(root, codec_dir)
        codec = EncodecTokenizer.from_pretrained(speech.codec, n_q=speech.n_q)
        if speech.codec_fingerprint and codec.fingerprint != speech.codec_fingerprint:
            raise ConfigError(f"codec {speech.codec} (fingerprint {codec.fingerprint}) is not the one "
                              f"{ckpt_uri} was trained with ({speech.codec_fingerprint}); pass the "
                              "training data's codec with --codec-dir")
        # what was actually loaded: older checkpoints record neither
        speech = dataclasses.replace(speech, n_q=codec.n_q, codec_fingerprint=codec.fingerprint)
        dev = pick_device(device)
        from aligncap_core.precision import inference_dtype

        if not isinstance(dtype, torch.dtype):
            dtype = inference_dtype(dtype or "auto", dev)
        model, tok, meta = load_for_generation(root, dtype=dtype, device=dev, merge_adapters=merge_adapters)
        n_pos = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        config = _run_config(root)
        cfg_len = (config.get("train") or {}).get("max_len") or n_pos
        cap = cls(model, tok, codec, speech, meta, config, min(n_pos, cfg_len),
                  codec_batch_size=16 if dev.type == "cuda" else 4)
        cap._check_vocab()
        return cap

    def _check_vocab(self) -> None:
        vocab = self.tokenizer.get_vocab()
        q = (self.speech.keep_q or self.codec.n_q) - 1
        if f"<a{q}_0>" not in vocab:
            raise ConfigError(f"the checkpoint's tokenizer has no tokens for codebook {q}; the codec "
                              f"({self.speech.codec}, n_q={self.codec.n_q}) does not match it")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype_name(self) -> str:
        """"fp32" or "bf16": what the LM runs in (`load`'s dtype)."""
        from aligncap_core.precision import dtype_name

        return dtype_name(next(self.model.parameters()).dtype)

    @property
    def dtype_line(self) -> str:
        """The LM's dtype and, on a CPU, why (the bf16 probe's verdict), for logs."""
        if self.device.type != "cpu":
            return self.dtype_name
        from aligncap_core.precision import cpu_bf16

        return f"{self.dtype_name} (CPU bf16 probe: {cpu_bf16().reason})"

    # ---- prompts --------------------------------------------------------------------------
    @property
    def prosody(self) -> Any:
        """The ProsodySettings of the prosody stream this student reads, or None."""
        from aligncap_core.codec.prosody import ProsodySettings

        return ProsodySettings.coerce(self.speech.prosody)

    def prompt_windows(self, clip: np.ndarray | Speech, max_new_tokens: int) -> list[list[int]]:
        """The prompt(s) for one clip (its `(n_q, T)` codes, or a `Speech`): bos + instruction
        + `<audio>...</audio>` (+ `<prosody>...</prosody>` when the student reads it) ids, or,
        for a clip longer than the model's budget (max_len - max_new_tokens), one such prompt
        per window of its speech (`batching.speech_windows`, every stream over the same span,
        as in training); never cut."""
        from aligncap_core.codec import codes_to_tokens
        from aligncap_core.model.batching import student_prompt_windows

        speech = clip if isinstance(clip, Speech) else Speech(np.asarray(clip))
        tokens = codes_to_tokens(speech.codes, keep_q=self.speech.keep_q)
        if self.prosody is not None:
            if speech.prosody is None:
                raise ConfigError("this checkpoint reads a prosody stream beside the codes: caption "
                                  "audio (caption_files / encode_waves), or pass Speech(codes, "
                                  "prosody tokens)")
            tokens += speech.prosody
        budget = self.max_len - max_new_tokens
        if budget < 2:
            raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt "
                              f"(the model holds {self.max_len} tokens)")
        return student_prompt_windows(self.tokenizer, self.speech.instruction, tokens, budget)

    @torch.no_grad()
    def caption_logprob(self, prompts: Sequence[Sequence[int]], captions: Sequence[str]) -> list[float]:
        """Mean log-probability per token of each caption after its prompt (how sure the model
        is of what it wrote), one forward over the batch."""
        from aligncap_core.model.batching import build_example, pad_examples
        from aligncap_core.model.caption_head import caption_logits, caption_targets

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else \
            self.tokenizer.eos_token_id
        b = {k: v.to(self.device) for k, v in pad_examples(
            [build_example(self.tokenizer, p, c) for p, c in zip(prompts, captions, strict=True)],
            pad).items()}
        logits, mask = caption_logits(self.model, b["input_ids"], b["attention_mask"],
                                      b["caption_start"], b["caption_len"])
        targets = caption_targets(b["labels"], b["caption_start"], b["caption_len"])
        logp = torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp_min(0)[..., None])[..., 0]
        return ((logp * mask).sum(1) / mask.sum(1).clamp_min(1)).tolist()

    # ---- captioning -----------------------------------------------------------------------
    def default_settings(self, **overrides: Any) -> GenerationSettings:
        """The checkpoint's decoding settings: `GenerationSettings()` (the library default),
        updated by a `generation:` mapping in its config.yaml when it has one, then by the
        `overrides` that are not None. Every entry point (CLI, pyfunc, service) decodes with
        this, so a new default decoding reaches all of them."""
        saved = self.config.get("generation") or {}
        s = dataclasses.replace(GenerationSettings(), **saved) if saved else GenerationSettings()
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(s, **given) if given else s

    def caption_codes(self, codes: Sequence[np.ndarray | Speech], settings: GenerationSettings | None = None,
                      decoding: DecodingSettings | None = None) -> list[str]:
        """One caption per clip (`(n_q, T)` codes, or a `Speech`), in order (see `decode`)."""
        return self.decode(codes, settings, decoding)[0]

    def decode(self, codes: Sequence[np.ndarray | Speech], settings: GenerationSettings | None = None,
               decoding: DecodingSettings | None = None) -> tuple[list[str], list[Decision | None]]:
        """(captions, decisions), one per clip (`(n_q, T)` codes, or a `Speech` when the
        student reads a prosody stream too), in order.

        settings: generation limits (max_new_tokens, batch_size). decoding: greedy or the
        attribute-consistent decoder (`inference.consistent`); default `self.decoding`. A
        decision (consistent decoding; greedy only for a clip the level check withholds
        attributes of, else None) says which candidate was chosen, how much the candidates
        agreed on each attribute, and what was withheld and why (`inference.domain`). Prompts
        are generated longest first, so each batch carries little left padding.
        """
        from aligncap_core.prefs.candidates import audio_token_ids_of

        s = settings or GenerationSettings()
        d = decoding or self.decoding
        if not codes:
            return [], []
        # a clip too long for the model is read window by window (`prompt_windows`); each
        # window is captioned, and the clip gets the caption the model is surest of
        windows = [self.prompt_windows(c, s.max_new_tokens) for c in codes]
        owner = [i for i, ws in enumerate(windows) for _ in ws]
        prompts = [w for ws in windows for w in ws]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        suppress = audio_token_ids_of(self.tokenizer)

        def generate(ps: Sequence[Sequence[int]], do_sample: bool, n: int, seed: int | None) -> list[str]:
            g = dataclasses.replace(s, do_sample=do_sample, num_return_sequences=n, num_beams=1,
                                    temperature=d.temperature if do_sample else s.temperature,
                                    top_p=d.top_p if do_sample else s.top_p)
            return generate_captions(self.model, self.tokenizer, ps, g, suppress_token_ids=suppress,
                                     generator_seed=seed)

        def omit(ps: Sequence[Sequence[int]], attrs: Sequence[str], tell: dict | None = None,
                 start: bool = False) -> list[str]:
            from aligncap_core.inference.consistent import (
                cut_lead_in,
                join_prefix,
                omit_token_ids,
                tell_prefix,
                trim_dangling,
            )

            # a told attribute's other values are suppressed; with `start`, the caption starts
            # with the told value's words (`tell_prefix`)
            prefix = tell_prefix(tell) if start else ""
            start_ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
            g = dataclasses.replace(s, do_sample=False, num_return_sequences=1, num_beams=1,
                                    no_repeat_ngram_size=d.retry_ngram,
                                    max_new_tokens=max(1, s.max_new_tokens - len(start_ids)))
            # without the emotion's words, a caption is ended before an emotion's lead-in
            end = cut_lead_in if "emotion" in attrs else trim_dangling
            return [end(join_prefix(prefix, t)) for t in generate_captions(
                self.model, self.tokenizer, [[*p, *start_ids] for p in ps], g,
                suppress_token_ids=suppress + omit_token_ids(self.tokenizer, attrs, tell))]

        sorted_prompts = [prompts[i] for i in order]
        clip_held = self.withheld(codes, d)
        held = [clip_held[owner[i]] for i in order]
        clip_checks, clip_told = self.clip_checks(codes, d)
        checks = [clip_checks[owner[i]] for i in order]
        told = [clip_told[owner[i]] for i in order]
        if d.strategy == "greedy":
            texts, decisions = greedy_captions(
                lambda ps: generate_captions(self.model, self.tokenizer, ps, s, suppress_token_ids=suppress),
                sorted_prompts, self.parser, omit, held, checks, told)
        else:
            texts, decisions = consistent_captions(generate, sorted_prompts, d, self.parser, omit,
                                                   held, checks, told)
        out: list[str] = [""] * len(prompts)
        why: list[Decision | None] = [None] * len(prompts)
        for i, t, w in zip(order, texts, decisions, strict=True):
            out[i], why[i] = t, w
        if len(prompts) == len(codes):
            return out, why
        return self._pick_windows(windows, owner, prompts, out, why)

    def _pick_windows(self, windows: list[list[list[int]]], owner: list[int],
                      prompts: list[list[int]], out: list[str], why: list[Decision | None],
                      ) -> tuple[list[str], list[Decision | None]]:
        """Per clip, the caption of the window whose caption has the highest mean token
        log-probability under the model (ties: the earliest window)."""
        long = [k for k, i in enumerate(owner) if len(windows[i]) > 1]
        scores = dict(zip(long, self.caption_logprob([prompts[k] for k in long],
                                                     [out[k] for k in long]), strict=True))
        best: dict[int, int] = {}
        for k, i in enumerate(owner):
            if i not in best or scores.get(k, 0.0) > scores.get(best[i], 0.0):
                best[i] = k
        return [out[best[i]] for i in range(len(windows))], [why[best[i]] for i in range(len(windows))]

    @property
    def parser(self) -> Any:
        """The emotion clue parser (loaded on first use: spaCy takes ~1 s)."""
        if self._parser is None:
            from aligncap_core.clues import EmotionClueParser

            self._parser = EmotionClueParser()
        return self._parser

    def encode_waves(self, waves: Sequence[np.ndarray],
                     decoding: DecodingSettings | None = None) -> list[Speech]:
        """What the student reads of each mono wave at the codec's rate: its codes `(n_q, T)`,
        the prosody stream when the student reads one, the clip's level and band edge (for the
        level check and the checks of recordings unlike the training audio, `inference.domain`),
        and the cues of the checks `human_checks` turns on for it: its formant spacing (voice
        check) and median F0 (pitch check)."""
        from aligncap_core.inference.domain import clip_band_hz, clip_level_db

        codes = self.codec.encode(list(waves), batch_size=self.codec_batch_size)
        rate = self.codec.sample_rate
        levels = [clip_level_db(w, rate) for w in waves]
        bands = [clip_band_hz(w, rate) if self.speech.band_range else None for w in waves]
        cues = [self.check_cues(w, rate, lv, decoding, b) for w, lv, b in zip(waves, levels, bands, strict=True)]
        prosody = self.prosody
        if prosody is None:
            return [Speech(c, None, lv, *cue, b) for c, lv, cue, b in zip(codes, levels, cues, bands, strict=True)]
        from aligncap_core.codec.prosody import clip_streams

        return [Speech(*clip_streams(c, w, rate, prosody), lv, *cue, b)
                for c, w, lv, cue, b in zip(codes, waves, levels, cues, bands, strict=True)]

    def check_cues(self, wav: np.ndarray | None, sample_rate: int, level_db: float | None,
                   decoding: DecodingSettings | None = None,
                   band_hz: float | None = None) -> tuple[float | None, float | None]:
        """(formant spacing, median F0) of a clip of this level and band edge, each measured only
        when `human_checks` turns on the check that reads it (~20 ms a clip), else None."""
        from aligncap_core.inference.domain import clip_cues

        voice, pitch = self.human_checks(level_db, decoding, band_hz)
        return clip_cues(wav, sample_rate, self.prosody, spacing=voice, f0=pitch)

    def unlike(self, level_db: float | None, decoding: DecodingSettings | None = None,
               band_hz: float | None = None) -> str | None:
        """Why a clip of this level and band edge is a recording unlike the training audio
        (`domain.unlike_reason` against the checkpoint's ranges), or None: like it, unknown
        (a checkpoint that records neither range), or `ood_checks` off."""
        from aligncap_core.inference.domain import unlike_reason

        d = decoding or self.decoding
        if not d.ood_checks:
            return None
        return unlike_reason(level_db, self.speech.level_range if d.level_check else None,
                             d.level_margin_db, band_hz, self.speech.band_range, d.band_margin_hz)

    def human_checks(self, level_db: float | None, decoding: DecodingSettings | None = None,
                     band_hz: float | None = None) -> tuple[bool, bool]:
        """(voice check, pitch check) for a clip of this level and band edge: each on when asked
        for (`voice_check`, `pitch_check`), and both on, with `ood_checks`, for a recording
        unlike the training audio (`unlike`: the cues they read are those that carry over to
        human voices, `inference.domain`). The voice check needs a checkpoint with a voice
        boundary."""
        d = decoding or self.decoding
        unlike = self.unlike(level_db, d, band_hz) is not None
        return bool(self.speech.voice_boundary) and (d.voice_check or unlike), d.pitch_check or unlike

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning(message)

    def withheld(self, clips: Sequence[np.ndarray | Speech],
                 decoding: DecodingSettings | None = None) -> list[Any]:
        """Per clip, the attributes left out before any caption is looked at
        (`domain.Withheld`) or None: volume and emotion by the level check, and emotion on a
        recording unlike the training audio with `ood_emotion` (`domain.unlike_withheld`,
        where the level check has not already left it out). A clip given as bare codes, or a
        checkpoint that records neither range, is not checked."""
        from aligncap_core.inference.domain import level_verdict, merged, unlike_withheld

        d = decoding or self.decoding
        out: list[Any] = []
        for c in clips:
            if not isinstance(c, Speech):
                out.append(None)
                continue
            level = level_verdict(c.level_db, self.speech.level_range, d.level_margin_db) \
                if d.level_check and self.speech.level_range else None
            unlike = None
            if d.ood_emotion and (level is None or "emotion" not in level.attributes):
                unlike = unlike_withheld(self.unlike(c.level_db, d, c.band_hz))
            out.append(merged(level, unlike))
        return out

    def clip_checks(self, clips: Sequence[np.ndarray | Speech],
                    decoding: DecodingSettings | None = None) -> tuple[list[Any], list[Any]]:
        """Per clip, (its voice and pitch checks (`human_checks`) as one function of what a
        caption would state (`domain.clip_verdict`), or None: no check on for it, or not
        possible (a checkpoint without a voice boundary, a clip given as bare codes or whose
        cues were not measured); and the gender its caption states from its formant spacing
        (`domain.voice_told`, for a recording unlike the training audio with `ood_gender`; the
        voice check's veto is then not needed), or None)."""
        from functools import partial

        from aligncap_core.inference.domain import clip_verdict, voice_reading, voice_told

        d = decoding or self.decoding
        boundary = self.speech.voice_boundary
        if boundary and d.voice_margin:
            boundary = {**boundary, "margin": d.voice_margin}
        if d.voice_check and not boundary:
            self._warn_once("the voice check is on, but this checkpoint records no voice boundary "
                            "(trained before it, or on clips without a gender): no caption is checked")
        threshold = d.risk / (1 + d.risk)
        checks: list[Any] = []
        told: list[Any] = []
        for c in clips:
            if not isinstance(c, Speech):
                checks.append(None)
                told.append(None)
                continue
            voice, pitch = self.human_checks(c.level_db, d, c.band_hz)
            if (voice and c.spacing_hz is None) or (pitch and c.f0_hz is None):
                self._warn_once("a voice or pitch check is on, but some clips were encoded without "
                                "the cue it reads (encode_waves with other decoding settings): those "
                                "are not checked")
            why = self.unlike(c.level_db, d, c.band_hz) if voice and d.ood_gender else None
            tell = voice_told(c.spacing_hz, boundary, why) if why else None
            bound = boundary if voice and tell is None and voice_reading(c.spacing_hz, boundary) else None
            bar = threshold if pitch and c.f0_hz is not None else None
            told.append(tell)
            checks.append(partial(clip_verdict, spacing_hz=c.spacing_hz, boundary=bound, f0_hz=c.f0_hz,
                                  pitch_threshold=bar) if bound or bar is not None else None)
        return checks, told

    def encode_files(self, paths: Sequence[str | os.PathLike]) -> list[Speech]:
        """`encode_waves` of each file. Every file is read (and checked) before any encoding,
        so a bad file fails fast with its name."""
        return self.encode_waves([read_clip(p, self.codec.sample_rate) for p in paths])

    def caption_files(self, paths: Sequence[str | os.PathLike], settings: GenerationSettings | None = None,
                      decoding: DecodingSettings | None = None) -> list[str]:
        """One caption per audio file (WAV/FLAC/OGG, any rate, mono or stereo), in order."""
        return self.caption_codes(self.encode_files(paths), settings, decoding)


@dataclass
class Speech:
    """One clip as the student reads it: EnCodec codes `(n_q, T)`, for a student that reads
    one its prosody stream as tokens (`codec.prosody.prosody_to_tokens`), its level, (for the
    voice and pitch checks) its formant spacing and median F0, and its band edge."""

    codes: np.ndarray
    prosody: list[str] | None = None
    level_db: float | None = None  # the clip's level, dBFS (`domain.clip_level_db`); None: unknown
    # the formant spacing, Hz (`domain.clip_spacing_hz`); None: not measured (no voice boundary)
    spacing_hz: float | None = None
    # the median F0, Hz (`domain.clip_f0_hz`); None: not measured (the pitch check off)
    f0_hz: float | None = None
    # the band edge, Hz (`domain.clip_band_hz`); None: not measured (no band range recorded)
    band_hz: float | None = None


def _run_config(root: Path) -> dict:
    import yaml

    path = root / "config.yaml"
    return (yaml.safe_load(path.read_text()) if path.is_file() else None) or {}
