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


def main() -> None:
    from aligncap_core.errors import AlignCapError

    try:
        app()
    except AlignCapError as e:
        console.print(f"[red]error:[/red] {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
