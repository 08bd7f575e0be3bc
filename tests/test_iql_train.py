"""`rgvlm train` end to end on Ray Train: 2 CPU workers (DDP over gloo), checkpoint, resume."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from rgvlm_ray.cli import main as cli
from rgvlm_ray.data import format as fmt
from rgvlm_ray.iql.checkpoint import latest_checkpoint, load_policy
from rgvlm_ray.iql.memory import MEMORY_DIM
from rgvlm_ray.labelers.oracle import oracle_label
from tests.helpers import generated_table

TINY = ["iql.batch_size=32", "iql.hidden=32", "iql.embed_dim=8", "train.log_every=2"]


@pytest.fixture
def quick_train_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train's controller polls workers every 2 s and starts a preemption watcher: both cost test time."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def labeled_dataset(folder: str, episodes: int = 8) -> str:
    """Two oracle-labeled shards of real generated episodes (k = 1, 2), with the generator's metadata."""
    table = generated_table(episodes=episodes, subtasks="1-2")
    labels = [oracle_label(row) for row in table.to_pylist()]
    for field in fmt.label_schema("oracle"):
        table = table.append_column(field, pa.array([lab[field.name] for lab in labels], field.type))
    half = episodes // 2
    for i, part in enumerate([table.slice(0, half), table.slice(half)]):
        fmt.write_shard(part, os.path.join(folder, f"shard-{i:05d}.parquet"))
    return folder


def read_run(checkpoint: str) -> dict:
    with open(os.path.join(checkpoint, "run.json")) as f:
        return json.load(f)


def test_train_two_workers_checkpoints_and_resumes(
    ray_cluster, quick_train_controller, tmp_path, capsys
) -> None:
    data = labeled_dataset(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    args = ["train", "--in", data, "--out", out, "--reward", "oracle", "--workers", "2"]

    assert (
        cli([*args, "--steps", "4", *TINY, "train.checkpoint_every=4", "iql.context=3", "train.seed=5"]) == 0
    )
    first = latest_checkpoint(out)
    assert first == os.path.join(out, "checkpoint_00000004")
    assert {
        "model.safetensors",
        "target.safetensors",
        "optimizer.pt",
        "vocab.json",
        "spec.json",
        "config.json",
    } <= set(os.listdir(first))
    run = read_run(first)
    assert run["step"] == 4 and run["resumed_from"] == 0 and run["world_size"] == 2
    assert run["pool_seed"] == 0 and run["env"]["layout"] == "small"  # from the generator's metadata
    assert run["reward"] == "oracle" and run["seed"] == 5 and run["context"] == 3  # this run's own treatment
    net, _, _ = load_policy(first)
    assert net.spec.context == 3 and net.spec.clause_sep > 0  # "," separates the k = 2 goals' clauses
    stdout = capsys.readouterr().out
    summary = json.loads(stdout[stdout.index('{\n  "out"') :])
    for key in (
        "q_loss",
        "v_loss",
        "policy_loss",
        "q_mean",
        "v_mean",
        "adv_mean",
        "adv_std",
        "updates_per_s",
    ):
        assert key in summary["metrics"]

    # A rerun with more steps continues from step 4 rather than starting over, here on one worker (a job resumed
    # on a smaller cluster; a second two-worker start would cost the suite ~10 CPU-s for nothing new).
    resume = [
        *args[:-1],
        "1",
        "--steps",
        "8",
        *TINY,
        "train.checkpoint_every=4",
        "iql.context=3",
        "train.seed=5",
    ]
    assert cli(resume) == 0
    second = latest_checkpoint(out)
    assert second == os.path.join(out, "checkpoint_00000008")
    run = read_run(second)
    assert run["step"] == 8 and run["resumed_from"] == 4 and run["world_size"] == 1
    before, after = (
        load_file(os.path.join(first, "model.safetensors")),
        load_file(os.path.join(second, "model.safetensors")),
    )
    assert any(not torch.equal(before[k], after[k]) for k in before)
    opt = torch.load(os.path.join(second, "optimizer.pt"), weights_only=True)
    assert opt["scheduler"]["last_epoch"] == 8  # the lr schedule resumed too


def test_train_without_the_reward_column_names_the_labeling_command(tmp_path, capsys) -> None:
    data = labeled_dataset(str(tmp_path / "data"), episodes=2)
    rc = cli(["train", "--in", data, "--out", str(tmp_path / "run"), "--reward", "rgvlm"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'rgvlm_reward'" in err and f"rgvlm label --in {data} --out" in err and "oracle_reward" in err


def test_train_rejects_an_unknown_reward_mode(tmp_path, capsys) -> None:
    assert cli(["train", "--in", str(tmp_path), "--out", str(tmp_path / "run"), "--reward", "dense"]) == 2
    assert "unknown term(s) ['dense']" in capsys.readouterr().err


def test_train_writes_checkpoints_to_s3(ray_cluster, quick_train_controller, s3_env, tmp_path) -> None:
    """Episodes from s3://, checkpoints to s3:// (RunConfig(storage_filesystem=...)), loaded back from there.
    With episode memory on: its columns travel through Ray Data into the worker's buffer."""
    data = labeled_dataset("s3://rgvlm-test/iql-data", episodes=4)
    out = "s3://rgvlm-test/runs/iql"
    args = [
        "train",
        "--in",
        data,
        "--out",
        out,
        "--reward",
        "sparse",
        "--steps",
        "2",
        *TINY,
        "iql.memory=events",
    ]
    assert cli(args) == 0
    latest = latest_checkpoint(out)
    assert latest == f"{out}/checkpoint_00000002"
    net, vocab, run = load_policy(latest)
    assert run["step"] == 2 and run["reward"] == "sparse" and len(vocab) > 2 and net.spec.hidden == 32
    assert net.spec.memory == MEMORY_DIM


def test_train_refuses_a_context_longer_than_any_episode(tmp_path, capsys) -> None:
    data = labeled_dataset(str(tmp_path / "data"), episodes=4)
    longest = max(len(a) for a in generated_table(episodes=4, subtasks="1-2")["actions"].to_pylist())
    args = ["train", "--in", data, "--out", str(tmp_path / "run"), "--reward", "oracle"]
    assert cli([*args, f"iql.context={longest + 2}"]) == 2
    err = capsys.readouterr().err
    assert f"the longest has {longest} steps" in err and f"iql.context <= {longest + 1}" in err


def test_train_rejects_unknown_learner_options_and_filtered_bc_on_equal_returns(tmp_path, capsys) -> None:
    data = labeled_dataset(str(tmp_path / "data"), episodes=4)
    args = ["train", "--in", data, "--out", str(tmp_path / "run"), "--reward", "oracle"]
    for bad, named in (
        ("iql.learner=awac", "iql.learner"),
        ("iql.adv_norm=zscore", "iql.adv_norm"),
        ("iql.weighting=softmax", "iql.weighting"),
        ("iql.advantage_q=ema", "iql.advantage_q"),
        ("iql.filter_top=0", "iql.filter_top"),
    ):
        assert cli([*args, bad]) == 2
        assert named in capsys.readouterr().err
    # A constant reward leaves nothing to filter on: a clear message, before anything starts.
    table = fmt.read_shard(f"{data}/shard-00000.parquet")
    flat = table.set_column(
        table.schema.get_field_index("rewards"),
        "rewards",
        pa.array([[0.0] * len(a) for a in table["actions"].to_pylist()], pa.list_(pa.float32())),
    )
    fmt.write_shard(flat, str(tmp_path / "flat" / "shard-00000.parquet"))
    flat_args = ["train", "--in", str(tmp_path / "flat"), "--out", str(tmp_path / "r2"), "--reward", "sparse"]
    assert cli([*flat_args, "iql.learner=filtered_bc"]) == 2
    assert "same return (0) under --reward sparse" in capsys.readouterr().err


def test_filtered_bc_keeps_only_the_top_episodes_by_return() -> None:
    from rgvlm_ray.iql.data import RewardStats, to_transitions
    from rgvlm_ray.iql.vocab import Vocab

    table = generated_table(episodes=6, subtasks="1-2")
    rets = [sum(r) for r in table["rewards"].to_pylist()]
    stats = RewardStats([], 6, 0, 0, min(rets), max(rets), 0, rets)
    threshold = stats.filter_threshold(0.34, "sparse")
    vocab = Vocab.build(table["goal"].to_pylist(), 100)
    cols = to_transitions(table, "symbolic", "sparse", {}, "zero", 1.0, vocab, threshold)
    kept_episodes = {int(e) for e, k in zip(cols["episode"], cols["keep"], strict=True) if k}
    top = sorted(rets, reverse=True)[: len(kept_episodes)]
    assert 2 <= len(kept_episodes) < 6 and min(top) >= threshold
    # every row of a kept episode is kept, and the others stay in the buffer (for history windows) unsampled
    assert len(cols["action"]) == sum(len(a) for a in table["actions"].to_pylist())
    assert int(cols["keep"].sum()) == sum(
        len(a) for a, r in zip(table["actions"].to_pylist(), rets, strict=True) if r >= threshold
    )
