"""Flow `prepare-data`: (synthesize ->) prepare (-> augment) -> clues -> tokenize into OUT/data/<key>, published
to the artifact store as STORE/data/<key>."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import exists, open_store, parent_run, run_stage
from flows.params import DataParams, TrackingParams
from tasks import augment, clues, prepare, publish, synth, tokenize
from tasks.caching import first_row
from tasks.data import data_identity, source_fingerprint


@flow(name="prepare-data", persist_result=True, log_prints=True)
def prepare_data(out_dir: str = "runs/pipeline", data: DataParams = DataParams(),
                 tracking: TrackingParams = TrackingParams(),
                 parent_run_id: str | None = None, store: str | None = None) -> str:
    """Build a training-ready data dir and return its URI in the artifact store.

    The data's key covers every setting and the source's content (`tasks.data.data_identity`):
    the folder is OUT/data/<key> (with its run.json), published as STORE/data/<key>. Settings that
    were prepared before return that URI at once, on any worker; changed settings prepare a new
    folder beside it. With no `data.source`, the built-in corpus is synthesized into
    OUT/corpus/<settings + generator code> first. store: the artifact store (empty: $ALIGNCAP_STORE, else out_dir).
    """
    from aligncap_core.train.identity import claim_run_dir
    from aligncap_core.utils import fingerprint

    st = open_store(store, out_dir)
    ident = data_identity(data.model_dump())
    rel = f"data/{ident.key}"
    log = get_run_logger()
    with parent_run(tracking, out_dir, "prepare-data", parent_run_id, data.model_dump()) as t, \
            st.lock(rel, f"prepared data {ident.key}"):
        if st.committed(rel) is not None:
            log.info("data %s: already prepared: %s", ident.key, st.uri(rel))
            return st.uri(rel)
        data_dir = str(st.local(rel))
        claim_run_dir(data_dir, ident)
        source, ran = data.source, False
        if not source:
            key = fingerprint(data.synth_n, data.synth_seed, data.synth_other_share,
                              source_fingerprint(None, data.synthesizers))
            corpus = str(st.local(f"corpus/{key}"))
            source = f"{corpus}/manifest.jsonl"
            _, ran = run_stage(synth, corpus, n=data.synth_n, seed=data.synth_seed,
                               workers=data.synth_workers, synthesizers=data.synthesizers,
                               other_share=data.synth_other_share, output=lambda _: exists(source))
        # prepare, clues and tokenize each rewrite DATA_DIR/manifest.jsonl: once one of them
        # really runs, the ones after it must run again (they add their columns in place)
        prepared = str(st.local(f"prepared/{ident.key}")) if data.augment else data_dir
        _, ran = run_stage(prepare, source, prepared, settings=data.prepare, refresh=ran,
                           parent_run_id=t.parent_run_id, tracking_uri=t.uri,
                           output=lambda _: exists(f"{prepared}/fingerprint.json"))
        if data.augment:  # randomised copies of the train clips join them in DATA_DIR
            _, ran = run_stage(augment, prepared, data_dir, settings=data.augment, refresh=ran,
                               output=lambda _: exists(f"{data_dir}/fingerprint.json"))
        _, ran = run_stage(clues, data_dir, backend=data.clue_backend, refresh=ran,
                           output=lambda _: "p_act" in (first_row(data_dir) or {}))
        run_stage(tokenize, data_dir, codec=data.codec, n_q=data.n_q, seed=data.seed, refresh=ran,
                  output=lambda _: "codes" in (first_row(data_dir) or {}))
        uri = publish(st.root, out_dir, rel, {"key": ident.key})
    log.info("data ready: %s", uri)
    return uri
