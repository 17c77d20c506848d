"""Prefect flows: thin compositions of the tasks in `tasks/` (see prefect.yaml for deployments).

prepare-data, train-teacher, distill, self-improve, evaluate and aligncap-pipeline; parameters
are the pydantic models in `flows.params`.
"""
