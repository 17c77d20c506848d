"""`aligncap up / status / down`: a local Prefect + MLflow (+ S3) stack on 127.0.0.1.

`up` starts, under one home folder (default `runs/stack`):
- a Prefect server (SQLite and PREFECT_HOME under `home/prefect`),
- work pools `cpu` and `gpu` (process type) and one process worker per pool, each in its own
  empty folder `home/workers/<pool>` (working directory, cache, temp files, Prefect home): the
  workers share nothing but the servers, as workers on different machines would,
- an MLflow tracking server (SQLite under `home/mlflow`, artifacts proxied to a local folder or,
  with `--s3`, to `s3://<bucket>/mlflow` on a moto S3 server it also starts),
- Prefect result storage: a local folder (`home/prefect/results`) or, with `--s3`, the prefect-aws
  S3Bucket block `s3-bucket/aligncap-results` on `s3://<bucket>/prefect-results` (saved by
  `aligncap results-storage`, named by PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK),
- the artifact store every stage publishes to and reads from (ALIGNCAP_STORE): with `--s3`,
  `s3://<bucket>/store`; without, the folder `home/store` (one machine),
- `prefect --no-prompt deploy --all` when the repository has a `prefect.yaml`,
and records what it started in `home/stack.json` and the client settings in `home/env.sh`
(`source` it). `down` stops exactly those processes (workers first) and is idempotent.

This module calls the `prefect`, `mlflow` and `moto_server` executables (and `aligncap
results-storage` for the S3 results block); it never imports prefect.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from aligncap_core.defaults import RESULTS_BLOCK, RESULTS_PREFIX
from aligncap_core.errors import ConfigError
from aligncap_core.utils import atomic_write
from aligncap_ops import procs

REPO_ROOT = Path(__file__).resolve().parents[1]
POOLS = ("cpu", "gpu")
# Start order; `down` goes backwards, so workers stop before the servers they talk to.
ORDER = ("s3", "prefect", "mlflow", "worker-cpu", "worker-gpu")
# moto accepts any credentials; these exist only so boto3 signs requests to the local server.
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "aligncap-local", "AWS_SECRET_ACCESS_KEY": "aligncap-local",
                    "AWS_DEFAULT_REGION": "us-east-1"}
STORE_PREFIX = "store"  # the artifact store's prefix in the bucket (ALIGNCAP_STORE)


def _exe(name: str) -> str:
    """An executable from this Python's environment (the project venv), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"`{name}` not found next to {sys.executable} or on PATH; install the project (make install-dev)")
    return found


def _state_path(home: Path) -> Path:
    return home / "stack.json"


def load_state(home: str | os.PathLike) -> dict | None:
    path = _state_path(Path(home))
    return json.loads(path.read_text()) if path.exists() else None


def _save_state(home: Path, state: dict) -> None:
    with atomic_write(_state_path(home)) as f:
        json.dump(state, f, indent=2)


def _write_env_sh(home: Path, env: dict[str, str]) -> None:
    lines = ["# aligncap local stack: `source` this file to use it from a shell or a test"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    with atomic_write(home / "env.sh") as f:
        f.write("\n".join(lines) + "\n")


def _check_ports(ports: dict[str, tuple[int, str]]) -> None:
    for name, (port, option) in ports.items():
        if not procs.port_free(port):
            raise ConfigError(f"port {port} on 127.0.0.1 ({name}) is in use; pass {option} with another "
                              f"port, or stop what listens there (`aligncap down` if it is an old stack)")


def _client_env(urls: dict[str, str], home: Path, s3: bool, bucket: str) -> dict[str, str]:
    """What clients (workers, flows, tests, users' shells) need to use the stack."""
    env = {
        "PREFECT_API_URL": urls["prefect_api"],
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": urls["mlflow"],
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        # Results on a local folder every local worker can read (without --s3).
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "prefect" / "results"),
        # Stage outputs: a folder of this machine (without --s3)
        "ALIGNCAP_STORE": str(home / "store"),
    }
    if s3:
        # With --s3 every result and stage output lands in the bucket (results through the
        # S3Bucket block `up` saves); the block holds no keys, boto3 signs with these variables
        # and finds moto via AWS_ENDPOINT_URL.
        env.update({"AWS_ENDPOINT_URL": urls["s3"], "MLFLOW_S3_ENDPOINT_URL": urls["s3"],
                    "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": f"s3-bucket/{RESULTS_BLOCK}",
                    "ALIGNCAP_STORE": f"s3://{bucket}/{STORE_PREFIX}", **MOTO_CREDENTIALS})
    return env


def _worker_env(env: dict[str, str], home: Path, pool: str, s3: bool) -> tuple[dict[str, str], Path]:
    """(environment, working directory) of the worker of `pool`: an empty folder of its own for
    its working directory, artifact cache, temporary files (each flow run's folder) and Prefect
    home. With --s3 even Prefect's local result folder is its own: the workers then share
    nothing but the three services."""
    root = home / "workers" / pool
    for sub in ("cache", "tmp", "prefect"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    worker = {**env, "ALIGNCAP_CACHE": str(root / "cache"), "TMPDIR": str(root / "tmp"),
              "PREFECT_HOME": str(root / "prefect")}
    if s3:
        worker["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(root / "prefect" / "results")
    return worker, root


def _base_env() -> dict[str, str]:
    # A stack must not inherit the caller's pointers to some other server or store.
    drop = ("PREFECT_API_URL", "PREFECT_PROFILE", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL",
            "MLFLOW_S3_ENDPOINT_URL", "PREFECT_API_KEY", "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK",
            "ALIGNCAP_RESULTS_URI")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=MOTO_CREDENTIALS["AWS_DEFAULT_REGION"],
                      aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)


def _prefect_cli(args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None,
                 timeout: float = 180) -> subprocess.CompletedProcess:
    with open(log, "ab") as f:
        return subprocess.run([_exe("prefect"), *args], env=env, stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, cwd=cwd, timeout=timeout)


def _ensure_pools(env: dict[str, str], api: str, logs: Path, results_bucket: str | None = None) -> None:
    """Create the process pools that do not exist yet and, given `results_bucket`, save the S3
    result-storage block (in parallel: each of these CLI calls imports prefect)."""
    missing = [p for p in POOLS if not procs.http_ok(f"{api}/work_pools/{p}")]
    jobs = {f"work pool '{p}'": ([_exe("prefect"), "--no-prompt", "work-pool", "create", p, "--type", "process"],
                                 logs / f"pool-{p}.log", f"{api}/work_pools/{p}") for p in missing}
    if results_bucket:
        jobs["S3 result storage block"] = (
            [sys.executable, "-m", "aligncap_core.cli", "results-storage", "--bucket", results_bucket,
             "--folder", RESULTS_PREFIX, "--name", RESULTS_BLOCK], logs / "results-block.log", None)
    runs = []
    for what, (cmd, log_path, _) in jobs.items():
        log = open(log_path, "ab")  # noqa: SIM115 - closed below
        runs.append((what, log, subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log,
                                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)))
    for what, log, p in runs:
        rc = p.wait(timeout=180)
        log.close()
        exists_url = jobs[what][2]
        if rc != 0 and not (exists_url and procs.http_ok(exists_url)):
            raise ConfigError(f"creating {what} failed (exit {rc}); see {log.name}:\n{procs.log_tail(log.name)}")


def _wait_worker(pool: str, rec: dict, api: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _worker_online(api, pool):
        if not procs.alive(rec):
            raise ConfigError(f"worker for pool '{pool}' exited; see {rec['log']}:\n{procs.log_tail(rec['log'])}")
        if time.monotonic() > deadline:
            raise ConfigError(f"worker for pool '{pool}' did not come online within {timeout_s:.0f} s; see {rec['log']}")
        time.sleep(0.5)


def up(home: str | os.PathLike = "runs/stack", *, s3: bool = False, prefect_port: int = 4200,
       mlflow_port: int = 5000, s3_port: int = 9000, bucket: str = "aligncap", deploy: bool = True,
       worker_query_s: float = 2.0, timeout_s: float = 120.0, project_dir: str | os.PathLike | None = None,
       echo=print) -> dict:
    """Start the stack (see module doc); returns the state written to `home/stack.json`.

    `project_dir` (default: this repository) is where `prefect.yaml` is looked for. The workers
    run the flows of the installed aligncap package (prefect.yaml has no pull step), each in its
    own empty folder.

    Raises ConfigError when a port is taken, a stack already runs in `home`, or a component fails
    to start (what had started is stopped again, the message carries the log tail).
    """
    home = Path(home).resolve()
    project = Path(project_dir or REPO_ROOT).resolve()
    old = load_state(home)
    if old and any(procs.alive(c) for c in old["components"].values()):
        raise ConfigError(f"a stack is already running from {home}; `aligncap status --home {home}` "
                          f"shows it, `aligncap down --home {home}` stops it")
    ports = {"Prefect server": (prefect_port, "--prefect-port"), "MLflow server": (mlflow_port, "--mlflow-port")}
    if s3:
        ports["S3 (moto) server"] = (s3_port, "--s3-port")
    _check_ports(ports)

    t0 = time.monotonic()
    logs = home / "logs"
    for d in (logs, home / "prefect" / "results", home / "mlflow" / "artifacts", home / "store"):
        d.mkdir(parents=True, exist_ok=True)
    urls = {"prefect_ui": f"http://127.0.0.1:{prefect_port}", "prefect_api": f"http://127.0.0.1:{prefect_port}/api",
            "mlflow": f"http://127.0.0.1:{mlflow_port}"}
    if s3:
        urls["s3"] = f"http://127.0.0.1:{s3_port}"
    env = {**_base_env(), **_client_env(urls, home, s3, bucket)}
    results = (f"s3://{bucket}/{RESULTS_PREFIX} (block s3-bucket/{RESULTS_BLOCK})" if s3
               else str(home / "prefect" / "results"))
    state = {"home": str(home), "s3": s3, "bucket": bucket if s3 else None, "urls": urls,
             "results": results, "env": _client_env(urls, home, s3, bucket), "components": {}}
    comps = state["components"]
    try:
        # Servers start together (they are independent); readiness is awaited afterwards.
        if s3:
            comps["s3"] = procs.start([_exe("moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                                      logs / "s3.log", env)
            comps["s3"]["health"] = f"{urls['s3']}/moto-api/"
        prefect_env = {**env, "PREFECT_HOME": str(home / "prefect"),
                       "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect' / 'prefect.db'}",
                       "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(prefect_port)}
        prefect_env.pop("PREFECT_API_URL")  # the server itself must not point at an API
        comps["prefect"] = procs.start([_exe("prefect"), "server", "start", "--host", "127.0.0.1",
                                        "--port", str(prefect_port), "--analytics-off"],
                                       logs / "prefect.log", prefect_env)
        comps["prefect"]["health"] = f"{urls['prefect_api']}/health"
        artifacts = f"s3://{bucket}/mlflow" if s3 else str(home / "mlflow" / "artifacts")
        mlflow_env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # ~0.5 GB instead of ~1.2 GB
        comps["mlflow"] = procs.start([
            _exe("mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
            "--artifacts-destination", artifacts], logs / "mlflow.log", mlflow_env)
        comps["mlflow"]["health"] = f"{urls['mlflow']}/health"
        _save_state(home, state)

        if s3:
            procs.wait_healthy("moto S3 server", comps["s3"]["health"], comps["s3"], timeout_s)
            _create_bucket(urls["s3"], bucket)
        procs.wait_healthy("Prefect server", comps["prefect"]["health"], comps["prefect"], timeout_s)
        worker_env = {**env, "PREFECT_HOME": str(home / "prefect"),
                      "PREFECT_WORKER_QUERY_SECONDS": str(worker_query_s),
                      "PREFECT_WORKER_PREFETCH_SECONDS": str(worker_query_s)}
        _ensure_pools(worker_env, urls["prefect_api"], logs, bucket if s3 else None)
        for pool in POOLS:
            wenv, wdir = _worker_env(worker_env, home, pool, s3)
            comps[f"worker-{pool}"] = procs.start(
                [_exe("prefect"), "worker", "start", "--pool", pool, "--type", "process",
                 "--name", f"{pool}-local"], logs / f"worker-{pool}.log", wenv, cwd=wdir)
        _save_state(home, state)
        procs.wait_healthy("MLflow server", comps["mlflow"]["health"], comps["mlflow"], timeout_s)
        for pool in POOLS:  # ready means the worker polls its pool, not just that it started
            _wait_worker(pool, comps[f"worker-{pool}"], urls["prefect_api"], timeout_s)
    except BaseException:
        procs.stop(comps.values(), grace_s=3)
        _state_path(home).unlink(missing_ok=True)
        raise

    state["deploy"] = _deploy(worker_env, logs, project, echo) if deploy else "skipped (--no-deploy)"
    state["up_seconds"] = round(time.monotonic() - t0, 1)
    _save_state(home, state)
    _write_env_sh(home, state["env"])
    return state


def _deploy(env: dict[str, str], logs: Path, project: Path, echo) -> str:
    if not (project / "prefect.yaml").exists():
        msg = f"skipped: no prefect.yaml in {project}"
        echo(f"deploy {msg}")
        return msg
    echo(f"deploying {project / 'prefect.yaml'} (log: {logs / 'deploy.log'})")
    try:
        rc = _prefect_cli(["--no-prompt", "deploy", "--all"], env, logs / "deploy.log", cwd=project).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    if rc != 0:
        msg = f"FAILED (exit {rc}); see {logs / 'deploy.log'}; the stack is up, fix and rerun `prefect --no-prompt deploy --all`"
        echo(f"deploy {msg}")
        return msg
    return "ok"


def _worker_online(api: str, pool: str) -> bool:
    """True when the pool lists an ONLINE worker (it heartbeats to the server)."""
    import urllib.request

    req = urllib.request.Request(f"{api}/work_pools/{pool}/workers/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return any(w.get("status") == "ONLINE" for w in json.load(r))
    except Exception:  # noqa: BLE001 - unreachable server or pool: not online
        return False


def status(home: str | os.PathLike = "runs/stack") -> list[dict]:
    """One row per component: name, pid, alive, health (URL answers; for a worker: its pool lists
    an ONLINE worker), RSS of its process group (MiB)."""
    state = load_state(home)
    if not state:
        return []
    rows = []
    for name in ORDER:
        rec = state["components"].get(name)
        if rec is None:
            continue
        is_alive = procs.alive(rec)
        health = rec.get("health")
        if name.startswith("worker-"):
            pool = name.removeprefix("worker-")
            healthy = _worker_online(state["urls"]["prefect_api"], pool) if is_alive else None
            health = f"{state['urls']['prefect_api']}/work_pools/{pool}"
        else:
            healthy = procs.http_ok(health) if health and is_alive else None
        rows.append({"name": name, "pid": rec["pid"], "alive": is_alive, "healthy": healthy,
                     "url": health, "rss_mb": round(procs.rss_mb(rec["pid"]), 1) if is_alive else 0.0,
                     "log": rec["log"]})
    return rows


def down(home: str | os.PathLike = "runs/stack", grace_s: float = 8.0) -> list[str]:
    """Stop what `up` started in `home`: workers first, then the servers; removes the pid records.
    Returns the names stopped (empty when nothing was running)."""
    home = Path(home).resolve()
    state = load_state(home)
    if not state:
        return []
    comps = state["components"]
    stopped = [n for n in reversed(ORDER) if n in comps and procs.alive(comps[n])]
    procs.stop([comps[n] for n in ("worker-cpu", "worker-gpu") if n in comps], grace_s=grace_s)
    procs.stop([comps[n] for n in ("mlflow", "prefect") if n in comps], grace_s=grace_s)
    if "s3" in comps:  # last: the MLflow server may still be writing artifacts to it
        procs.stop([comps["s3"]], grace_s=grace_s)
    _state_path(home).unlink(missing_ok=True)
    (home / "env.sh").unlink(missing_ok=True)
    return stopped
