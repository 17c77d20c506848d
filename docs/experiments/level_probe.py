"""Why real speech reads as "loud" and "happy" (issue #18), and what the level check would do:
the clips' level (`inference.domain.clip_level_db`) per synthetic split and real corpus, the
share outside the train split's level range at margins of 0, 3 and 6 dB, and an emotion probe
(logistic regression on level, median F0, F0 range, voiced share and duration, fitted on the
synthetic train split) with the emotions it gives the real clips.

    .venv/bin/python docs/experiments/level_probe.py DATA_DIR [REALDATA_MANIFEST]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aligncap_core.codec.prosody import ProsodySettings, active_span  # noqa: E402
from aligncap_core.codec.tokenizer import read_audio  # noqa: E402
from aligncap_core.data.synth.measure import yin_track  # noqa: E402
from aligncap_core.inference.domain import clip_level_db, level_range  # noqa: E402

SR = 24000
CUES = ("level dBFS", "log median F0", "F0 range st", "voiced share", "log duration")


def cues(path: Path) -> list[float]:
    x = read_audio(path, SR).astype(np.float64)
    a, b = active_span(x, SR, ProsodySettings(trim_db=35))
    x = x[a:b]
    f0, _ = yin_track(x, SR)
    v = f0[~np.isnan(f0)]
    st = 12 * np.log2(v) if len(v) else np.zeros(1)
    return [clip_level_db(x, SR), np.log(np.median(v)) if len(v) else np.log(150.0),
            float(np.percentile(st, 90) - np.percentile(st, 10)), float(np.mean(~np.isnan(f0))),
            np.log(len(x) / SR)]


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("realdata", type=Path, nargs="?", default=Path("../shared/realdata/manifest.jsonl"))
    a = ap.parse_args()
    groups: dict[str, tuple[list[dict], Path]] = {}
    for r in (json.loads(line) for line in (a.data_dir / "manifest.jsonl").read_text().splitlines()):
        groups.setdefault(r["split"], ([], a.data_dir))[0].append(r)
    if a.realdata.is_file():
        for r in (json.loads(line) for line in a.realdata.read_text().splitlines()):
            groups.setdefault(r["id"].split("-")[0], ([], a.realdata.parent))[0].append(r)
    x = {k: np.array([cues(base / r["audio"]) for r in rows]) for k, (rows, base) in groups.items()}
    y = {k: np.array([r["attributes"]["emotion"] for r in rows]) for k, (rows, _) in groups.items()}
    lo, hi = level_range(x["train"][:, 0])
    print(f"train level range (0.5th-99.5th percentile): {lo:.1f} to {hi:.1f} dBFS\n")
    print("| group | clips | level min / median / max dBFS | outside, margin 0 / 3 / 6 dB |")
    print("|---|---|---|---|")
    for k, v in x.items():
        lv = v[:, 0]
        out = [np.mean((lv < lo - m) | (lv > hi + m)) for m in (0, 3, 6)]
        print(f"| {k} | {len(lv)} | {lv.min():.1f} / {np.median(lv):.1f} / {lv.max():.1f} | "
              + " / ".join(f"{o:.3f}" for o in out) + " |")
    print("\n| emotion probe (fitted on synthetic train) | " + " | ".join(k for k in x if k != "train") + " |")
    print("|---|" + "---|" * (len(x) - 1))
    for name, cols in (("all five cues", [0, 1, 2, 3, 4]), ("without the level", [1, 2, 3, 4])):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x["train"][:, cols], y["train"])
        cells = [f"{np.mean(clf.predict(v[:, cols]) == y[k]):.3f}" for k, v in x.items() if k != "train"]
        print(f"| {name} | " + " | ".join(cells) + " |")
        for k, v in x.items():
            if k not in {"train", "valid", "test", "zeroshot"}:
                print(f"    {name}, {k}: predicted {Counter(clf.predict(v[:, cols]).tolist()).most_common(4)}")
    print("\nmajority: " + ", ".join(f"{k} {Counter(v).most_common(1)[0][1] / len(v):.3f}" for k, v in y.items()))


if __name__ == "__main__":
    main()
