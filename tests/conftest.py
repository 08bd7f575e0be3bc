"""Shared fixtures: one Ray cluster and one real S3 API server (moto) on 127.0.0.1 for the whole session."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator

import pytest

from rgvlm_ray.config import StorageConfig

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

S3_BUCKET = "rgvlm-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    tmp = tempfile.mkdtemp(prefix="rgvlm-ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[StorageConfig]:
    """A real S3 API (moto's server) on loopback; credentials are fake and passed explicitly."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    cfg = StorageConfig(
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )
    import boto3

    boto3.client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=S3_BUCKET)
    yield cfg
    server.stop()


@pytest.fixture
def s3_env(s3_server: StorageConfig, monkeypatch: pytest.MonkeyPatch) -> StorageConfig:
    """The same server reached through the standard AWS environment variables, as a user's CLI would."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url or "")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server
