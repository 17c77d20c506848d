"""Prefect result storage on S3 (AWS or any S3-compatible endpoint) through a saved
prefect-aws `S3Bucket` block.

Prefect persists task and flow results (and the cache records that let a re-run skip finished
stages) to its *default result storage*: a local folder (`PREFECT_RESULTS_LOCAL_STORAGE_PATH`,
the default) or a saved storage block named by `PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`. Workers
on different machines only share results through the latter. Create the block once per Prefect
server, then export the setting on every worker:

    python -m tasks.storage --bucket my-bucket --folder prefect-results
    export PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/aligncap-results

The block stores no credentials: each process signs with its own environment (AWS_ACCESS_KEY_ID
/ AWS_SECRET_ACCESS_KEY, a profile or an instance role, the usual boto3 chain), and reaches the
endpoint in AWS_ENDPOINT_URL (MinIO, moto, ...) unless `--endpoint-url` is saved in the block.
`aligncap up --s3` runs this against its moto server.
"""

from __future__ import annotations

import argparse
import sys

BLOCK_TYPE = "s3-bucket"
DEFAULT_NAME = "aligncap-results"


def save_s3_result_storage(bucket: str, folder: str = "prefect-results", name: str = DEFAULT_NAME,
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
    ap = argparse.ArgumentParser(prog="python -m tasks.storage", description=(
        "Save a prefect-aws S3Bucket block for Prefect result storage on the Prefect API in "
        "PREFECT_API_URL; prints the PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK value to export."))
    ap.add_argument("--bucket", required=True, help="S3 bucket (must exist)")
    ap.add_argument("--folder", default="prefect-results", help="key prefix in the bucket (default prefect-results)")
    ap.add_argument("--name", default=DEFAULT_NAME, help=f"block name (default {DEFAULT_NAME})")
    ap.add_argument("--endpoint-url", help="S3-compatible endpoint saved in the block "
                    "(default: none, each worker's AWS_ENDPOINT_URL or AWS itself)")
    ap.add_argument("--region", help="AWS region saved in the block (default: the worker's)")
    args = ap.parse_args(argv)
    slug = save_s3_result_storage(args.bucket, args.folder, args.name, args.endpoint_url, args.region)
    print(slug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
