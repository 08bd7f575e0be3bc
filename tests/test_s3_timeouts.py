"""Bounded S3 waits (issue 24, item 3): `storage.connect_timeout_s`, `read_timeout_s`, `max_attempts` and
`retry_mode` reach botocore on the driver and on every Ray worker, so an S3 that answers 503 or hangs ends a run
with exit 4 in bounded time. Faults come from the project's proxy (tests/s3_proxy.py) in front of the session's
moto server; the timeouts here are small, set by config (the defaults are measured in bench/s3_faults.py)."""

from __future__ import annotations

import os
import time

import pytest

from rgvlm_ray import storage
from rgvlm_ray.cli import main
from rgvlm_ray.config import StorageConfig
from tests.conftest import S3_BUCKET
from tests.helpers import REPO
from tests.s3_proxy import HANG, SLOW_DOWN, FaultProxy, fault_run
from tests.test_label_faults import assert_clean_end
from tests.test_pipeline_label import write_dataset

SMALL = {"connect_timeout_s": 1.0, "read_timeout_s": 1.0, "max_attempts": 2}


@pytest.fixture
def proxy(s3_server: StorageConfig):
    p = FaultProxy(s3_server.endpoint_url or "", lifetime_s=300, hang_s=60).start()
    yield p
    p.stop()


def through(proxy: FaultProxy, s3_server: StorageConfig, **settings: object) -> StorageConfig:
    return StorageConfig(
        endpoint_url=proxy.endpoint,
        region="us-east-1",
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
        **settings,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("mode, kind", [(SLOW_DOWN, "throttled or failed"), (HANG, "is unreachable")])
def test_a_failing_call_gives_up_after_max_attempts_requests(s3_server, proxy, mode, kind):
    """botocore makes exactly max_attempts requests (s3fs adds no retry cycles of its own), each hung one is
    abandoned after read_timeout_s, and the error is told as a storage fault."""
    path = f"s3://{S3_BUCKET}/timeouts/{mode}.bin"
    fs, p = storage.get_fs(path, through(proxy, s3_server))
    fs.pipe_file(p, b"x")
    for attempts in (1, 3):
        fs, p = storage.get_fs(path, through(proxy, s3_server, **{**SMALL, "max_attempts": attempts}))
        proxy.mode, before, start = mode, proxy.counts[mode], time.time()
        with pytest.raises(Exception) as caught:
            fs.cat_file(p)
        took = time.time() - start
        proxy.mode = "pass"
        assert proxy.counts[mode] - before == attempts
        fault = storage.fault(caught.value, path, through(proxy, s3_server))
        assert fault is not None and kind in str(fault), caught.value
        # at most 1 + 2 s of backoff, and a hung attempt lasts read_timeout_s (1 s): generous bounds for a loaded box
        assert took < 3 * attempts + 10, took
        if mode == HANG:
            assert took >= 0.9 * attempts, took  # each attempt did wait for its read timeout


def test_bad_storage_settings_are_usage_errors(capsys):
    for setting, words in [
        ("storage.retry_mode=fast", "storage.retry_mode must be one of standard, adaptive"),
        ("storage.max_attempts=0", "storage.max_attempts"),
        ("storage.read_timeout_s=0", "storage.read_timeout_s must be > 0"),
    ]:
        assert main(["inspect", "s3://nowhere/raw", setting]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_label_run_against_a_hung_s3_ends_with_exit_4_in_bounded_time(
    ray_cluster, s3_server, proxy, tmp_path
):
    """Mid-run (a label shard and its record landed), every request hangs: the driver, its heartbeat, the
    actors and the writers all give up after the configured timeouts, and the run ends in one line, exit 4."""
    import ray

    src, out = f"s3://{S3_BUCKET}/hung-raw", f"s3://{S3_BUCKET}/hung-labels"
    write_dataset(src, shards=4, per_shard=2, subtasks="1-2", cfg=s3_server)
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "PYTHONPATH": str(REPO),
    }
    args = ["label", "--in", src, "--out", out, "--engine", "oracle", "--actors", "1"]
    args += [
        "label.episodes_per_batch=1",
        "label.chaos=slow:1",
        *(f"storage.{k}={v}" for k, v in SMALL.items()),
    ]
    done, seconds = fault_run(
        args, env, proxy, HANG, lambda: proxy.answered("PUT", "/hung-labels/_manifest/"), 150
    )
    assert_clean_end(done, f"S3 ({proxy.endpoint}) is unreachable")
    # One call gives up after about 2 x 1 s plus at most 1 s of backoff; a few run one after another.
    assert seconds < 60, seconds
