"""LeRobot v3 in and out: a dataset written with PyAV (AV1 + H.264), imported, labeled, exported with a reward."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rgvlm_ray import cli
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import action_space
from tests.conftest import S3_BUCKET
from tests.label_fixtures import tiny_clip_dir
from tests.label_report_checks import report_with_the_tiny_vlm_too
from tests.lerobot_fixture import ACTION_NAMES, EPISODES, TASKS, action, colour, make_dataset

pytest.importorskip("av")
TOP, WRIST = "observation.images.top", "observation.images.wrist"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return str(make_dataset(tmp_path_factory.mktemp("lerobot")))


def imported(path: str, cfg=None) -> dict[int, dict]:
    return {
        r["source_episode"]: r for s in fmt.list_shards(path, cfg) for r in fmt.read_shard(s, cfg).to_pylist()
    }


def summary(path: Path) -> dict:
    return json.loads((path / "_import.json").read_text())


def first_frame(ep: int) -> int:
    """Global index of an episode's first frame in the fixture."""
    return sum(length for length, _, _ in EPISODES[:ep])


@pytest.mark.parametrize(("camera", "stride"), [(TOP, 1), (WRIST, 2)])
def test_import_decodes_each_camera_at_the_data_timestamps(ray_cluster, dataset, tmp_path, camera, stride):
    out = tmp_path / "raw"
    argv = [
        "import",
        "lerobot",
        dataset,
        "--camera",
        camera,
        "--frame-stride",
        str(stride),
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    rows = imported(str(out))
    assert fmt.validate(str(out)) == []
    assert sorted(rows) == [0, 1, 3]  # episode 2 has one frame: no actions
    skipped = summary(out)["skipped_episodes"]
    assert [e["episode"] for e in skipped] == ["episode 2 (data/chunk-000/file-001.parquet)"]
    assert skipped[0]["reason"].startswith("no actions")
    for ep, row in rows.items():
        length, _, task = EPISODES[ep]
        kept = list(range(0, length, stride))
        assert row["source_frames"] == kept and row["goal"] == TASKS[task]
        g0 = first_frame(ep)
        for png, i in zip(row["frames"], kept, strict=True):
            rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)
            assert np.abs(rgb.mean(axis=(0, 1)) - colour(g0 + i)).max() < 12, (camera, ep, i)
        assert np.allclose(row["actions"], [action(g0 + i) for i in kept[:-1]])
        assert sum(row["rewards"]) == 1.0  # the final frame's next.reward lands on the last step
    space = action_space(fmt.read_schema(fmt.list_shards(str(out))[0]))
    assert space.kind == "continuous" and space.names == ACTION_NAMES


def test_import_label_export_on_s3(ray_cluster, dataset, s3_env, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_env.endpoint_url, key="testing", secret="testing")
    fs.put(dataset, f"{S3_BUCKET}/lerobot-src", recursive=True)
    src, out = f"s3://{S3_BUCKET}/lerobot-src", f"s3://{S3_BUCKET}/lerobot-raw"
    assert cli.main(["import", "lerobot", src, "--camera", WRIST, "--out", out]) == 0
    rows = imported(out, s3_env)
    assert sorted(rows) == [0, 1, 3]
    # the other two of the three commands, on S3 too
    labels, rewarded = f"s3://{S3_BUCKET}/lerobot-labels", f"s3://{S3_BUCKET}/lerobot-rewarded"
    assert (
        cli.main(["label", "--in", out, "--out", labels, "--engine", "clip", "--model", tiny_clip_dir()]) == 0
    )
    assert (
        cli.main(
            ["export", "lerobot", "--in", out, "--labels", labels, "--reward", "clip", "--out", rewarded]
        )
        == 0
    )
    label = {
        r["episode_id"]: r
        for s in fmt.list_shards(labels, s3_env)
        for r in fmt.read_shard(s, s3_env).to_pylist()
    }
    with fs.open(f"{S3_BUCKET}/lerobot-rewarded/data/chunk-000/file-000.parquet", "rb") as f:
        data = pq.ParquetFile(f).read().to_pylist()
    got = [r["reward"] for r in data if r["episode_index"] == 0][:-1]
    assert np.allclose(got, label[rows[0]["episode_id"]]["clip_reward"], atol=1e-6)
    assert fs.exists(f"{S3_BUCKET}/lerobot-rewarded/videos/{TOP}/chunk-000/file-000.mp4")


def test_camera_must_be_named_when_there_are_several(dataset, tmp_path, capsys):
    assert cli.main(["import", "lerobot", dataset, "--out", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err
    assert TOP in err and WRIST in err
    assert cli.main(["import", "lerobot", dataset, "--camera", "front", "--out", str(tmp_path / "raw")]) == 2
    assert "no camera 'front'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fault", "reason"), [("drop_video", "video missing"), ("short_video", "video shorter than the data")]
)
def test_bad_videos_skip_only_their_episodes_with_the_reason(ray_cluster, tmp_path, fault, reason):
    src = make_dataset(tmp_path / "src", **{fault: WRIST})
    out = tmp_path / "raw"
    assert cli.main(["import", "lerobot", str(src), "--camera", WRIST, "--out", str(out)]) == 0
    s = summary(out)
    assert s["balance"] == "4 source episodes = 2 written + 2 skipped"
    reasons = {e["episode"].split(" (")[0]: e["reason"] for e in s["skipped_episodes"]}
    assert reasons["episode 2"].startswith("no actions") and reasons["episode 3"].startswith(reason)
    assert sorted(imported(str(out))) == [0, 1]


def test_undecodable_video_is_a_per_episode_reason(ray_cluster, tmp_path):
    src = make_dataset(tmp_path / "src")
    (src / f"videos/{TOP}/chunk-000/file-000.mp4").write_bytes(b"not a video" * 100)
    out = tmp_path / "raw"
    assert cli.main(["import", "lerobot", str(src), "--camera", TOP, "--out", str(out)]) == 0
    reasons = [e["reason"] for e in summary(out)["skipped_episodes"]]
    assert sum(r.startswith("video undecodable") for r in reasons) == 2 and sorted(imported(str(out))) == [3]


def test_import_label_export_round_trip(ray_cluster, dataset, tmp_path):
    raw, labels, out = str(tmp_path / "raw"), str(tmp_path / "labels"), tmp_path / "rewarded"
    assert cli.main(["import", "lerobot", dataset, "--camera", TOP, "--frame-stride", "2", "--out", raw]) == 0
    assert (
        cli.main(["label", "--in", raw, "--out", labels, "--engine", "clip", "--model", tiny_clip_dir()]) == 0
    )
    # next.reward is 1 on each episode's last frame: a sparse success signal; all 3 imported episodes succeed.
    success = report_with_the_tiny_vlm_too(raw, labels, tmp_path)
    assert (success["success_signal"], success["successful"], success["failed"]) == ("reward", 3, 0)
    label = {r["episode_id"]: r for s in fmt.list_shards(labels) for r in pq.read_table(s).to_pylist()}
    argv = [
        "export",
        "lerobot",
        "--in",
        raw,
        "--labels",
        labels,
        "--reward",
        "clip+sparse",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    info = json.loads((out / "meta/info.json").read_text())
    assert info["features"]["reward"]["dtype"] == "float32"
    frames = pq.read_table(out / "data").to_pylist()
    by_frame = {(r["episode_index"], r["frame_index"]): r["reward"] for r in frames}
    for ep, row in imported(raw).items():
        want = np.array(label[row["episode_id"]]["clip_reward"]) + np.array(row["rewards"])
        got = [by_frame[(ep, f)] for f in row["source_frames"][:-1]]
        assert np.allclose(got, want, atol=1e-6), ep
        others = [r for (e, f), r in by_frame.items() if e == ep and f not in row["source_frames"][:-1]]
        assert others and all(r == 0.0 for r in others)  # frames that start no step
    assert all(r == 0.0 for (e, _), r in by_frame.items() if e == 2)  # skipped at import
    assert (out / f"videos/{WRIST}/chunk-000/file-001.mp4").read_bytes() == (
        Path(dataset) / f"videos/{WRIST}/chunk-000/file-001.mp4"
    ).read_bytes()
    assert cli.main(argv) == 2  # exists: refuses without --overwrite
