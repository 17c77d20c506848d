#!/usr/bin/env bash
# KD student vs SFT-only student on the built-in corpus (issue: teacher + KD student).
# Usage: [TEACHER_STEPS=500] [STUDENT_STEPS=400] [DATA=prepared-dir] \
#        bash docs/experiments/kd_vs_sft.sh [OUT] [N_CLIPS]
# DATA reuses an already prepared + tokenized data dir (same corpus, no data stages).
set -euo pipefail
OUT=${1:-runs/kd_vs_sft}; N=${2:-1200}
TEACHER_STEPS=${TEACHER_STEPS:-500}; STUDENT_STEPS=${STUDENT_STEPS:-400}
A=.venv/bin/aligncap
mkdir -p "$OUT"
cat > "$OUT/teacher.yaml" <<YAML
train: {max_steps: $TEACHER_STEPS, eval_every: 100, checkpoint_every: 100}
YAML
cat > "$OUT/student.yaml" <<YAML
keep_q: 1
train: {max_steps: $STUDENT_STEPS, eval_every: 100, checkpoint_every: 100}
YAML
t0=$(date +%s)
if [ -n "${DATA:-}" ]; then
  ln -sfn "$(realpath "$DATA")" "$OUT/data"
else
$A data synth --n "$N" --seed 0 --out "$OUT/corpus" > "$OUT/synth.json"
$A data prepare "$OUT/corpus/manifest.jsonl" --out "$OUT/data" > "$OUT/prepare.json"
$A data clues "$OUT/data" > "$OUT/clues.json"
$A data tokenize "$OUT/data" --codec calibrated --n-q 2 > "$OUT/tokenize.json"
fi
t1=$(date +%s)
$A train teacher "$OUT/data" --out "$OUT/teacher" --config "$OUT/teacher.yaml" > "$OUT/teacher.out"
T=$(python3 -c "import json;print(json.load(open('$OUT/teacher/train_summary.json'))['best_checkpoint'])")
t2=$(date +%s)
$A train student "$OUT/data" --teacher "$T" --out "$OUT/kd" --config "$OUT/student.yaml" --lambda-kd 1.0 > "$OUT/kd.out"
t3=$(date +%s)
$A train student "$OUT/data" --teacher "$T" --out "$OUT/sft" --config "$OUT/student.yaml" --lambda-kd 0 > "$OUT/sft.out"
t4=$(date +%s)
for v in kd sft; do  # best checkpoints, the whole valid and zeroshot splits
  C=$(python3 -c "import json;print(json.load(open('$OUT/$v/train_summary.json'))['best_checkpoint'])" 2>/dev/null || ls -d "$OUT/$v"/step-* | tail -1)
  $A evaluate --model "$C" --manifest "$OUT/data" --out "$OUT/eval-$v/report.json" --split valid --split zeroshot > "$OUT/eval-$v.out" 2>&1
done
t5=$(date +%s)
echo "{\"data_s\": $((t1-t0)), \"teacher_s\": $((t2-t1)), \"kd_s\": $((t3-t2)), \"sft_s\": $((t4-t3)), \"eval_s\": $((t5-t4))}" > "$OUT/timing.json"
cat "$OUT/timing.json"
# where the KD signal is: teacher vs students, token by token (docs/experiments/kd_signal.py)
CK=$(python3 -c "import json;print(json.load(open('$OUT/kd/train_summary.json'))['best_checkpoint'])")
CS=$(python3 -c "import json;print(json.load(open('$OUT/sft/train_summary.json'))['best_checkpoint'])")
.venv/bin/python docs/experiments/kd_signal.py --data "$OUT/data" --student kd="$CK" --student sft="$CS" \
  --split valid --split zeroshot --limit 120 > "$OUT/kd_signal.json"
