"""Iterative self-improvement: SpeechAlign-style preference rounds on the speech student.

    from aligncap_core.improve import self_improve
    summary = self_improve("runs/student/step-00000600", "data/", "runs/improve", {"rounds": 3})

Modules: `config` (`ImproveConfig`, the selection metric), `steps` (one function per round step,
paths and small dicts in and out: what the Prefect tasks wrap), `rounds` (`run_round`,
`self_improve`: the one round loop: rounds, early stop, resume, champion; `RoundSteps`: how
each step runs), `policy` (prompt settings of a policy
checkpoint), `report` (the per-round table).
"""

from aligncap_core.improve.config import (
    ImproveConfig,
    RoundSelector,
    load_improve_config,
    parse_select_metric,
    selection_score,
)
from aligncap_core.improve.report import rounds_table
from aligncap_core.improve.rounds import (
    RoundSteps,
    improve_identity,
    local_steps,
    run_round,
    self_improve,
)
from aligncap_core.improve.steps import (
    dpo_step,
    evaluate_step,
    generate_candidates_step,
    judge_step,
    pairs_step,
    round_clips_step,
)

__all__ = ["ImproveConfig", "RoundSelector", "RoundSteps", "dpo_step", "improve_identity", "local_steps", "evaluate_step", "generate_candidates_step", "judge_step",
           "load_improve_config", "pairs_step", "parse_select_metric", "rounds_table", "round_clips_step",
           "run_round", "selection_score", "self_improve"]
