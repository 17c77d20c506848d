"""Every default is defined once: a flow parameter, a CLI option and the library function it
ends up in agree, because the surfaces read the library's value (`aligncap_core.defaults`,
`DecodingSettings`, the library signatures) instead of carrying their own copy. A literal that
drifts from the library fails here."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from aligncap_core.defaults import EVAL, MODEL_NAME, SYNTH_N
from aligncap_core.inference.consistent import DecodingSettings


def _default(fn, name: str) -> Any:
    return inspect.signature(fn).parameters[name].default


def _flow_defaults(model) -> dict[str, Any]:
    return {name: f.get_default(call_default_factory=True) for name, f in model.model_fields.items()}


def _library() -> dict[str, dict[str, Any]]:
    """{flow params class: {field: the library's default it must equal}}."""
    from aligncap_core.clues.annotate import add_clues
    from aligncap_core.codec.dataset import tokenize_dataset
    from aligncap_core.data.synth.corpus import synthesize_corpus
    from aligncap_core.experiments import AblationConfig
    from aligncap_core.improve import ImproveConfig
    from aligncap_core.inference.evaluate import evaluate_checkpoint
    from aligncap_core.tracking import DEFAULT_MODEL_NAME

    improve = ImproveConfig()
    return {
        "DataParams": {
            "synth_n": _default(synthesize_corpus, "n"),
            "synth_seed": _default(synthesize_corpus, "seed"),
            "synth_workers": _default(synthesize_corpus, "workers"),
            "synthesizers": list(_default(synthesize_corpus, "synthesizers")),
            "synth_other_share": _default(synthesize_corpus, "other_share"),
            "clue_backend": _default(add_clues, "backend"),
            "codec": _default(tokenize_dataset, "codec"),
            "n_q": _default(tokenize_dataset, "n_q"),
            "seed": _default(tokenize_dataset, "seed"),
        },
        "EvalParams": {
            # the pipeline's final evaluation and its rounds score the same clips
            "splits": list(improve.eval_splits),
            "limit": improve.eval_limit,
            "max_new_tokens": improve.max_new_tokens,
            "meteor": _default(evaluate_checkpoint, "meteor"),
            "kl_gap": _default(evaluate_checkpoint, "kl_gap"),
            "batch_size": _default(evaluate_checkpoint, "batch_size"),
            # the real-speech manifest the ablation evaluates too
            "realdata": AblationConfig().realdata,
        },
        "TrackingParams": {"model_name": DEFAULT_MODEL_NAME},
    }


# flow-only knobs with no library counterpart (where runs go, what a run is called, optional inputs)
FLOW_ONLY = {
    "DataParams": {"source", "prepare", "augment"},
    "EvalParams": {"realdata_limit", "realdata_group_by", "realdata_stages"},
    "TrackingParams": {"enabled", "tracking_uri", "experiment", "register_champion"},
}


@pytest.mark.parametrize("name", ["DataParams", "TeacherParams", "StudentParams", "EvalParams",
                                  "ImproveParams", "TrackingParams"])
def test_flow_param_defaults_are_the_library_defaults(name):
    import flows.params as fp

    flow = _flow_defaults(getattr(fp, name))
    lib = _library().get(name, {})
    for field, value in flow.items():
        if field in lib:
            assert value == lib[field], f"{name}.{field}: flow default {value!r} != library {lib[field]!r}"
        elif field not in FLOW_ONLY.get(name, set()):
            # a stage knob with no library counterpart here must leave the choice to the library
            given = value.model_dump() if hasattr(value, "model_dump") else value  # a generated section
            assert given in (None, {}), (f"{name}.{field} has its own default {value!r}: read the "
                                         f"library's, or map it in tests/core/test_defaults.py")


def test_stage_params_left_empty_resolve_to_the_library_configs():
    """Empty flow params give exactly the library's configs (the typed knobs default to None)."""
    from aligncap_core.improve import ImproveConfig
    from aligncap_core.train.config import StudentConfig, TeacherConfig, from_dict
    from flows.params import EvalParams, ImproveParams, StudentParams, TeacherParams

    assert from_dict(TeacherConfig, TeacherParams().resolved()) == TeacherConfig()
    assert from_dict(StudentConfig, StudentParams().resolved()) == StudentConfig()
    assert ImproveParams().resolved(EvalParams()) == ImproveConfig().to_dict()
    assert DecodingSettings(**EvalParams().settings()["decoding"]) == DecodingSettings()


def test_cli_options_default_to_the_library():
    from aligncap_core import cli
    from aligncap_core.data.synth.corpus import synthesize_corpus
    from aligncap_core.inference.evaluate import evaluate_checkpoint
    from aligncap_core.model.generate import GenerationSettings

    ev = cli.evaluate_cmd
    assert _default(ev, "batch_size") == _default(evaluate_checkpoint, "batch_size") == EVAL.batch_size
    assert _default(ev, "max_new_tokens") == GenerationSettings().max_new_tokens == EVAL.max_new_tokens
    assert (_default(ev, "decoding"), _default(ev, "samples"), _default(ev, "risk")) == \
        (DecodingSettings().strategy, DecodingSettings().samples, DecodingSettings().risk)
    assert _default(ev, "limit") is None  # the CLI scores every clip unless told otherwise
    assert _default(cli.data_synth, "n") == _default(synthesize_corpus, "n") == SYNTH_N
    assert _default(cli.data_synth, "seed") == _default(synthesize_corpus, "seed")


def test_the_defaults_module_stays_light():
    """The CLI imports it at module level: no torch, no mlflow, no prefect. The flow parameter
    models are generated from the library's config dataclasses, some of which live beside torch
    code (DPORoundConfig), so they may import torch, but not mlflow or prefect."""
    import subprocess
    import sys

    probe = "print(sorted(m for m in ('torch', 'mlflow', 'prefect') if m in sys.modules))"
    repo = Path(__file__).resolve().parents[2]
    for modules, expected in (("aligncap_core.defaults, aligncap_core.inference.consistent", "[]"),
                              ("flows.params", "['torch']")):
        out = subprocess.run([sys.executable, "-c", f"import sys, {modules}; {probe}"],
                             capture_output=True, text=True, check=True, cwd=repo)
        assert out.stdout.strip() == expected, (modules, out.stdout)
    assert MODEL_NAME == "aligncap-sec"  # the registered name README and deployments use


def test_every_metric_name_is_in_the_metric_registry():
    """The tables, plots and the selection metric name metrics of `report_keys()` (one registry);
    a typo in select_metric is an error when the config is read, with the closest names."""
    from aligncap_core.errors import ConfigError
    from aligncap_core.eval.metrics import check_metric_names, report_keys
    from aligncap_core.experiments.ablation import TABLE_METRICS as ABLATION
    from aligncap_core.experiments.report import plot_variants
    from aligncap_core.improve import ImproveConfig
    from aligncap_core.vocab import ATTRIBUTES
    from flows.pipeline import PLOT_METRICS, TABLE_ATTRIBUTES, TABLE_METRICS

    for names in (ABLATION, TABLE_METRICS, PLOT_METRICS, _default(plot_variants, "metrics")):
        check_metric_names(names, "table")
    assert set(TABLE_ATTRIBUTES) <= set(ATTRIBUTES)
    assert len(report_keys()) == len(set(report_keys()))
    check_metric_names(["clue_f1"], "x")
    with pytest.raises(ConfigError, match="'clue_f'.*did you mean 'clue_f1'"):
        ImproveConfig(select_metric="clue_f - hallucination_rate")
    with pytest.raises(ConfigError, match="hallucination"):
        ImproveConfig(select_metric="clue_f1 - halucination_rate")
    assert ImproveConfig(select_metric="clue_f1 - 0.5 * kl_gap").select_metric


@pytest.mark.parametrize("command,options", [
    ("train_teacher_cmd", ["config", "max_steps"]),
    ("train_student_cmd", ["config", "max_steps", "lambda_kd"]),
    ("improve_cmd", ["config", "rounds", "judge", "judge_base_url", "judge_model"]),
])
def test_cli_stage_options_leave_the_defaults_to_the_library_loader(command, options):
    """The training CLI's options are overrides on top of the config file, read by the one
    loader (aligncap_core.config): left out, they are None and the library's default stands."""
    from aligncap_core import cli

    fn = getattr(cli, command)
    assert {o: _default(fn, o) for o in options} == dict.fromkeys(options)
