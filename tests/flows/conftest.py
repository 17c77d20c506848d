"""One Prefect test harness for the whole session (it takes ~12 s to start), with task results
persisted to a temporary folder: the harness isolates Prefect's database, not result storage."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(tmp_path_factory):
    results = tmp_path_factory.mktemp("prefect-results")
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(results)
    # materialized artifacts and downloaded champions: per session, not the user's ~/.cache
    os.environ["ALIGNCAP_CACHE"] = str(tmp_path_factory.mktemp("aligncap-cache"))
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # the harness's own server start timeout is 30 s, too short on a busy 2-core machine
    with prefect_test_harness(server_startup_timeout=180), temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: results}):
        yield results
