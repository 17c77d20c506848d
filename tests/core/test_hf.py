"""Hugging Face datasets saved with save_to_disk (Dataset and DatasetDict) as prepare sources.

datasets 5.2 decodes and encodes its Audio feature through torchcodec, which is not installed
here, so audio is read undecoded (`Audio(decode=False)`: file bytes or path) or from a plain
`{"array", "sampling_rate"}` struct, and decoded by aligncap_core.data.audio.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

datasets = pytest.importorskip("datasets")

from aligncap_core.data.prepare import prepare_dataset  # noqa: E402
from aligncap_core.errors import DataError  # noqa: E402
from aligncap_core.utils import read_jsonl  # noqa: E402
from tests.helpers.data import peak_hz, tone, write_wav  # noqa: E402


def _wav(x, rate) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV")
    return buf.getvalue()


def test_audio_feature_dataset(tmp_path):
    ds = datasets.Dataset.from_dict({
        "audio": [{"bytes": _wav(tone(1000, 1.0, 48000, channels=2), 48000), "path": None},
                  {"bytes": _wav(tone(1000, 0.5, 16000), 16000), "path": None},
                  {"bytes": _wav(np.zeros(16000, np.float32), 16000), "path": None}],
        "caption": ["A man speaks loudly.", "A woman whispers.", "Silence."],
        "id": ["u1", "u2", "u3"],
        "speaker": ["s1", "s2", "s3"],
    }).cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(tmp_path / "ds"))
    s = prepare_dataset(tmp_path / "ds", tmp_path / "out", split="train", progress=False)
    assert (s["kept"], s["rejects_by_reason"]) == (2, {"silent_audio": 1})
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out/manifest.jsonl")}
    assert rows["u1"]["captions"] == ["A man speaks loudly."] and rows["u1"]["speaker"] == "s1"
    assert rows["u1"]["split"] == "train" and abs(rows["u1"]["duration_s"] - 1.0) < 1e-3
    y, rate = sf.read(tmp_path / "out" / rows["u2"]["audio"])
    assert rate == 24000 and abs(peak_hz(y, rate) - 1000) < 3
    rej = read_jsonl(tmp_path / "out/rejects.jsonl")[0]
    assert rej["id"] == "u3" and "dataset row 3" in rej["message"]


def test_dataset_dict_with_arrays_paths_and_caption_lists(tmp_path):
    wav = write_wav(tmp_path / "files/p.wav", tone(440, 0.8, 22050), 22050)
    train = datasets.Dataset.from_dict({
        "speech": [{"array": tone(700, 1.0, 16000).tolist(), "sampling_rate": 16000},
                   {"array": tone(700, 1.0, 16000).tolist(), "sampling_rate": 16000}],
        "refs": [["First caption.", "Second caption."], []],  # second: no caption -> reject
        "text": ["hello there", "bye"],
    })
    validation = datasets.Dataset.from_dict({
        "speech": [{"array": tone(300, 0.6, 8000).tolist(), "sampling_rate": 8000}],
        "refs": [["A calm voice."]],
        "text": [""],
    })
    datasets.DatasetDict({"train": train, "validation": validation}).save_to_disk(str(tmp_path / "dd"))
    s = prepare_dataset(tmp_path / "dd", tmp_path / "out", audio_column="speech", caption_column="refs",
                        columns={"transcript": "text"}, progress=False)
    assert (s["kept"], s["rejected"], s["lines_read"]) == (2, 1, 3)
    assert s["rejects_by_reason"] == {"no_caption": 1}
    rows = read_jsonl(tmp_path / "out/manifest.jsonl")
    assert [r["split"] for r in rows] == ["train", "valid"]  # "validation" maps to valid
    assert rows[0]["captions"] == ["First caption.", "Second caption."]
    assert rows[0]["transcript"] == "hello there" and rows[0]["id"] == "dd-train-000000"

    # One split only; a split that is not there is a clear error.
    s = prepare_dataset(tmp_path / "dd", tmp_path / "out2", split="validation", audio_column="speech",
                        caption_column="refs", progress=False)
    assert s["kept"] == 1
    with pytest.raises(DataError, match="split 'test' is not in this dataset"):
        prepare_dataset(tmp_path / "dd", tmp_path / "o3", split="test", audio_column="speech",
                        caption_column="refs", progress=False)

    # Audio given as a path string column.
    paths = datasets.Dataset.from_dict({"audio": [str(wav), "files/missing.wav"],
                                        "caption": ["A soft voice.", "Gone."]})
    paths.save_to_disk(str(tmp_path / "paths"))
    s = prepare_dataset(tmp_path / "paths", tmp_path / "out4", split="test", progress=False)
    assert s["kept"] == 1 and s["rejects_by_reason"] == {"missing_file": 1}
    rej = read_jsonl(tmp_path / "out4/rejects.jsonl")[0]
    assert "audio file not found" in rej["message"] and "files/missing.wav" in rej["message"]
    assert read_jsonl(tmp_path / "out4/manifest.jsonl")[0]["source_audio"] == str(wav)


def test_missing_columns_are_clear_errors(tmp_path):
    datasets.Dataset.from_dict({"audio": ["a.wav"], "text": ["x"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="column 'caption' not found.*--caption-column"):
        prepare_dataset(tmp_path / "ds", tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="column 'speech' not found"):
        prepare_dataset(tmp_path / "ds", tmp_path / "out", audio_column="speech", caption_column="text",
                        progress=False)
