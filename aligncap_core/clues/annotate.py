"""Annotate a prepared dataset with emotional clues and acoustic prompts (`aligncap data clues`).

Each row of `DATA_DIR/manifest.jsonl` gets:
- `clues`: one entry per caption, {"clues": [clue dicts], "attributes": {...}, "p_act": str};
- `clue_attributes`: the attributes the row's captions agree on (see `merge_attributes`);
- `p_act`: the row-level acoustic prompt built from the *merged* clues (`merge_clues`).

Why merged: every caption of a clip is a training target for the same audio, so the teacher
should see one clip-level description of the evidence, not a prompt that paraphrases the one
caption it is asked to predict (that would let it copy words instead of grounding them). The
per-caption prompt is kept in `clues[i]["p_act"]` for the paper's per-reference variant.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from aligncap_core.clues.parser import Clue, ClueResult, EmotionClueParser
from aligncap_core.clues.prompt import PromptTemplate, build_acoustic_prompt
from aligncap_core.errors import DataError
from aligncap_core.utils import progress as progress_bar
from aligncap_core.utils import read_jsonl, write_jsonl
from aligncap_core.vocab import ATTRIBUTES

_CHUNK = 512  # captions per nlp.pipe call; also the progress-bar step


def merge_attributes(per_caption: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """Attributes over a clip's captions: a value stated by a strict majority of the captions
    that state the attribute at all (so one odd caption is outvoted, a 1:1 split says nothing)."""
    out = {}
    for attr in ATTRIBUTES:
        votes = Counter(a[attr] for a in per_caption if attr in a)
        if votes:
            value, n = votes.most_common(1)[0]
            if n * 2 > sum(votes.values()):
                out[attr] = value
    return out


def merge_clues(results: Sequence[ClueResult], attributes: Mapping[str, str]) -> list[Clue]:
    """Clip-level clues: for each merged attribute the first clue stating it; verbatim tone and
    voice-quality clues from any caption (deduplicated); negated clues of unmerged categories."""
    merged: list[Clue] = []
    seen: set[tuple] = set()
    for res in results:
        for c in res.clues:
            if c.category in attributes:
                ok = not c.negated and c.value == attributes[c.category]
            else:
                ok = c.category in ("tone", "voice_quality") or (c.negated and c.category in ATTRIBUTES)
            key = (c.category, c.value if c.category in attributes else c.head, c.negated)
            if ok and key not in seen:
                seen.add(key)
                merged.append(c)
    return merged


def add_clues(data_dir: str | os.PathLike, *, template: str | Mapping | PromptTemplate | None = None,
              progress: bool = True, backend: str = "auto") -> dict:
    """Parse every caption of `DATA_DIR/manifest.jsonl` and write the clues back atomically.

    Returns a JSON-able summary: rows, captions, backend, rows_per_s, captions_per_s and
    coverage (share of captioned rows where each attribute was found).
    """
    manifest = Path(data_dir) / "manifest.jsonl"
    if not manifest.exists():
        raise DataError(f"{manifest}: no manifest; run `aligncap data prepare` (or `data synth`) first")
    try:
        rows = read_jsonl(manifest)
    except ValueError as e:
        raise DataError(f"{manifest}: not valid JSON Lines ({e}); re-run `aligncap data prepare`") from e
    build_acoustic_prompt([], template)  # fail on a bad template before parsing anything

    t0 = time.perf_counter()
    parser = EmotionClueParser(backend=backend)
    captions = [str(c) for row in rows for c in _captions(row)]
    results: list[ClueResult] = []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("clues", total=len(captions))
        for k in range(0, len(captions), _CHUNK):
            results += parser.parse_many(captions[k:k + _CHUNK])
            rate = len(results) / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=min(_CHUNK, len(captions) - k), description=f"clues {rate:.0f} captions/s")

    found = Counter()
    captioned = 0
    pos = 0
    for row in rows:
        n = len(_captions(row))
        mine, pos = results[pos:pos + n], pos + n
        attrs = merge_attributes([r.attributes for r in mine])
        row["clues"] = [{**r.to_dict(), "p_act": build_acoustic_prompt(r, template)} for r in mine]
        row["clue_attributes"] = attrs
        row["p_act"] = build_acoustic_prompt(merge_clues(mine, attrs), template)
        if n:
            captioned += 1
            found.update(attrs.keys())
    write_jsonl(manifest, rows)
    seconds = max(time.perf_counter() - t0, 1e-9)
    return {
        "manifest": str(manifest),
        "rows": len(rows),
        "captions": len(captions),
        "backend": parser.backend,
        "coverage": {a: round(found[a] / captioned, 4) if captioned else 0.0 for a in ATTRIBUTES},
        "rows_per_s": round(len(rows) / seconds, 1),
        "captions_per_s": round(len(captions) / seconds, 1),
        "seconds": round(seconds, 2),
    }


def _captions(row: Mapping) -> list:
    caps = row.get("captions") or []
    return [caps] if isinstance(caps, str) else list(caps)
