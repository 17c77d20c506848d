"""How well can *any* captioner name each attribute of a corpus from one clip? The ceilings.

    .venv/bin/python docs/experiments/attribute_ceiling.py DATA_DIR [--codes] [--realdata MANIFEST]

1. Signature distance (built-in corpus, no data needed): every emotion's signature in
   `profiles.PROFILES` (pitch, speed, volume labels, pitch-range band, voice quality, final
   tune); prints the smallest number of cues in which two emotions differ. 0 would mean two
   emotions can sound the same by construction (the previous corpus drew labels at random from
   overlapping profiles: its Bayes ceiling for emotion was 0.52-0.79).
2. Acoustic ceiling per attribute: a gradient-boosted classifier on clip-level acoustics
   computed from the audio itself (median / 10th / 90th percentile F0, F0 spread, voiced share,
   syllables per second, active level, peak, and the normalised mean log-mel spectrum: the
   voice's timbre), fitted on `train` and scored on `valid` (seen voices) and `zeroshot` (unseen
   voices, accents and sentences), and with `--realdata` on a real-speech manifest (what
   transfers). This is what a model that heard F0, loudness, rate and timbre perfectly from
   one clip could do, without knowing the speaker's usual voice.
3. With `--codes`: the same classifier on the speech tokens the student reads (bag-of-codes of
   codebook 0, `codec.probe.code_features`), the representation's own ceiling.

Prints one JSON object. Figures in docs/experiments/corpus_v2.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ATTRS = ("emotion", "pitch", "speed", "volume", "gender")
N_MELS = 24


def signature_distance() -> dict:
    """Smallest number of signature cues two emotions share-not (and which pair)."""
    from aligncap_core.data.synth.profiles import PROFILES, signature

    best = (99, None)
    for a, b in itertools.combinations(PROFILES, 2):
        d = sum(x != y for x, y in zip(signature(a), signature(b), strict=True))
        best = min(best, (d, f"{a}/{b}"))
    return {"min_cues_apart": best[0], "closest_pair": best[1],
            "cues": ["pitch", "speed", "volume", "range band", "voice quality", "final tune"]}


def _syllables(text: str) -> int:
    return max(1, sum(len(re.findall(r"[aeiouy]+", w.lower())) for w in text.split()))


def _mel_matrix(sr: int, n_fft: int) -> np.ndarray:
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    imel = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = imel(np.linspace(mel(60), mel(min(8000, sr / 2)), N_MELS + 2))
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    fb = np.zeros((N_MELS, len(freqs)))
    for i in range(N_MELS):
        lo, c, hi = edges[i: i + 3]
        fb[i] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return fb


def acoustic_features(x: np.ndarray, sr: int, transcript: str) -> list[float]:
    from aligncap_core.data.synth.measure import frame_levels_db, measure, yin_f0

    m = measure(x, sr)
    f0 = yin_f0(x, sr)
    p10, p90 = (np.percentile(f0, [10, 90]) if len(f0) else (np.nan, np.nan))
    levels = frame_levels_db(x, sr)
    active = levels > levels.max() - 35
    n_fft, hop = 1024, 256
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    logmel = np.log(spec @ _mel_matrix(sr, n_fft).T + 1e-10)
    loud = logmel.sum(1) > np.percentile(logmel.sum(1), 50)  # the louder half: speech
    timbre = logmel[loud].mean(0)
    timbre = timbre - timbre.mean()  # shape, not level
    return [m.f0_hz, p10, p90, m.f0_spread_st, len(f0) / max(1, int(active.sum())),
            _syllables(transcript) / max(m.duration_s, 1e-3), m.level_dbfs,
            20 * np.log10(max(m.peak, 1e-6)), *timbre]


def _rows_with_features(manifest: Path, features) -> list[tuple[dict, list[float]]]:
    import soundfile as sf

    from aligncap_core.utils import progress

    rows = [json.loads(line) for line in manifest.open()]
    out = []
    with progress() as bar:
        task = bar.add_task(f"features {manifest.parent.name}", total=len(rows))
        for r in rows:
            if features is acoustic_features:
                x, sr = sf.read(manifest.parent / r["audio"], dtype="float64", always_2d=True)
                out.append((r, features(x.mean(1), sr, r.get("transcript") or "")))
            else:
                out.append((r, features(r)))
            bar.update(task, advance=1)
    return out


def classifier_ceiling(data: list[tuple[dict, list[float]]],
                       extra: dict[str, list[tuple[dict, list[float]]]] | None = None) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier

    train = [(r, f) for r, f in data if r["split"] == "train"]
    sets = {s: [(r, f) for r, f in data if r["split"] == s] for s in ("valid", "zeroshot")}
    sets.update(extra or {})
    x = np.nan_to_num(np.array([f for _, f in train], dtype=np.float64))
    out: dict[str, dict[str, float]] = {}
    for attr in ATTRS:
        y = np.array([r["attributes"][attr] for r, _ in train])
        clf = HistGradientBoostingClassifier(max_iter=300, random_state=0).fit(x, y)
        out[attr] = {}
        for name, rows in sets.items():
            rows = [(r, f) for r, f in rows if (r.get("attributes") or {}).get(attr) in set(y)]
            if not rows:
                continue
            xt = np.nan_to_num(np.array([f for _, f in rows], dtype=np.float64))
            yt = np.array([r["attributes"][attr] for r, _ in rows])
            out[attr][name] = round(float(np.mean(clf.predict(xt) == yt)), 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path, help="a prepared (+ tokenized, for --codes) data dir")
    ap.add_argument("--codes", action="store_true", help="also the bag-of-codes ceiling")
    ap.add_argument("--realdata", type=Path, help="a real-speech manifest to score as well")
    args = ap.parse_args(argv)
    result: dict = {"signature": signature_distance()}
    data = _rows_with_features(args.data_dir / "manifest.jsonl", acoustic_features)
    extra = None
    if args.realdata:
        extra = {"realdata": _rows_with_features(args.realdata, acoustic_features)}
    result["acoustic"] = classifier_ceiling(data, extra)
    if args.codes:
        from aligncap_core.codec.dataset import load_codes
        from aligncap_core.codec.probe import code_features

        coded = [(r, code_features(load_codes(args.data_dir, r)[:1])) for r, _ in data]
        result["codes_q0"] = classifier_ceiling(coded)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
