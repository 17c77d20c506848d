#!/usr/bin/env bash
# Zero-shot accuracy against training time and train-set size (issue #10), on a data dir and
# teacher that `make demo` built. Usage:
#   bash docs/experiments/zeroshot_curve.sh [RUN=runs/demo] [OUT=runs/zeroshot_curve] [STEPS=600] [SIZES=140,280]
# 1. one KD student trained STEPS steps (the demo's recipe, cosine schedule over STEPS), its
#    checkpoints every STEPS/4 steps evaluated; 2. the demo's 300-step recipe on seeded subsets of
#    SIZES train clips (valid/zeroshot unchanged). Greedy captions, 80 clips per split.
set -euo pipefail
RUN=${1:-runs/demo}; OUT=${2:-runs/zeroshot_curve}; STEPS=${3:-600}; SIZES=${4:-140,280}
A=.venv/bin/aligncap; PY=.venv/bin/python
mkdir -p "$OUT"
TEACHER=$($PY -c "import json;print(json.load(open('$RUN/teacher/train_summary.json'))['best_checkpoint'])")
EVERY=$((STEPS / 4))
$PY - "$RUN/student/config.yaml" "$OUT/student.yaml" "$STEPS" "$EVERY" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["train"].update(max_steps=int(sys.argv[3]), checkpoint_every=int(sys.argv[4]), keep_checkpoints=8,
                    early_stopping_patience=0)
yaml.safe_dump(cfg, open(sys.argv[2], "w"))
PY
evaluate() {  # checkpoint, report path
  [ -f "$2" ] || $A evaluate --model "$1" --manifest "$RUN/data" --out "$2" --split valid --split zeroshot --limit 80 > "$2.log" 2>&1
}
t0=$(date +%s)
$A train student "$RUN/data" --teacher "$TEACHER" --out "$OUT/steps" --config "$OUT/student.yaml" > "$OUT/steps.out" 2> "$OUT/steps.err"
for c in "$OUT"/steps/step-*; do evaluate "$c" "$OUT/eval-steps-$(basename "$c").json"; done
t1=$(date +%s)
for n in ${SIZES//,/ }; do  # seeded subset of n train rows; codes, audio and codec shared by link
  d="$OUT/data-$n"; mkdir -p "$d"
  for f in audio codes codec fingerprint.json; do ln -sfn "$(realpath "$RUN/data/$f")" "$d/$f"; done
  $PY - "$RUN/data/manifest.jsonl" "$d/manifest.jsonl" "$n" <<'PY'
import json, random, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = [i for i, r in enumerate(rows) if r["split"] == "train"]
keep = set(random.Random(0).sample(train, int(sys.argv[3]))) | {i for i, r in enumerate(rows) if r["split"] != "train"}
with open(sys.argv[2], "w") as f:
    f.writelines(json.dumps(r) + "\n" for i, r in enumerate(rows) if i in keep)
PY
  $A train student "$d" --teacher "$TEACHER" --out "$OUT/size-$n" --config "$RUN/student/config.yaml" > "$OUT/size-$n.out" 2> "$OUT/size-$n.err"
  c=$(ls -d "$OUT/size-$n"/step-* | tail -1)
  evaluate "$c" "$OUT/eval-size-$n.json"
done
t2=$(date +%s)
echo "{\"steps_s\": $((t1 - t0)), \"sizes_s\": $((t2 - t1))}" > "$OUT/timing.json"
$PY - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
keys = ("clue_f1", "hallucination_rate", "acc_gender", "acc_pitch", "acc_speed", "acc_volume", "acc_emotion")
print("| run | split | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
for p in sorted(glob.glob(f"{out}/eval-*.json")):
    m = json.load(open(p))["metrics"]
    for s in ("valid", "zeroshot"):
        print(f"| {os.path.basename(p)[5:-5]} | {s} | " + " | ".join(f"{m[s][k]:.3f}" for k in keys) + " |")
PY
