"""The GPU work-pool templates in deployments/ are valid and really request GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.utilities.templating import apply_values

DEPLOYMENTS = Path(__file__).resolve().parents[2] / "deployments"


def _load(name: str) -> tuple[dict, dict]:
    template = json.loads((DEPLOYMENTS / name).read_text())
    assert {"job_configuration", "variables"} <= set(template)
    props = template["variables"]["properties"]
    defaults = {k: v["default"] for k, v in props.items() if "default" in v}
    # What a worker gets with the variables' defaults (Prefect drops unset placeholders).
    return template, apply_values(template["job_configuration"], defaults)


def test_docker_template_requests_gpus():
    _, job = _load("docker-gpu.json")
    (req,) = job["container_create_kwargs"]["device_requests"]
    assert req["capabilities"] == [["gpu"]] and req["count"] == -1 and req["driver"] == "nvidia"


def test_kubernetes_template_requests_gpu_node():
    template, job = _load("kubernetes-gpu.json")
    pod = job["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {"node_selector", "tolerations", "gpu_count"} <= set(template["variables"]["properties"])


@pytest.mark.parametrize("name", ["docker-gpu.json", "kubernetes-gpu.json"])
def test_template_placeholders_are_declared(name):
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads((DEPLOYMENTS / name).read_text())
    validate_base_job_template(template)   # the check the server runs on `work-pool create`


def test_deploy_script_is_executable():
    assert (DEPLOYMENTS / "deploy.sh").stat().st_mode & 0o111
