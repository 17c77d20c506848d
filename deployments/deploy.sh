#!/usr/bin/env bash
# Create the GPU work pool from a template here and deploy prefect.yaml to the Prefect server.
#
#   deployments/deploy.sh process     # local: pools cpu + gpu of type process (what `aligncap up` makes)
#   deployments/deploy.sh docker      # pool gpu from docker-gpu.json      (needs prefect-docker on the worker)
#   deployments/deploy.sh kubernetes  # pool gpu from kubernetes-gpu.json  (needs prefect-kubernetes on the worker)
#
# Uses PREFECT_API_URL (e.g. `source runs/stack/env.sh`). Pools that exist are updated
# (--overwrite), so running it twice is safe. POOL=name changes the GPU pool's name.
set -euo pipefail

kind="${1:-process}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
pool="${POOL:-gpu}"
prefect="${PREFECT:-prefect}"
if [ -x "$root/.venv/bin/prefect" ] && [ -z "${PREFECT:-}" ]; then prefect="$root/.venv/bin/prefect"; fi

if [ -z "${PREFECT_API_URL:-}" ]; then
  echo "PREFECT_API_URL is not set: source runs/stack/env.sh (aligncap up) or export your server's API URL" >&2
  exit 2
fi

"$prefect" --no-prompt work-pool create cpu --type process --overwrite
case "$kind" in
  process)    "$prefect" --no-prompt work-pool create "$pool" --type process --overwrite ;;
  docker)     "$prefect" --no-prompt work-pool create "$pool" --type docker \
                --base-job-template "$here/docker-gpu.json" --overwrite ;;
  kubernetes) "$prefect" --no-prompt work-pool create "$pool" --type kubernetes \
                --base-job-template "$here/kubernetes-gpu.json" --overwrite ;;
  *) echo "unknown pool kind '$kind': use process, docker or kubernetes" >&2; exit 2 ;;
esac

if [ -f "$root/prefect.yaml" ]; then
  (cd "$root" && "$prefect" --no-prompt deploy --all)
else
  echo "no prefect.yaml at $root: pools created, nothing to deploy"
fi
