"""Defaults that more than one surface (library, CLI, flow parameters, tasks) offers, defined once.

Evaluation: `evaluate_checkpoint`, `aligncap evaluate`, the pipeline's `EvalParams`, the evaluate task and
the preference rounds' evaluation (`ImproveConfig.eval_*`) read their defaults from `EVAL`, and
the decoder's from `DecodingSettings` (`inference.consistent`). The built-in corpus size:
`synthesize_corpus`, `aligncap data synth` and the pipeline's `DataParams.synth_n`. `tests/core/test_defaults.py` fails if any of them carries its own copy.
Nothing heavy is imported here: the CLI and the flow parameter models import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalDefaults:
    """splits / limit: the held-out splits a pipeline scores and at most this many clips of each
    (the rounds are selected on the same clips; `aligncap evaluate` scores every clip unless
    given --limit). max_new_tokens: longest caption. batch_size: clips per generation batch and
    examples per KL forward. meteor: compute METEOR (starts a JVM). kl_gap: measure the
    speech-text KL gap (teacher vs student)."""

    splits: tuple[str, ...] = ("valid", "zeroshot")
    limit: int | None = 200
    max_new_tokens: int = 64
    batch_size: int = 16
    meteor: bool = True
    kl_gap: bool = True


EVAL = EvalDefaults()

# clips of the built-in espeak-ng corpus when none is given (flows/demo.yaml asks for 800)
SYNTH_N = 1200

# real speech evaluated as the split 'realdata' when the file exists (relative to the working
# directory): the pipeline's EvalParams.realdata and AblationConfig.realdata
REALDATA = "../shared/realdata/manifest.jsonl"

# the registered model name of the champion (`aligncap-sec@champion`)
MODEL_NAME = "aligncap-sec"

# Prefect result storage on S3 (`aligncap results-storage`, tasks/storage.py, `aligncap up --s3`):
# the block's name and the key prefix of the results in the bucket
RESULTS_BLOCK = "aligncap-results"
RESULTS_PREFIX = "prefect-results"
