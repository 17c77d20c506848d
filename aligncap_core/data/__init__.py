"""Datasets: manifest ingestion (`prepare`), local/S3 storage, audio normalisation.

Submodules are imported on use (`from aligncap_core.data.prepare import prepare_dataset`) so
that importing this package stays cheap (no boto3, datasets or soxr at import time).
"""
