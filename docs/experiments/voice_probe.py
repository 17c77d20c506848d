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
    out, male = [], []
    for r in rows:
        x = read_audio(base / r["audio"], SR).astype(np.float64)
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


if __name__ == "__main__":
    main()
