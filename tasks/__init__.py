"""Prefect tasks: one per pipeline stage, each a thin call into `aligncap_core`.

Tasks take and return paths (str), small dicts and run ids, never models or tensors; they are
cached by content fingerprints of their inputs (`tasks.caching`) and persist their results.
"""

from tasks.data import augment, clues, prepare, publish, synth, tokenize
from tasks.evaluate import evaluate, log_evaluation, register, resolve_champion, tag_run
from tasks.improve import build_pairs, dpo_round, generate_candidates, judge, round_clips
from tasks.logs import forward_core_logs
from tasks.train import train_student, train_teacher

forward_core_logs()  # the library's progress lines and notes in the run's logs (tasks.logs)

__all__ = ["augment", "build_pairs", "clues", "dpo_round", "evaluate", "generate_candidates", "judge",
           "log_evaluation", "prepare", "publish", "register", "resolve_champion", "round_clips", "synth", "tag_run", "tokenize",
           "train_student", "train_teacher"]
