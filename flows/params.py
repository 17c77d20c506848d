"""Flow parameters as pydantic models: the Prefect UI renders each as a form with these
descriptions, and a deployment's YAML defaults are validated against them.

The stage sections (teacher, student, improve, evaluation.decoding) are *generated* from the
library's config dataclasses (TeacherConfig, StudentConfig, ImproveConfig with its DPORoundConfig,
DecodingSettings) by `config_params`: the same keys, nesting and types as the library's YAML (one
shape: `teacher: {train: {max_steps: 400}}` here is `train.max_steps` of a teacher YAML for
`aligncap train teacher --config`), the library's comments as the UI's descriptions, and no
default copied (a key left out is the library's default, and only given keys are serialized).
Validation then calls the library's own `from_dict`, so a typo (`train.lrr`) or a bad value fails
when the run is submitted, not after an hour of data preparation. Defaults the flow sections
share with the CLI live in `aligncap_core.defaults`.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_serializer, model_validator

from aligncap_core.defaults import EVAL, MODEL_NAME, REALDATA, SYNTH_N
from aligncap_core.improve.config import ImproveConfig
from aligncap_core.inference.consistent import DecodingSettings
from aligncap_core.prefs.dpo import DPORoundConfig
from aligncap_core.train.config import StudentConfig, TeacherConfig


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


def _field_docs(cls: type) -> dict[str, str]:
    """What the library says of each field of dataclass `cls`: its comment in the source (on the
    field's line or the comment lines just above it), else its `name: text` entry in the class
    docstring. These become the Prefect UI's field descriptions."""
    import ast
    import inspect
    import re
    import textwrap

    entries: dict[str, list[str]] = {}
    entry: list[str] = []
    for line in (cls.__doc__ or "").splitlines():  # "    name[ / name2]: text" + indented continuation
        m = re.match(r"\s*(\w+(?:\s*/\s*\w+)*):\s+(.*)", line)
        if m and (len(line) - len(line.lstrip())) <= 4:
            entry = [m.group(2)]
            for name in re.split(r"\s*/\s*", m.group(1)):
                entries[name] = entry
        elif entry and line.strip():
            entry.append(line.strip())
        else:
            entry = []
    docs = {k: " ".join(v) for k, v in entries.items()}
    try:
        lines = textwrap.dedent(inspect.getsource(cls)).splitlines()
    except (OSError, TypeError):
        return docs
    for node in ast.parse("\n".join(lines)).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            i = node.lineno - 1
            comment = [lines[i].split("  # ", 1)[1]] if "  # " in lines[i] else []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#"):
                comment.insert(0, lines[j].strip().lstrip("#").strip())
                j -= 1
            if comment:
                docs[node.target.id] = " ".join(comment)
    return docs


class _Given(_Params):
    """A section of library config keys where only what was given counts: a field left out is
    the library's default, so it is neither stored nor serialized (the Prefect API, a
    deployment's YAML and `resolved()` all see the given keys only; an explicit null stays)."""

    @model_serializer(mode="wrap")
    def _only_given(self, handler: Any) -> Any:
        out = handler(self)
        return {k: v for k, v in out.items() if k in self.model_fields_set}


def _default_text(value: Any) -> str:
    return f" (default: {value!r})" if isinstance(value, str | int | float | bool | None | list | tuple) else ""


def config_params(cls: type, name: str, *, base: type[_Given] = _Given,
                  nested: dict[str, tuple[type, tuple[str, ...]]] | None = None,
                  exclude: tuple[str, ...] = (), defaults: Any = None) -> Any:
    """A pydantic model generated from library dataclass `cls`: one optional field per config
    key, typed by its annotation, described by the library's own comment and default, nested
    dataclasses (and the dict fields named in `nested`) as nested models. Its YAML shape is the
    library's (`teacher: {train: {max_steps: 5}}` is TeacherConfig's `train.max_steps`); the
    defaults stay in the dataclass (a field left out is not sent), they are only quoted in the
    descriptions, read from `defaults` (an instance: `cls()`, or for a nested section its
    parent's, since the teacher's `train` defaults are not a bare TrainConfig's).
    nested: {field: (dataclass, excluded keys)} for a dict field the library reads as a dataclass
    (ImproveConfig.dpo); exclude: keys not offered."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    defaults = cls() if defaults is None else defaults
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        value = getattr(defaults, f.name)
        sub, sub_exclude = (nested or {}).get(f.name) or (hints[f.name], ())
        if dataclasses.is_dataclass(sub):
            sub_defaults = value if dataclasses.is_dataclass(value) else _from(sub, value)
            tp, text = config_params(sub, f"{name}_{f.name}", exclude=sub_exclude, defaults=sub_defaults), ""
        else:
            tp, text = hints[f.name], _default_text(value)
        fields[f.name] = (tp | None if tp is not Any else Any,
                          Field(None, description=(docs.get(f.name, "") + text).strip() or None))
    return create_model(name, __base__=base, __doc__=cls.__doc__, **fields)


def _from(cls: type, data: Any) -> Any:
    from aligncap_core.config import from_dict

    return from_dict(cls, data)


class _Stage(_Given):
    """A pipeline stage's section: the library config's keys, validated by the library."""

    library: ClassVar[Any]

    def resolved(self) -> dict[str, Any]:
        """The library config dict the task receives: the keys that were given."""
        return self.model_dump(mode="json")

    @model_validator(mode="after")
    def _check(self) -> _Stage:
        """The library's own reader when the config class has one (it names the section in its
        errors: `ablation.seeds`), else the one loader."""
        import functools

        from aligncap_core.config import from_dict

        build = getattr(self.library, "from_dict", None) or functools.partial(from_dict, self.library)
        _validate(build, self.resolved())
        return self


class DataParams(_Params):
    """Where the data comes from and how it becomes speech tokens."""

    source: str | None = Field(None, description="Manifest (.jsonl file, folder with manifest.jsonl, "
                               "s3://bucket/key) or a Hugging Face save_to_disk folder. Empty: synthesize "
                               "the built-in espeak-ng emotional speech corpus.")
    synth_n: int = Field(SYNTH_N, ge=8, description="Built-in corpus: number of clips.")
    synth_seed: int = Field(0, ge=0, description="Built-in corpus: seed (same seed, same corpus).")
    synth_workers: int = Field(0, ge=0, description="Built-in corpus: synthesis processes (0 = all cores).")
    synthesizers: str | list[str] = Field(["espeak-ng"], description="Built-in corpus: which synthesizers "
                                          "render it: a list (espeak-ng, flite) or 'auto' (espeak-ng plus "
                                          "flite where the `flite` command is installed). A named synthesizer "
                                          "that is missing stops the run.")
    synth_other_share: float = Field(0.3, ge=0, le=1, description="Built-in corpus: train clips the "
                                     "synthesizers besides espeak-ng add to the synth_n, as a share of the "
                                     "train split (valid, test and zeroshot stay espeak-ng's).")
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
        from aligncap_core.data.synth.corpus import SYNTHESIZERS

        names = [self.synthesizers] if isinstance(self.synthesizers, str) else self.synthesizers
        if self.synthesizers != "auto" and (not names or set(names) - set(SYNTHESIZERS)):
            raise ValueError(f"synthesizers: 'auto' or a list of {', '.join(SYNTHESIZERS)}; "
                             f"got {self.synthesizers!r}")
        if self.augment:
            from aligncap_core.data.augment.config import AugmentConfig

            _validate(AugmentConfig.from_dict, dict(self.augment))
        return self


class TeacherParams(config_params(TeacherConfig, "TeacherFields", base=_Stage)):
    """Stage 1, the text teacher: TeacherConfig's keys (aligncap_core.train.config), e.g.
    {"preset": "micro", "train": {"max_steps": 400, "lr": 0.001}}; a key left out keeps the
    library default."""

    library: ClassVar[Any] = TeacherConfig


class StudentParams(config_params(StudentConfig, "StudentFields", base=_Stage)):
    """Stage 2, the KD speech student: StudentConfig's keys (aligncap_core.train.config), e.g.
    {"lambda_kd": 1.0, "prosody": true, "train": {"max_steps": 300}}."""

    library: ClassVar[Any] = StudentConfig


class DecodingParams(config_params(DecodingSettings, "DecodingFields", base=_Stage)):
    """The decoder (aligncap_core.inference.consistent.DecodingSettings)."""

    library: ClassVar[Any] = DecodingSettings


class EvalParams(_Params):
    """How checkpoints are evaluated (after every preference round and at the end)."""

    splits: list[str] = Field(default_factory=lambda: list(EVAL.splits),
                              description="Splits of the prepared data to evaluate.")
    limit: int | None = Field(EVAL.limit, ge=1, description="At most this many clips per split (empty: all).")
    realdata: str | None = Field(REALDATA, description="Extra held-out manifest evaluated as "
                                 "'realdata' when the file exists (relative to the working directory).")
    realdata_limit: int | None = Field(None, ge=1, description="At most this many real clips (empty: `limit`).")
    realdata_group_by: str | None = Field("corpus", description="Also report the real data per value of "
                                          "this row field ('corpus': the row's corpus, else its id prefix), "
                                          "as splits realdata/<value>. Empty: the whole set only.")
    realdata_stages: Literal["all", "champion"] = Field(
        "all", description="Which speech stages the real data is evaluated for: 'all', or only "
        "'champion' (the stage the rounds' selection picks on the data's splits; one real-data "
        "evaluation instead of one per stage, what `make demo` does to stay inside its time budget).")
    max_new_tokens: int = Field(EVAL.max_new_tokens, ge=1, description="Longest generated caption, tokens.")
    meteor: bool = Field(EVAL.meteor, description="Compute METEOR (starts a JVM, ~5 s).")
    kl_gap: bool = Field(EVAL.kl_gap, description="Measure the speech-text KL gap (teacher vs student).")
    batch_size: int = Field(EVAL.batch_size, ge=1, description="Clips per generation batch.")
    decoding: DecodingParams = Field(default_factory=DecodingParams,
                                     description="How captions are chosen: DecodingSettings' keys "
                                     "(strategy greedy | consistent, samples, risk, temperature, "
                                     "top_p, seed); a key left out keeps the library default.")

    def settings(self) -> dict[str, Any]:
        """Keyword settings of the evaluate task (part of its cache key). The decoding settings
        are resolved in full, library defaults included: a default that changes (a new check,
        another risk) makes a new key, so an evaluation made under the old default is not
        returned as if it were made under the new one."""
        import dataclasses

        return {"max_new_tokens": self.max_new_tokens, "meteor": self.meteor,
                "kl_gap": self.kl_gap, "batch_size": self.batch_size,
                "decoding": dataclasses.asdict(DecodingSettings(**self.decoding.resolved()))}

    def realdata_manifest(self) -> str | None:
        """The real-data manifest when it exists here, else None (it is optional)."""
        if self.realdata and ("://" in self.realdata or Path(self.realdata).is_file()):
            return self.realdata
        return None

    def realdata_missing(self) -> str | None:
        """What to log when a real-data manifest is set but not found (None: found, or unset)."""
        if not self.realdata or self.realdata_manifest():
            return None
        return (f"evaluation.realdata {self.realdata} not found (relative to {Path.cwd()}); the "
                "real-speech evaluation is skipped: set evaluation.realdata to the manifest")


class ImproveParams(config_params(ImproveConfig, "ImproveFields", base=_Stage,
                                   nested={"dpo": (DPORoundConfig, ("round",))})):
    """SpeechAlign-style preference rounds: ImproveConfig's keys (aligncap_core.improve), e.g.
    {"rounds": 2, "n": 4, "dpo": {"max_steps": 30}}. eval_splits / eval_limit come from the
    evaluation section (`resolved`)."""

    library: ClassVar[Any] = ImproveConfig

    def resolved(self, evaluation: EvalParams | None = None) -> dict[str, Any]:
        """The ImproveConfig dict the tasks receive. Rounds are evaluated like everything else:
        `evaluation` sets eval_splits / eval_limit, so the final evaluation re-uses them.

        An `eval_splits` / `eval_limit` given here that differs from `evaluation`'s is a
        ConfigError rather than overwritten: the rounds would be selected on other clips than the
        final evaluation scores. The same value is accepted."""
        from aligncap_core.errors import ConfigError
        from aligncap_core.improve import ImproveConfig

        d = self.model_dump(mode="json")
        if evaluation is not None:
            for key, name, value in (("eval_splits", "evaluation.splits", list(evaluation.splits)),
                                     ("eval_limit", "evaluation.limit", evaluation.limit)):
                given = d.get(key, value)
                if (list(given) if isinstance(given, tuple) else given) != value:
                    raise ConfigError(
                        f"improve.{key} = {given!r} conflicts with {name} = {value!r}: "
                        f"the preference rounds are evaluated on the same clips as the final "
                        f"evaluation; set {name} and drop improve.{key}")
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
