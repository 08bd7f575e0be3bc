"""`rgvlm label`, the distributed labeling job, as a user runs it: local and S3, reruns, faults, bad input."""

from __future__ import annotations

import json
import time
from collections import Counter

import pyarrow as pa
import pytest

from rgvlm_ray import storage
from rgvlm_ray.cli import main
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling.leases import Lease
from rgvlm_ray.labelstore.join import Source
from tests.conftest import S3_BUCKET
from tests.helpers import generated_table


def write_dataset(
    base: str, shards: int = 3, per_shard: int = 3, cfg: StorageConfig | None = None, subtasks: str = "1-3"
) -> list[str]:
    table = generated_table(episodes=shards * per_shard, subtasks=subtasks)
    for i in range(shards):
        fmt.write_shard(
            table.slice(i * per_shard, per_shard), storage.join(base, f"shard-{i:05d}.parquet"), cfg
        )
    return table.column("episode_id").to_pylist()


def read_output(src: str, out: str, cfg: StorageConfig | None = None) -> pa.Table:
    """Every label shard in `out` joined with its raw shard in `src`."""
    source = Source(src, [out], cfg or StorageConfig())
    names = [storage.basename(p) for p in fmt.list_shards(out, cfg)]
    tables = [source.read(storage.join(src, n)) for n in names]
    return pa.concat_tables(tables, promote_options="permissive")


def summary_of(out: str, cfg: StorageConfig | None = None) -> dict:
    fs, p = storage.get_fs(storage.join(out, "summary.json"), cfg)
    return json.loads(fs.cat_file(p))


def label(src: str, out: str, *extra: str) -> int:
    return main(["label", "--in", src, "--out", out, *extra])


def test_local_oracle_labels_every_episode_once_and_rerun_does_nothing(ray_cluster, tmp_path):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labeled")
    ids = write_dataset(src)
    assert label(src, out, "--engine", "oracle") == 0
    table = read_output(src, out)
    assert sorted(table.column("episode_id").to_pylist()) == sorted(ids)
    assert [storage.basename(p) for p in fmt.list_shards(out)] == [
        storage.basename(p) for p in fmt.list_shards(src)
    ]
    for row in table.to_pylist():
        assert len(row["oracle_reward"]) == len(row["actions"])
        assert sum(row["oracle_reward"]) == row["progress"][-1]  # +1 per completed sub-task
    s = summary_of(out)
    assert s["episodes"] == {
        "in": 9,
        "labeled": 9,
        "errored": 0,
        "bad_input": 0,
        "in_quarantined_shards": 0,
        "in_failed_shards": 0,
        "balanced": True,
    }
    assert s["transitions"] == sum(len(a) for a in table.column("actions").to_pylist())
    assert s["actors"] == {"min": 1, "max": 2}  # 9 episodes in batches of 4: both actors have work
    records = mf.load_records(out, StorageConfig())
    assert {r.status for r in records.values()} == {mf.DONE} and len(records) == 3
    assert not list((tmp_path / "labeled" / "_leases").iterdir())

    before = {
        p: (tmp_path / "labeled" / storage.basename(p)).stat().st_mtime_ns for p in fmt.list_shards(out)
    }
    assert label(src, out, "--engine", "oracle") == 0
    s = summary_of(out)
    assert s["shards"]["skipped_current"] == 3 and s["episodes"]["in"] == 0
    assert before == {
        p: (tmp_path / "labeled" / storage.basename(p)).stat().st_mtime_ns for p in fmt.list_shards(out)
    }

    # a changed input shard is labeled again, alone (with ids no other shard holds: duplicates are quarantined)
    fmt.write_shard(
        generated_table(episodes=12, subtasks="1-3").slice(9, 2), storage.join(src, "shard-00001.parquet")
    )
    assert label(src, out, "--engine", "oracle") == 0
    s = summary_of(out)
    assert s["shards"]["skipped_current"] == 2 and s["shards"]["labeled"] == 1 and s["episodes"]["in"] == 2
    assert s["actors"] == {"min": 1, "max": 1}  # one batch of work: one actor loads the labeler, not two
    assert label(src, out, "--engine", "oracle", "--force") == 0
    assert summary_of(out)["shards"]["labeled"] == 3


def test_hf_two_stage_labels_fingerprint_change_relabels_and_bad_frames_kept(
    ray_cluster, tmp_path, tiny_vlm_dir
):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labeled")
    table = generated_table(episodes=4, subtasks="1")
    rows = table.to_pylist()
    rows[1]["frames"][2] = b"\x89PNG\r\n\x1a\n broken"  # passes validation without decoding
    bad = pa.Table.from_pylist(rows, schema=table.schema)
    fmt.write_shard(bad.slice(0, 2), storage.join(src, "a.parquet"))
    fmt.write_shard(bad.slice(2, 2), storage.join(src, "b.parquet"))
    args = [
        "--engine",
        "hf",
        "--model",
        tiny_vlm_dir,
        "labeler.window=8",
        "engine.max_new_tokens_analysis=16",
    ]
    assert label(src, out, *args) == 0
    labeled = {r["episode_id"]: r for r in read_output(src, out).to_pylist()}
    assert set(labeled) == {r["episode_id"] for r in rows}
    broken = labeled[rows[1]["episode_id"]]
    assert broken["rgvlm_episode_status"] == "bad_input" and broken["rgvlm_episode_error"]
    assert all(s is None for s in broken["rgvlm_score"])
    for ep in (labeled[r["episode_id"]] for r in rows if r is not rows[1]):
        assert len(ep["rgvlm_score"]) == len(ep["actions"])
        assert all(s is not None and 0 <= s <= 10 for s in ep["rgvlm_score"])
        assert ep["rgvlm_analysis"] and ep["rgvlm_episode_status"] == "ok"
    s = summary_of(out)
    assert s["episodes"]["labeled"] == 3 and s["episodes"]["bad_input"] == 1 and s["episodes"]["balanced"]
    assert s["prompt_tokens"] > 0 and s["windows"] >= 3
    # per stage (issue 24): they add up, each shard's record holds its own, and stage 1 is what --plan counts
    for kind in ("prompt", "completion"):
        assert s[f"stage1_{kind}_tokens"] > 0 and s[f"stage2_{kind}_tokens"] > 0
        assert s[f"stage1_{kind}_tokens"] + s[f"stage2_{kind}_tokens"] == s[f"{kind}_tokens"]
    records = mf.load_records(out, StorageConfig())
    for key in ("stage1_prompt_tokens", "stage2_prompt_tokens", "stage2_cached_tokens", "completion_tokens"):
        assert sum(r.stats[key] for r in records.values()) == s[key], key
    from rgvlm_ray.config import load_config
    from rgvlm_ray.labeling import cost

    planned = cost.plan_run(
        load_config(
            overrides={"label.in_path": src, "label.plan": True},
            dotlist=["engine.kind=hf", f"engine.model={tiny_vlm_dir}", *args[4:]],
        )
    )
    assert planned["stage1"]["prompt_tokens"] == s["stage1_prompt_tokens"]
    assert planned["stage1"]["windows"] == s["windows"]
    fp = s["fingerprint"]

    # bad input is deterministic: its shard is not retried until asked (or the input or labeler changes)
    assert label(src, out, *args) == 0
    assert summary_of(out)["shards"]["skipped_current"] == 2
    assert label(src, out, *args, "--retry-errors") == 0
    assert summary_of(out)["shards"]["labeled"] == 1 and summary_of(out)["shards"]["skipped_current"] == 1
    # another window size is another labeler: everything is relabeled
    assert label(src, out, *args[:-2], "labeler.window=6", args[-1]) == 0
    s = summary_of(out)
    assert s["fingerprint"] != fp and s["shards"]["labeled"] == 2


def test_s3_to_s3_quarantines_truncated_and_wrong_schema_shards(ray_cluster, s3_env, capsys):
    src, out = f"s3://{S3_BUCKET}/raw", f"s3://{S3_BUCKET}/labeled"
    ids = write_dataset(src, shards=2)
    fs, _ = storage.get_fs(src, s3_env)
    good = fs.cat_file(f"{S3_BUCKET}/raw/shard-00000.parquet")
    fs.pipe_file(f"{S3_BUCKET}/raw/shard-00002.parquet", good[: len(good) // 3])  # truncated upload
    wrong = generated_table(episodes=2, subtasks="1").drop_columns(["actions"])
    fmt.write_shard(wrong, f"{src}/shard-00003.parquet")

    assert label(src, out, "--engine", "oracle") == 1
    printed = capsys.readouterr().out
    assert "shard-00002.parquet" in printed and "--allow-quarantine" in printed
    manifest = json.loads(fs.cat_file(f"{S3_BUCKET}/labeled/_manifest.json"))["shards"]
    assert manifest["shard-00002.parquet"]["status"] == "quarantined"
    assert "cannot read Parquet" in manifest["shard-00002.parquet"]["error"]
    assert manifest["shard-00003.parquet"]["status"] == "quarantined"
    assert "missing column" in manifest["shard-00003.parquet"]["error"]
    assert sorted(read_output(src, out).column("episode_id").to_pylist()) == sorted(ids)
    s = summary_of(out)
    assert (
        s["episodes"]["in"] == 6 + 2
        and s["episodes"]["in_quarantined_shards"] == 2
        and s["episodes"]["balanced"]
    )
    assert s["shards"]["unreadable"] == ["shard-00002.parquet"]

    # quarantined shards stay quarantined until they change; the flag accepts them
    assert label(src, out, "--engine", "oracle", "--allow-quarantine") == 0
    fmt.write_shard(generated_table(episodes=9, subtasks="1-3").slice(6, 3), f"{src}/shard-00002.parquet")
    fs.rm_file(f"{S3_BUCKET}/raw/shard-00003.parquet")
    assert label(src, out, "--engine", "oracle") == 0
    assert sorted(read_output(src, out).column("episode_id").to_pylist()) == sorted(
        ids + generated_table(episodes=9, subtasks="1-3").column("episode_id").to_pylist()[6:9]
    )


def test_actor_crash_is_restarted_and_every_episode_written_once(ray_cluster, tmp_path):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labeled")
    ids = write_dataset(src)
    marker = tmp_path / "crashed"
    assert label(src, out, "--engine", "oracle", f"label.chaos=crash-once:{marker}") == 0
    assert marker.exists()  # an actor really died mid-run
    got = read_output(src, out).column("episode_id").to_pylist()
    assert Counter(got) == Counter(ids)
    assert summary_of(out)["episode_status"] == {"ok": 9}


def test_engine_hung_once_is_restarted_and_every_episode_written_once(ray_cluster, tmp_path):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labeled")
    ids = write_dataset(src, shards=2)
    marker = tmp_path / "hung"
    args = ["--engine", "oracle", "label.batch_timeout_s=3", "label.episodes_per_batch=3"]
    assert label(src, out, *args, f"label.chaos=hang-once:{marker}") in (0, 3)  # 3: engine errors to retry
    assert marker.exists()  # a call really hung
    assert summary_of(out)["episodes"]["balanced"]
    # The hung batch is either retried on the restarted actor or recorded as an error; a rerun labels only
    # shards with errors, and then every episode is ok exactly once.
    assert label(src, out, *args) == 0
    final = read_output(src, out)
    assert Counter(final.column("episode_id").to_pylist()) == Counter(ids)
    assert set(final.column("oracle_episode_status").to_pylist()) == {"ok"}


def test_engine_hung_for_good_times_out_with_a_clear_error(ray_cluster, tmp_path):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labeled")
    ids = write_dataset(src, shards=1, per_shard=2)
    args = ["--engine", "oracle", "label.batch_timeout_s=2", "label.episodes_per_batch=2"]
    assert label(src, out, *args, f"label.chaos=hang:{tmp_path / 'h'}") == 3  # incomplete: retry later
    s = summary_of(out)
    assert s["episode_status"] == {"error": 2} and s["episodes"]["balanced"]
    rows = read_output(src, out).to_pylist()
    assert sorted(r["episode_id"] for r in rows) == sorted(ids)
    for r in rows:
        assert "timed out after label.batch_timeout_s=2" in r["oracle_episode_error"]
        assert set(r["oracle_status"]) == {"engine_error"}
    assert {r.status for r in mf.load_records(out, StorageConfig()).values()} == {mf.DONE_WITH_ERRORS}


def test_leases_keep_concurrent_runs_apart_and_expire(ray_cluster, tmp_path):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labeled")
    write_dataset(src, shards=2)
    live = Lease(out, "shard-00000.parquet", "other-run", ttl_s=600, cfg=StorageConfig())
    assert live.acquire()
    assert not Lease(out, "shard-00000.parquet", "third-run", ttl_s=600, cfg=StorageConfig()).acquire()
    dead = Lease(out, "shard-00001.parquet", "dead-run", ttl_s=0.01, cfg=StorageConfig())
    assert dead.acquire()
    time.sleep(0.05)
    assert label(src, out, "--engine", "oracle") == 3  # incomplete while the live run holds shard 0
    s = summary_of(out)
    assert s["shards"]["skipped_leased_by_other_run"] == ["shard-00000.parquet"]
    assert s["shards"]["labeled"] == 1  # took over the expired lease of the dead run
    live.release()
    assert label(src, out, "--engine", "oracle") == 0
    assert summary_of(out)["shards"]["labeled"] == 1 and summary_of(out)["shards"]["skipped_current"] == 1


def test_s3_leases_are_exclusive(s3_server):
    out = f"s3://{S3_BUCKET}/lease-test"
    a = Lease(out, "x.parquet", "run-a", 600, s3_server)
    b = Lease(out, "x.parquet", "run-b", 600, s3_server)
    assert a.acquire() and not b.acquire()
    a.release()
    assert b.acquire()
    b.release()


def test_bad_settings_are_usage_errors(tmp_path, capsys):
    src = str(tmp_path / "raw")
    write_dataset(src, shards=1, per_shard=1)
    assert label(src, src, "--engine", "oracle") == 2
    assert "--out must differ" in capsys.readouterr().err
    assert label(str(tmp_path / "missing"), str(tmp_path / "o"), "--engine", "oracle") == 2
    assert label(src, str(tmp_path / "o"), "--engine", "hf") == 2
    assert "--model" in capsys.readouterr().err
    assert main(["label", "--in", src]) == 2


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("tiny-vlm"))
    assert main(["make-tiny-vlm", "--out", out]) == 0
    return out
