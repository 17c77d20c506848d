"""Use a trained model: batch captioning, an MLflow pyfunc model and an HTTP service.

    from aligncap_core.serving import CaptionEngine, caption_to_jsonl
    engine = CaptionEngine.load("models:/aligncap-sec@champion")   # or a folder, s3://, runs:/
    caption_to_jsonl(engine, ["clips/"], "out/")                    # out/predictions.jsonl

Modules: `model_ref` (resolve a model reference to a local checkpoint), `engine`
(`CaptionEngine`: clips -> caption + attributes), `batch` (files, folders, manifests ->
predictions.jsonl), `pyfunc` (`log_pyfunc_model`, the MLflow flavour), `http` (`create_app`,
`serve`: FastAPI). Torch, MLflow and FastAPI load only when a module needs them.
"""

from aligncap_core.serving.model_ref import ResolvedModel, checkpoint_in, resolve_model


def __getattr__(name: str):
    if name == "CaptionEngine":
        from aligncap_core.serving.engine import CaptionEngine

        return CaptionEngine
    if name in ("caption_to_jsonl", "expand_inputs"):
        from aligncap_core.serving import batch

        return getattr(batch, name)
    if name in ("log_pyfunc_model", "save_pyfunc_model"):
        from aligncap_core.serving import pyfunc

        return getattr(pyfunc, name)
    raise AttributeError(f"module 'aligncap_core.serving' has no attribute {name!r}")


__all__ = ["CaptionEngine", "ResolvedModel", "caption_to_jsonl", "checkpoint_in", "expand_inputs",
           "log_pyfunc_model", "resolve_model", "save_pyfunc_model"]
