"""Prefect result storage on S3 (AWS or any S3-compatible endpoint) through a saved
prefect-aws `S3Bucket` block.

Prefect persists task and flow results (and the cache records that let a re-run skip finished
stages) to its *default result storage*: a local folder (`PREFECT_RESULTS_LOCAL_STORAGE_PATH`,
the default) or a saved storage block named by `PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`. Workers
on different machines only share results through the latter. Create the block once per Prefect
server, then export the setting on every worker:

    aligncap results-storage --bucket my-bucket --folder prefect-results
    export PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/aligncap-results

The block stores no credentials: each process signs with its own environment (AWS_ACCESS_KEY_ID
/ AWS_SECRET_ACCESS_KEY, a profile or an instance role, the usual boto3 chain), and reaches the
endpoint in AWS_ENDPOINT_URL (MinIO, moto, ...) unless `--endpoint-url` is saved in the block.
`aligncap results-storage` runs `main` here in a child process (the core CLI never imports Prefect).
`aligncap up --s3` runs this against its moto server.
"""

from __future__ import annotations

import sys

from aligncap_core.defaults import RESULTS_BLOCK, RESULTS_PREFIX

BLOCK_TYPE = "s3-bucket"


def save_s3_result_storage(bucket: str, folder: str = RESULTS_PREFIX, name: str = RESULTS_BLOCK,
                           endpoint_url: str | None = None, region: str | None = None) -> str:
    """Save (or overwrite) the S3Bucket block `name` on the current Prefect API; returns the value
    for PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK (`s3-bucket/NAME`)."""
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    # no keys: credentials come from each worker's environment, never from the Prefect database
    creds = AwsCredentials(region_name=region,
                           aws_client_parameters=AwsClientParameters(endpoint_url=endpoint_url))
    S3Bucket(bucket_name=bucket, bucket_folder=folder.strip("/"), credentials=creds).save(name, overwrite=True)
    return f"{BLOCK_TYPE}/{name}"


def main(argv: list[str] | None = None) -> int:
    """What `aligncap results-storage` starts in a child process (options: its --help)."""
    from aligncap_core.cli import child_options

    given = {k: v for k, v in child_options(argv, "results-storage").items() if v is not None}
    print(save_s3_result_storage(**given))
    return 0


if __name__ == "__main__":
    sys.exit(main())
