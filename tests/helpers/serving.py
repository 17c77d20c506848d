"""A relocated champion for the serving tests: one micro teacher + student trained into a run
folder (the real stages, on the tone corpus of tests/helpers/audio_corpus.py); the student
checkpoint is copied to another path and the run folder deleted, so a test that uses it has a
champion that can only load from what it carries itself.

`relocated` is a module-scoped fixture that needs the `corpus` fixture of audio_corpus: a test
module imports both.
"""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import soundfile as sf

from aligncap_core.inference.captioner import Captioner
from aligncap_core.model.generate import GenerationSettings
from aligncap_core.train import stages
from aligncap_core.train.config import StudentConfig, TeacherConfig
from tests.helpers.audio_corpus import SR, tone
from tests.helpers.training import quick

GEN = {"max_new_tokens": 8}


def wav_bytes(emotion: str, seed: int, fmt: str = "WAV", sr: int = SR, seconds: float | None = None) -> bytes:
    x = tone(emotion, np.random.default_rng(seed), sr)
    if seconds is not None:
        x = np.resize(x, int(seconds * sr))
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def relocated(corpus, tmp_path_factory) -> dict:
    """{"ckpt": the champion copied elsewhere after its run folder was deleted, "clip": a wav,
    "caption": its caption from the original checkpoint}."""
    root = tmp_path_factory.mktemp("relocate")
    run = root / "run"
    teacher = stages.train_teacher(corpus, run / "teacher",
                                   TeacherConfig(preset="micro", train=quick(max_steps=20)),
                                   show_progress=False)
    student = stages.train_student(corpus, teacher, run / "student",
                                   StudentConfig(train=quick(max_steps=6, eval_every=0)),
                                   show_progress=False)
    clip = root / "clip.wav"
    clip.write_bytes(wav_bytes("sad", 3))
    before = Captioner.load(student, device="cpu").caption_files([clip], GenerationSettings(**GEN))[0]
    dest = shutil.copytree(student, root / "elsewhere" / "champion")
    shutil.rmtree(run)  # the teacher, the from-scratch base and the codec source are gone
    return {"ckpt": dest, "clip": clip, "caption": before}
