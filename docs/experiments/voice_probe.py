"""Which clip-level cue carries a speaker's gender from the built-in corpus to real speech
(issue #18): logistic regressions fitted on synthetic train clips, scored on the synthetic
zeroshot split and on the real clips (per corpus), for the median F0, the formant spacing
(`codec.prosody.formant_spacing`, the student's voice token) and both.

    .venv/bin/python docs/experiments/voice_probe.py DATA_DIR [REALDATA_MANIFEST] [--train 300]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aligncap_core.codec.prosody import formant_spacing  # noqa: E402
from aligncap_core.codec.tokenizer import read_audio  # noqa: E402
from aligncap_core.data.synth.measure import yin_track  # noqa: E402

SR = 24000


def cues(rows: list[dict], base: Path) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) log median F0 and log formant spacing; (n,) is-male."""
    from aligncap_core.codec.prosody import ProsodySettings, active_span

    trim = ProsodySettings(trim_db=35)
    out, male = [], []
    for r in rows:
        x = read_audio(base / r["audio"], SR).astype(np.float64)
        x = x[slice(*active_span(x, SR, trim))]  # what the student reads (the demo trims)
        f0, hop = yin_track(x, SR)
        voiced = f0[~np.isnan(f0)]
        out.append([np.log(np.median(voiced)) if len(voiced) else np.nan,
                    np.log(formant_spacing(x, SR, f0, hop))])
        male.append(r["attributes"]["gender"] == "male")
    return np.array(out), np.array(male)


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("realdata", type=Path, nargs="?", default=Path("../shared/realdata/manifest.jsonl"))
    ap.add_argument("--train", type=int, default=300, help="synthetic train clips the probes fit on")
    a = ap.parse_args()
    rows = [json.loads(line) for line in (a.data_dir / "manifest.jsonl").read_text().splitlines()]
    sets = {"train": ([r for r in rows if r["split"] == "train"][: a.train], a.data_dir),
            "zeroshot": ([r for r in rows if r["split"] == "zeroshot"], a.data_dir)}
    real = [json.loads(line) for line in a.realdata.read_text().splitlines()] if a.realdata.is_file() else []
    corpora = sorted({r["id"].split("-")[0] for r in real})
    for c in corpora:
        sets[c] = ([r for r in real if r["id"].startswith(c + "-")], a.realdata.parent)
    data = {k: cues(rs, base) for k, (rs, base) in sets.items()}

    print("| group | clips | median F0 Hz | formant spacing Hz |")
    print("|---|---|---|---|")
    for k, (x, male) in data.items():
        for g, m in (("male", male), ("female", ~male)):
            if m.any():
                f0, sp = np.exp(np.nanmedian(x[m], axis=0))
                print(f"| {k} / {g} | {int(m.sum())} | {f0:.0f} | {sp:.0f} |")
    print()
    print("| cue (fitted on synthetic train) | " + " | ".join(k for k in data if k != "train") + " |")
    print("|---|" + "---|" * (len(data) - 1))
    for name, cols in (("median F0", [0]), ("formant spacing", [1]), ("both", [0, 1])):
        x, y = data["train"]
        ok = np.isfinite(x[:, cols]).all(axis=1)
        clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(x[ok][:, cols], y[ok])
        mean = np.nanmean(data["train"][0][:, cols], axis=0)
        cells = []
        for k, (x, y) in data.items():
            if k != "train":  # a clip with a cue missing is scored at the train mean (it counts)
                xs = np.where(np.isnan(x[:, cols]), mean, x[:, cols])
                cells.append(f"{np.mean(clf.predict(xs) == y):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    band(data, rows_of={k: rs for k, (rs, _) in sets.items()})


def band(data: dict, rows_of: dict) -> None:
    """The formant-spacing reading where it is sure: a logistic fit on the train clips' log
    spacing; per group and confidence t, the share of clips read with max(p, 1 - p) >= t
    (coverage) and the accuracy on those. Then pitch read from the median F0 against the
    train median of the read gender's `normal`-pitch clips (high above +15%, low below -12%,
    the midpoints of the corpus' label bands), scored against each group's pitch labels."""
    from sklearn.linear_model import LogisticRegression

    x, y = data["train"]
    ok = np.isfinite(x[:, 1])
    clf = LogisticRegression(C=1e4).fit(x[ok][:, [1]], y[ok])
    print(f"\nspacing fit: male when log dF < {-clf.intercept_[0] / clf.coef_[0, 0]:.4f} "
          f"({np.exp(-clf.intercept_[0] / clf.coef_[0, 0]):.0f} Hz)")
    print("\n| group | " + " | ".join(f"t={t}: coverage / accuracy" for t in (0.5, 0.8, 0.9, 0.95, 0.99)) + " |")
    print("|---|" + "---|" * 5)
    probs = {}
    for k, (x, y) in data.items():
        p = np.full(len(x), 0.5)
        fin = np.isfinite(x[:, 1])
        p[fin] = clf.predict_proba(x[fin][:, [1]])[:, 1]
        probs[k] = p
        cells = []
        for t in (0.5, 0.8, 0.9, 0.95, 0.99):
            sure = np.maximum(p, 1 - p) >= t
            acc = np.mean((p[sure] > 0.5) == y[sure]) if sure.any() else float("nan")
            cells.append(f"{sure.mean():.3f} / {acc:.3f}")
        print(f"| {k} | " + " | ".join(cells) + " |")
    pitch = {k: np.array([r["attributes"].get("pitch") for r in rs]) for k, rs in rows_of.items()}
    norm = {g: np.exp(np.nanmedian(data["train"][0][(pitch["train"] == "normal") & (data["train"][1] == g), 0]))
            for g in (True, False)}
    print(f"\npitch norm (train, normal-pitch clips): male {norm[True]:.0f} Hz, female {norm[False]:.0f} Hz")
    print("| group | pitch from F0 / norm of the spacing's gender | from F0 / norm of the true gender | majority |")
    print("|---|---|---|---|")
    for k, (x, y) in data.items():
        lab = pitch[k]
        have = lab != None  # noqa: E711
        if not have.any():
            continue
        def read(male: np.ndarray, x: np.ndarray = x) -> np.ndarray:
            ratio = np.exp(x[:, 0]) / np.where(male, norm[True], norm[False])
            return np.where(ratio > 1.15, "high", np.where(ratio < 0.88, "low", "normal"))

        vals, counts = np.unique(lab[have], return_counts=True)
        print(f"| {k} | {np.mean(read(probs[k] > 0.5)[have] == lab[have]):.3f} | "
              f"{np.mean(read(y)[have] == lab[have]):.3f} | {counts.max() / have.sum():.3f} ({vals[counts.argmax()]}) |")


if __name__ == "__main__":
    main()
