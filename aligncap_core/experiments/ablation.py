"""The AlignCap ablations on one dataset, several seeds (issue: reproduce the paper's ablations).

    from aligncap_core.experiments import AblationConfig, run_ablation
    results = run_ablation("runs/ablation", AblationConfig(seeds=[0, 1, 2]))

Variants, all trained on the same data with the same seeds (per seed: two teachers, three
students, preference rounds from the KD student):

    sft              SFT-only student (lambda_kd = 0) from the P_act teacher
    kd_no_pact       KD student whose teacher reads the transcript only (acoustic_prompt off)
    kd               KD student from the P_act teacher (AlignCap's KD-Regularization)
    kd_po_r1..rR     KD + PO rounds 1..R with each judge (PO-Regularization keeps the KD term)
    po_no_kd_rR      the same rounds with the KD term of DPO off (dpo.lambda_kd = 0)

A second judge adds `kd_po_<judge>_rK`. Every variant is evaluated on valid and zeroshot
(`eval_limit` clips each) and on a real-data manifest when given; `summarize` gives mean and std
over seeds. Everything resumes: trained stages from their run folders, rounds from their
round.json, evaluations from their report.json.

Layout of `out_dir`:
    data/                     the built-in corpus (unless `data_dir` is given)
    seed-S/teacher, teacher-no-pact, sft, kd-no-pact, kd     training run folders
    seed-S/po-rubric/round-k  preference rounds (improve.rounds layout), po-no-kd/ likewise
    seed-S/eval/<variant>/{data,realdata}/report.json
    results.json              {config, runs: [{variant, seed, checkpoint, metrics}], summary}
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligncap_core.errors import ConfigError
from aligncap_core.utils import atomic_write, set_dotted

log = logging.getLogger(__name__)

SPLITS = ("valid", "zeroshot")
REALDATA = "realdata"
# metrics reported in the tables (every report key is kept in results.json)
TABLE_METRICS = ("clue_f1", "hallucination_rate", "kl_gap", "cider", "bleu4", "meteor",
                 "acc_emotion", "acc_pitch", "acc_speed", "acc_volume", "acc_gender")


def _small_teacher() -> dict[str, Any]:
    # 700 steps, not fewer: a teacher that has not yet learnt to copy P_act into its caption
    # gives KD targets no better than the one-hot label (docs/experiments/kd_vs_sft.md)
    return {"train": {"max_steps": 700, "eval_every": 100, "checkpoint_every": 100}}


def _small_student() -> dict[str, Any]:
    return {"keep_q": 1, "train": {"max_steps": 150, "eval_every": 50, "checkpoint_every": 50}}


def _small_improve() -> dict[str, Any]:
    return {"rounds": 3, "patience": 0, "clips_per_round": 32, "n": 4,
            "dpo": {"max_steps": 10, "batch_size": 8}}


def _default_judges() -> list[dict[str, Any]]:
    return [{"kind": "rubric"}]


@dataclass
class AblationConfig:
    """Size and settings of the ablation. The defaults are the small CPU experiment (about an
    hour on 2 cores); every size is a parameter.

    data_dir: a prepared + tokenized data dir to use (None: build the built-in corpus of
        `synth_n` clips, seed 0, codec calibrated with `n_q` codebooks, into OUT/data).
    seeds: training seeds; every variant runs once per seed (mean and std over them).
    teacher / student / improve: TeacherConfig / StudentConfig / ImproveConfig dicts applied to
        every variant (the variant's own switches, and the seed, are set on top).
    judges: one `prefs.make_judge` config per judge; the first also runs the no-KD rounds.
    eval_limit: clips per split; realdata: a manifest of real speech (skipped when the file is
        missing), realdata_limit: clips of it. meteor: compute METEOR (Java) in the evaluations.
    """

    data_dir: str | None = None
    synth_n: int = 600
    n_q: int = 1
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    teacher: dict[str, Any] = field(default_factory=_small_teacher)
    student: dict[str, Any] = field(default_factory=_small_student)
    improve: dict[str, Any] = field(default_factory=_small_improve)
    judges: list[dict[str, Any]] = field(default_factory=_default_judges)
    eval_limit: int | None = 40
    realdata: str | None = "../shared/realdata/manifest.jsonl"
    realdata_limit: int | None = None
    meteor: bool = True

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"ablation.seeds must be distinct integers, got {self.seeds!r}")
        if not self.judges:
            raise ConfigError("ablation.judges is empty: give at least {'kind': 'rubric'}")
        # fail now on a typo, not after an hour of training
        from aligncap_core.improve import ImproveConfig
        from aligncap_core.train.config import StudentConfig, TeacherConfig, from_dict

        from_dict(TeacherConfig, self.teacher)
        from_dict(StudentConfig, self.student)
        for judge in self.judges:
            ImproveConfig.from_dict({**self.improve, "judge": judge})

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AblationConfig:
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"ablation config: unknown keys {unknown} (known: {', '.join(sorted(known))})")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def judge_name(judge: dict[str, Any]) -> str:
    return str(judge.get("kind", "rubric"))


def _with(base: dict[str, Any], dotted: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the config dict `base` with `dotted` keys ("train.seed") set on top."""
    return set_dotted(copy.deepcopy(base), dotted)


def build_corpus(out_dir: Path, n: int, n_q: int) -> Path:
    """synth -> prepare -> clues -> tokenize into out_dir/data (each stage skipped when done)."""
    from aligncap_core.clues.annotate import add_clues
    from aligncap_core.codec import tokenize_dataset
    from aligncap_core.data.prepare import prepare_dataset
    from aligncap_core.data.synth import synthesize_corpus

    corpus, data = out_dir / "corpus", out_dir / "data"
    if not (corpus / "manifest.jsonl").exists():
        synthesize_corpus(n=n, seed=0, out_dir=corpus)
    done = data / "ablation-data.json"
    if not done.exists():
        prepare_dataset(str(corpus / "manifest.jsonl"), data)
        add_clues(data)
        tokenize_dataset(data, codec="calibrated", n_q=n_q, seed=0)
        with atomic_write(done) as f:
            f.write(json.dumps({"synth_n": n, "n_q": n_q}))
    return data


def prepare_realdata(out_dir: Path, manifest: str, data: Path, n_q: int) -> Path:
    """The real-data manifest prepared and tokenized once, with the corpus's own codec, into
    out_dir/realdata: every variant's checkpoint carries that codec, so evaluation reads these
    codes instead of re-preparing and re-encoding the clips per variant and seed."""
    from aligncap_core.codec import tokenize_dataset
    from aligncap_core.data.prepare import prepare_dataset

    real = out_dir / REALDATA
    done = real / "ablation-realdata.json"
    if not done.exists():
        summary = prepare_dataset(manifest, real, progress=False)
        tokenize_dataset(real, codec=str(data / "codec"), n_q=n_q, progress=False)
        with atomic_write(done) as f:
            f.write(json.dumps({"source": manifest, "kept": summary["kept"],
                                "rejected": summary["rejected"]}))
    return real


def _codec_n_q(data: Path) -> int:
    """Codebooks the corpus was tokenized with (a given `data_dir` may differ from cfg.n_q)."""
    return int(json.loads((data / "codec" / "codec.json").read_text())["n_q"])


def _evaluate(ckpt: str, source: str, report: Path, *, splits: list[str] | None,
              limit: int | None, kl_gap: bool, meteor: bool) -> dict[str, dict]:
    """{split: metrics} from report.json, evaluating first when it is not there yet."""
    from aligncap_core.inference.evaluate import evaluate_checkpoint

    if not report.is_file():
        evaluate_checkpoint(ckpt, source, report, splits=splits, limit=limit, kl_gap=kl_gap,
                            meteor=meteor, show_progress=False)
    return json.loads(report.read_text())["metrics"]


class _Runs:
    """One MLflow child run per (variant, seed) under the ablation's parent run (optional): the
    given `parent_run_id` (a Prefect flow's), or a new parent run named `name` that is ended here."""

    def __init__(self, uri: str | None, experiment: str, name: str, parent_run_id: str | None) -> None:
        self.uri, self.parent, self.owned = uri, parent_run_id, False
        if uri is None or parent_run_id:
            return
        from aligncap_core import tracking as T

        self.parent = T.start_parent_run(T.experiment_for(experiment, uri=uri), name, uri=uri)
        self.owned = True

    def log(self, variant: str, seed: int, metrics: dict[str, dict], params: dict[str, Any]) -> None:
        if self.parent is None:
            return
        from aligncap_core import tracking as T

        # reopened, not duplicated, when a resumed experiment logs the same variant again
        run = T.start_child_run(self.parent, f"{variant}/seed-{seed}",
                                params={"variant": variant, "seed": seed, **params}, uri=self.uri)
        flat = {f"{split}/{k}": float(v) for split, m in metrics.items() for k, v in m.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        with T.MlflowLogger(run, self.uri) as logger:
            logger.log_metrics(flat, step=0)
        T.end_run(run, uri=self.uri)

    def finish(self, results_path: Path) -> None:
        if self.parent is None:
            return
        from aligncap_core import tracking as T

        T.client(self.uri).log_artifact(self.parent, str(results_path))
        if self.owned:
            T.end_run(self.parent, uri=self.uri)


def _teacher(data: Path, run_dir: Path, cfg: AblationConfig, seed: int, *, acoustic: bool) -> str:
    from aligncap_core.train.config import TeacherConfig, from_dict
    from aligncap_core.train.identity import keyed_run_dir
    from aligncap_core.train.stages import teacher_identity, train_teacher

    d = _with(cfg.teacher, {"acoustic_prompt": acoustic, "train.seed": seed})
    if not acoustic:  # no prompt to copy: the transcript-only teacher is selected on its loss
        d.setdefault("train", {}).update(select_metric="valid/loss", select_mode="min", stop_at=None)
    c = from_dict(TeacherConfig, d)
    # one folder per settings: a changed config trains anew instead of resuming the old run
    run_dir = keyed_run_dir(run_dir, teacher_identity(data, c))
    return str(train_teacher(data, run_dir, c, show_progress=False))


def _student(data: Path, teacher_ckpt: str, run_dir: Path, cfg: AblationConfig, seed: int,
             lambda_kd: float, *, acoustic: bool) -> str:
    from aligncap_core.train.config import StudentConfig, from_dict
    from aligncap_core.train.identity import keyed_run_dir
    from aligncap_core.train.stages import student_identity, train_student

    c = from_dict(StudentConfig, _with(cfg.student, {"lambda_kd": lambda_kd, "acoustic_prompt": acoustic,
                                                     "train.seed": seed}))
    run_dir = keyed_run_dir(run_dir, student_identity(data, teacher_ckpt, c))
    return str(train_student(data, teacher_ckpt, run_dir, c, show_progress=False))


def _rounds(start: str, data: Path, run_dir: Path, cfg: AblationConfig, seed: int,
            judge: dict[str, Any], *, kd_on: bool, start_metrics: dict[str, dict]) -> list[dict]:
    """The preference rounds from `start` (their records, round 0 left out); `start_metrics`:
    the start's evaluation, so round 0 is not evaluated again."""
    from aligncap_core.improve import self_improve

    # the judge replaces any judge in `improve`; eval_limit None (every clip) is set as given
    imp = {**_with(cfg.improve, {} if kd_on else {"dpo.lambda_kd": 0.0}), "judge": judge,
           "seed": seed, "eval_splits": list(SPLITS), "eval_limit": cfg.eval_limit}
    return self_improve(start, str(data), str(run_dir), imp, start_metrics=start_metrics)["rounds"][1:]


def _round_report(rounds_dir: Path, record: dict) -> Path:
    """The full evaluation report a round wrote (improve.rounds layout)."""
    return rounds_dir / f"round-{record['round']}" / "eval" / "report.json"


def run_ablation(out_dir: str | Path, cfg: AblationConfig | dict | None = None, *,
                 tracking_uri: str | None = None, experiment: str = "aligncap-ablation",
                 parent_run_id: str | None = None) -> dict:
    """Train and evaluate every variant for every seed; write and return OUT/results.json.

    tracking_uri: log a parent MLflow run (in `experiment`) with one child per (variant, seed)
    (None: no MLflow); parent_run_id: put the children under this existing run instead.
    """
    cfg = cfg if isinstance(cfg, AblationConfig) else AblationConfig.from_dict(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    data = Path(cfg.data_dir) if cfg.data_dir else build_corpus(out, cfg.synth_n, cfg.n_q)
    real = cfg.realdata if cfg.realdata and Path(cfg.realdata).is_file() else None
    if cfg.realdata and real is None:
        log.warning("ablation: real-data manifest %s not found; real-data evaluation skipped", cfg.realdata)
    real_dir = prepare_realdata(out, real, data, _codec_n_q(data)) if real else None
    runs_log = _Runs(tracking_uri, experiment, f"ablation-{out.name}", parent_run_id)
    runs: list[dict] = []

    def record(variant: str, seed: int, ckpt: str, report: Path | None = None) -> dict[str, dict]:
        """Evaluate (or read the rounds' own evaluation `report`) and log one (variant, seed)."""
        edir = out / f"seed-{seed}" / "eval" / variant
        if report is not None and report.is_file():
            by_split = json.loads(report.read_text())["metrics"]
        else:
            by_split = _evaluate(ckpt, str(data), edir / "data" / "report.json", splits=list(SPLITS),
                                 limit=cfg.eval_limit, kl_gap=True, meteor=cfg.meteor)
        metrics = {s: m for s, m in by_split.items() if s in SPLITS}
        if real:
            metrics[REALDATA] = _evaluate(ckpt, str(real_dir), edir / REALDATA / "report.json", splits=None,
                                          limit=cfg.realdata_limit, kl_gap=False,
                                          meteor=cfg.meteor)["all"]
        runs.append({"variant": variant, "seed": seed, "checkpoint": ckpt, "metrics": metrics})
        runs_log.log(variant, seed, metrics, {"checkpoint": ckpt})
        log.info("ablation: %s seed %d: valid clue_f1 %s, hallucination %s", variant, seed,
                 metrics.get("valid", {}).get("clue_f1"), metrics.get("valid", {}).get("hallucination_rate"))
        return metrics

    for seed in cfg.seeds:
        sd = out / f"seed-{seed}"
        t_pact = _teacher(data, sd / "teacher", cfg, seed, acoustic=True)
        t_plain = _teacher(data, sd / "teacher-no-pact", cfg, seed, acoustic=False)
        record("sft", seed, _student(data, t_pact, sd / "sft", cfg, seed, 0.0, acoustic=True))
        record("kd_no_pact", seed, _student(data, t_plain, sd / "kd-no-pact", cfg, seed, 1.0,
                                            acoustic=False))
        kd = _student(data, t_pact, sd / "kd", cfg, seed, 1.0, acoustic=True)
        kd_metrics = record("kd", seed, kd)
        for i, judge in enumerate(cfg.judges):
            tag = "" if i == 0 else f"_{judge_name(judge)}"
            po_dir = sd / f"po-{judge_name(judge)}"
            for r in _rounds(kd, data, po_dir, cfg, seed, judge, kd_on=True, start_metrics=kd_metrics):
                record(f"kd_po{tag}_r{r['round']}", seed, r["checkpoint"], _round_report(po_dir, r))
        no_kd = _rounds(kd, data, sd / "po-no-kd", cfg, seed, cfg.judges[0], kd_on=False,
                        start_metrics=kd_metrics)
        if no_kd:
            last = no_kd[-1]
            record(f"po_no_kd_r{last['round']}", seed, last["checkpoint"],
                   _round_report(sd / "po-no-kd", last))

    results = {"config": cfg.to_dict(), "data": str(data), "realdata": real,
               "seconds": round(time.monotonic() - t_start, 1), "runs": runs,
               "summary": summarize(runs)}
    path = out / "results.json"
    with atomic_write(path) as f:
        f.write(json.dumps(results, indent=1))
    runs_log.finish(path)
    return results


def summarize(runs: list[dict]) -> dict[str, dict[str, dict[str, dict[str, float | int]]]]:
    """{variant: {split: {metric: {"mean", "std", "n"}}}} over seeds; std is the sample standard
    deviation (0 with one seed). Variants keep the order they first appear in."""
    grouped: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in runs:
        for split, m in r["metrics"].items():
            for k, v in m.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    grouped.setdefault(r["variant"], {}).setdefault(split, {}).setdefault(k, []).append(float(v))
    out: dict = {}
    for variant, splits in grouped.items():
        for split, metrics in splits.items():
            for k, vals in metrics.items():
                mean = sum(vals) / len(vals)
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
                out.setdefault(variant, {}).setdefault(split, {})[k] = {
                    "mean": round(mean, 4), "std": round(std, 4), "n": len(vals)}
    return out
