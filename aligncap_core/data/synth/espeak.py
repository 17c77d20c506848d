"""A minimal ctypes wrapper over the libespeak-ng shipped in the `espeakng-loader` wheel.

libespeak-ng keeps its voice, parameters and output buffer in process-global state, so one
process can only synthesise one thing at a time: use one `Espeak` per process (parallelism
comes from a process pool; see `corpus.py`). Output is 22,050 Hz mono int16. Renderings run
in forked children so that each starts from the same engine state (see
`Espeak.run_isolated`); this needs `os.fork` (Linux, macOS).

Parameter units (espeak-ng `speak_lib.h`):
    rate    words per minute, 80..450 (espeak default 175)
    pitch   base pitch, 0..100 (default 50); roughly logarithmic in F0
    range   pitch range, 0..100 (default 50); 0 is a monotone
    volume  amplitude, 0..200 (default 100); linear-ish in amplitude
    wordgap extra pause between words, in units of 10 ms at the default rate (default 0)
"""

from __future__ import annotations

import ctypes
import os
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from aligncap_core.errors import ConfigError

SAMPLE_RATE = 22_050  # Hz; what espeak-ng synthesises at (checked at init)

# espeak_AUDIO_OUTPUT: synchronous, samples delivered to our callback.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # do not exit() the process on a data error
_CHARS_UTF8 = 1
_RAND_SEED = 12345  # any fixed value: makes breath noise reproducible
# espeak_PARAMETER
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7

T = TypeVar("T")

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Prosody:
    """espeak parameters for one rendering (units in the module docstring)."""

    rate: int = 175
    pitch: int = 50
    range: int = 50
    volume: int = 100
    wordgap: int = 0

    def clipped(self) -> Prosody:
        """The same prosody with every value inside espeak's accepted range."""
        return Prosody(
            rate=int(np.clip(self.rate, 80, 450)),
            pitch=int(np.clip(self.pitch, 0, 100)),
            range=int(np.clip(self.range, 0, 100)),
            volume=int(np.clip(self.volume, 0, 200)),
            wordgap=int(np.clip(self.wordgap, 0, 50)),
        )


NORMAL = Prosody()  # espeak defaults (the corpus reference also sets a per-voice volume)


class Espeak:
    """One per process (`Espeak.get()`). `synth(text, voice, prosody)` -> int16 samples at
    `SAMPLE_RATE`; `synth_sequence` renders several in one fresh engine. This process's engine
    never renders itself: forked children do (see `run_isolated`)."""

    _instance: Espeak | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]

        # espeak_Initialize wants the folder that *contains* espeak-ng-data: the wheel's data plus
        # the corpus' own voice variants (voicebank.py)
        from .voicebank import data_dir

        data = data_dir()
        data_parent = str(data.parent).encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, _INITIALIZE_DONT_EXIT)
        if rate != SAMPLE_RATE:
            raise RuntimeError(f"espeak-ng initialisation failed or gave {rate} Hz (expected {SAMPLE_RATE})")
        self._chunks: list[bytes] = []
        # Keep a reference to the callback: ctypes frees it otherwise and espeak calls garbage.
        self._callback = _CALLBACK(self._on_samples)
        lib.espeak_SetSynthCallback(self._callback)
        self._data = data
        # Load the English dictionary once here: children then switch between English voices
        # without re-reading it (a few ms each). Same call in every process, so every child
        # starts from the same state.
        self._set_voice("en-us")

    @classmethod
    def get(cls) -> Espeak:
        """The process-wide instance (espeak is global state: one init per process)."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = Espeak()
            return cls._instance

    def _on_samples(self, wav, n: int, events) -> int:
        if wav and n > 0:
            self._chunks.append(ctypes.string_at(wav, n * 2))
        return 0  # 0 = keep going

    def _set_voice(self, voice: str) -> None:
        # espeak silently ignores an unknown variant ("en-us+nosuch" speaks en-us), so check it.
        _, _, variant = voice.partition("+")
        if variant and not (self._data / "voices" / "!v" / variant).is_file():
            raise ConfigError(f"espeak-ng voice variant not found: {variant!r} in {voice!r} "
                              f"(see {self._data / 'voices' / '!v'})")
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ConfigError(f"espeak-ng voice not found: {voice!r} (see espeak-ng-data/lang/)")

    def synth_inline(self, text: str, voice: str, prosody: Prosody = NORMAL) -> np.ndarray:
        """Render in this process. The result depends on what this engine rendered before
        (see `synth`): only call it inside `run_isolated`, in a fixed order."""
        self._set_voice(voice)
        p = prosody.clipped()
        for param, value in ((_RATE, p.rate), (_PITCH, p.pitch), (_RANGE, p.range),
                             (_VOLUME, p.volume), (_WORDGAP, p.wordgap)):
            self._lib.espeak_SetParameter(param, value, 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\x00"
        err = self._lib.espeak_Synth(data, len(data), 0, 1, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} for {text[:40]!r}")
        self._lib.espeak_Synchronize()
        return np.frombuffer(b"".join(self._chunks), dtype=np.int16).copy()

    def run_isolated(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in a forked child of this process and return its (pickled) result.

        libespeak-ng carries hidden state from one utterance to the next (pitch-flutter
        position, gain control, echo and breath-noise generators; measured differences up to
        2/3 of full scale), so output depends on history, and its noise generator's seed
        differs between processes (fixed here). This process never renders; every
        child starts from the engine exactly as initialised, so whatever `fn` renders with
        `synth_inline` depends only on `fn` and its arguments. Exceptions are re-raised here.
        """
        with self._lock:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: never return into the caller's stack, never run Python cleanup
                code = 0
                try:
                    os.close(read_fd)
                    # The breath-noise generator (variants with `breath`, e.g. f2, f3, f5) is
                    # otherwise seeded differently in every process.
                    self._lib.espeak_ng_SetRandSeed(_RAND_SEED)
                    try:
                        payload = pickle.dumps((True, fn(*args)))
                    except BaseException as e:  # sent to the parent and re-raised there
                        payload = pickle.dumps((False, e))
                    with os.fdopen(write_fd, "wb") as f:
                        f.write(payload)
                except BaseException:
                    code = 1
                os._exit(code)
            os.close(write_fd)
            with os.fdopen(read_fd, "rb") as f:
                payload = f.read()
            _, status = os.waitpid(pid, 0)
        if not payload:
            raise RuntimeError(f"espeak-ng child process died (status {status})")
        ok, value = pickle.loads(payload)
        if not ok:
            raise value
        return value

    def synth(self, text: str, voice: str, prosody: Prosody = NORMAL) -> np.ndarray:
        """Render `text` with `voice` (e.g. `en-us+f3`); int16 samples, mono, 22,050 Hz.

        Deterministic: the same arguments give the same samples whatever was rendered before
        (each call is the first utterance of a fresh engine; see `run_isolated`).
        """
        return self.run_isolated(self.synth_inline, text, voice, prosody)

    def synth_sequence(self, items: list[tuple[str, str, Prosody]]) -> list[np.ndarray]:
        """Render each (text, voice, prosody), in order, in one fresh engine; all the results.

        The output of the k-th rendering depends on the ones before it, never on anything else,
        so replaying a sequence reproduces it exactly (used to re-render a clip that failed its
        label check without making the next attempt depend on the worker's history).
        """
        return self.run_isolated(self._synth_all, list(items))

    def _synth_all(self, items: list[tuple[str, str, Prosody]]) -> list[np.ndarray]:
        return [self.synth_inline(text, voice, p) for text, voice, p in items]
