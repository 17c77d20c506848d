"""The level check: a clip far louder or quieter than every training clip is not read for
volume or emotion.

A student learns "loud" and "soft" from the absolute level of its training audio (the built-in
corpus renders loud speech by raising the amplitude, and its volume labels are measured that
way), and it reads emotion partly from the same level (anger and joy loud, sadness and calm
soft). A real recording's level is set by the microphone and its gain, not by the speaker:
EmoDB's clips are normalised to peak, 3-35 dB above every clip of the demo corpus, and a student
reads all of them as loud and nearly all as "happy" (docs/experiments/realdata_transfer.md,
"The level check"). Such a caption is an extrapolation stated as a fact.

So a checkpoint records the level range of its training clips (`SpeechSettings.level_range`,
dBFS: the 0.5th and 99.5th percentile of `clip_level_db` over the train split) and decoding
leaves volume and emotion out of the caption of a clip whose level is more than
`DecodingSettings.level_margin_db` outside it (`level_verdict`). The caption says less; the
decision (`Decision.withheld`) says what was left out and why, with the figures, so a user can
check it (and turn the check off, `level_check: false`, for audio recorded like the training
audio).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aligncap_core.errors import DataError

log = logging.getLogger(__name__)

# what a student reads from the absolute level: the volume itself and (in part) the emotion
LEVEL_ATTRS: tuple[str, ...] = ("volume", "emotion")
RANGE_PERCENTILES = (0.5, 99.5)
MAX_FIT_CLIPS = 2000


@dataclass(frozen=True)
class Withheld:
    """Attributes a caption leaves out whatever the model believes, and why (for the user)."""

    attributes: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict:
        return {"attributes": list(self.attributes), "reason": self.reason}


def clip_level_db(wav: np.ndarray, sample_rate: int) -> float:
    """The clip's level as the corpus measures its volume labels: mean power of the 10 ms frames
    within 35 dB of the loudest, dBFS (`data.synth.measure`)."""
    from aligncap_core.data.synth.measure import active_level_db, frame_levels_db

    return active_level_db(frame_levels_db(np.asarray(wav, dtype=np.float64), sample_rate))


def level_range(levels: Sequence[float]) -> list[float]:
    """[low, high] dBFS: the 0.5th and 99.5th percentile of the training clips' levels."""
    if not len(levels):
        raise DataError("no training clip to take the level range from")
    lo, hi = np.percentile(np.asarray(levels, dtype=np.float64), RANGE_PERCENTILES)
    return [round(float(lo), 2), round(float(hi), 2)]


def training_level_range(data_dir: str | os.PathLike, rows: Sequence[dict], sample_rate: int = 24_000,
                         seed: int = 0) -> list[float] | None:
    """`level_range` of the rows' audio (at most MAX_FIT_CLIPS of them, a seeded sample): what a
    student trained on `rows` has heard. None, with a warning, when no row's audio file is
    there (codes without audio): the checkpoint then records no range and is not checked.
    DataError naming the row when some rows have their audio and others do not."""
    from aligncap_core.codec.tokenizer import read_audio
    from aligncap_core.train.data import row_audio_path

    rows = list(rows)
    if len(rows) > MAX_FIT_CLIPS:
        pick = np.random.default_rng(seed).choice(len(rows), MAX_FIT_CLIPS, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    paths = [row_audio_path(data_dir, r) for r in rows]
    found = [p.is_file() for p in paths]
    if not any(found):
        log.warning("%s: no training clip's audio is there; the student records no level range "
                    "and its captions are not level-checked (inference.domain)", data_dir)
        return None
    if not all(found):
        i = found.index(False)
        raise DataError(f"{rows[i].get('id')}: audio file not found: {paths[i]} (the level range "
                        "of the training audio is read from every clip's audio)")
    levels = [clip_level_db(read_audio(p, sample_rate), sample_rate) for p in paths]
    out = level_range(levels)
    log.info("level range of %d training clips: %.1f to %.1f dBFS", len(levels), *out)
    return out


def level_verdict(level_db: float | None, trained: Sequence[float] | None,
                  margin_db: float) -> Withheld | None:
    """`Withheld(LEVEL_ATTRS, why)` when the clip's level is more than `margin_db` outside the
    `trained` range; None when it is inside, or when either is unknown (a checkpoint saved
    before the range was recorded)."""
    if level_db is None or not trained:
        return None
    lo, hi = trained
    if lo - margin_db <= level_db <= hi + margin_db:
        return None
    side = "louder" if level_db > hi else "quieter"
    return Withheld(LEVEL_ATTRS, f"the clip's level ({level_db:.1f} dBFS) is {side} than the "
                                 f"training audio's ({lo:.1f} to {hi:.1f} dBFS, margin "
                                 f"{margin_db:g} dB): volume and emotion are not read from it")
