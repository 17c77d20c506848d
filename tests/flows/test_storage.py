"""Result storage configuration: the S3Bucket block `aligncap results-storage` saves, and the
ALIGNCAP_RESULTS_URI forms. (The round trip through a real S3 endpoint, with workers on two
pools, is tests/integration/test_deploy.py.)"""

from __future__ import annotations

import pytest

from aligncap_core.errors import ConfigError
from tasks.caching import result_storage
from tasks.storage import main


def _options(**kw) -> list[str]:
    import json

    return [json.dumps(kw)]  # what `aligncap results-storage` hands the module


def test_saved_block_names_bucket_and_folder_but_holds_no_keys(capsys, monkeypatch):
    from prefect_aws import S3Bucket

    assert main(_options(bucket="results-bucket", folder="/prefect-results/", name="unit-results",
                         endpoint_url="http://127.0.0.1:9")) == 0
    assert capsys.readouterr().out.strip() == "s3-bucket/unit-results"
    block = S3Bucket.load("unit-results")
    assert block.bucket_name == "results-bucket" and block.bucket_folder == "prefect-results"
    assert block._resolve_path("abc") == "prefect-results/abc"
    creds = block.credentials
    assert creds.aws_access_key_id is None and creds.aws_secret_access_key is None
    assert creds.aws_client_parameters.endpoint_url == "http://127.0.0.1:9"
    # saving again overwrites (up runs it on every start against the same server)
    assert main(_options(bucket="other", name="unit-results")) == 0
    block = S3Bucket.load("unit-results")
    assert block.bucket_name == "other" and block.credentials.aws_client_parameters.endpoint_url is None


def test_the_module_is_started_by_the_cli_only():
    """One command line: the module's own argv is the CLI's JSON, and options given to it
    directly get the command to use instead."""
    with pytest.raises(ConfigError, match="aligncap results-storage"):
        main(["--bucket", "b"])


def test_results_uri_forms(monkeypatch, tmp_path):
    monkeypatch.delenv("ALIGNCAP_RESULTS_URI", raising=False)
    assert result_storage() is None
    monkeypatch.setenv("ALIGNCAP_RESULTS_URI", str(tmp_path))
    assert result_storage() == tmp_path.resolve()
    monkeypatch.setenv("ALIGNCAP_RESULTS_URI", "s3-bucket/aligncap-results")
    assert result_storage() == "s3-bucket/aligncap-results"
    monkeypatch.setenv("ALIGNCAP_RESULTS_URI", "s3://bucket/prefect-results")
    with pytest.raises(ConfigError, match="PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"):
        result_storage()
