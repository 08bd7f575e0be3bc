"""Shared fixtures: one Ray cluster and one real S3 API server (moto) on 127.0.0.1 for the whole session."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from rgvlm_ray.config import StorageConfig

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train V2's controller polls its workers every 2 s (so a finished training is noticed up to 2 s late) and
# starts a preemption watcher; the driver hands both settings on to every controller, in-process or in a CLI
# process. The suite trains about 20 times: a 0.25 s poll and no watcher save seconds on each, nothing else changes.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

S3_BUCKET = "rgvlm-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    tmp = tempfile.mkdtemp(prefix="rgvlm-ray-")
    # Ray keeps at most num_cpus idle task workers and kills the rest after 1 s idle; the suite's fractional-CPU
    # tasks (generate, evaluate, Ray Data) then start new workers that import torch, pyarrow and rgvlm again.
    # Eight warm workers took the tiny study from 117 s to 95 s (issue 25); actors are not affected.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=tmp,
        log_to_driver=False,
        _system_config={"num_workers_soft_limit": 8},
    )
    yield
    ray.shutdown()


def start_moto(bucket: str) -> tuple[Any, StorageConfig]:
    """A real S3 API (moto's server) on a free loopback port with `bucket` made: (server, settings to reach it).
    Credentials are fake and passed explicitly. Shared by the session fixture and the S3 benchmarks."""
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
    s3_client(cfg).create_bucket(Bucket=bucket)
    return server, cfg


def s3_client(cfg: StorageConfig) -> Any:
    """A plain boto3 client on the same server: another writer than the code under test."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        region_name=cfg.region,
        aws_access_key_id=cfg.access_key_id,
        aws_secret_access_key=cfg.secret_access_key,
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[StorageConfig]:
    """A real S3 API (moto's server) on loopback for the whole session."""
    server, cfg = start_moto(S3_BUCKET)
    yield cfg
    server.stop()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: timings and learning runs that must not depend on idle OpenMP threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def s3_env(s3_server: StorageConfig, monkeypatch: pytest.MonkeyPatch) -> StorageConfig:
    """The same server reached through the standard AWS environment variables, as a user's CLI would."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url or "")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


# `--shard I/N` (tests/shards.py, `make test`): run only the files bin-packed into shard I of N. The suite mostly
# waits on Ray Train and Ray Data start-up and CLI processes, so two pytest processes, each with its own session
# cluster, cut the wall time. Weights: seconds per file from `--durations=0` of `make test` on a quiet 2-core
# machine (2026-12-05, issue 25, BENCHMARKS.md "Test suite"), both shards running side by side. Files under 8 s
# are not listed and weigh 8; only the weights' ratios matter to the packing.
SHARD_WEIGHTS = {
    "test_pipeline_label.py": 118,
    "test_study.py": 113,
    "test_demo.py": 90,
    "test_jobs.py": 72,
    "test_label_store.py": 68,
    "test_iql_train.py": 68,
    "test_label_paths.py": 62,
    "test_label_others.py": 61,
    "test_paths_unicode.py": 50,
    "test_lerobot.py": 40,
    "test_behaviour.py": 38,
    "test_label_faults.py": 35,
    "test_label_tidy.py": 28,
    "test_minari.py": 27,
    "test_bad_input.py": 26,
    "test_s3_timeouts.py": 25,
    "test_small_points.py": 24,
    "test_iql_losses.py": 22,
    "test_iql_learning.py": 19,
    "test_label_openai_serve.py": 17,
    "test_mission_pool.py": 16,
    "test_iql_evaluate.py": 15,
    "test_fuzz_format.py": 14,
    "test_label_exits.py": 11,
    "test_generate_cli.py": 9,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shard", default=None, help="I/N: run only shard I (0-based) of N (tests/shards.py)")


def shard_of(files: list[str], shards: int) -> dict[str, int]:
    """Greedy bin packing, heaviest file first: the same files always land in the same shard."""
    load = [0] * shards
    where = {}
    for name in sorted(files, key=lambda f: (-SHARD_WEIGHTS.get(f, 8), f)):
        i = load.index(min(load))
        where[name] = i
        load[i] += SHARD_WEIGHTS.get(name, 8)
    return where


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    spec = config.getoption("--shard")
    if not spec:
        return
    index, shards = (int(x) for x in spec.split("/"))
    if not 0 <= index < shards:
        raise pytest.UsageError(f"--shard {spec}: I must be in 0..N-1")
    where = shard_of(sorted({item.path.name for item in items}), shards)
    keep = [item for item in items if where[item.path.name] == index]
    config.hook.pytest_deselected(items=[item for item in items if where[item.path.name] != index])
    items[:] = keep
