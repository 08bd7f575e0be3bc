"""Tidy label-set state (issue 17, part 5): one-line reasons in records, no advice that overwrites another
dataset's labels, no lease outliving its shard, and state of deleted raw shards reported and pruned."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rgvlm_ray.cli import main
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.labeling import exits
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling.leases import Lease
from rgvlm_ray.labelstore.join import JoinError, Source
from tests.helpers import start_cli
from tests.test_pipeline_label import label, read_output, summary_of, write_dataset


def files(root: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def test_a_failed_shards_reason_is_one_line_without_colour_codes(ray_cluster):
    import ray

    @ray.remote
    def breaks() -> None:
        raise OSError("\x1b[31mdisk\x1b[0m on fire\nsecond line")

    with pytest.raises(Exception) as caught:
        ray.get(breaks.remote())
    assert "\x1b[" in str(caught.value) and "File " in str(caught.value)  # what Ray hands back
    assert mf.reason(caught.value) == "OSError: disk on fire"
    assert mf.reason("\x1b[1mRayTaskError\x1b[0m: boom\n  File x\n") == "RayTaskError: boom"
    assert len(mf.reason("x" * 5000)) == 500


def test_a_label_set_of_another_dataset_is_never_overwritten(ray_cluster, tmp_path, capsys):
    first, other, l1 = str(tmp_path / "first"), str(tmp_path / "other"), str(tmp_path / "l1")
    write_dataset(first, shards=2, per_shard=2, subtasks="1-2")
    write_dataset(other, shards=2, per_shard=3, subtasks="3")  # the same shard names, other episodes
    assert label(first, l1, "--engine", "oracle") == exits.OK
    before = files(l1)

    # readers: the refusal says to label into a new label set, not to relabel L1
    with pytest.raises(JoinError) as refused:
        Source(other, [l1]).read(str(Path(other, "shard-00000.parquet")))
    message = str(refused.value)
    assert (
        "made from another dataset" in message
        and "--out NEW_LABELS" in message
        and f"--out {l1}" not in message
    )
    capsys.readouterr()
    args = ["export", "--in", other, "--labels", l1, "--out", str(tmp_path / "x")]
    assert main(args) == exits.USAGE
    assert "--out NEW_LABELS" in capsys.readouterr().err
    # the label job, and --prune, refuse to write into it
    for extra in (["--engine", "oracle"], ["--prune"], ["--status"]):
        assert label(other, l1, *extra) == exits.USAGE
        err = capsys.readouterr().err
        assert "holds the labels of another dataset" in err and "--out NEW_LABELS" in err
    assert files(l1) == before

    # a moved copy of the first dataset is the same data: its label set is still its own
    moved = str(tmp_path / "moved")
    shutil.copytree(first, moved)
    assert label(moved, l1, "--engine", "oracle") == exits.OK
    assert summary_of(l1)["shards"]["skipped_current"] == 2


def test_no_lease_outlives_the_shard_it_guarded(ray_cluster, tmp_path):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    write_dataset(src, shards=2, per_shard=2, subtasks="1-2")
    assert label(src, out, "--engine", "oracle") == exits.OK
    # a driver killed after its writer recorded the shard, before it let go of the lease
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = f"{socket.gethostname()}-{dead.pid}-deadbeef"
    assert Lease(out, "shard-00000.parquet", run, 600, StorageConfig()).acquire()
    assert label(src, out, "--engine", "oracle") == exits.OK
    assert summary_of(out)["shards"]["skipped_current"] == 2
    assert not list(Path(out, "_leases").glob("*.lease"))


def test_state_of_deleted_raw_shards_is_reported_and_pruned(ray_cluster, tmp_path, capsys):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    ids = write_dataset(src, shards=3, per_shard=2, subtasks="1-2")
    assert label(src, out, "--engine", "oracle") == exits.OK
    # shard 2 is deleted; a run that broke on it left parts and a failed record
    os.remove(os.path.join(src, "shard-00002.parquet"))
    parts = Path(out, "_parts", "shard-00002.parquet")
    parts.mkdir(parents=True)
    (parts / "run-x.parquet").write_bytes(b"labels of a batch")
    record = json.loads(Path(out, "_manifest", "shard-00002.parquet.json").read_text())
    record.update(status=mf.FAILED, error="the run stopped before this shard was written")
    Path(out, "_manifest", "shard-00002.parquet.json").write_text(json.dumps(record))
    capsys.readouterr()

    assert label(src, out, "--status") == exits.OK  # the inputs that exist are all labeled
    printed = capsys.readouterr().out
    assert "2 of 2 input shards done" in printed
    assert (
        "left behind by raw shards that no longer exist or by runs that broke: 1 label shards, 1 parts, 1 records"
        in printed
    )
    assert "rgvlm label --prune" in printed
    assert str(parts) in printed

    assert label(src, out, "--prune") == exits.OK
    assert "removed 3 path(s)" in capsys.readouterr().out
    assert not parts.exists() and not Path(out, "shard-00002.parquet").exists()
    assert not Path(out, "_manifest", "shard-00002.parquet.json").exists()
    assert label(src, out, "--status") == exits.OK
    assert "left behind" not in capsys.readouterr().out
    kept = read_output(src, out).column("episode_id").to_pylist()
    assert sorted(kept) == sorted(ids[:4])
    assert label(src, out, "--engine", "oracle") == exits.OK
    assert summary_of(out)["shards"]["skipped_current"] == 2


def test_a_raw_shard_deleted_mid_run_fails_in_one_line_and_prune_clears_it(ray_cluster, tmp_path, capsys):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    ids = write_dataset(src, shards=4, per_shard=2, subtasks="1-2")
    slow = ["--engine", "oracle", "label.chaos=slow:1", "label.episodes_per_batch=1", "--actors", "1"]
    driver = start_cli(
        "label", "--in", src, "--out", out, *slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while not list(Path(out, "_parts").glob("*/*.parquet")):  # labeling has started
        assert driver.poll() is None and time.time() < deadline, driver.communicate()[1][-3000:]
        time.sleep(0.2)
    os.remove(os.path.join(src, "shard-00003.parquet"))
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == exits.FAILED, stderr[-3000:]
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    failed = mf.load_records(out, StorageConfig())["shard-00003.parquet"]
    assert failed.status == mf.FAILED and "\n" not in failed.error and "\x1b" not in failed.error

    assert label(src, out, "--engine", "oracle") == exits.OK  # the other shards, once each
    assert sorted(read_output(src, out).column("episode_id").to_pylist()) == sorted(ids[:6])
    capsys.readouterr()
    assert label(src, out, "--status") == exits.OK
    assert "left behind" in capsys.readouterr().out
    assert label(src, out, "--prune") == exits.OK
    assert not Path(out, "_manifest", "shard-00003.parquet.json").exists()
    assert not list(Path(out, "_parts").glob("*"))
