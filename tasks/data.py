"""Data stages as Prefect tasks: synthesize, prepare, augment, clues, tokenize.

Each task calls one `aligncap_core` function with paths and returns its small JSON summary.
They read and write files, so they retry (a flaky disk or S3 read is the usual failure); every
library function is idempotent and reuses finished work, so a retry is cheap.

clues and tokenize rewrite DATA_DIR/manifest.jsonl in place, so their cache keys use prepare's
fingerprint.json (which they do not touch); a prepare that really ran writes a manifest without
clues or codes, so the flow re-runs them after it (`flows.common.run_stage(refresh=...)`).
DATA_DIR is OUT/data/<key> (`data_identity`: every data setting and the source's content), so
in-place steps only ever rewrite the folder of their own settings; `publish` commits it to the
artifact store, where training on other workers finds it.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from tasks.caching import make_key_fn, manifest_sha, path_key, prepared_fingerprint, result_storage
from tasks.tracking import stage_run

IO_RETRIES = dict(retries=2, retry_delay_seconds=[5, 30])
PERSIST = dict(persist_result=True, result_storage=result_storage(), cache_result_in_memory=False)


def _release(task: Any, task_run: Any, state: Any) -> None:
    from aligncap_core.utils import release_memory

    m = release_memory()
    get_run_logger().debug("%s: RSS %.2f -> %.2f GB after release", task_run.name,
                           m["rss_before"] / 2**30, m["rss_after"] / 2**30)


# Tasks that load models or encode audio give their memory back when they end, done or failed:
# in one process (embedded runs, a process worker) the next stage then starts from the baseline.
RELEASE = dict(on_completion=[_release], on_failure=[_release])


# ---- identity and publishing ------------------------------------------------------------------
# data settings that change how fast the data is made, not what it is
DATA_OPERATIONAL = frozenset({"synth_workers"})


def source_fingerprint(source: str | None, synthesizers: Any = None) -> str:
    """What the prepared data is made from: "builtin-<generator>" (the synthesized corpus, described
    by its settings, the generator's code, `synth.generator_fingerprint`, and the synthesizers it
    resolves to on this machine with their versions: `synthesizers: auto` names a different
    corpus where flite is installed) or the content hash of the source manifest (local, HF folder
    or s3://)."""
    if not source:
        from aligncap_core.data.synth import (
            generator_fingerprint,
            resolve_synthesizers,
            synthesizer_versions,
        )
        from aligncap_core.utils import fingerprint

        versions = synthesizer_versions(resolve_synthesizers(synthesizers or ["espeak-ng"]))
        return f"builtin-{generator_fingerprint()}-{fingerprint(versions)[:8]}"
    fp = manifest_sha(source)
    if fp is None and "://" in source:
        from aligncap_core.data.storage import read_bytes
        from aligncap_core.utils import sha256_bytes

        fp = sha256_bytes(read_bytes(source))
    if fp is None:
        from aligncap_core.errors import ConfigError

        raise ConfigError(f"data source {source}: not found (expected a manifest .jsonl, a folder "
                          "with manifest.jsonl, an s3:// manifest or a Hugging Face save_to_disk folder)")
    return fp


def data_identity(settings: dict[str, Any]) -> Any:
    """The run identity of prepared data (`DataParams.model_dump()`): its key names OUT/data/<key>."""
    from aligncap_core.train.identity import RunIdentity

    config = {k: v for k, v in settings.items() if k not in DATA_OPERATIONAL}
    config["prepare"] = {k: v for k, v in (config.get("prepare") or {}).items() if k != "workers"}
    return RunIdentity("data", config, {"source": source_fingerprint(settings.get("source"),
                                                                    settings.get("synthesizers"))})


@task(name="publish", **IO_RETRIES)
def publish(store: str | None, out_dir: str, rel: str, result: dict[str, Any] | None = None,
            skip: list[str] | None = None) -> str:
    """Commit OUT_DIR/REL (but the sub-paths in `skip`) to the artifact store as STORE/REL;
    returns its URI (idempotent)."""
    from aligncap_core.store import ArtifactStore

    uri = ArtifactStore.open(store, out_dir).publish(rel, result=result, skip=tuple(skip or ()))
    get_run_logger().info("published %s", uri)
    return uri


# ---- synth -------------------------------------------------------------------------------------
def _synth_inputs(p: dict[str, Any]) -> list[Any] | None:
    # the corpus is reproducible from (n, seed, captions_per_clip, other_share), the generator's
    # code and the synthesizers it resolves to (`source_fingerprint` holds both)
    return [p["n"], p["seed"], p.get("captions_per_clip", 4), path_key(p["out_dir"]),
            source_fingerprint(None, p.get("synthesizers")), p.get("other_share", 0.3)]


@task(name="synth", cache_key_fn=make_key_fn("synth", _synth_inputs), **IO_RETRIES, **PERSIST)
def synth(out_dir: str, n: int, seed: int = 0, workers: int = 0, captions_per_clip: int = 4,
          synthesizers: Any = None, other_share: float = 0.3) -> dict:
    """Synthesize the built-in corpus into `out_dir`; returns the corpus summary.

    synthesizers: "auto" (espeak-ng plus flite where installed) or a list; default espeak-ng."""
    from aligncap_core.data.synth import resolve_synthesizers, synthesize_corpus

    names = resolve_synthesizers(synthesizers or ["espeak-ng"])
    get_run_logger().info("synthesizing %d clips (seed %d) with %s into %s", n, seed,
                          " + ".join(names), out_dir)
    summary = synthesize_corpus(n=n, seed=seed, out_dir=out_dir, workers=workers,
                                captions_per_clip=captions_per_clip, synthesizers=names,
                                other_share=other_share)
    get_run_logger().info("clips per synthesizer: %s (%s)", summary["synthesizers"],
                          summary["synthesizer_versions"])
    return summary


# ---- prepare -----------------------------------------------------------------------------------
def _prepare_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [manifest_sha(p["source"]), path_key(p["source"]), path_key(p["out_dir"]),
            p.get("settings") or {}]


@task(name="prepare", cache_key_fn=make_key_fn("prepare", _prepare_inputs), **IO_RETRIES, **PERSIST)
def prepare(source: str, out_dir: str, settings: dict[str, Any] | None = None,
            parent_run_id: str | None = None, tracking_uri: str | None = None) -> dict:
    """Validate and normalise `source` (manifest, folder, s3:// or HF dataset) into `out_dir`.

    settings: extra `prepare_dataset` keywords (sample_rate, min_duration, max_duration, ...).
    Returns prepare's summary (kept, rejected, fingerprint, ...). Logs MLflow child `prepare`.
    """
    from aligncap_core.data.prepare import prepare_dataset

    settings = dict(settings or {})
    with stage_run(parent_run_id, "prepare", {"source": source, **settings}, tracking_uri) as run:
        summary = prepare_dataset(source, out_dir, **settings)
        if run:
            from aligncap_core.tracking import client

            client(tracking_uri).log_dict(run, summary, "prepare/summary.json")
    get_run_logger().info("prepare: kept %s, rejected %s -> %s", summary["kept"],
                          summary["rejected"], out_dir)
    return summary


# ---- augment (domain randomisation) -----------------------------------------------------------
def _augment_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [prepared_fingerprint(p["data_dir"]), path_key(p["data_dir"]), path_key(p["out_dir"]),
            p.get("settings") or {}]


@task(name="augment", cache_key_fn=make_key_fn("augment", _augment_inputs), **IO_RETRIES, **PERSIST)
def augment(data_dir: str, out_dir: str, settings: dict[str, Any] | None = None) -> dict:
    """Prepared `data_dir`'s rows plus randomised copies of its train rows into `out_dir`
    (`aligncap_core.data.augment`: voice, formants, channel, noise, codecs; labels re-measured).
    settings: `AugmentConfig` keys (copies, seed, per-transform sections)."""
    from aligncap_core.data.augment import augment_dataset
    from aligncap_core.data.augment.config import AugmentConfig

    summary = augment_dataset(data_dir, out_dir, AugmentConfig.from_dict(dict(settings or {})),
                              progress=False)
    get_run_logger().info("augment: kept %s of %s copies (rejected %s: %s), relabeled %s -> %s",
                          summary["kept"], summary["produced"], summary["rejected"],
                          summary["rejects_by_reason"], summary["relabeled"], out_dir)
    return summary


# ---- clues -------------------------------------------------------------------------------------
def _clues_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [prepared_fingerprint(p["data_dir"]), path_key(p["data_dir"]),
            {"template": p.get("template"), "backend": p.get("backend", "auto")}]


@task(name="clues", cache_key_fn=make_key_fn("clues", _clues_inputs), **IO_RETRIES, **PERSIST)
def clues(data_dir: str, template: str | None = None, backend: str = "auto") -> dict:
    """Parse every caption into emotional clues and the acoustic prompt P_act (in place)."""
    from aligncap_core.clues.annotate import add_clues

    summary = add_clues(data_dir, template=template, backend=backend)
    get_run_logger().info("clues: %s rows, backend %s, coverage %s", summary["rows"],
                          summary["backend"], summary["coverage"])
    return summary


# ---- tokenize ----------------------------------------------------------------------------------
def _tokenize_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [prepared_fingerprint(p["data_dir"]), path_key(p["data_dir"]),
            {"codec": p.get("codec", "calibrated"), "n_q": p.get("n_q", 2), "seed": p.get("seed", 0)}]


@task(name="tokenize", cache_key_fn=make_key_fn("tokenize", _tokenize_inputs), **IO_RETRIES, **PERSIST,
      **RELEASE)
def tokenize(data_dir: str, codec: str = "calibrated", n_q: int = 2, seed: int = 0) -> dict:
    """Encode every clip into EnCodec RVQ codes (resumable); returns the tokenize summary."""
    from aligncap_core.codec import tokenize_dataset

    summary = tokenize_dataset(data_dir, codec=codec, n_q=n_q, seed=seed)
    get_run_logger().info("tokenize: %s clips (%s encoded, %s cached), codec %s", summary["n"],
                          summary["encoded"], summary["cached"], summary["codec"])
    return summary
