"""Linear probes: do the speech tokens carry prosody? (evidence for the codec choice)

Per attribute, a logistic regression on bag-of-codes (a normalised code histogram per codebook)
plus length features, trained on the train split and scored on valid, against the majority-class
chance level. Bag-of-codes discards order, so this is a lower bound on what a sequence model can
read from the same tokens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from aligncap_core.codec.dataset import MANIFEST, load_codes
from aligncap_core.errors import DataError
from aligncap_core.utils import read_jsonl

ATTRIBUTES = ("pitch", "speed", "volume", "emotion", "gender")


def code_features(codes: np.ndarray, codebook_size: int = 1024, bigrams: bool = False) -> np.ndarray:
    """codes `(n_q, T)` -> `(n_q * codebook_size + 2 [+ bigram dims],)` float features.

    Per codebook: code histogram / T. Length: log(T) and T / 75 (seconds). With bigrams, a hashed
    (4096-bucket) histogram of consecutive codebook-0 code pairs adds a little order information.
    """
    n_q, t = codes.shape
    hist = np.zeros((n_q, codebook_size), dtype=np.float32)
    for q in range(n_q):
        hist[q] = np.bincount(codes[q], minlength=codebook_size)[:codebook_size] / max(t, 1)
    parts = [hist.ravel(), np.array([np.log(max(t, 1)), t / 75.0], dtype=np.float32)]
    if bigrams:
        b = np.zeros(4096, dtype=np.float32)
        if t > 1:
            pair = (codes[0, :-1].astype(np.int64) * 1031 + codes[0, 1:]) % 4096
            b += np.bincount(pair, minlength=4096) / (t - 1)
        parts.append(b)
    return np.concatenate(parts)


def probe_dataset(
    data_dir: str | os.PathLike,
    *,
    attributes: tuple[str, ...] = ATTRIBUTES,
    train_split: str = "train",
    eval_split: str = "valid",
    keep_q: int | None = None,
    bigrams: bool = False,
    C: float = 100.0,
) -> dict[str, Any]:
    """Probe accuracy per attribute on a tokenized dataset.

    Returns {attribute: {accuracy, chance, n_train, n_eval, classes}} plus n_q and the codec.
    Attributes missing from the rows, or with one class in train, are skipped (listed in "skipped").
    """
    from sklearn.linear_model import LogisticRegression

    data_dir = Path(data_dir)
    rows = read_jsonl(data_dir / MANIFEST)
    if not rows or "codes" not in rows[0]:
        raise DataError(f"{data_dir}: manifest has no codes; run `aligncap data tokenize {data_dir}` first")
    codes = [load_codes(data_dir, r) for r in rows]
    if keep_q:
        codes = [c[:keep_q] for c in codes]
    x = np.stack([code_features(c, bigrams=bigrams) for c in codes])
    split = np.array([r.get("split") for r in rows])
    tr, ev = split == train_split, split == eval_split
    if not tr.any() or not ev.any():
        raise DataError(f"{data_dir}: need rows in both {train_split!r} and {eval_split!r} splits")
    out: dict[str, Any] = {"n_q": int(codes[0].shape[0]), "codec": rows[0]["codes"]["codec"], "skipped": []}
    for attr in attributes:
        y = np.array([str((r.get("attributes") or {}).get(attr)) for r in rows])
        ok = y != "None"
        trm, evm = tr & ok, ev & ok
        if len(set(y[trm])) < 2 or not evm.any():
            out["skipped"].append(attr)
            continue
        # Unscaled: histogram bins are proportions already, and standardising rare-code bins
        # amplifies their noise (probe accuracies fell 5-10 points with a StandardScaler).
        # C=100: weak L2 suits features of size ~1/T (cross-validating it was too slow on 2 cores).
        clf = LogisticRegression(C=C, max_iter=3000)
        clf.fit(x[trm], y[trm])
        values, counts = np.unique(y[trm], return_counts=True)
        majority = values[counts.argmax()]
        out[attr] = {
            "accuracy": round(float((clf.predict(x[evm]) == y[evm]).mean()), 4),
            "chance": round(float((y[evm] == majority).mean()), 4),
            "n_train": int(trm.sum()),
            "n_eval": int(evm.sum()),
            "classes": sorted(values.tolist()),
        }
    return out
