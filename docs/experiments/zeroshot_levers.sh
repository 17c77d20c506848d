#!/usr/bin/env bash
# What moves the zero-shot numbers (issue #10): the KD term and train-time augmentation, each
# switched against the `make demo` student, on the data, codec and teacher that `make demo` built.
# The PO rounds' figures come from the demo run itself (RUN/results.json). Usage:
#   bash docs/experiments/zeroshot_levers.sh [RUN=runs/demo] [OUT=runs/zeroshot_levers] [REALDATA=../shared/realdata]
# 1. "sft": the demo's student recipe with lambda_kd = 0 (no teacher pass);
# 2. "augmented": the demo's recipe (KD on) on the train split plus one augmented copy of every
#    train clip (`aligncap data augment`, the default AugmentConfig: labels re-measured),
#    tokenized with the demo's own codec so only the training data differ; the same 300 steps.
# Greedy captions; 80 clips of valid and zeroshot; every clip of REALDATA (if present).
set -euo pipefail
RUN=${1:-runs/demo}; OUT=${2:-runs/zeroshot_levers}; REALDATA=${3:-../shared/realdata}
A=.venv/bin/aligncap; PY=.venv/bin/python
mkdir -p "$OUT"
TEACHER=$($PY -c "import json;print(json.load(open('$RUN/teacher/train_summary.json'))['best_checkpoint'])")
evaluate() {  # checkpoint, data dir, report folder (report.json + predictions.jsonl each)
  [ -f "$3/report.json" ] || $A evaluate --model "$1" --manifest "$2" --out "$3/report.json" \
      --split valid --split zeroshot --limit 80 > "$3.log" 2>&1
  if [ -d "$REALDATA" ] && [ ! -f "$3-realdata/report.json" ]; then
    $A evaluate --model "$1" --manifest "$REALDATA" --out "$3-realdata/report.json" --no-kl \
        > "$3-realdata.log" 2>&1
  fi
}
best() { $PY -c "import json;print(json.load(open('$1/train_summary.json'))['best_checkpoint'])"; }
t0=$(date +%s)

# 1. KD off
$PY - "$RUN/student/config.yaml" "$OUT/sft.yaml" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["lambda_kd"] = 0.0
yaml.safe_dump(cfg, open(sys.argv[2], "w"))
PY
$A train student "$RUN/data" --teacher "$TEACHER" --out "$OUT/sft" --config "$OUT/sft.yaml" > "$OUT/sft.out" 2> "$OUT/sft.err"
evaluate "$(best "$OUT/sft")" "$RUN/data" "$OUT/eval-sft"
t1=$(date +%s)

# 2. augmentation: one copy per train clip, the demo's codec, the demo's student recipe
AUG="$OUT/data-aug"
if [ ! -f "$AUG/.tokenized" ]; then
  $A data augment "$RUN/data" "$AUG" --copies 1 --seed 0 > "$OUT/augment.out" 2> "$OUT/augment.err"
  $A data clues "$AUG" > "$OUT/clues.out" 2> "$OUT/clues.err"
  # the demo's calibrated codec as a fixed local codec; its codes cache serves the original clips
  $A data tokenize "$AUG" --codec "$(realpath "$RUN/data/codec")" --n-q 2 \
      --cache-dir "$(realpath "$RUN/data/codes")" > "$OUT/tokenize.out" 2> "$OUT/tokenize.err"
  cp -r "$RUN/data/codec" "$AUG/codec" 2>/dev/null || true
  touch "$AUG/.tokenized"
fi
$A train student "$AUG" --teacher "$TEACHER" --out "$OUT/augmented" --config "$RUN/student/config.yaml" \
    > "$OUT/augmented.out" 2> "$OUT/augmented.err"
evaluate "$(best "$OUT/augmented")" "$RUN/data" "$OUT/eval-augmented"
t2=$(date +%s)
echo "{\"sft_s\": $((t1 - t0)), \"augmented_s\": $((t2 - t1))}" > "$OUT/timing.json"

$PY - "$RUN" "$OUT" <<'PY'
import json, os, sys
run, out = sys.argv[1], sys.argv[2]
keys = ("clue_f1", "hallucination_rate", "acc_gender", "acc_pitch", "acc_speed", "acc_volume", "acc_emotion")
stages = json.load(open(f"{run}/results.json"))["stages"]
rows = {"demo student (KD on)": stages["student"], **{f"demo {k} (KD + PO)": v for k, v in stages.items()
                                                       if k.startswith("round-")}}
for name in ("sft", "augmented"):
    m = json.load(open(f"{out}/eval-{name}/report.json"))["metrics"]
    real = f"{out}/eval-{name}-realdata/report.json"
    if os.path.isfile(real):
        m = {**m, "realdata": next(iter(json.load(open(real))["metrics"].values()))}
    rows[{"sft": "KD off (lambda_kd 0)", "augmented": "KD on + augmentation"}[name]] = m
print("| student | split | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
for name, m in rows.items():
    for s in ("valid", "zeroshot", "realdata"):
        if s in m:
            print(f"| {name} | {s} | " + " | ".join("-" if m[s].get(k) is None else f"{m[s][k]:.3f}"
                                                     for k in keys) + " |")
PY
