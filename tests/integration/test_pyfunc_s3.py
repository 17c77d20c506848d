"""The registered champion through a real MLflow server whose artifacts live on S3 (moto).

The champion is logged and registered the way the pipeline's `register` task does it
(`serving.log_pyfunc_model` + `tracking.register_champion`), then loaded in a fresh Python
process whose working directory is empty and which knows only the tracking URI:
`mlflow.pyfunc.load_model("models:/aligncap-sec@champion")` and `aligncap caption --model
models:/...` both caption a wav. The run folder the checkpoint came from is deleted first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aligncap_ops import procs
from tests.helpers.audio_corpus import corpus  # noqa: F401 - fixture
from tests.helpers.serving import relocated  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def mlflow_on_s3(tmp_path_factory):
    """(tracking URI, S3 endpoint): moto_server + `mlflow server` proxying artifacts to
    s3://aligncap/mlflow, both on free 127.0.0.1 ports, stopped afterwards."""
    import boto3

    for exe in ("mlflow", "moto_server"):
        if not (BIN / exe).exists():
            pytest.skip(f"{exe} not installed next to {sys.executable}")
    root = tmp_path_factory.mktemp("mlflow-s3")
    s3_port, ml_port = procs.free_port(), procs.free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}, **CREDS}
    recs = [procs.start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                        root / "moto.log", env)]
    try:
        procs.wait_healthy("moto_server", f"{endpoint}/moto-api/", recs[0], 60)
        boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in CREDS.items()
                                                     if k != "AWS_DEFAULT_REGION"},
                     region_name="us-east-1").create_bucket(Bucket="aligncap")
        recs.append(procs.start(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(ml_port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", "s3://aligncap/mlflow"], root / "mlflow.log",
            {**env, "MLFLOW_S3_ENDPOINT_URL": endpoint, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            cwd=root))
        procs.wait_healthy("mlflow server", f"http://127.0.0.1:{ml_port}/health", recs[1], 180)
        yield f"http://127.0.0.1:{ml_port}", endpoint
    finally:
        procs.stop(recs)


def test_registered_pyfunc_loads_and_captions_in_a_clean_process(relocated, mlflow_on_s3, tmp_path):  # noqa: F811
    import boto3

    from aligncap_core.serving.engine import CaptionEngine
    from aligncap_core.serving.pyfunc import log_pyfunc_model
    from aligncap_core.tracking import experiment_for, register_champion, start_parent_run

    uri, endpoint = mlflow_on_s3
    run = start_parent_run(experiment_for("aligncap-serving-test", uri=uri), "pipeline", uri=uri)
    source = log_pyfunc_model(relocated["ckpt"], run, artifact_path="champion", uri=uri)
    mv = register_champion(source, tags={"stage": "student"}, uri=uri)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing")
            .list_objects_v2(Bucket="aligncap", Prefix="mlflow/")["Contents"]]
    assert any(k.endswith("champion/MLmodel") for k in keys)
    assert any(k.endswith("champion/artifacts/checkpoint/base/model/model.safetensors") for k in keys)

    want = CaptionEngine.load(relocated["ckpt"], device="cpu").caption(
        [CaptionEngine.load(relocated["ckpt"], device="cpu").waveform(str(relocated["clip"]))])[0]
    clean = tmp_path / "clean"
    clean.mkdir()
    wav = clean / "x.wav"
    wav.write_bytes(relocated["clip"].read_bytes())
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))},
           "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "ALIGNCAP_CACHE": str(tmp_path / "cache"),
           "ALIGNCAP_DEVICE": "cpu"}
    script = ("import json, mlflow.pyfunc, pandas as pd\n"
              "m = mlflow.pyfunc.load_model('models:/aligncap-sec@champion')\n"
              "out = m.predict(pd.DataFrame({'audio': ['x.wav']}))\n"
              "print(json.dumps(out.to_dict('records')))\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=clean, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    [row] = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["caption"] == want["caption"] and row["attributes"] == want["attributes"]
    for key in ("struck", "unsure"):  # what the decoder doubted, as the engine says it
        assert row[key] == (", ".join(want[key]) or None)
    assert sorted(p.name for p in clean.iterdir()) == ["x.wav"]  # nothing written into the cwd

    r = subprocess.run([sys.executable, "-m", "aligncap_core.cli", "caption", "x.wav", "--model",
                        "models:/aligncap-sec@champion", "--out", "preds", "--device", "cpu"],
                       cwd=clean, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["model_version"] == f"aligncap-sec/{mv.version}" and summary["captioned"] == 1
    [pred] = [json.loads(line) for line in (clean / "preds" / "predictions.jsonl").read_text().splitlines()]
    assert pred["caption"] == want["caption"]
