"""The champion as an MLflow model: a pyfunc flavour any MLflow tool can load and serve.

    log_pyfunc_model("runs/demo/champion", run_id)       # -> "runs:/<run id>/champion"
    m = mlflow.pyfunc.load_model("models:/aligncap-sec@champion")
    m.predict(pd.DataFrame({"audio": ["clip.wav"]}))      # or audio_bytes, or samples + sample_rate
    #   id | caption | attributes | seconds | withheld | told | struck | unsure

The model folder holds MLmodel (signature below), the `AlignCapPyfunc` instance and the
checkpoint as the artifact `checkpoint` (inference files only: no optimizer state). The
checkpoint is self-contained (its codec, tokenizer and base are inside: `model.checkpoint`), so
the model loads in any process with aligncap installed, from any working directory.

Input (a DataFrame; one of the three per row):
    audio        string  a local path or s3:// URI of an audio file
    audio_bytes  binary  an encoded file (WAV/FLAC/OGG/MP3, what soundfile reads)
    samples      array of double, with sample_rate (long, Hz): raw mono or (frames, channels) audio
    id           string  optional, echoed back (default: the row number)
Output: a DataFrame with id, caption, attributes ({attribute: value} as the clue parser reads the
caption), seconds (clip duration), withheld (None, or why the checks left attributes out of the
caption) and told (None, or why the caption states the gender the clip's vocal tract reads: a
recording unlike the training audio; `inference.domain`), struck and unsure (None, or the
attributes, comma-separated, deleted from the caption / still stated in it below the agreement
bar of the sampled candidates: a statement to doubt). A row that cannot be read raises
DataError naming it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from aligncap_core.errors import DataError
from aligncap_core.serving.model_ref import PYFUNC_CHECKPOINT
from aligncap_core.vocab import ATTRIBUTES


def signature() -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, Property, Schema

    inputs = Schema([ColSpec("string", "audio", required=False),
                     ColSpec("binary", "audio_bytes", required=False),
                     ColSpec(Array("double"), "samples", required=False),
                     ColSpec("long", "sample_rate", required=False),
                     ColSpec("string", "id", required=False)])
    attrs = Object([Property(a, "string", required=False) for a in ATTRIBUTES])
    outputs = Schema([ColSpec("string", "id"), ColSpec("string", "caption"),
                      ColSpec(attrs, "attributes"), ColSpec("double", "seconds"),
                      ColSpec("string", "withheld", required=False),
                      ColSpec("string", "told", required=False),
                      ColSpec("string", "struck", required=False),
                      ColSpec("string", "unsure", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _present(v: Any) -> bool:
    if v is None:
        return False
    try:
        return not bool(v != v)  # NaN (pandas' missing value) is the only value unequal to itself
    except (TypeError, ValueError):  # arrays compare elementwise: present
        return True


class AlignCapPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper around `CaptionEngine` (module doc for the input and output)."""

    def load_context(self, context):  # noqa: ANN001 - MLflow reads type hints as a schema
        from aligncap_core.serving.engine import CaptionEngine

        device = os.environ.get("ALIGNCAP_DEVICE", "auto")
        self.engine = CaptionEngine.load(context.artifacts[PYFUNC_CHECKPOINT], device=device)

    def _wave(self, row: dict, label: str) -> Any:
        e = self.engine
        if _present(row.get("audio")):
            return e.waveform(str(row["audio"]), label=f"{label} ({row['audio']})")
        if _present(row.get("audio_bytes")):
            return e.waveform(bytes(row["audio_bytes"]), label=label)
        if _present(row.get("samples")):
            return e.from_samples(row["samples"], row.get("sample_rate") or 0, label=label)
        raise DataError(f"{label}: no audio, audio_bytes or samples; give one per row")

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - see load_context
        import pandas as pd

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        rows = df.to_dict("records")
        ids = [str(r["id"]) if _present(r.get("id")) else str(i) for i, r in enumerate(rows)]
        waves = [self._wave(r, f"row {i} (id {ids[i]})") for i, r in enumerate(rows)]
        results = self.engine.caption(waves)
        return pd.DataFrame({"id": ids, "caption": [r["caption"] for r in results],
                             "attributes": [r["attributes"] for r in results],
                             "seconds": [round(len(w) / self.engine.sample_rate, 3) for w in waves],
                             "withheld": [(r["withheld"] or {}).get("reason") for r in results],
                             "told": [(r["told"] or {}).get("reason") for r in results],
                             "struck": [", ".join(r["struck"]) or None for r in results],
                             "unsure": [", ".join(r["unsure"]) or None for r in results]})


def save_pyfunc_model(checkpoint: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the MLflow model folder for `checkpoint` at `path` (which must not exist)."""
    from aligncap_core import __version__
    from aligncap_core.model.checkpoint import fetch_to_local, read_meta
    from aligncap_core.utils import link_or_copy

    src = fetch_to_local(checkpoint)
    meta = read_meta(src)
    if meta.get("stage") == "teacher":
        raise DataError(f"{checkpoint}: a teacher reads text, not audio; log a student or round checkpoint")
    with tempfile.TemporaryDirectory(prefix="aligncap-pyfunc-") as tmp:
        ckpt = Path(tmp) / PYFUNC_CHECKPOINT
        shutil.copytree(src, ckpt, copy_function=link_or_copy,
                        ignore=shutil.ignore_patterns("trainer_state.pt"))
        mlflow.pyfunc.save_model(
            path=str(path), python_model=AlignCapPyfunc(), artifacts={PYFUNC_CHECKPOINT: str(ckpt)},
            signature=signature(),
            # given, not inferred: inference would load the model in a subprocess to trace imports
            pip_requirements=[f"aligncap=={__version__}", f"mlflow=={mlflow.__version__}"],
            metadata={"aligncap_stage": str(meta.get("stage")), "aligncap_step": int(meta.get("step", 0)),
                      "aligncap_round": int(meta.get("round", 0))})
    return Path(path)


def log_pyfunc_model(checkpoint: str | os.PathLike, run_id: str, *, artifact_path: str = "champion",
                     uri: str | None = None) -> str:
    """Log `checkpoint` as an aligncap pyfunc model under `artifact_path` of run `run_id`;
    returns its `runs:/` URI (what `tracking.register_champion` takes)."""
    from aligncap_core.tracking import client

    with tempfile.TemporaryDirectory(prefix="aligncap-pyfunc-") as tmp:
        model_dir = save_pyfunc_model(checkpoint, Path(tmp) / "model")
        client(uri).log_artifacts(run_id, str(model_dir), artifact_path=artifact_path)
    return f"runs:/{run_id}/{artifact_path}"
