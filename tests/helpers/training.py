"""The toy training corpus and the quick micro training settings most model tests share.

The corpus has real manifest rows (transcript, captions, p_act) and random codes stored the way
`aligncap_core.codec.dataset` stores them (codes/<codec>/codec.json + an .npz shard keyed by
audio hash), so the stages read it through the real `load_codes` path, with no audio encoding.
`corpus` and `teacher` are module-scoped fixtures: a test module binds them
(`corpus, teacher = training.corpus, training.teacher`) and gets its own instances.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aligncap_core.train import stages
from aligncap_core.train.config import TeacherConfig, TrainConfig
from aligncap_core.utils import write_jsonl

EMOTIONS = {"happy": ("high", "fast"), "sad": ("low", "slow"), "angry": ("normal", "fast")}
TRANSCRIPTS = ["Kids are talking by the door.", "Dogs are sitting by the door.",
               "The train leaves at noon."]
CODEBOOK = 16  # small codebooks: 2 + 2 * 16 audio tokens keep the micro vocabulary small


def clip_row(i: int, n: int, n_valid: int) -> dict:
    """Row i of an n-clip toy corpus (no codes, no clues): the emotion cycles over EMOTIONS and
    sets pitch and speed; the last n_valid rows are valid, the rest train."""
    emotion = list(EMOTIONS)[i % 3]
    pitch, speed = EMOTIONS[emotion]
    return {
        "id": f"clip-{i:03d}", "audio": f"audio/clip-{i:03d}.wav",
        "split": "valid" if i >= n - n_valid else "train",
        "transcript": TRANSCRIPTS[i % len(TRANSCRIPTS)],
        "captions": [f"A person speaks {speed} in a {pitch} voice, sounding {emotion}.",
                     f"The speaker sounds {emotion}."][: 1 + i % 2],
        "attributes": {"emotion": emotion, "pitch": pitch, "speed": speed},
    }


def toy_p_act(attributes: dict) -> str:
    """What `data clues` writes as the acoustic prompt of a toy row."""
    a = attributes
    return (f"Emotional clues: pitch {a['pitch']}; speed {a['speed']}; emotion {a['emotion']}. "
            "Describe how the speaker sounds.")


def make_corpus(root: Path, n: int = 24, n_valid: int = 8, seed: int = 0) -> Path:
    """n clips (the last n_valid in valid) with codes that depend on the emotion."""
    rng = np.random.default_rng(seed)
    codes_dir = root / "codes" / "fakecodec"
    codes_dir.mkdir(parents=True)
    (codes_dir / "codec.json").write_text(json.dumps({"n_q": 2, "codebook_size": CODEBOOK}))
    shard, rows = {}, []
    for i in range(n):
        key = f"{i:064x}"
        lo = 5 * (i % 3)
        shard[key] = rng.integers(lo, lo + 6, size=(2, int(rng.integers(8, 16)))).astype(np.int16)
        row = clip_row(i, n, n_valid)
        rows.append({**row, "p_act": toy_p_act(row["attributes"]),
                     "codes": {"codec": "fakecodec", "shard": "codes/fakecodec/shard-00000-abcdef.npz",
                               "key": key}})
    np.savez(codes_dir / "shard-00000-abcdef.npz", **shard)
    write_jsonl(root / "manifest.jsonl", rows)
    return root


def quick(**kw) -> TrainConfig:
    base = dict(lr=3e-3, warmup_steps=2, max_steps=20, batch_size=8, eval_every=10,
                eval_batches=0, checkpoint_every=10, early_stopping_patience=0, log_every=5,
                num_threads=1)  # micro matmuls: threads only add sync overhead
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    return stages.train_teacher(corpus, out, TeacherConfig(preset="micro", train=quick(max_steps=30)),
                                show_progress=False)
