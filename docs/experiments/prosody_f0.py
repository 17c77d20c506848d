"""Where the prosody stream puts real and synthetic voices (issue #18): per group, the median F0
of the voiced hops of the student's prosody stream (`codec.prosody`, default settings), the share
of voiced hops and the level bin of the voiced hops, for the real clips (per corpus and gender,
beside the manifest's own `f0_median_hz`) and for synthetic train clips (per gender and pitch
label).

    .venv/bin/python docs/experiments/prosody_f0.py DATA_DIR [REALDATA_MANIFEST] [--train 200]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aligncap_core.codec.prosody import ProsodySettings, prosody_codes  # noqa: E402
from aligncap_core.codec.tokenizer import read_audio  # noqa: E402

S = ProsodySettings()
LO, HI = np.log(S.f0_min_hz), np.log(S.f0_max_hz)


def stream(path: Path) -> tuple[float, float, float]:
    """(median F0 Hz of the voiced hops, voiced share, median level bin of the voiced hops)."""
    c = prosody_codes(read_audio(path, 24000), 24000, S)
    voiced = c[0] < S.f0_bins
    if not voiced.any():
        return float("nan"), 0.0, float("nan")
    hz = np.exp(LO + (c[0][voiced] + 0.5) / S.f0_bins * (HI - LO))
    return float(np.median(hz)), float(voiced.mean()), float(np.median(c[1][voiced]))


def table(groups: dict[tuple, list[tuple]], manifest_f0: bool) -> None:
    head = "| group | clips | " + ("manifest F0 Hz | " if manifest_f0 else "") + \
        "stream F0 Hz | voiced share | level bin (voiced) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for k, v in sorted(groups.items()):
        a = np.array(v, dtype=float)
        cells = [" / ".join(k), str(len(v))]
        if manifest_f0:
            cells.append(f"{np.nanmedian(a[:, 0]):.0f}")
        cells += [f"{np.nanmedian(a[:, -3]):.0f}", f"{np.nanmean(a[:, -2]):.2f}", f"{np.nanmean(a[:, -1]):.1f}"]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("realdata", type=Path, nargs="?", default=Path("../shared/realdata/manifest.jsonl"))
    ap.add_argument("--train", type=int, default=200, help="synthetic train clips read")
    a = ap.parse_args()
    if a.realdata.is_file():
        real: dict[tuple, list[tuple]] = {}
        for line in a.realdata.read_text().splitlines():
            r = json.loads(line)
            key = (r["id"].split("-")[0], r["attributes"]["gender"])
            real.setdefault(key, []).append((r["attributes"].get("f0_median_hz"),
                                             *stream(a.realdata.parent / r["audio"])))
        table(real, manifest_f0=True)
        print()
    rows = [json.loads(x) for x in (a.data_dir / "manifest.jsonl").read_text().splitlines()]
    synth: dict[tuple, list[tuple]] = {}
    for r in [r for r in rows if r["split"] == "train"][: a.train]:
        key = ("synthetic train", r["attributes"]["gender"], "pitch " + r["attributes"]["pitch"])
        synth.setdefault(key, []).append(stream(a.data_dir / r["audio"]))
    table(synth, manifest_f0=False)


if __name__ == "__main__":
    main()
