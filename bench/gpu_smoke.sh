#!/usr/bin/env bash
# GPU smoke test (issue #22): one teacher, student and DPO step each in bf16, in one process
# and, with 2+ GPUs, in one DDP process per GPU (accelerate launch); prints step times and peak
# memory as JSON lines (bench/gpu_smoke.py). Under 5 minutes on a GPU machine; without a GPU it
# runs the micro fp32 CPU path (what the tests check).
#
#   bench/gpu_smoke.sh                    # every GPU; results on stdout, progress on stderr
#   bench/gpu_smoke.sh --processes 2      # the multi-process pass on 2 GPUs (or 2 CPU processes)
#   bench/gpu_smoke.sh --smoke            # micro sizes anywhere
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python}"
if [ -x "$root/.venv/bin/python" ] && [ -z "${PYTHON:-}" ]; then python="$root/.venv/bin/python"; fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader >&2 || true
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # everything is built locally
exec timeout "${SMOKE_TIMEOUT:-300}" "$python" "$here/gpu_smoke.py" "$@"
