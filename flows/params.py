"""Flow parameters as pydantic models: the Prefect UI renders each as a form with these
descriptions, and a deployment's YAML defaults are validated against them.

Stage configs are the library's dataclasses (TeacherConfig, StudentConfig, ImproveConfig): the
common knobs are typed fields here (None = the library's default, so defaults live in one
place), anything else goes into `config` with the library's YAML keys, and validation calls the
library's own `from_dict`, so a typo (`train.lrr`) fails when the run is submitted, not after an
hour of data preparation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aligncap_core.defaults import EVAL, MODEL_NAME, SYNTH_N
from aligncap_core.inference.consistent import DecodingSettings

REALDATA_DEFAULT = "../shared/realdata/manifest.jsonl"


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown key is a typo, not a silent default


def _validate(build: Any, *args: Any) -> None:
    """Run a library config constructor; its ConfigError becomes the ValueError pydantic reports
    (with the library's message, which names the bad key)."""
    from aligncap_core.errors import ConfigError

    try:
        build(*args)
    except ConfigError as e:
        raise ValueError(str(e)) from e


def _merge(config: dict[str, Any], **typed: Any) -> dict[str, Any]:
    """`config` with the typed knobs that were given (dotted keys) set on top."""
    from aligncap_core.utils import set_dotted

    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    return set_dotted(out, typed)


class DataParams(_Params):
    """Where the data comes from and how it becomes speech tokens."""

    source: str | None = Field(None, description="Manifest (.jsonl file, folder with manifest.jsonl, "
                               "s3://bucket/key) or a Hugging Face save_to_disk folder. Empty: synthesize "
                               "the built-in espeak-ng emotional speech corpus.")
    synth_n: int = Field(SYNTH_N, ge=8, description="Built-in corpus: number of clips.")
    synth_seed: int = Field(0, ge=0, description="Built-in corpus: seed (same seed, same corpus).")
    synth_workers: int = Field(0, ge=0, description="Built-in corpus: synthesis processes (0 = all cores).")
    prepare: dict[str, Any] = Field(default_factory=dict, description="Extra prepare_dataset settings: "
                                    "sample_rate, min_duration, max_duration, split, workers, ...")
    clue_backend: str = Field("auto", description="Emotion clue parser backend: auto, spacy or blank.")
    codec: str = Field("calibrated", description="'calibrated' (EnCodec with codebooks fitted on the "
                       "train split), a Hugging Face id (facebook/encodec_24khz) or a local EnCodec folder.")
    n_q: int = Field(2, ge=1, le=32, description="EnCodec codebooks per frame (2 = 1.5 kbps, 150 tokens/s).")
    seed: int = Field(0, ge=0, description="Seed of the codec calibration.")
    augment: dict[str, Any] = Field(default_factory=dict, description="Domain randomisation of the "
                                    "train clips (AugmentConfig keys, e.g. {\"copies\": 1}): empty = "
                                    "none. Copies are added after prepare, before clues and tokenize.")

    @model_validator(mode="after")
    def _check(self) -> DataParams:
        if self.augment:
            from aligncap_core.data.augment.config import AugmentConfig

            _validate(AugmentConfig.from_dict, dict(self.augment))
        return self


class TeacherParams(_Params):
    """Stage 1, the text teacher (aligncap_core.train.config.TeacherConfig)."""

    base: str | None = Field(None, description="'tiny' (from-scratch Llama) or a Hugging Face model id/path.")
    preset: str | None = Field(None, description="From-scratch architecture: tiny (default) or micro (tests).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (empty: the library default).")
    config: dict[str, Any] = Field(default_factory=dict, description="Any other TeacherConfig keys, as in its "
                                   "YAML (e.g. {\"train\": {\"lr\": 0.001, \"batch_size\": 8}}).")

    def resolved(self) -> dict[str, Any]:
        """The TeacherConfig dict the task receives."""
        return _merge(self.config, base=self.base, preset=self.preset, **{"train.max_steps": self.max_steps})

    @model_validator(mode="after")
    def _check(self) -> TeacherParams:
        from aligncap_core.train.config import TeacherConfig, from_dict

        _validate(from_dict, TeacherConfig, self.resolved())
        return self


class StudentParams(_Params):
    """Stage 2, the KD speech student (aligncap_core.train.config.StudentConfig)."""

    lambda_kd: float | None = Field(None, ge=0, description="Weight of KL(teacher || student); 0 = SFT only.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps (empty: the library default).")
    config: dict[str, Any] = Field(default_factory=dict, description="Any other StudentConfig keys, as in its YAML.")

    def resolved(self) -> dict[str, Any]:
        """The StudentConfig dict the task receives."""
        return _merge(self.config, lambda_kd=self.lambda_kd, **{"train.max_steps": self.max_steps})

    @model_validator(mode="after")
    def _check(self) -> StudentParams:
        from aligncap_core.train.config import StudentConfig, from_dict

        _validate(from_dict, StudentConfig, self.resolved())
        return self


class EvalParams(_Params):
    """How checkpoints are evaluated (after every preference round and at the end)."""

    splits: list[str] = Field(default_factory=lambda: list(EVAL.splits),
                              description="Splits of the prepared data to evaluate.")
    limit: int | None = Field(EVAL.limit, ge=1, description="At most this many clips per split (empty: all).")
    realdata: str | None = Field(REALDATA_DEFAULT, description="Extra held-out manifest evaluated as "
                                 "'realdata' when the file exists (relative to the working directory).")
    realdata_limit: int | None = Field(None, ge=1, description="At most this many real clips (empty: `limit`).")
    realdata_group_by: str | None = Field("corpus", description="Also report the real data per value of "
                                          "this row field ('corpus': the row's corpus, else its id prefix), "
                                          "as splits realdata/<value>. Empty: the whole set only.")
    max_new_tokens: int = Field(EVAL.max_new_tokens, ge=1, description="Longest generated caption, tokens.")
    meteor: bool = Field(EVAL.meteor, description="Compute METEOR (starts a JVM, ~5 s).")
    kl_gap: bool = Field(EVAL.kl_gap, description="Measure the speech-text KL gap (teacher vs student).")
    batch_size: int = Field(EVAL.batch_size, ge=1, description="Clips per generation batch.")
    decoding: str = Field(DecodingSettings.strategy, description="greedy, or consistent: sample several "
                          "captions and keep the one that agrees with the per-attribute majority, "
                          "leaving out attributes the samples disagree on.")
    decoding_samples: int = Field(DecodingSettings.samples, ge=1, description="Consistent decoding: sampled captions per clip "
                                  "(besides the greedy one).")
    decoding_risk: float = Field(DecodingSettings.risk, ge=0, description="Consistent decoding: cost of a false "
                                 "statement relative to a true one (an attribute is stated when more "
                                 "than risk/(1+risk) of the candidates agree).")

    def settings(self) -> dict[str, Any]:
        """Keyword settings of the evaluate task (part of its cache key)."""
        return {"max_new_tokens": self.max_new_tokens, "meteor": self.meteor,
                "kl_gap": self.kl_gap, "batch_size": self.batch_size,
                "decoding": {"strategy": self.decoding, "samples": self.decoding_samples,
                             "risk": self.decoding_risk}}

    @model_validator(mode="after")
    def _check(self) -> EvalParams:
        from aligncap_core.inference.consistent import DecodingSettings

        _validate(lambda: DecodingSettings(**self.settings()["decoding"]))
        return self

    def realdata_manifest(self) -> str | None:
        """The real-data manifest when it exists here, else None (it is optional)."""
        if self.realdata and ("://" in self.realdata or Path(self.realdata).is_file()):
            return self.realdata
        return None


class ImproveParams(_Params):
    """SpeechAlign-style preference rounds (aligncap_core.improve.ImproveConfig)."""

    rounds: int | None = Field(None, ge=0, description="Preference rounds (empty: the library default).")
    config: dict[str, Any] = Field(default_factory=dict, description="Any other ImproveConfig keys: n, judge, "
                                   "pair_strategy, dpo ({max_steps, beta, ...}), select_metric, patience, ...")

    def resolved(self, evaluation: EvalParams | None = None) -> dict[str, Any]:
        """The ImproveConfig dict the tasks receive. Rounds are evaluated like everything else:
        `evaluation` sets eval_splits / eval_limit, so the final evaluation re-uses them.

        An `eval_splits` / `eval_limit` in `config` that differs from `evaluation`'s is a
        ConfigError rather than overwritten: the rounds would be selected on other clips than the
        final evaluation scores. The same value is accepted."""
        from aligncap_core.errors import ConfigError
        from aligncap_core.improve import ImproveConfig

        d = _merge(self.config, rounds=self.rounds)
        if evaluation is not None:
            for key, name, value in (("eval_splits", "evaluation.splits", list(evaluation.splits)),
                                     ("eval_limit", "evaluation.limit", evaluation.limit)):
                given = d.get(key, value)
                if (list(given) if isinstance(given, tuple) else given) != value:
                    raise ConfigError(
                        f"improve.config.{key} = {given!r} conflicts with {name} = {value!r}: "
                        f"the preference rounds are evaluated on the same clips as the final "
                        f"evaluation; set {name} and drop improve.config.{key}")
                d[key] = value
        return ImproveConfig.from_dict(d).to_dict()

    @model_validator(mode="after")
    def _check(self) -> ImproveParams:
        _validate(self.resolved)
        return self


class TrackingParams(_Params):
    """MLflow: where runs go and what the champion is registered as."""

    enabled: bool = Field(True, description="Log MLflow runs (a parent per flow run, a child per stage).")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (empty: $MLFLOW_TRACKING_URI, "
                                     "else sqlite:///OUT/mlflow.db).")
    experiment: str = Field("aligncap", min_length=1, description="MLflow experiment name.")
    model_name: str = Field(MODEL_NAME, min_length=1, description="Registered model name.")
    register_champion: bool = Field(True, description="Register the best checkpoint with the alias 'champion'.")

    def uri(self, out_dir: str | os.PathLike) -> str:
        """The tracking URI to use for a run writing into `out_dir`."""
        from aligncap_core.tracking import tracking_uri

        return tracking_uri({"tracking_uri": self.tracking_uri}, run_dir=out_dir)
