"""Label sets as a sidecar: what a labeling writes, the join every reader uses, export, and the faults around them
(driver and writer kills, damaged or stale label shards, leases, empty shards, `--status`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from rgvlm_ray import storage
from rgvlm_ray.cli import main
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling.leases import Lease
from rgvlm_ray.labelstore import layout
from rgvlm_ray.labelstore.join import JoinError, Source
from tests.conftest import S3_BUCKET
from tests.helpers import generated_table, start_cli
from tests.test_pipeline_label import label, read_output, summary_of, write_dataset


def label_shards(out: str, cfg: StorageConfig | None = None) -> dict[str, pa.Table]:
    return {storage.basename(p): fmt.read_shard(p, cfg) for p in fmt.list_shards(out, cfg)}


def test_label_set_holds_only_labels_and_every_reader_joins_it_back(ray_cluster, tmp_path, capsys):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels-oracle")
    ids = write_dataset(src)
    assert label(src, out, "--engine", "oracle") == 0
    shards = label_shards(out)
    assert sorted(shards) == sorted(storage.basename(p) for p in fmt.list_shards(src))
    raw_bytes = sum(os.path.getsize(p) for p in fmt.list_shards(src))
    for name, table in shards.items():
        assert table.column_names == ["episode_id", *fmt.label_schema("oracle").names]  # no frames, no copies
        meta = layout.label_meta(table.schema)
        assert meta.raw_shard == name and meta.labeler == "oracle" and meta.episodes == table.num_rows
        assert meta.raw_identity == storage.content_identity(os.path.join(src, name))
    # At this toy size Parquet footers and JSON records dominate; bench/label_store.py measures the 5% target.
    label_bytes = sum(os.path.getsize(p) for p in fmt.list_shards(out))
    assert label_bytes < 0.10 * raw_bytes, (label_bytes, raw_bytes)
    assert not [
        f for f in (Path(out) / "_parts").rglob("*") if f.is_file()
    ]  # parts go once their shard is written

    joined = read_output(src, out)
    assert sorted(joined.column("episode_id").to_pylist()) == sorted(ids)
    for row in joined.to_pylist():
        assert sum(row["oracle_reward"]) == row["progress"][-1]

    # inspect and label-report read through the same join; export writes the joined layout, which inspect validates
    capsys.readouterr()
    assert main(["inspect", src, "--labels", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labels"]["oracle"]["coverage"] == 1.0 and report["label_sets"] == [out]
    assert main(["label-report", "--in", src, "--labels", out, "--out", str(tmp_path / "r"), "--json"]) == 0
    capsys.readouterr()
    joined_dir = str(tmp_path / "joined")
    assert main(["export", "--in", src, "--labels", out, "--out", joined_dir]) == 0
    exported = pa.concat_tables(fmt.read_shard(p) for p in fmt.list_shards(joined_dir))
    assert exported.sort_by("episode_id").equals(joined.sort_by("episode_id"))
    assert main(["inspect", joined_dir]) == 0
    assert main(["inspect", out]) == 2  # a label set alone is not a dataset: the error says how to inspect it
    assert f"rgvlm inspect RAW --labels {out}" in capsys.readouterr().err
    assert main(["export", "--in", src, "--labels", out, "--out", joined_dir]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_train_joins_raw_with_the_label_sets_its_reward_names(ray_cluster, tmp_path, capsys):
    src = str(tmp_path / "raw")
    write_dataset(src, shards=2, per_shard=3, subtasks="1-2")
    oracle, noisy = str(tmp_path / "labels-oracle"), str(tmp_path / "labels-noisy30")
    assert label(src, oracle, "--engine", "oracle") == 0
    assert label(src, noisy, "--engine", "noisy_oracle", "labeler.oracle_noise=0.3") == 0
    run = str(tmp_path / "run")
    tiny = [
        "--steps",
        "2",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "iql.batch_size=16",
        "iql.context=2",
    ]
    args = [
        "train",
        "--in",
        src,
        "--labels",
        oracle,
        "--labels",
        noisy,
        "--out",
        run,
        "--reward",
        "noisy30+oracle",
    ]
    assert main([*args, *tiny]) == 0
    capsys.readouterr()
    checkpoint = sorted(Path(run).glob("checkpoint_0*"))[-1]
    meta = json.loads((checkpoint / "run.json").read_text())
    assert meta["reward"] == "noisy30+oracle" and meta["labels"] == [oracle, noisy] and meta["in_path"] == src

    # without the label set the reward needs, the error names the flag and the command that makes it
    assert main(["train", "--in", src, "--out", str(tmp_path / "run2"), "--reward", "oracle", *tiny]) == 2
    err = capsys.readouterr().err
    assert "--labels" in err and "rgvlm label --in" in err
    # a label set passed as --in is refused with what to do instead
    assert main(["train", "--in", oracle, "--out", str(tmp_path / "run3"), "--reward", "oracle", *tiny]) == 2
    assert "is a label set" in capsys.readouterr().err


def test_join_refuses_label_sets_that_do_not_match_the_raw_shards(ray_cluster, tmp_path):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    write_dataset(src, shards=2, per_shard=3)
    assert label(src, out, "--engine", "oracle") == 0
    first = fmt.list_shards(src)[0]
    name = storage.basename(first)

    with pytest.raises(JoinError, match="both carry 'oracle'"):
        Source(src, [out, out]).read(first)
    # a label shard missing episodes, whatever its metadata says
    table = fmt.read_shard(os.path.join(out, name))
    meta = layout.label_meta(table.schema)
    with storage.atomic_open(os.path.join(out, name)) as f:
        f.write(layout.label_shard_bytes(table.slice(0, 2), meta))
    with pytest.raises(JoinError, match=rf"{name}: 1 of the raw shard's 3 episodes are missing"):
        Source(src, [out]).read(first)
    # the raw shard changed since it was labeled: refused, naming the shard, until it is labeled again
    # (episodes 6-8: ids 3-5 are in the other shard, and ids duplicated across shards are quarantined)
    fmt.write_shard(generated_table(episodes=9, subtasks="1-3").slice(6, 3), first)
    with pytest.raises(JoinError, match=rf"different version of raw shard {name}"):
        Source(src, [out]).read(first)
    assert main(["inspect", src, "--labels", out]) == 1  # inspect reports it as a validation error
    assert label(src, out, "--engine", "oracle") == 0
    assert summary_of(out)["shards"]["labeled"] == 1  # only the changed shard
    assert Source(src, [out]).read(first).num_rows == 3
    # a raw shard with no label shard
    os.remove(os.path.join(out, name))
    with pytest.raises(JoinError, match=rf"has no label shard for raw shard {name}"):
        Source(src, [out]).read(first)


def test_truncated_label_shard_on_s3_is_refused_then_relabeled(ray_cluster, s3_env):
    src, out = f"s3://{S3_BUCKET}/store-raw", f"s3://{S3_BUCKET}/store-labels"
    write_dataset(src, shards=2, per_shard=2, cfg=s3_env)
    assert label(src, out, "--engine", "oracle") == 0
    fs, _ = storage.get_fs(out, s3_env)
    key = f"{S3_BUCKET}/store-labels/shard-00000.parquet"
    whole = fs.cat_file(key)
    fs.pipe_file(key, whole[: len(whole) // 2])  # an interrupted copy, a bad sync: the object is cut short
    with pytest.raises(JoinError, match="cannot be read"):
        Source(src, [out], s3_env).read(f"{src}/shard-00000.parquet")
    assert label(src, out, "--engine", "oracle") == 0  # the manifest's size check catches it
    assert summary_of(out, s3_env)["shards"]["labeled"] == 1
    assert Source(src, [out], s3_env).read(f"{src}/shard-00000.parquet").num_rows == 2


def test_empty_shard_is_done_with_zero_episodes(ray_cluster, tmp_path):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    write_dataset(src, shards=1, per_shard=2)
    fmt.write_shard(generated_table(episodes=2).slice(0, 0), os.path.join(src, "shard-empty.parquet"))
    assert label(src, out, "--engine", "oracle") == 0
    records = mf.load_records(out, StorageConfig())
    assert records["shard-empty.parquet"].status == mf.DONE and records["shard-empty.parquet"].rows_out == 0
    assert fmt.read_shard(os.path.join(out, "shard-empty.parquet")).num_rows == 0
    assert summary_of(out)["episodes"]["balanced"]
    assert label(src, out, "--engine", "oracle") == 0 and summary_of(out)["shards"]["skipped_current"] == 2


def test_writer_killed_mid_shard_leaves_no_partial_label_shard(ray_cluster, tmp_path):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    ids = write_dataset(src)
    marker = tmp_path / "writer-died"
    assert label(src, out, "--engine", "oracle", f"label.chaos=crash-write-once:{marker}") == 0
    assert marker.exists()  # a writer really died halfway through a shard's bytes; Ray retried it
    assert Counter(read_output(src, out).column("episode_id").to_pylist()) == Counter(ids)
    for name, table in label_shards(out).items():
        assert table.num_rows == fmt.read_shard(os.path.join(src, name)).num_rows


def test_live_lease_makes_the_run_incomplete_and_status_says_so(ray_cluster, tmp_path, capsys):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    write_dataset(src, shards=2, per_shard=2)
    other = Lease(out, "shard-00000.parquet", "elsewhere-1-abc", ttl_s=600, cfg=StorageConfig())
    assert other.acquire()
    assert label(src, out, "--engine", "oracle") == 3  # not "all done": a cron job can tell
    assert "INCOMPLETE" in capsys.readouterr().out
    assert label(src, out, "--status") == 3
    printed = capsys.readouterr().out
    assert "1 of 2 input shards done" in printed and "shard-00000.parquet: leased" in printed
    other.release()
    assert label(src, out, "--engine", "oracle") == 0
    assert label(src, out, "--status") == 0
    assert "2 of 2 input shards done" in capsys.readouterr().out
    fmt.write_shard(
        generated_table(episodes=9, subtasks="1-3").slice(6, 2), os.path.join(src, "shard-00001.parquet")
    )
    assert label(src, out, "--status") == 3
    assert "shard-00001.parquet: stale" in capsys.readouterr().out
    manifest = json.loads((Path(out) / "_manifest.json").read_text())
    assert manifest["totals"]["input_shards"] == 2 and manifest["totals"]["done"] == 2


def test_a_dead_local_runs_lease_is_taken_over_at_once(ray_cluster, tmp_path):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    write_dataset(src, shards=1, per_shard=2)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease = Lease(
        out, "shard-00000.parquet", f"{socket.gethostname()}-{dead.pid}-deadbeef", 600, StorageConfig()
    )
    assert lease.acquire()
    assert label(src, out, "--engine", "oracle") == 0
    assert summary_of(out)["shards"]["labeled"] == 1


def test_driver_killed_mid_run_then_rerun_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    ids = write_dataset(src, shards=4, per_shard=2, subtasks="1-2")
    slow = ["--engine", "oracle", "label.chaos=slow:1.5", "label.episodes_per_batch=1", "--actors", "1"]
    driver = start_cli(
        "label", "--in", src, "--out", out, *slow, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while not list(Path(out, "_manifest").glob("*.json")):  # a label shard and its record have landed
        assert driver.poll() is None and time.time() < deadline, "the driver ended before writing a shard"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {name: table for name, table in label_shards(out).items()}
    assert 0 < len(before) < 4, "kill came too late to test anything"
    for name, table in before.items():  # what is visible is whole
        assert table.num_rows == 2, name
    first = {n: r.run_id for n, r in mf.load_records(out, StorageConfig()).items() if r.status == mf.DONE}

    assert label(src, out, "--engine", "oracle") == 0  # right away: the dead driver's leases are taken over
    s = summary_of(out)
    assert s["shards"]["skipped_current"] >= len(first) >= 1 and s["episodes"]["balanced"]
    records = mf.load_records(out, StorageConfig())
    for name, run_id in first.items():
        assert records[name].run_id == run_id  # kept, not labeled again
    assert Counter(read_output(src, out).column("episode_id").to_pylist()) == Counter(ids)
