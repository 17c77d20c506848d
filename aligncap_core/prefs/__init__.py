"""Preference rounds (PO-Regularization, ARCHITECTURE.md step 6): sample, judge, pair, DPO.

    rows = sample_candidates(policy, tokenizer, prompts, n=4, seed=0)       # candidates
    judged = judge_clips(make_judge({"kind": "rubric"}), clips)             # judges
    pairs = build_preference_pairs(judged, "golden_vs_sample", round=1, policy=uri, judge="rubric")
    write_pairs(path, pairs)
    ckpt = run_dpo_round(uri, path, TeacherInfo(texts=...), out_dir, DPORoundConfig())

`dpo` imports TRL lazily (about 10 s), so importing this package stays cheap.
"""

from aligncap_core.prefs.candidates import sample_candidates, student_prompt_text
from aligncap_core.prefs.dpo import DPORoundConfig, build_dpo_trainer, run_dpo_round
from aligncap_core.prefs.dpo_data import TeacherInfo
from aligncap_core.prefs.judges import (
    RUBRIC_VERSION,
    Judge,
    JudgeItem,
    Judgment,
    RubricJudge,
    RubricWeights,
    make_judge,
)
from aligncap_core.prefs.pairs import build_preference_pairs, judge_clips, read_pairs, write_pairs

__all__ = ["RUBRIC_VERSION", "DPORoundConfig", "Judge", "JudgeItem", "Judgment", "RubricJudge",
           "RubricWeights", "TeacherInfo", "build_dpo_trainer", "build_preference_pairs",
           "judge_clips", "make_judge", "read_pairs", "run_dpo_round", "sample_candidates",
           "student_prompt_text", "write_pairs"]
