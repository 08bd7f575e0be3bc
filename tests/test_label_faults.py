"""Storage faults end cleanly (issue 17, part 2): a full disk and an S3 endpoint gone mid-run. The job prints one
line naming the storage, the path and what to do, exits 4, frees its leases, leaves no label shard without its
record and nothing half-written; a rerun once the storage is back labels every episode exactly once."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from rgvlm_ray import storage
from rgvlm_ray.cli import main
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labeling import exits
from rgvlm_ray.labeling import manifest as mf
from tests.conftest import S3_BUCKET, _free_port
from tests.helpers import REPO, run_cli
from tests.test_pipeline_label import read_output, write_dataset

ONE_AT_A_TIME = ["label.episodes_per_batch=1", "--actors", "1"]


def assert_clean_end(done: subprocess.CompletedProcess, storage_words: str) -> None:
    """Exit 4 and one line saying which storage failed, where, and what to do; no traceback anywhere."""
    assert done.returncode == exits.STORAGE, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-4000:]
    mine = [x for x in done.stderr.splitlines() if x.startswith("rgvlm label:")]
    assert len(mine) == 1 and storage_words in mine[0] and "rerun" in mine[0], done.stderr[-3000:]


def assert_nothing_visible_without_its_record(out: str, cfg: StorageConfig) -> None:
    records = mf.load_records(out, cfg)
    for path in fmt.list_shards(out, cfg) if storage.get_fs(out, cfg)[0].exists(storage.fs_path(out)) else []:
        name = path[len(out) + 1 :]
        assert name in records and records[name].status in mf.LABELED, (name, records.get(name))
        fs, p = storage.get_fs(path, cfg)
        assert fs.info(p)["size"] == records[name].bytes_out


def local_leftovers(out: str) -> list[str]:
    return [str(p) for p in Path(out).rglob("*") if p.name.endswith(".tmp") or p.suffix == ".lease"]


def test_disk_full_mid_run_ends_in_one_line_and_a_rerun_finishes(ray_cluster, tmp_path):
    """Injected ENOSPC, where root cannot mount a small tmpfs (the real full disk below covers the rest): the disk
    fills just after the first label shard is written, before its record."""
    if can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("a tmpfs mounts here: test_a_real_full_disk_ends_cleanly_too covers a full disk for real")
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    ids = write_dataset(src, shards=4, per_shard=2, subtasks="1-2")
    full = tmp_path / "disk-is-full"
    done = run_cli(
        tmp_path, "label", "--in", src, "--out", out, "--engine", "oracle", f"label.chaos=disk-full:{full}"
    )
    assert full.exists(), "the injected fault never fired"
    assert_clean_end(done, "local disk is full at")
    assert "No space left on device" in done.stderr
    assert not local_leftovers(out)  # leases freed, no temp files
    assert_nothing_visible_without_its_record(out, StorageConfig())

    full.unlink()  # space freed
    # The rerun in-process: what it must show is its result, not its output (a CLI process costs seconds).
    assert main(["label", "--in", src, "--out", out, "--engine", "oracle"]) == exits.OK
    assert Counter(read_output(src, out).column("episode_id").to_pylist()) == Counter(ids)
    assert main(["label", "--in", src, "--out", out, "--status"]) == exits.OK


def mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]).returncode == 0


def can_mount_tmpfs(probe: Path) -> bool:
    if os.geteuid() != 0 or not mount_tmpfs(probe, "64k"):
        return False
    subprocess.run(["umount", str(probe)])
    return True


def test_a_real_full_disk_ends_cleanly_too(ray_cluster, tmp_path):
    """The same on a real 1 MB tmpfs nearly filled by another file (needs root and a mountable tmpfs)."""
    disk = tmp_path / "small-disk"
    if os.geteuid() != 0 or not mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here; the injected ENOSPC test covers this")
    try:
        src, out = str(tmp_path / "raw"), str(disk / "labels")
        ids = write_dataset(src, shards=6, per_shard=2, subtasks="1-2")
        ballast = disk / "ballast"
        with open(ballast, "wb") as f:  # leave room for a few small files only
            f.write(b"\0" * (1024 * 1024 - 40 * 1024))
        done = run_cli(tmp_path, "label", "--in", src, "--out", out, "--engine", "oracle")
        assert_clean_end(done, "local disk is full at")
        assert not local_leftovers(out)
        assert_nothing_visible_without_its_record(out, StorageConfig())

        ballast.unlink()
        assert main(["label", "--in", src, "--out", out, "--engine", "oracle"]) == exits.OK  # in-process
        assert Counter(read_output(src, out).column("episode_id").to_pylist()) == Counter(ids)
    finally:
        subprocess.run(["umount", str(disk)])


def test_s3_endpoint_gone_mid_run_ends_in_one_line_and_a_rerun_finishes(
    ray_cluster, s3_server, tmp_path, monkeypatch
):
    """A second moto server, on its own port, over the same in-process buckets: stopped once a shard has landed."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    cfg = StorageConfig(
        endpoint_url=endpoint, region="us-east-1", access_key_id="testing", secret_access_key="x"
    )
    src, out = f"s3://{S3_BUCKET}/gone-raw", f"s3://{S3_BUCKET}/gone-labels"
    ids = write_dataset(src, shards=4, per_shard=2, subtasks="1-2", cfg=cfg)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    args = ["label", "--in", src, "--out", out, "--engine", "oracle", "storage.max_attempts=2"]
    import ray

    driver = subprocess.Popen(
        [sys.executable, "-m", "rgvlm_ray.cli", *args, "label.chaos=slow:1", *ONE_AT_A_TIME],
        env={
            **os.environ,
            **env,
            "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
            "PYTHONPATH": str(REPO),
        },
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    fs, _ = storage.get_fs(out, cfg)
    deadline = time.time() + 240
    try:
        while not fs.exists(f"{S3_BUCKET}/gone-labels/_manifest"):  # a label shard and its record landed
            assert driver.poll() is None and time.time() < deadline, driver.stderr.read()[-3000:]
            time.sleep(0.3)
            fs.invalidate_cache()
    finally:
        server.stop()  # the endpoint is gone
    stdout, stderr = driver.communicate(timeout=300)
    done = subprocess.CompletedProcess(args, driver.returncode, stdout, stderr)
    assert_clean_end(done, f"S3 ({endpoint}) is unreachable")

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # back, with the same buckets
    try:
        assert_nothing_visible_without_its_record(out, cfg)
        # The rerun in-process, through the same environment variables: its result is what it must show.
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert main(args) == exits.OK
        assert Counter(read_output(src, out, cfg).column("episode_id").to_pylist()) == Counter(ids)
        leases = fs.find(f"{S3_BUCKET}/gone-labels/_leases")
        assert not leases, leases
        summary = json.loads(fs.cat_file(f"{S3_BUCKET}/gone-labels/summary.json"))
        assert summary["episodes"]["balanced"]
    finally:
        server.stop()


def test_storage_faults_are_told_apart_from_bad_input():
    import botocore.exceptions

    full = storage.fault(OSError(errno.ENOSPC, "No space left on device", "/data/l/x.json"), "/data/l")
    assert "local disk is full at /data/l/x.json" in str(full) and "free space" in str(full)
    denied = storage.fault(PermissionError(errno.EACCES, "Permission denied", "/data/l"), "/data/l")
    assert "refused access at /data/l" in str(denied)
    slow = botocore.exceptions.ClientError(
        {"Error": {"Code": "SlowDown", "Message": "Reduce your request rate"}, "ResponseMetadata": {}},
        "PutObject",
    )
    wrapped = OSError("Reduce your request rate")
    wrapped.__cause__ = slow  # as s3fs hands it on
    throttled = storage.fault(wrapped, "s3://b/labels", StorageConfig(endpoint_url="http://s3.example"))
    assert "S3 (http://s3.example) throttled or failed at s3://b/labels" in str(throttled)
    assert "storage.max_attempts" in str(throttled)
    gone = storage.fault(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), "s3://b/l")
    assert "is unreachable at s3://b/l" in str(gone)
    assert storage.fault(ValueError("Parquet magic bytes not found"), "/data/raw/x.parquet") is None
    assert storage.fault(FileNotFoundError(errno.ENOENT, "gone", "/x"), "/x") is None
