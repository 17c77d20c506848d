"""Build the synthetic emotional speech corpus: plan, render in a process pool, verify, write.

Steps
1. Plan (main process, from the seed only): each clip index gets a split, an emotion
   (balanced within each split), a voice and a sentence from that split's pool
   (`zeroshot` draws from the held-out voices and sentences, see `profiles` / `sentences`).
2. Render (workers; libespeak-ng is process-global, so one engine per process): turn the
   emotion's signature (`profiles.PROFILES`: pitch/speed/volume labels, pitch range, voice
   quality, final tune) into jittered espeak parameters, synthesise, and measure against the
   same voice's normal rendering of the same sentence (cached per process). A clip whose
   measurement disagrees with a label (`checks.py`) is re-rendered with fresh jitter (plus a
   correction towards the missed band) up to `max_attempts` times, then from fresh jitter
   without the corrections, up to `max_replacements` times. Nothing is kept mislabelled: the
   last resort is the voice's exact normal rendering labelled neutral.
3. Write `audio/<id>.wav` (22,050 Hz mono PCM16), `manifest.jsonl` and `corpus.json`.

Determinism: every random draw for clip i comes from `default_rng([seed, i, stream, ...])`,
and espeak renders each clip's sequence (reference, attempts) in a fresh forked engine
(`Espeak.synth_sequence`), so the output is byte-identical for a seed whatever the number of
workers or the order they take clips in. Audio files already on disk with identical bytes are
left untouched (re-running into the same folder rewrites nothing).
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from aligncap_core.defaults import SYNTH_N
from aligncap_core.errors import ConfigError
from aligncap_core.utils import atomic_write, progress, sha256_bytes, write_jsonl
from aligncap_core.vocab import SPLITS

from . import flite as F
from . import profiles as P
from .captions import write_captions
from .checks import QUANTITY, THRESHOLDS, check, compare
from .espeak import SAMPLE_RATE, Espeak
from .measure import Measurement, measure
from .sentences import SEEN_SENTENCES, SENTENCES, ZEROSHOT_SENTENCES

# Independent random streams per clip (numbers are part of the seed: do not renumber).
_JITTER, _CAPTIONS, _SYNTH = 2, 3, 4
SYNTHESIZERS = ("espeak-ng", F.NAME)


def resolve_synthesizers(spec: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The synthesizers a corpus setting names: "auto" is espeak-ng plus every other one found on
    this machine; a list is checked (a ConfigError says what to install when one is missing)."""
    if spec is None or spec == "auto":
        return ("espeak-ng",) + ((F.NAME,) if F.available() else ())
    names = (spec,) if isinstance(spec, str) else tuple(spec)
    if "espeak-ng" not in names:
        names = ("espeak-ng",) + names
    for name in names:
        if name not in SYNTHESIZERS:
            raise ConfigError(f"unknown synthesizer {name!r} (known: {', '.join(SYNTHESIZERS)}, or 'auto')")
        if name == F.NAME:
            F.require()
    return tuple(sorted(set(names), key=SYNTHESIZERS.index))


def synthesizer_versions(names: tuple[str, ...]) -> dict[str, str]:
    """{synthesizer: version} of what renders the corpus (recorded in corpus.json and the
    corpus' cache key, so a corpus is never reused across synthesizer builds)."""
    from importlib import metadata

    out = {}
    for name in names:
        if name == "espeak-ng":
            try:
                out[name] = "espeakng-loader " + metadata.version("espeakng-loader")
            except metadata.PackageNotFoundError:
                out[name] = "unknown"
        else:
            out[name] = F.require()
    return out


@dataclass(frozen=True)
class SynthConfig:
    n: int = 2000
    seed: int = 0
    # Share of clips per split; zeroshot uses only held-out voices and sentences.
    proportions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.7, "valid": 0.1, "test": 0.1, "zeroshot": 0.1})
    captions_per_clip: int = 4  # reference captions per clip (>= 3 for caption metrics)
    max_attempts: int = 4  # renderings of one label set (fresh jitter each) before dropping it
    max_replacements: int = 3  # fresh label sets tried after a drop
    # Synthesizers besides espeak-ng ("flite", `flite.py`) add other_share x the train split's
    # size of train clips, half of them in a woman's voice. The n espeak-ng clips (every split)
    # are byte for byte what espeak-ng alone makes; valid, test and zeroshot are only those.
    synthesizers: tuple[str, ...] = ("espeak-ng",)
    other_share: float = 0.3

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"n must be at least 1 clip, got {self.n}")
        if set(self.proportions) - set(SPLITS) or abs(sum(self.proportions.values()) - 1) > 1e-6:
            raise ConfigError(f"proportions must be over {SPLITS} and sum to 1, got {self.proportions}")
        if self.captions_per_clip < 1:
            raise ConfigError("captions_per_clip must be at least 1")
        unknown = set(self.synthesizers) - set(SYNTHESIZERS)
        if unknown or "espeak-ng" not in self.synthesizers:
            raise ConfigError(f"synthesizers must include 'espeak-ng' and be among {SYNTHESIZERS}, "
                              f"got {list(self.synthesizers)}")
        if not 0 <= self.other_share <= 1:
            raise ConfigError(f"other_share must be in [0, 1], got {self.other_share}")


@dataclass(frozen=True)
class ClipPlan:
    index: int
    split: str
    emotion: str
    accent: str
    variant: str
    sentence: int
    synth: str = "espeak-ng"

    @property
    def id(self) -> str:
        return f"synth-{self.index:06d}"


def plan_corpus(cfg: SynthConfig) -> list[ClipPlan]:
    """Split, emotion, voice and sentence for every clip (deterministic for cfg.seed)."""
    rng = np.random.default_rng([cfg.seed, 0])
    splits = list(cfg.proportions)
    counts = {s: int(round(cfg.n * cfg.proportions[s])) for s in splits}
    counts["train" if "train" in counts else splits[0]] += cfg.n - sum(counts.values())
    order = rng.permutation(cfg.n)
    split_of: dict[int, str] = {}
    start = 0
    for s in splits:
        for i in order[start : start + counts[s]]:
            split_of[int(i)] = s
        start += counts[s]
    emotion_of: dict[int, str] = {}
    for s in splits:
        members = sorted(i for i, sp in split_of.items() if sp == s)
        # Balanced: each emotion count differs by at most one within a split.
        emotions = [P.EMOTIONS[k % len(P.EMOTIONS)] for k in range(len(members))]
        rng.shuffle(emotions)
        emotion_of.update(zip(members, emotions, strict=True))
    plans = []
    for i in range(cfg.n):
        zs = split_of[i] == "zeroshot"
        voices = P.ZEROSHOT_VOICES if zs else P.SEEN_VOICES
        sentences = ZEROSHOT_SENTENCES if zs else SEEN_SENTENCES
        v = voices[int(rng.integers(len(voices)))]
        plans.append(ClipPlan(i, split_of[i], emotion_of[i], v.accent, v.variant.name,
                              int(sentences[int(rng.integers(len(sentences)))])))
    if F.NAME in cfg.synthesizers:
        plans += _flite_plans(cfg, counts.get("train", 0))
    return plans


def _flite_plans(cfg: SynthConfig, n_train: int) -> list[ClipPlan]:
    """flite's clips: `other_share` x the train split's size, added to train after the espeak-ng
    clips (ids from `n` on), emotions balanced, half in flite's woman's voice, seen sentences.
    Their own random stream: every espeak-ng clip, and every split but train, is the same as
    without them."""
    rng = np.random.default_rng([cfg.seed, _SYNTH])
    extra = int(round(n_train * cfg.other_share))
    emotions = [P.EMOTIONS[k % len(P.EMOTIONS)] for k in range(extra)]
    rng.shuffle(emotions)
    by_gender = {g: [v for v in F.VOICES if v.gender == g] for g in ("female", "male")}
    plans = []
    for k, emotion in enumerate(emotions):
        options = by_gender["female" if k % 2 == 0 else "male"]
        voice = options[int(rng.integers(len(options)))]
        sentence = int(SEEN_SENTENCES[int(rng.integers(len(SEEN_SENTENCES)))])
        plans.append(ClipPlan(cfg.n + k, "train", emotion, voice.accent, voice.name, sentence, F.NAME))
    return plans


# --- worker side -----------------------------------------------------------------------------

_VARIANTS = {v.name: v for v in P.VARIANTS}
_STATE: dict = {}


def _init_worker(cfg: SynthConfig, out_dir: str) -> None:
    _STATE.update(cfg=cfg, out_dir=Path(out_dir), refs={}, engine=Espeak.get())


def _wav_bytes(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _write_replace(path: Path, data: bytes) -> None:
    """Temporary sibling + rename (readers never see half a file), without atomic_write's
    fsync: a clip lost in a crash is simply re-rendered, and 2,000 fsyncs cost seconds."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class _EspeakClip:
    """One clip's renderings in espeak-ng. espeak's output depends on what the engine rendered
    before (see `Espeak.run_isolated`), so each rendering replays the clip's own sequence
    (reference, attempt 1, attempt 2, ...) in a fresh engine: the audio never depends on which
    clips this worker rendered earlier. Replays cost ~2 ms a rendering; measurement stays in
    this process (numpy in a forked child pays for fresh FFT plans and page faults, ~10x slower)."""

    params_key = "espeak"

    def __init__(self, plan: ClipPlan):
        self.voice = P.Voice(plan.accent, _VARIANTS[plan.variant])
        self.gender, self.speaker = self.voice.gender, self.voice.name
        self.key = (self.voice.name, plan.sentence)
        sentence = SENTENCES[plan.sentence]
        prof = P.PROFILES[plan.emotion]
        # the reference: the voice's normal rendering (modal voice, falling tune, espeak defaults)
        self.sequence = [(P.spoken_text(sentence), self.voice.espeak(), P.reference_prosody(self.voice))]
        self.text, self.espeak_voice = P.spoken_text(sentence, prof.tune), self.voice.espeak(prof.quality)
        self.quality = prof.quality

    def reference(self) -> Measurement:
        return _STATE["refs"][self.key]

    def attempt(self, rng: np.random.Generator, emotion: str, correction: P.Correction):
        prosody = P.sample_prosody(rng, self.voice, emotion, correction)
        self.sequence.append((self.text, self.espeak_voice, prosody))
        outs = _STATE["engine"].synth_sequence(self.sequence)
        if self.key not in _STATE["refs"]:
            _STATE["refs"][self.key] = measure(outs[0])
        return outs[-1], prosody

    def fallback(self):
        """The reference itself: neutral by definition (text, samples, prosody)."""
        return self.sequence[0][0], _STATE["engine"].synth_sequence(self.sequence[:1])[0], self.sequence[0][2]


class _FliteClip:
    """One clip's renderings in flite (`flite.py`; stateless, so no replay is needed)."""

    params_key = "flite"

    def __init__(self, plan: ClipPlan):
        self.voice = F.BY_NAME[plan.variant]
        self.gender, self.speaker = self.voice.gender, self.voice.speaker
        self.key = (self.voice.speaker, plan.sentence)
        sentence = SENTENCES[plan.sentence]
        self.ref_text = P.spoken_text(sentence)
        self.text = P.spoken_text(sentence, P.PROFILES[plan.emotion].tune)
        self.quality = "modal"  # flite has no breathy or harsh voice

    def reference(self) -> Measurement:
        if self.key not in _STATE["refs"]:
            ref = F.synth(self.ref_text, self.voice, F.reference_prosody(self.voice))
            _STATE["refs"][self.key] = measure(ref)
        return _STATE["refs"][self.key]

    def attempt(self, rng: np.random.Generator, emotion: str, correction: P.Correction):
        prosody = F.sample_prosody(rng, self.voice, emotion, correction)
        return F.synth(self.text, self.voice, prosody), prosody

    def fallback(self):
        prosody = F.reference_prosody(self.voice)
        return self.ref_text, F.synth(self.ref_text, self.voice, prosody), prosody


def render_clip(plan: ClipPlan) -> tuple[dict, dict]:
    """Render, verify and write one clip; returns (manifest row, label-check stats)."""
    cfg: SynthConfig = _STATE["cfg"]
    clip = _FliteClip(plan) if plan.synth == F.NAME else _EspeakClip(plan)
    stats = {"first_try": None, "renders": 0, "dropped": 0, "fallback": False}
    emotion = plan.emotion
    labels = P.labels_of(emotion)
    text = clip.text
    result = None
    for r in range(cfg.max_replacements + 1):
        correction = P.Correction()
        for attempt in range(cfg.max_attempts):
            jitter = np.random.default_rng([cfg.seed, plan.index, _JITTER, r, attempt])
            samples, prosody = clip.attempt(jitter, emotion, correction)
            measured = compare(measure(samples), clip.reference())
            verdict = check(labels, measured)
            stats["renders"] += 1
            if stats["first_try"] is None:
                stats["first_try"] = verdict
            if all(verdict.values()):
                result = (samples, prosody, measured)
                break
            # Fresh jitter, plus a step towards the band that was missed (this voice may
            # respond more or less than the average voice the profiles were fitted on).
            correction = correction.after(labels, verdict, measured)
        if result:
            break
        stats["dropped"] += 1  # start over from fresh jitter without the corrections
    if result is None:
        # Last resort (not seen in practice): the reference itself is neutral by definition.
        stats["fallback"] = True
        emotion, labels = "neutral", P.labels_of("neutral")
        text, samples, prosody = clip.fallback()
        measured = compare(measure(samples), clip.reference())
        result = (samples, prosody, measured)
    samples, prosody, measured = result

    attributes = {"emotion": emotion, **labels, "gender": clip.gender}
    caption_rng = np.random.default_rng([cfg.seed, plan.index, _CAPTIONS])
    captions, stated = write_captions(caption_rng, attributes, measured, n=cfg.captions_per_clip)

    data = _wav_bytes(samples)
    rel = f"audio/{plan.id}.wav"
    path = _STATE["out_dir"] / rel
    # Resume-friendly: an identical file already on disk is left alone.
    if not (path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data):
        _write_replace(path, data)
    row = {
        "id": plan.id,
        "audio": rel,
        "transcript": text,  # as spoken: the sentence with the emotion's final punctuation
        "sentence": plan.sentence,  # index into sentences.SENTENCES
        "captions": captions,
        "caption_attributes": stated,
        "speaker": clip.speaker,
        "language": "en",
        "split": plan.split,
        "attributes": attributes,
        "measured": measured,
        "voice": plan.variant,
        "accent": plan.accent,
        "accent_name": P.ACCENTS[plan.accent],
        "voice_quality": "modal" if stats["fallback"] else clip.quality,
        "synthesizer": plan.synth,
        clip.params_key: asdict(prosody),
        "duration_s": round(len(samples) / SAMPLE_RATE, 4),
        "sha256": sha256_bytes(data),
    }
    return row, stats


# --- driver ----------------------------------------------------------------------------------

def _summarise(cfg: SynthConfig, rows: list[dict], stats: list[dict]) -> dict:
    first = {a: round(float(np.mean([s["first_try"][a] for s in stats])), 4) for a in QUANTITY}
    first["all"] = round(float(np.mean([all(s["first_try"].values()) for s in stats])), 4)
    return {
        "n": len(rows),
        "seed": cfg.seed,
        "splits": dict(sorted(Counter(r["split"] for r in rows).items())),
        "emotions": dict(sorted(Counter(r["attributes"]["emotion"] for r in rows).items())),
        "label_check_first_try_pass": first,
        "regenerated": sum(s["renders"] > 1 for s in stats),
        "renders": sum(s["renders"] for s in stats),
        "dropped_replaced": sum(s["dropped"] for s in stats),
        "fallback_neutral": sum(s["fallback"] for s in stats),
        "synthesizers": dict(sorted(Counter(r["synthesizer"] for r in rows).items())),
    }


def synthesize_corpus(n: int = SYNTH_N, seed: int = 0, out_dir: str | os.PathLike = "synth",
                      workers: int = 0, captions_per_clip: int = 4,
                      synthesizers: str | list[str] | tuple[str, ...] = ("espeak-ng",),
                      other_share: float = 0.3, show_progress: bool = True) -> dict:
    """Synthesize `n` clips into `out_dir` (audio/, manifest.jsonl, corpus.json).

    workers: synthesis processes (0 = os.cpu_count(); 1 = in this process).
    synthesizers: "auto" (espeak-ng plus whatever else is installed) or a list; other_share:
    the others' train clips, added to the n, as a share of the train split (`SynthConfig`).
    Returns a JSON-able summary: counts per split, emotion and synthesizer, first-try
    label-check pass rate per attribute, regenerations, drops, the synthesizers' versions,
    clips_per_s, seconds, out_dir.
    """
    t0 = time.perf_counter()
    names = resolve_synthesizers(synthesizers)
    cfg = SynthConfig(n=n, seed=seed, captions_per_clip=captions_per_clip, synthesizers=names,
                      other_share=other_share)
    versions = synthesizer_versions(names)
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    plans = plan_corpus(cfg)
    workers = min(workers or os.cpu_count() or 1, len(plans))
    rows, stats = [], []
    with progress(disable=not show_progress) as bar:
        task = bar.add_task("synthesize", total=len(plans))

        def collect(results):
            for row, st in results:
                rows.append(row)
                stats.append(st)
                rate = len(rows) / (time.perf_counter() - t0)
                bar.update(task, advance=1, description=f"synthesize {rate:.0f} clips/s")

        if workers == 1:
            _init_worker(cfg, str(out))
            collect(map(render_clip, plans))
        else:
            # spawn: a fresh interpreter per worker, so each initialises espeak exactly once
            # (a forked child would inherit the parent's global espeak state).
            ctx = mp.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg, str(out))) as pool:
                collect(pool.imap(render_clip, plans, chunksize=8))

    summary = {**_summarise(cfg, rows, stats), "synthesizer_versions": versions}
    write_jsonl(out / "manifest.jsonl", rows)
    corpus = {
        "config": asdict(cfg),
        "sample_rate": SAMPLE_RATE,
        "thresholds": {a: {k: list(v) for k, v in t.items()} for a, t in THRESHOLDS.items()},
        "measured_quantity": QUANTITY,
        "zeroshot": {
            "heldout_variants": sorted(P.HELDOUT_VARIANTS),
            "heldout_accents": sorted(P.HELDOUT_ACCENTS),
            "heldout_sentences": list(ZEROSHOT_SENTENCES),
            "seen_voices": len(P.SEEN_VOICES),
            "zeroshot_voices": len(P.ZEROSHOT_VOICES),
        },
        "counts": {
            "split_emotion": {s: dict(sorted(Counter(r["attributes"]["emotion"] for r in rows
                                                     if r["split"] == s).items()))
                              for s in cfg.proportions},
        },
        **summary,
    }
    # No timings inside, so the whole output folder is reproducible byte for byte.
    with atomic_write(out / "corpus.json") as f:
        json.dump(corpus, f, indent=2, sort_keys=True)
    seconds = time.perf_counter() - t0
    return {**summary, "clips_per_s": round(len(plans) / seconds, 1), "seconds": round(seconds, 2),
            "workers": workers, "out_dir": str(out)}
