"""Inference: caption raw audio with a student checkpoint, evaluate it, measure the KL gap.

    from aligncap_core.inference import Captioner, evaluate_checkpoint
    Captioner.load("runs/student/step-00000600").caption_files(["a.wav"])
    evaluate_checkpoint("runs/student/step-00000600", "data/", "eval/report.json")

Modules: `speech` (codec + prompt settings stored in checkpoints: `attach_codec`,
`find_codec`), `captioner` (`Captioner`), `evaluate` (`evaluate_checkpoint`, `kl_gap_by_split`).
"""

from aligncap_core.inference.speech import (
    SpeechCodec,
    SpeechSettings,
    attach_codec,
    find_codec,
    resolve_speech,
)


def __getattr__(name: str):
    # torch-heavy parts load on first use: `stages` imports `attach_codec` from here
    if name == "Captioner":
        from aligncap_core.inference.captioner import Captioner

        return Captioner
    if name in ("evaluate_checkpoint", "kl_gap_by_split"):
        from aligncap_core.inference import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module 'aligncap_core.inference' has no attribute {name!r}")


__all__ = ["Captioner", "SpeechCodec", "SpeechSettings", "attach_codec", "evaluate_checkpoint",
           "find_codec", "kl_gap_by_split", "resolve_speech"]
