"""`CaptionEngine`: one loaded model that turns clips into captions and their attributes.

    engine = CaptionEngine.load("models:/aligncap-sec@champion")
    engine.caption([engine.waveform(b"RIFF...", "upload.wav")])
    # -> [{"caption": "A woman speaks quickly ...", "attributes": {"speed": "fast", ...}}]

The batch command (`serving.batch`), the MLflow pyfunc (`serving.pyfunc`) and the HTTP service
(`serving.http`) all caption through this class, and it through `Captioner.caption_codes` with
the checkpoint's own decoding settings (`Captioner.default_settings`): decoding is never
re-implemented here. "attributes" are the caption's attribute values as the project's emotion
clue parser reads them (`EmotionClueParser.parse(text).attributes`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from aligncap_core.errors import DataError
from aligncap_core.serving.model_ref import ResolvedModel, resolve_model

DEFAULT_MAX_SECONDS = 60.0  # longer clips are refused: split them (the student trained on ~2-10 s)


class CaptionEngine:
    """A `Captioner`, its decoding settings and the clue parser, behind one lock (the model is
    not safe to call from two threads at once; callers batch instead).

    settings: `GenerationSettings` overrides (max_new_tokens, num_beams, batch_size, ...) on
    top of the checkpoint's defaults. decoding: a strategy ("greedy", "consistent") instead of
    the Captioner's default (`inference.consistent.DecodingSettings`). level_check: False turns
    the level check off, voice_check: False turns the voice check off (voice_margin: how far past
    its boundary a clip's tract must be to contradict a gender), pitch_check: True turns
    the pitch check on, ood_checks: False stops the checks for recordings unlike the training
    audio (level or band edge outside its range), ood_gender: False keeps the model's gender on
    those, ood_emotion: False lets their captions state an emotion (`inference.domain`; None
    keeps the defaults: level and voice on, pitch off but for those clips, whose gender their
    tract tells and whose emotion is not stated). max_seconds: the longest clip accepted.
    """

    def __init__(self, captioner: Any, model: ResolvedModel, *, max_seconds: float = DEFAULT_MAX_SECONDS,
                 decoding: str | None = None, level_check: bool | None = None,
                 voice_check: bool | None = None, voice_margin: float | None = None,
                 pitch_check: bool | None = None, ood_checks: bool | None = None,
                 ood_gender: bool | None = None, ood_emotion: bool | None = None,
                 **settings: Any) -> None:
        import dataclasses

        self.captioner = captioner
        self.model = model
        self.settings = captioner.default_settings(**settings)
        if decoding:
            captioner.decoding = dataclasses.replace(captioner.decoding, strategy=decoding)
        if level_check is not None:
            captioner.decoding = dataclasses.replace(captioner.decoding, level_check=level_check)
        if voice_check is not None:
            captioner.decoding = dataclasses.replace(captioner.decoding, voice_check=voice_check)
        if voice_margin is not None:
            captioner.decoding = dataclasses.replace(captioner.decoding, voice_margin=voice_margin)
        if pitch_check is not None:
            captioner.decoding = dataclasses.replace(captioner.decoding, pitch_check=pitch_check)
        if ood_checks is not None:
            captioner.decoding = dataclasses.replace(captioner.decoding, ood_checks=ood_checks)
        if ood_gender is not None:
            captioner.decoding = dataclasses.replace(captioner.decoding, ood_gender=ood_gender)
        if ood_emotion is not None:
            captioner.decoding = dataclasses.replace(captioner.decoding, ood_emotion=ood_emotion)
        self.max_seconds = max_seconds
        self.parser = captioner.parser  # the one the consistent decoder votes with
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model: str | os.PathLike, *, device: str = "auto", tracking_uri: str | None = None,
             codec_dir: str | os.PathLike | None = None, dtype: str = "auto",
             **kwargs: Any) -> CaptionEngine:
        """Resolve `model` (folder, s3://, models:/, runs:/; see `serving.model_ref`), load it.
        dtype: the LM's (`Captioner.load`: auto = bf16 where the device has fast bf16)."""
        from aligncap_core.inference.captioner import Captioner

        resolved = resolve_model(model, tracking_uri)
        cap = Captioner.load(resolved.checkpoint, device=device, codec_dir=codec_dir, dtype=dtype)
        return cls(cap, resolved, **kwargs)

    @property
    def sample_rate(self) -> int:
        return self.captioner.codec.sample_rate

    @property
    def version(self) -> str:
        return self.model.version

    # ---- inputs ---------------------------------------------------------------------------
    def waveform(self, source: bytes | str | os.PathLike, label: str | None = None) -> np.ndarray:
        """Mono samples at the codec's rate of encoded bytes, a local file or an s3:// URI.
        DataError starting with `label` (default: the path) on missing, undecodable, empty or
        too long audio."""
        from aligncap_core.inference.captioner import decode_clip

        label = label or str(source)
        if isinstance(source, str) and source.startswith("s3://"):
            from aligncap_core.data import storage

            source = storage.read_bytes(source)
        elif not isinstance(source, bytes | bytearray) and not os.path.isfile(source):
            raise DataError(f"{label}: audio file not found")
        return decode_clip(source, self.sample_rate, label=label, max_seconds=self.max_seconds)

    def from_samples(self, samples: Any, sample_rate: int, label: str = "samples") -> np.ndarray:
        """Samples given as an array ((frames,) or (frames, channels), any rate) -> mono at the
        codec's rate; DataError on an empty, non-finite or too long array."""
        from aligncap_core.data.audio import AudioProblem, resample, to_mono

        if not sample_rate or int(sample_rate) <= 0:
            raise DataError(f"{label}: samples need a positive sample_rate, got {sample_rate!r}")
        try:
            x = to_mono(np.asarray(samples, dtype=np.float32))
        except (AudioProblem, ValueError, TypeError) as e:
            raise DataError(f"{label}: samples are not an audio array ({e})") from e
        if x.size == 0:
            raise DataError(f"{label}: samples are empty")
        if not np.isfinite(x).all():
            raise DataError(f"{label}: samples contain NaN/inf")
        if x.size / int(sample_rate) > self.max_seconds:
            raise DataError(f"{label}: clip is {x.size / int(sample_rate):.1f} s, longer than "
                            f"{self.max_seconds:g} s; split it")
        return resample(x, int(sample_rate), self.sample_rate)

    # ---- captioning -----------------------------------------------------------------------
    def caption(self, waves: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """`{"caption", "attributes", "withheld", "told", "struck", "unsure"}` per mono wave at
        the codec's rate, in order; withheld: None, or the attributes the level, voice or pitch
        check left out and why; told: None, or the gender stated from the clip's formant spacing
        on a recording unlike the training audio, and why (`inference.domain`); struck: the
        attributes deleted from the caption because the candidates did not agree on them;
        unsure: those the caption still states below the agreement bar (`consistent.Decision`;
        both [] with greedy decoding, which has no candidates to agree). The codec buckets the clips by length and generation runs
        longest first in batches of `settings.batch_size` (`Captioner.decode`)."""
        if not waves:
            return []
        with self._lock:
            cap = self.captioner
            texts, decisions = cap.decode(cap.encode_waves(waves), self.settings)
        parsed = self.parser.parse_many(texts)
        return [{"caption": t, "attributes": dict(p.attributes),
                 "withheld": d.withheld if d is not None else None,
                 "told": d.told if d is not None else None,
                 "struck": list(d.struck) if d is not None else [],
                 "unsure": list(d.unsure) if d is not None else []}
                for t, p, d in zip(texts, parsed, decisions, strict=True)]
