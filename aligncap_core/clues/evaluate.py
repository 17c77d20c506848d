"""How well the clue parser agrees with known attributes (precision / recall per attribute).

precision: of the attribute values the parser asserts from a caption, the share equal to the
    clip's ground truth (`row["attributes"]`); attributes the clip has no label for are not counted.
recall: of the values a caption is known to express (`row["caption_attributes"][i]`, written by
    the synthetic corpus generator), the share the parser recovers exactly. Rows without
    `caption_attributes` contribute to precision only.

Run on a manifest: `python -m aligncap_core.clues.evaluate DIR_OR_MANIFEST [--backend blank]`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aligncap_core.clues.parser import EmotionClueParser
from aligncap_core.utils import read_jsonl
from aligncap_core.vocab import ATTRIBUTES


def parser_agreement(rows: Sequence[dict], parser: EmotionClueParser | None = None,
                     max_examples: int = 20) -> dict:
    """Per-attribute precision/recall of `parser` on `rows` (manifest rows with `captions`).

    Returns {"attributes": {attr: {precision, recall, predicted, expected}}, "backend",
    "captions", "captions_per_s", "errors": [up to `max_examples` disagreements]}.
    precision/recall are None where nothing was predicted/expected.
    """
    parser = parser or EmotionClueParser()
    pairs = [(row, i, cap) for row in rows for i, cap in enumerate(row.get("captions") or [])]
    t0 = time.perf_counter()
    results = parser.parse_many([cap for _, _, cap in pairs])
    seconds = time.perf_counter() - t0

    counts = {a: {"tp_p": 0, "predicted": 0, "tp_r": 0, "expected": 0} for a in ATTRIBUTES}
    errors: list[dict] = []
    for (row, i, cap), res in zip(pairs, results, strict=True):
        truth = row.get("attributes") or {}
        stated = (row.get("caption_attributes") or [None] * (i + 1))[i] or {}
        for attr, value in res.attributes.items():
            if attr in truth:
                counts[attr]["predicted"] += 1
                ok = truth[attr] == value
                counts[attr]["tp_p"] += ok
                if not ok and len(errors) < max_examples:
                    errors.append({"caption": cap, "attribute": attr, "predicted": value, "truth": truth[attr]})
        for attr, value in stated.items():
            if attr not in counts:
                continue
            counts[attr]["expected"] += 1
            ok = res.attributes.get(attr) == value
            counts[attr]["tp_r"] += ok
            if not ok and len(errors) < max_examples:
                errors.append({"caption": cap, "attribute": attr, "missed": value,
                               "predicted": res.attributes.get(attr)})

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    return {
        "attributes": {a: {"precision": ratio(c["tp_p"], c["predicted"]), "recall": ratio(c["tp_r"], c["expected"]),
                           "predicted": c["predicted"], "expected": c["expected"]} for a, c in counts.items()},
        "backend": parser.backend,
        "captions": len(pairs),
        "captions_per_s": round(len(pairs) / seconds, 1) if seconds > 0 else None,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    backend = "auto"
    if "--backend" in argv:
        k = argv.index("--backend")
        backend = argv[k + 1]
        del argv[k:k + 2]
    path = Path(argv[0])
    manifest = path / "manifest.jsonl" if path.is_dir() else path
    print(json.dumps(parser_agreement(read_jsonl(manifest), EmotionClueParser(backend=backend)), indent=2))


if __name__ == "__main__":
    main()
