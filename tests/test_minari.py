"""Minari in and out: datasets recorded by minari's DataCollector, imported, labeled, exported, loaded by minari."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from rgvlm_ray import cli
from rgvlm_ray.config import ImportConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import ActionSpace, action_space
from rgvlm_ray.data.import_minari import episode_row, register_mission_space
from tests.conftest import S3_BUCKET
from tests.label_fixtures import tiny_clip_dir
from tests.label_report_checks import report_with_the_tiny_vlm_too
from tests.minari_fixture import chain_dataset, reacher_dataset

minari = pytest.importorskip("minari")


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("minari"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", root)
        chain_dataset("rgvlm/chain-hdf5-v0", "hdf5")
        chain_dataset("rgvlm/chain-arrow-v0", "arrow")
        reacher_dataset("rgvlm/reacher-v0")
    return root


@pytest.fixture
def minari_env(minari_root, monkeypatch) -> str:
    monkeypatch.setenv("MINARI_DATASETS_PATH", minari_root)
    register_mission_space()
    return minari_root


def rows(path: str) -> list[dict]:
    return [r for s in fmt.list_shards(path) for r in fmt.read_shard(s).to_pylist()]


@pytest.mark.parametrize("storage", ["hdf5", "arrow"])
def test_minigrid_import_keeps_grids_missions_and_actions(ray_cluster, minari_env, tmp_path, storage):
    out = str(tmp_path / "raw")
    assert cli.main(["import", "minari", f"rgvlm/chain-{storage}-v0", "--out", out]) == 0
    source = minari.load_dataset(f"rgvlm/chain-{storage}-v0")
    got = sorted(rows(out), key=lambda r: r["source_episode"])
    assert fmt.validate(out) == [] and len(got) == source.total_episodes
    for row, ep in zip(got, source.iterate_episodes(), strict=True):
        mission = ep.observations["mission"][0]
        assert row["goal"] == (mission.decode() if isinstance(mission, bytes) else mission)
        assert row["actions"] == ep.actions.tolist()
        assert row["symbolic"] == [g.tobytes() for g in ep.observations["image"]]
        assert len(row["frames"]) == len(ep.actions) + 1 and row["rewards"] == ep.rewards.tolist()
    space = action_space(fmt.read_schema(fmt.list_shards(out)[0]))
    assert space.kind == "discrete" and space.names[2] == "move forward"
    summary = json.loads((tmp_path / "raw" / "_import.json").read_text())
    assert (
        summary["balance"]
        == f"{source.total_episodes} source episodes = {source.total_episodes} written + 0 skipped"
    )


def test_continuous_import_to_s3_needs_a_goal(ray_cluster, minari_env, s3_env, tmp_path, capsys):
    out = f"s3://{S3_BUCKET}/minari-reacher"
    assert cli.main(["import", "minari", "rgvlm/reacher-v0", "--out", out]) == 2
    assert "--goal" in capsys.readouterr().err
    assert cli.main(["import", "minari", "rgvlm/reacher-v0", "--out", out, "--goal", "reach"]) == 0
    shard = fmt.list_shards(out, s3_env)[0]
    space = action_space(fmt.read_schema(shard, s3_env))
    assert space.kind == "continuous" and space.n == 3 and space.low == [-1.0, -1.0, -1.0]
    source = next(minari.load_dataset("rgvlm/reacher-v0").iterate_episodes())
    row = fmt.read_shard(shard, s3_env).to_pylist()[0]
    assert np.allclose(row["actions"], source.actions) and row["goal"] == "reach"


class _Episode:
    """The shape of minari's EpisodeData, for the cases minari itself refuses to write."""

    def __init__(self, t: int, mission: str | None) -> None:
        self.id, self.rewards, self.actions = 7, np.zeros(t), np.zeros(t, int)
        self.terminations = self.truncations = np.zeros(t, bool)
        missions = [] if mission is None else [mission] * (t + 1)
        self.observations = {
            "image": np.zeros((t + 1, 7, 7, 3), np.uint8),
            "direction": np.zeros(t + 1),
            "mission": missions,
        }


def test_bad_episodes_are_skipped_with_their_reason():
    space = ActionSpace("discrete", n=7)
    empty = episode_row(_Episode(0, "go"), "d", "minigrid", space, ImportConfig())
    assert empty.reason.startswith("no actions")
    no_goal = episode_row(_Episode(3, None), "d", "minigrid", space, ImportConfig())
    assert "--goal" in no_goal.reason
    with_goal = episode_row(_Episode(3, None), "d", "minigrid", space, ImportConfig(goal="open the door"))
    assert with_goal["goal"] == "open the door"


def test_import_label_export_round_trip(ray_cluster, minari_env, tmp_path):
    raw, labels = str(tmp_path / "raw"), str(tmp_path / "labels")
    assert cli.main(["import", "minari", "rgvlm/chain-arrow-v0", "--out", raw]) == 0
    assert (
        cli.main(["label", "--in", raw, "--out", labels, "--engine", "clip", "--model", tiny_clip_dir()]) == 0
    )
    assert report_with_the_tiny_vlm_too(raw, labels, tmp_path)["episodes"] == len(rows(raw))
    label_rows = {r["episode_id"]: r for s in fmt.list_shards(labels) for r in pq.read_table(s).to_pylist()}
    by_source = {r["source_episode"]: label_rows[r["episode_id"]] for r in rows(raw)}
    for mode in ("clip", "clip+sparse"):
        out_id = f"rgvlm/chain-{mode.replace('+', '-')}-v0"
        argv = ["export", "minari", "--in", raw, "--labels", labels, "--reward", mode, "--out", out_id]
        assert cli.main(argv) == 0
        exported = minari.load_dataset(out_id)
        source = minari.load_dataset("rgvlm/chain-arrow-v0")
        for ep, src in zip(exported.iterate_episodes(), source.iterate_episodes(), strict=True):
            clip = np.array(by_source[int(ep.id)]["clip_reward"], dtype=np.float32)
            want = clip + src.rewards if mode == "clip+sparse" else clip
            assert np.allclose(ep.rewards, want, atol=1e-6), (mode, ep.id)
            assert (ep.observations["image"] == src.observations["image"]).all()
            assert (ep.actions == src.actions).all()
        assert cli.main(argv) == 2  # exists: refuses without --overwrite
