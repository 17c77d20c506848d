"""Measure the espeak voice variants the corpus uses: F0 and the volume for a common level.

    .venv/bin/python docs/experiments/calibrate_voices.py [--shipped]

For every variant in `profiles.VARIANTS`, renders six sentences (American accent) and three
of them in two more accents at espeak defaults, and prints one JSON line per variant:
- with `--shipped`: the shipped variant's median F0 (`Variant.f0_hz`, what voicebank.py
  normalises);
- otherwise: the normalised voice's median F0 and the espeak volume that puts its active level
  at `TARGET_LEVEL_DBFS` (`Variant.base_volume`), with the peak at that volume.
The values in profiles.VARIANTS come from this script; tests/core/test_synth.py checks that
they still hold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aligncap_core.data.synth import espeak as E  # noqa: E402
from aligncap_core.data.synth.measure import measure  # noqa: E402
from aligncap_core.data.synth.profiles import TARGET_LEVEL_DBFS, VARIANTS  # noqa: E402
from aligncap_core.data.synth.sentences import SENTENCES  # noqa: E402
from aligncap_core.data.synth.voicebank import variant_file  # noqa: E402

SENTS = [SENTENCES[i] for i in (1, 3, 6, 10, 17, 25)]
PROBE_VOLUME = 50


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shipped", action="store_true", help="measure the shipped variants' F0")
    args = ap.parse_args(argv)
    eng = E.Espeak.get()
    out = []
    for v in VARIANTS:
        name = v.name if args.shipped else variant_file(v.name)
        f0s, levels, peaks = [], [], []
        for accent in ("en-us", "en", "en-gb-scotland"):
            for s in SENTS if accent == "en-us" else SENTS[:3]:
                m = measure(eng.synth(s, f"{accent}+{name}", E.Prosody(volume=PROBE_VOLUME)))
                f0s.append(m.f0_hz)
                levels.append(m.level_dbfs)
                peaks.append(m.peak)
        row = {"variant": v.name, "gender": v.gender, "f0_hz": round(float(np.median(f0s)), 1),
               "f0_sd_log": round(float(np.std(np.log(f0s))), 3)}
        if not args.shipped:
            gain_db = TARGET_LEVEL_DBFS - float(np.median(levels))
            row["base_volume"] = int(round(PROBE_VOLUME * 10 ** (gain_db / 20)))
            row["peak_at_base"] = round(float(np.max(peaks)) * 10 ** (gain_db / 20), 3)
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


if __name__ == "__main__":
    main()
