"""Flow tests: one Prefect test harness per session (see conftest)."""
