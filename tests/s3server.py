"""A real S3 API server on loopback for the remote tests and benchmarks/remote.py: moto's ThreadedMotoServer
(the `test` extra installs moto[server]), started in this process on a free port, with throwaway credentials
in the environment. Nothing leaves the machine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

ACCESS_KEY = "AKIAMLVCTESTACCESS01"
SECRET_KEY = "mlvc-test-secret-0f9a8b7c6d5e4f3a2b1c"  # tests check it never lands in a repository's files


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Start the server; yields its endpoint URL (http://127.0.0.1:PORT). Sets the AWS_* credentials and
    region while it runs (restored after)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")}
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1")
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        os.environ.pop(k, None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
