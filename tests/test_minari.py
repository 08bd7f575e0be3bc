"""Minari in and out: datasets recorded by minari's DataCollector, imported, labeled, exported, loaded by minari."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
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
from tests.minari_fixture import BABYAI_ENV, babyai_dataset, chain_dataset, reacher_dataset

minari = pytest.importorskip("minari")


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("minari"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", root)
        chain_dataset("rgvlm/chain-hdf5-v0", "hdf5")
        chain_dataset("rgvlm/chain-arrow-v0", "arrow")
        reacher_dataset("rgvlm/reacher-v0")
        babyai_dataset("rgvlm/goto-hdf5-v0", "hdf5")
    return root


@pytest.fixture
def minari_env(minari_root, monkeypatch) -> str:
    monkeypatch.setenv("MINARI_DATASETS_PATH", minari_root)
    register_mission_space()
    return minari_root


def rows(path: str) -> list[dict]:
    return [r for s in fmt.list_shards(path) for r in fmt.read_shard(s).to_pylist()]


def summary(out: Path) -> dict:
    return json.loads((out / "_import.json").read_text())


def copy_dataset(root: str, dataset_id: str, tmp_path: Path) -> Path:
    """A copy of a fixture dataset's folder, to damage: the folder holding metadata.json."""
    data = tmp_path / "src" / "data"
    shutil.copytree(Path(root) / dataset_id / "data", data)
    return data


def delete_group(data: Path) -> None:
    with h5py.File(data / "main_data.hdf5", "a") as f:
        del f["episode_3"]


def overwrite_middle(data: Path) -> None:
    path = data / "main_data.hdf5"
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4096] = b"\xff" * 4096
    path.write_bytes(bytes(raw))


# The cases: an hdf5 group deleted with h5py, 4 KB overwritten in the middle of the hdf5 file, and for
# arrow (one folder of files per episode) an episode folder deleted, or its file garbled.
DAMAGE = {
    "hdf5 group deleted": (delete_group, "episode missing: main_data.hdf5 has no group episode_3"),
    "hdf5 4 KB overwritten": (overwrite_middle, "episode unreadable: "),
    "arrow folder deleted": (lambda data: shutil.rmtree(data / "3"), "episode missing: no data in "),
    "arrow file garbled": (
        lambda data: (data / "3" / "part-0.arrow").write_bytes(b"not arrow" * 100),
        "episode unreadable: ArrowInvalid: ",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_episodes_are_skipped_with_the_reason(ray_cluster, minari_env, tmp_path, capsys, damage):
    dataset_id = f"rgvlm/chain-{damage.split()[0]}-v0"
    data = copy_dataset(minari_env, dataset_id, tmp_path)
    harm, reason = DAMAGE[damage]
    harm(data)
    out = tmp_path / "raw"
    assert cli.main(["import", "minari", str(data), "--out", str(out)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    s = summary(out)
    assert s["balance"] == "4 source episodes = 3 written + 1 skipped"
    [skip] = s["skipped_episodes"]
    assert skip["reason"].startswith(reason), skip
    bad = int(skip["episode"].split()[1])
    got = {r["source_episode"]: r for r in rows(str(out))}
    assert sorted(got) == [i for i in range(4) if i != bad]
    for ep in minari.load_dataset(dataset_id).iterate_episodes():  # the undamaged original
        if int(ep.id) != bad:
            assert got[int(ep.id)]["actions"] == ep.actions.tolist()
            assert got[int(ep.id)]["symbolic"] == [g.tobytes() for g in ep.observations["image"]]


@pytest.mark.parametrize("broken", ["main_data.hdf5", "metadata.json"])
def test_an_unreadable_dataset_file_is_refused_naming_it(minari_env, tmp_path, capsys, broken):
    data = copy_dataset(minari_env, "rgvlm/chain-hdf5-v0", tmp_path)
    path = data / broken
    path.write_bytes(path.read_bytes()[:100])  # truncated
    out = tmp_path / "raw"
    assert cli.main(["import", "minari", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("rgvlm import:")]
    assert str(path) in line and "Traceback" not in err
    assert not out.exists()


def test_an_import_that_writes_nothing_exits_1_with_the_reasons(ray_cluster, minari_env, tmp_path, capsys):
    data = copy_dataset(minari_env, "rgvlm/chain-arrow-v0", tmp_path)
    for i in range(4):
        shutil.rmtree(data / str(i))
    out = tmp_path / "raw"
    assert cli.main(["import", "minari", str(data), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "nothing written" in err and "episode missing: 4" in err and "_import.json" in err
    assert summary(out)["balance"] == "4 source episodes = 0 written + 4 skipped"


def test_missions_win_over_goal_unless_overridden(ray_cluster, minari_env, tmp_path, capsys):
    missions = {r["source_episode"]: r["goal"] for r in rows_of(tmp_path / "plain", [])}
    kept = tmp_path / "goal"
    got = rows_of(kept, ["--goal", "tidy up"])
    assert {r["source_episode"]: r["goal"] for r in got} == missions
    assert summary(kept)["goal"].startswith("goal: the dataset's own missions win")
    got = rows_of(tmp_path / "override", ["--goal", "tidy up", "--override-goal"])
    assert {r["goal"] for r in got} == {"tidy up"}
    argv = ["import", "minari", "rgvlm/chain-arrow-v0", "--out", str(tmp_path / "x"), "--override-goal"]
    assert cli.main(argv) == 2
    assert "--override-goal needs --goal" in capsys.readouterr().err


def rows_of(out: Path, flags: list[str]) -> list[dict]:
    assert cli.main(["import", "minari", "rgvlm/chain-arrow-v0", "--out", str(out), *flags]) == 0
    return rows(str(out))


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
        metas = exported.storage.get_episode_metadata(range(exported.total_episodes))
        episodes = zip(exported.iterate_episodes(), source.iterate_episodes(), metas, strict=True)
        for ep, src, meta in episodes:
            clip = np.array(by_source[int(ep.id)]["clip_reward"], dtype=np.float32)
            want = clip + src.rewards if mode == "clip+sparse" else clip
            assert np.allclose(ep.rewards, want, atol=1e-6), (mode, ep.id)
            # minari's per-episode reward statistics describe the new rewards, not the source's
            assert np.isclose(meta["rewards_sum"], want.sum(), atol=1e-5) and meta["source_episode"] == ep.id
            assert (ep.observations["image"] == src.observations["image"]).all()
            assert (ep.actions == src.actions).all()
        assert cli.main(argv) == 2  # exists: refuses without --overwrite


def test_export_keeps_env_spec_and_metadata(ray_cluster, minari_env, tmp_path):
    """An export from a damaged source (episode 1 skipped at import): env_spec, eval_env_spec and the other
    metadata are the source's, recover_environment() makes the env, and the episodes are renumbered 0..n-1."""
    data = copy_dataset(minari_env, "rgvlm/goto-hdf5-v0", tmp_path)
    with h5py.File(data / "main_data.hdf5", "a") as f:
        del f["episode_1"]
    raw = str(tmp_path / "raw")
    assert cli.main(["import", "minari", str(data), "--out", raw]) == 0
    argv = ["export", "minari", "--in", raw, "--reward", "sparse", "--out", "rgvlm/goto-sparse-v0"]
    assert cli.main(argv) == 0
    source, exported = minari.load_dataset("rgvlm/goto-hdf5-v0"), minari.load_dataset("rgvlm/goto-sparse-v0")
    assert source.env_spec is not None and source.env_spec.id == BABYAI_ENV
    assert exported.env_spec == source.env_spec
    assert exported.recover_environment().spec.id == BABYAI_ENV
    assert exported.recover_environment(eval_env=True).spec.id == BABYAI_ENV
    src_meta, exp_meta = source.storage.metadata, exported.storage.metadata
    for key in ("author", "code_permalink", "requirements"):
        assert exp_meta[key] == src_meta[key], key
    assert exp_meta["data_format"] == "hdf5" and exported.total_episodes == 3
    metas = list(exported.storage.get_episode_metadata(range(3)))
    assert [m["source_episode"] for m in metas] == [0, 2, 3]
    src_metas = {int(m["id"]): m for m in source.storage.get_episode_metadata(range(4))}
    by_id = {int(ep.id): ep for ep in source.iterate_episodes()}
    for ep, meta in zip(exported.iterate_episodes(), metas, strict=True):
        src = by_id[meta["source_episode"]]
        assert meta["seed"] == src_metas[meta["source_episode"]]["seed"]
        assert (ep.observations["image"] == src.observations["image"]).all()
        assert (ep.actions == src.actions).all() and (ep.rewards == src.rewards).all()


def test_an_episode_whose_own_metadata_is_damaged_is_imported_with_a_warning(
    ray_cluster, minari_env, tmp_path
):
    """Issue 24: its seed silently disappeared on export; the import now names what will be lost."""
    data = copy_dataset(minari_env, "rgvlm/chain-arrow-v0", tmp_path)
    (data / "1" / "metadata.json").write_text("{not json")
    out = tmp_path / "raw"
    assert cli.main(["import", "minari", str(data), "--out", str(out)]) == 0
    s = summary(out)
    assert s["balance"] == "4 source episodes = 4 written + 0 skipped"
    [warning] = s["warnings"]
    assert warning["episode"] == "episode 1"
    assert warning["reason"].startswith("its own metadata cannot be read (")
    assert warning["reason"].endswith("its seed and options are lost on export")
