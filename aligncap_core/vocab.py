"""The attribute vocabulary (ARCHITECTURE.md): ground truth labels and clue normalisation.

Labels are physically grounded: `pitch: high` means a higher F0 than the same voice's normal,
`speed: fast` a higher syllable rate than the same sentence at normal rate, `volume: loud` a
higher level. The built-in corpus verifies this by measurement.
"""

from __future__ import annotations

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "emotion": ("neutral", "calm", "happy", "sad", "angry", "fearful", "surprised", "disgusted", "bored"),
    "pitch": ("low", "normal", "high"),
    "speed": ("slow", "normal", "fast"),
    "volume": ("soft", "normal", "loud"),
    "gender": ("male", "female"),
    "intensity": ("normal", "strong"),
}

# `zeroshot` is a test split whose voices and sentences never appear in train.
SPLITS: tuple[str, ...] = ("train", "valid", "test", "zeroshot")
# Splits whose rows must carry at least one reference caption.
CAPTIONED_SPLITS: frozenset[str] = frozenset({"train", "valid"})


def check_attributes(attributes: object) -> str | None:
    """Return a human-readable problem with an `attributes` value, or None if it is valid.

    Unknown attribute *names* are allowed (passed through, e.g. `f0_median_hz`); a known name
    with a value outside the vocabulary is an error.
    """
    if attributes is None:
        return None
    if not isinstance(attributes, dict):
        return f"'attributes' must be an object, got {type(attributes).__name__}"
    for name, value in attributes.items():
        allowed = ATTRIBUTES.get(name)
        if allowed is not None and value not in allowed:
            return f"attribute {name}={value!r} is outside the vocabulary (allowed: {', '.join(allowed)})"
    return None
