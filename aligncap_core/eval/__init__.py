"""Caption evaluation (ARCHITECTURE.md, method step 7).

    from aligncap_core.eval import compute_metrics, format_table
    m = compute_metrics(predictions, references, attributes)   # flat dict of floats / None
    rich.print(format_table({"valid": m_valid, "test": m_test}))

Modules: `text_metrics` (tokenizer, BLEU, ROUGE-L, CIDEr, distinct-n), `meteor` (METEOR via
Java), `clue_metrics` (clue P/R/F1, hallucination, generic captions, attribute accuracy),
`metrics` (`compute_metrics`), `kl` (`kl_gap`, imports torch), `report` (tables).
`kl_gap` is loaded on first use so that scoring captions does not import torch.
"""

from __future__ import annotations

from aligncap_core.eval.metrics import compute_metrics, metric_keys
from aligncap_core.eval.report import format_table, format_text
from aligncap_core.eval.text_metrics import normalize, tokenize

__all__ = ["compute_metrics", "format_table", "format_text", "kl_gap", "metric_keys", "normalize", "tokenize"]


def __getattr__(name: str):
    if name == "kl_gap":
        from aligncap_core.eval.kl import kl_gap

        return kl_gap
    raise AttributeError(f"module 'aligncap_core.eval' has no attribute {name!r}")
