"""Flow `prepare-data`: (synthesize ->) prepare -> clues -> tokenize, into OUT/data."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.common import exists, parent_run, run_stage
from flows.params import DataParams, TrackingParams
from tasks import clues, prepare, synth, tokenize
from tasks.caching import first_row


@flow(name="prepare-data", persist_result=True, log_prints=True)
def prepare_data(out_dir: str = "runs/pipeline", data: DataParams = DataParams(),
                 tracking: TrackingParams = TrackingParams(),
                 parent_run_id: str | None = None) -> str:
    """Build a training-ready data dir at OUT/data and return its path.

    With no `data.source`, the built-in corpus is synthesized into OUT/corpus first. Each stage is
    cached on its input fingerprints: re-running with unchanged inputs skips all of them.
    """
    out = Path(out_dir)
    data_dir = str(out / "data")
    with parent_run(tracking, out_dir, "prepare-data", parent_run_id, data.model_dump()) as t:
        source, ran = data.source, False
        if not source:
            source = str(out / "corpus" / "manifest.jsonl")
            _, ran = run_stage(synth, str(out / "corpus"), n=data.synth_n, seed=data.synth_seed,
                               workers=data.synth_workers, output=lambda _: exists(source))
        # prepare, clues and tokenize each rewrite DATA_DIR/manifest.jsonl: once one of them
        # really runs, the ones after it must run again (they add their columns in place)
        _, ran = run_stage(prepare, source, data_dir, settings=data.prepare, refresh=ran,
                           parent_run_id=t.parent_run_id, tracking_uri=t.uri,
                           output=lambda _: exists(Path(data_dir) / "fingerprint.json"))
        _, ran = run_stage(clues, data_dir, backend=data.clue_backend, refresh=ran,
                           output=lambda _: "p_act" in (first_row(data_dir) or {}))
        run_stage(tokenize, data_dir, codec=data.codec, n_q=data.n_q, seed=data.seed, refresh=ran,
                  output=lambda _: "codes" in (first_row(data_dir) or {}))
    get_run_logger().info("data ready: %s", data_dir)
    return data_dir
