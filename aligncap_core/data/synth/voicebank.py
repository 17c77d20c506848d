"""The corpus' own espeak-ng voice variants: level-normalised voices and voice-quality variants.

espeak-ng reads a voice variant (timbre, base F0, breath, roughness) from a small text file in
`espeak-ng-data/voices/!v/`. The corpus needs variants the wheel does not ship:

- **normalised voices** (`ac-<variant>`): the shipped female variants speak at 172-270 Hz and
  the male ones at 92-108 Hz. A "high" pitch is defined against the same voice's normal F0, so
  with a 1.6x spread of normal F0 within a gender, one clip cannot tell a high-pitched low voice
  from a normal high voice. Each variant's F0 is pulled towards its gender's centre (the
  spread is compressed to `F0_SPREAD_KEPT` of itself, in log F0, so voices stay distinct), by
  scaling the `pitch` line of its file.
- **voice quality** (`ac-<variant>-<quality>`): the same voice with espeak's breath noise
  ("breathy") or roughness ("harsh"), the voice-quality cues the vocal-affect literature
  reports for sadness / tenderness and anger / disgust. Only settings that keep the F0 and level
  measurable are used (stronger breath or F0 flutter make the pitch checks unreliable).

`data_dir()` builds an espeak-ng-data folder that links everything of the wheel's data and adds
these variant files (a few KB), once per machine, in `ALIGNCAP_CACHE` (default
`~/.cache/aligncap`); the folder name holds a hash of the generated files, so a change here
builds a new folder and never reuses a stale one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from functools import cache
from pathlib import Path

# Centre of normal F0 per gender (Hz) and the share of each variant's log-F0 distance from it
# that is kept: 0.3 turns the shipped 172-270 Hz female range into ~199-227 Hz.
F0_CENTRE = {"male": 100.0, "female": 210.0}
F0_SPREAD_KEPT = 0.3

# espeak variant-file lines appended for each voice quality ("modal" adds nothing).
QUALITIES: dict[str, str] = {
    "modal": "",
    "breathy": "breath 30 30 20 20 10 10 0 0\nvoicing 85",
    "harsh": "roughness 6",
}
PREFIX = "ac-"


def variant_file(variant: str, quality: str = "modal") -> str:
    """The espeak variant name of `variant` (shipped name) in the normalised voice bank."""
    if quality not in QUALITIES:
        raise ValueError(f"unknown voice quality {quality!r} (known: {', '.join(QUALITIES)})")
    return f"{PREFIX}{variant}" + ("" if quality == "modal" else f"-{quality}")


def pitch_scale(gender: str, f0_hz: float) -> float:
    """Factor on a variant's `pitch` line that moves its measured normal F0 towards the centre."""
    centre = F0_CENTRE[gender]
    return (centre / f0_hz) ** (1.0 - F0_SPREAD_KEPT)


_PITCH_LINE = re.compile(r"^pitch\s+(\d+)\s+(\d+)\s*$", re.MULTILINE)
_DEFAULT_PITCH = (82, 118)  # espeak's default `pitch` when a variant file has none


def render_variant(text: str, scale: float, quality: str) -> str:
    """A shipped variant file's text with its `pitch` line scaled and the quality lines added."""
    def scaled(m: re.Match) -> str:
        return f"pitch {round(int(m[1]) * scale)} {round(int(m[2]) * scale)}"

    if _PITCH_LINE.search(text):
        text = _PITCH_LINE.sub(scaled, text)
    else:
        lo, hi = _DEFAULT_PITCH
        text = text.rstrip() + f"\npitch {round(lo * scale)} {round(hi * scale)}\n"
    extra = QUALITIES[quality]
    return text.rstrip() + ("\n" + extra + "\n" if extra else "\n")


def generated_files(shipped: Path) -> dict[str, str]:
    """{variant file name: text} of every voice-bank variant (from the shipped `!v` folder)."""
    from .profiles import VARIANTS

    out = {}
    for v in VARIANTS:
        text = (shipped / v.name).read_text()
        for quality in QUALITIES:
            out[variant_file(v.name, quality)] = render_variant(
                text, pitch_scale(v.gender, v.f0_hz), quality)
    return out


@cache
def data_dir() -> Path:
    """An espeak-ng-data folder with the voice bank added (built once, then reused). Its parent
    is what `espeak_Initialize` takes."""
    import espeakng_loader

    src = Path(espeakng_loader.get_data_path())
    files = generated_files(src / "voices" / "!v")
    digest = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:12]
    from aligncap_core.store import cache_root

    root = cache_root()
    dest = root / f"espeak-{digest}"
    probe = dest / "espeak-ng-data" / "voices" / "!v" / next(iter(files))
    if probe.is_file():
        return dest / "espeak-ng-data"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".espeak-", dir=root))
    try:
        data = tmp / "espeak-ng-data"
        data.mkdir()
        for p in src.iterdir():  # everything but voices/ is linked, not copied (19 MB)
            if p.name != "voices":
                os.symlink(p, data / p.name)
        (data / "voices").mkdir()
        for p in (src / "voices").iterdir():
            if p.name != "!v":
                os.symlink(p, data / "voices" / p.name)
        vdir = data / "voices" / "!v"
        vdir.mkdir()
        for p in (src / "voices" / "!v").iterdir():
            os.symlink(p, vdir / p.name)
        for name, text in files.items():
            (vdir / name).write_text(text)
        try:
            os.rename(tmp, dest)  # atomic; another process may have won the race
        except OSError:
            if not probe.is_file():
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return dest / "espeak-ng-data"
