"""`storage.get_fs` keeps one s3fs client per process and settings (building one costs ~45x an S3 call,
bench/storage_client.py), and that client never answers from a stale listing."""

from __future__ import annotations

from dataclasses import replace

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig
from tests.conftest import S3_BUCKET, s3_client


def test_one_client_per_settings(s3_server: StorageConfig):
    a, _ = storage.get_fs(f"s3://{S3_BUCKET}/client/a", s3_server)
    b, _ = storage.get_fs(f"s3://{S3_BUCKET}/client/b", s3_server)
    assert a is b
    other = replace(s3_server, read_timeout_s=s3_server.read_timeout_s + 1)
    c, _ = storage.get_fs(f"s3://{S3_BUCKET}/client/a", other)
    assert c is not a  # settings are part of the key: a run's timeouts always reach its client


def test_a_cached_client_sees_what_others_wrote_since(s3_server: StorageConfig):
    """Another process (here boto3 directly) writes after the cached client listed the folder: the next
    listing, `exists` and `info` see the new object (s3fs's listings cache would hide it)."""
    folder = f"s3://{S3_BUCKET}/client/fresh"
    fs, p = storage.get_fs(folder, s3_server)
    fs.pipe_file(f"{p}/first.txt", b"1")
    assert [x.rsplit("/", 1)[-1] for x in fs.ls(p)] == ["first.txt"]
    s3_client(s3_server).put_object(Bucket=S3_BUCKET, Key="client/fresh/second.txt", Body=b"22")
    fs, p = storage.get_fs(folder, s3_server)
    assert sorted(x.rsplit("/", 1)[-1] for x in fs.ls(p)) == ["first.txt", "second.txt"]
    assert fs.exists(f"{p}/second.txt")
    assert fs.info(f"{p}/second.txt")["size"] == 2
