"""Using a trained model: a relocated champion, batch captioning, the pyfunc model, the service.

Every test below uses the relocated champion of tests/helpers/serving.py: a micro student whose
run folder was deleted, so it can only load from what it carries itself.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from aligncap_core.inference.captioner import Captioner
from aligncap_core.model.generate import GenerationSettings
from aligncap_core.utils import read_jsonl
from aligncap_ops import procs
from tests.helpers import serving
from tests.helpers.audio_corpus import corpus  # noqa: F401 - a fixture (relocated needs it)
from tests.helpers.serving import GEN, wav_bytes
from tests.helpers.training import EMOTIONS

relocated = serving.relocated  # module-scoped fixture (needs corpus)


@pytest.fixture(scope="module")
def engine(relocated):
    from aligncap_core.serving.engine import CaptionEngine

    return CaptionEngine.load(relocated["ckpt"], device="cpu", **GEN)


def test_relocated_champion_captions_with_what_it_carries(relocated):
    ckpt = relocated["ckpt"]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["base_model"] == "base" and meta["format_version"] == 2
    assert meta["speech"]["codec"] == "codec"
    assert (ckpt / "base" / "model").is_dir() and not (ckpt / "base" / "trainer_state.pt").exists()
    for path in ckpt.rglob("*.json"):  # no file of the checkpoint's own refers outside it
        assert str(ckpt.parent.parent / "run") not in path.read_text(), path
    cap = Captioner.load(ckpt, device="cpu")
    assert cap.caption_files([relocated["clip"]], GenerationSettings(**GEN)) == [relocated["caption"]]


def test_default_settings_come_from_the_checkpoint(engine):
    assert engine.settings == GenerationSettings(**GEN)  # library defaults + the override
    cfg = dict(engine.captioner.config)
    try:
        engine.captioner.config = {**cfg, "generation": {"num_beams": 2}}
        assert engine.captioner.default_settings().num_beams == 2
        assert engine.captioner.default_settings(num_beams=3, top_p=None).num_beams == 3
    finally:
        engine.captioner.config = cfg


def test_batch_caption_folder_manifest_with_bad_files(relocated, tmp_path):
    from typer.testing import CliRunner

    from aligncap_core.cli import app

    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    good = {"a.wav": ("sad", "WAV", 16000), "b.flac": ("happy", "FLAC", 24000),
            "sub/c.ogg": ("angry", "OGG", 44100), "sub/d.wav": ("happy", "WAV", 22050)}
    for i, (name, (emo, fmt, sr)) in enumerate(good.items()):
        (clips / name).write_bytes(wav_bytes(emo, i, fmt, sr))
    (clips / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    (clips / "notes.txt").write_text("not audio")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"id": "m1", "audio": "clips/a.wav"}),
        json.dumps({"id": "m2", "audio": "clips/missing.wav"}),
        "{not json",
    ]) + "\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["caption", str(clips), str(manifest), "--model", str(relocated["ckpt"]),
                                   "--out", str(out), "--max-new-tokens", "8", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    preds = read_jsonl(out / "predictions.jsonl")
    rejects = {r["id"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")}
    assert [p["id"] for p in preds] == ["a.wav", "b.flac", "sub/c.ogg", "sub/d.wav", "m1"]
    assert set(rejects) == {"broken.wav", "m2", "line-3"}
    assert "broken.wav" in rejects["broken.wav"] and "cannot decode" in rejects["broken.wav"]
    assert "audio file not found" in rejects["m2"] and "line 3" in rejects["line-3"]
    assert summary["captioned"] == 5 and summary["rejected"] == 3 and summary["clips"] == 8
    assert summary["ignored"] == [str(clips / "notes.txt")]
    for p in preds:
        assert set(p) == {"id", "audio", "caption", "attributes", "withheld", "told", "struck",
                          "unsure", "seconds"} and p["caption"]
        assert isinstance(p["attributes"], dict) and p["seconds"] > 0.3
    assert preds[0]["caption"] == preds[4]["caption"]  # the same file from the folder and the manifest
    a = next(p for p in preds if p["id"] == "a.wav")
    assert a["audio"] == str(clips / "a.wav") and a["seconds"] == pytest.approx(
        sf.info(clips / "a.wav").duration, abs=0.01)


def test_engine_inputs_and_limits(engine, relocated):
    from aligncap_core.errors import DataError

    data = relocated["clip"].read_bytes()
    wave = engine.waveform(data, "x")
    x, sr = sf.read(relocated["clip"], dtype="float32")
    assert np.allclose(engine.from_samples(x, sr), wave, atol=1e-5)
    [r] = engine.caption([wave])
    assert r["caption"] == relocated["caption"]
    assert set(r) == {"caption", "attributes", "withheld", "told", "struck", "unsure"}
    assert isinstance(r["struck"], list) and isinstance(r["unsure"], list)
    assert r["attributes"] == engine.parser.parse(r["caption"]).attributes
    with pytest.raises(DataError, match="longer than"):
        engine.waveform(wav_bytes("sad", 0, seconds=engine.max_seconds + 1), "long.wav")
    with pytest.raises(DataError, match="sample_rate"):
        engine.from_samples(x, 0)
    with pytest.raises(DataError, match="NaN"):
        engine.from_samples(np.full(100, np.nan), 16000)


def test_pyfunc_model_paths_bytes_and_arrays(relocated, tmp_path):
    import mlflow.pyfunc
    import pandas as pd

    from aligncap_core.serving.pyfunc import save_pyfunc_model

    model_dir = save_pyfunc_model(relocated["ckpt"], tmp_path / "model")
    assert (model_dir / "MLmodel").is_file()
    assert not (model_dir / "artifacts" / "checkpoint" / "trainer_state.pt").exists()
    m = mlflow.pyfunc.load_model(str(model_dir))
    assert [c.name for c in m.metadata.get_input_schema().inputs] == [
        "audio", "audio_bytes", "samples", "sample_rate", "id"]
    clip = relocated["clip"]
    x, sr = sf.read(clip, dtype="float32")
    outs = [m.predict(pd.DataFrame({"audio": [str(clip)], "id": ["c1"]})),
            m.predict(pd.DataFrame({"audio_bytes": [clip.read_bytes()]})),
            m.predict(pd.DataFrame({"samples": [x.astype(np.float64).tolist()], "sample_rate": [sr]}))]
    # the pyfunc decodes with the checkpoint's defaults (max_new_tokens 64, not the tests' 8),
    # so its caption is compared across inputs, and its attributes with the parser's reading
    captions = {o["caption"][0] for o in outs}
    assert len(captions) == 1 and captions.pop().startswith(relocated["caption"])
    assert outs[0]["id"][0] == "c1" and outs[1]["id"][0] == "0"
    assert outs[0]["seconds"][0] == pytest.approx(len(x) / sr, abs=0.01)
    assert isinstance(outs[0]["attributes"][0], dict)


# ---- the HTTP service ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(relocated, tmp_path_factory):
    """`aligncap serve` on a free 127.0.0.1 port (1 MB / 3 s limits), stopped afterwards."""
    work = tmp_path_factory.mktemp("serve")
    port = procs.free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    rec = procs.start([sys.executable, "-m", "aligncap_core.cli", "serve", "--model", str(relocated["ckpt"]),
                       "--port", str(port), "--device", "cpu", "--max-mb", "1", "--max-seconds", "3",
                       "--max-batch", "8"], work / "serve.log", env, cwd=work)
    try:
        procs.wait_healthy("aligncap serve", f"http://127.0.0.1:{port}/health", rec, timeout_s=180)
        yield f"http://127.0.0.1:{port}"
    finally:
        procs.stop([rec])


@pytest.mark.slow
def test_service_under_64_concurrent_requests(service):
    import httpx

    uploads: list[tuple[str, bytes, int]] = []
    for i in range(54):
        fmt = ("WAV", "FLAC", "OGG")[i % 3]
        uploads.append((f"ok{i}.{fmt.lower()}", wav_bytes(list(EMOTIONS)[i % 3], i, fmt), 200))
    uploads += [(f"bad{i}.wav", b"RIFF\x00\x00not audio" * (i + 1), 400) for i in range(4)]
    uploads += [("empty.wav", b"", 400)]
    uploads += [(f"long{i}.wav", wav_bytes("sad", i, seconds=4.0), 413) for i in range(3)]
    uploads += [(f"huge{i}.wav", wav_bytes("sad", i, sr=48000, seconds=12.0), 413) for i in range(2)]
    assert len(uploads) == 64

    def post(item):
        name, data, _ = item
        with httpx.Client(timeout=300) as c:
            return c.post(f"{service}/caption", files={"file": (name, data, "application/octet-stream")})

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(post, uploads))
    for (name, _, want), r in zip(uploads, responses, strict=True):
        assert r.status_code == want, (name, r.status_code, r.text)
        body = r.json()
        if want == 200:
            assert body["caption"] and isinstance(body["attributes"], dict) and body["file"] == name
            assert isinstance(body["struck"], list) and isinstance(body["unsure"], list)
            assert body["model_version"].startswith("student step")
        else:
            assert body["detail"]  # the reason
    assert "cannot decode" in responses[54].json()["detail"]
    assert "longer than" in responses[59].json()["detail"]
    assert "MB" in responses[62].json()["detail"]
    with httpx.Client() as c:
        health = c.get(f"{service}/health").json()
        assert c.post(f"{service}/caption").status_code == 422  # no file field
    assert health["status"] == "ok" and health["served"] == 54
    assert health["largest_batch"] > 1 and health["batches"] < 54  # requests were batched
