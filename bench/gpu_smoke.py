"""GPU smoke test: one teacher, student and DPO step each, in bf16, in one process and (with
more than one GPU) in one DDP process per GPU; prints step times and peak memory.

    bench/gpu_smoke.sh                 # what a GPU machine runs (under 5 minutes)
    python bench/gpu_smoke.py [--processes N] [--steps 3] [--smoke]

It builds, locally (no hub), a Qwen2-architecture base (`SMOKE_PRESET`, ~0.2B parameters: an
untied 1024-wide, 16-layer model) and a synthetic corpus of 4 s clips at 2 codebooks (~620
tokens a student row), then runs the library's own stage functions through the library's
launcher (`train.launch.run_stage`): a LoRA teacher on the frozen bf16 base, the KD student
beside it, one DPO round with the KD term. Each stage trains `--steps` optimizer steps (the
first one includes CUDA warm-up and is reported apart). Figures come from the stages' own
logs (rank 0): step time = 1 / steps_per_s of each logged step (DPO: its dpo/step_s), and peak
memory = torch.cuda.max_memory_allocated of rank 0's device (peak_mem_gb, dpo/peak_mem_gb).

Without a GPU it runs the same path at the micro size in fp32 on the CPU (`--smoke` forces
that anywhere), one process or, with `--processes 2`, two gloo processes: that is how the
script itself is tested (tests/core/test_bench.py). Prints one JSON object per (processes,
stage) and a summary object last.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench._common import emit, log, parser, scratch_dir, setup_threads  # noqa: E402

# ~0.2B parameters: big enough that bf16 weights, fused AdamW and DDP matter, small enough
# that building it, three stages and a second (multi-process) pass fit in 5 minutes.
SMOKE_PRESET = dict(name="smoke-qwen2", hidden_size=1024, num_layers=16, num_heads=16,
                    num_kv_heads=4, intermediate_size=2816, max_position_embeddings=2048,
                    tokenizer_vocab_size=4096, tie_word_embeddings=False, arch="qwen2",
                    tokenizer_style="qwen2")
EMOTIONS = {"happy": ("high", "fast"), "sad": ("low", "slow"), "angry": ("normal", "fast"),
            "calm": ("normal", "slow")}
INSTRUCTION = "Listen to the speech and describe how the speaker sounds."


def make_corpus(root: Path, n: int, frames: int, codebook: int) -> Path:
    """n clips (a quarter valid) of `frames` frames x 2 codebooks of fake codes, stored like
    `codec.dataset` stores them, with captions, transcripts and acoustic prompts."""
    from aligncap_core.utils import write_jsonl

    rng = np.random.default_rng(0)
    codes_dir = root / "codes" / "smokecodec"
    codes_dir.mkdir(parents=True)
    (codes_dir / "codec.json").write_text(json.dumps({"n_q": 2, "codebook_size": codebook}))
    shard, rows = {}, []
    for i in range(n):
        emotion = list(EMOTIONS)[i % len(EMOTIONS)]
        pitch, speed = EMOTIONS[emotion]
        key = f"{i:064x}"
        shard[key] = rng.integers(0, codebook, size=(2, frames)).astype(np.int16)
        rows.append({
            "id": f"clip-{i:04d}", "audio": f"audio/clip-{i:04d}.wav",
            "split": "valid" if i % 4 == 3 else "train", "transcript": "The train leaves at noon.",
            "captions": [f"A person speaks {speed} in a {pitch} voice, sounding {emotion}."],
            "attributes": {"emotion": emotion, "pitch": pitch, "speed": speed},
            "p_act": (f"Emotional clues: pitch {pitch}; speed {speed}; emotion {emotion}. "
                      "Describe how the speaker sounds."),
            "codes": {"codec": "smokecodec", "shard": "codes/smokecodec/shard-00000-smoke.npz",
                      "key": key}})
    np.savez(codes_dir / "shard-00000-smoke.npz", **shard)
    write_jsonl(root / "manifest.jsonl", rows)
    return root


def prepare(work: Path, smoke: bool) -> dict[str, Any]:
    """Corpus + base (once; both process counts train from them)."""
    from aligncap_core.model.base import build_tiny_base
    from aligncap_core.model.config import ModelPreset
    from aligncap_core.train.data import corpus_texts, read_rows

    n, frames, codebook = (16, 12, 16) if smoke else (64, 300, 1024)
    data = make_corpus(work / "data", n, frames, codebook)
    preset = "micro-qwen2" if smoke else ModelPreset(**SMOKE_PRESET)
    base = build_tiny_base(preset, corpus_texts(read_rows(data), INSTRUCTION) * 4, work / "base")
    return {"data": str(data), "base": str(base), "frames": frames}


def _steps(path: Path, key: str) -> list[dict]:
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if key in r]


def run(work: Path, prep: dict[str, Any], processes: int, steps: int, batch: int) -> list[dict]:
    """Teacher, student, DPO round in `processes` processes; one result dict per stage."""
    from aligncap_core.codec import codes_to_tokens, load_codes
    from aligncap_core.prefs.candidates import student_prompt_text
    from aligncap_core.prefs.pairs import write_pairs
    from aligncap_core.train.data import read_rows, teacher_text
    from aligncap_core.train.launch import run_stage

    out = work / f"p{processes}"
    train = {"max_steps": steps, "batch_size": batch, "warmup_steps": 0, "eval_every": 0,
             "checkpoint_every": 0, "log_every": 1, "lr": 1e-4}
    lora = {"r": 16, "alpha": 32, "dropout": 0.05}
    results = []

    def stage(name: str, spec: dict, metrics: Path, key: str) -> str:
        t = time.perf_counter()
        ckpt = run_stage(name, {**spec, "metrics_path": str(metrics), "show_progress": False},
                         processes=processes)
        wall = time.perf_counter() - t
        rows = _steps(metrics, key)
        results.append(_figures(name, rows, wall, processes))
        log(f"{name} ({processes} process{'es' if processes > 1 else ''}): {results[-1]}")
        return ckpt

    teacher = stage("teacher", {"data_dir": prep["data"], "out_dir": str(out / "teacher"), "config": {
        "base": prep["base"], "lora": lora, "train": train}}, out / "teacher.jsonl", "train/loss")
    student = stage("student", {"data_dir": prep["data"], "teacher_ckpt": teacher,
                                "out_dir": str(out / "student"),
                                "config": {"lora": lora, "train": train}},
                    out / "student.jsonl", "train/loss")
    rows = [r for r in read_rows(prep["data"], "train")]
    pairs = [{"id": r["id"], "prompt": student_prompt_text(INSTRUCTION, codes_to_tokens(
                 load_codes(prep["data"], r))),
              "chosen": r["captions"][0], "rejected": "A person is speaking.",
              "teacher_text": teacher_text(r, True), "chosen_score": 9.0, "rejected_score": 3.0,
              "margin": 6.0, "provenance": {"round": 1, "policy": student, "judge": "rubric",
                                            "strategy": "golden_vs_sample"}} for r in rows]
    pairs_path = write_pairs(out / "pairs.jsonl", pairs)
    stage("dpo_round", {"policy_ckpt": student, "pairs_path": str(pairs_path),
                        "out_dir": str(out / "round-1"), "teacher": {"adapter": "teacher"},
                        "config": {"max_steps": steps, "batch_size": max(1, batch // 2),
                                   "logging_steps": 1, "save_steps": 0, "max_length": None,
                                   "learning_rate": 5e-6}},
          out / "dpo.jsonl", "dpo/loss")
    return results


def _figures(name: str, rows: list[dict], wall: float, processes: int) -> dict[str, Any]:
    from aligncap_core.train.runtime import resolve_autocast, resolve_device

    device = resolve_device("auto")
    amp = resolve_autocast("auto", device)
    if name == "dpo_round":
        step_s = [r["dpo/step_s"] for r in rows if "dpo/step_s" in r]
        peak = max((r.get("dpo/peak_mem_gb", 0.0) for r in rows), default=None)
    else:
        step_s = [1.0 / r["steps_per_s"] for r in rows if r.get("steps_per_s")]
        peak = max((r.get("peak_mem_gb", 0.0) for r in rows), default=None)
    first, step_s = (step_s[0], step_s[1:]) if len(step_s) > 1 else (None, step_s)
    return {"stage": "dpo" if name == "dpo_round" else name, "processes": processes,
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
            "autocast": str(amp).removeprefix("torch.") if amp else "fp32",
            "steps": len(rows), "first_step_s": None if first is None else round(first, 4),
            "step_s": round(statistics.median(step_s), 4) if step_s else None,
            "peak_mem_gb": None if not peak else round(peak, 3), "wall_s": round(wall, 1),
            "loss": rows[-1].get("train/loss", rows[-1].get("dpo/loss")) if rows else None}


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--processes", type=int, default=0,
                    help="multi-process pass size (0: every GPU when there are 2 or more, else none)")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per stage")
    ap.add_argument("--batch-size", type=int, default=8, help="per process (DPO: half, in pairs)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    args = ap.parse_args(argv)
    gpus = torch.cuda.device_count()
    smoke = args.smoke or gpus == 0
    if smoke:
        args.batch_size = min(args.batch_size, 4)
    multi = args.processes or (gpus if gpus > 1 else 0)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if gpus == 0:  # CPU: one thread per process under load (train.threads)
        setup_threads(args.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    work = args.keep or scratch_dir("aligncap-gpu-smoke-")
    t0 = time.perf_counter()
    prep = prepare(work, smoke)
    log(f"gpu_smoke: {gpus} GPU(s); {'micro fp32 CPU path' if smoke else 'smoke-qwen2 bf16'}; "
        f"work {work}")
    results = run(work, prep, 1, args.steps, args.batch_size)
    if multi > 1:
        results += run(work, prep, multi, args.steps, args.batch_size)
    for r in results:
        print(json.dumps({"bench": "gpu_smoke_stage", **r}), flush=True)
    return emit("gpu_smoke", {"gpus": gpus, "processes": [1] + ([multi] if multi > 1 else []),
                              "results": results, "total_s": round(time.perf_counter() - t0, 1)},
                smoke)


if __name__ == "__main__":
    main()
