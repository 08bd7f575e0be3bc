"""LeRobot v3 in and out: a dataset written with PyAV (AV1 + H.264), imported, labeled, exported with a reward."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rgvlm_ray import cli
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import action_space
from rgvlm_ray.data.import_lerobot import VideoTiming, check_video
from rgvlm_ray.errors import UsageError
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
    assert_frames_and_actions(rows, camera, stride)
    space = action_space(fmt.read_schema(fmt.list_shards(str(out))[0]))
    assert space.kind == "continuous" and space.names == ACTION_NAMES


def assert_frames_and_actions(rows: dict[int, dict], camera: str, stride: int) -> None:
    """Each kept frame is the fixture's frame at that index (its colour), each action the one recorded there."""
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


def test_fps_that_disagrees_with_the_video_is_refused_unless_given(ray_cluster, tmp_path, capsys):
    """info.json says 5 fps for 10 fps videos: picking frames with it took episode 0's last frame as episode 1's
    first. Refused, naming both rates; `--fps 10` imports the right frames."""
    src = make_dataset(tmp_path / "src", info_fps=5)
    out = tmp_path / "raw"
    argv = ["import", "lerobot", str(src), "--camera", TOP, "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("rgvlm import:")]
    assert "fps 5" in line and "runs at 10 fps" in line and "--fps 10" in line and not out.exists()
    assert cli.main([*argv, "--fps", "10"]) == 0
    assert summary(out)["source"]["fps"] == 10
    rows = imported(str(out))
    assert sorted(rows) == [0, 1, 3]
    assert_frames_and_actions(rows, TOP, 1)


@pytest.mark.parametrize(
    ("rate", "time_base", "fps", "refused"),
    [
        (Fraction(30000, 1001), Fraction(1001, 30000), 29.97, ""),  # NTSC: the time base is exactly one frame
        (Fraction(10), Fraction(1, 10240), 10, ""),  # what PyAV's mp4 muxer writes for the fixture
        (Fraction(30000, 1001), Fraction(1, 90000), 30, "runs at 29.97 fps"),  # 1000 frames: 33 ms of drift
        (Fraction(10), Fraction(1, 5), 10, "time base 1/5 s is coarser than one frame"),
        (None, Fraction(1, 5), 10, "time base 1/5 s is coarser than one frame"),
    ],
)
def test_video_rate_and_time_base_are_checked(rate, time_base, fps, refused):
    check = partial(check_video, "v.mp4", VideoTiming(rate, time_base), fps, 1000, "meta/info.json")
    if not refused:
        check()
        return
    with pytest.raises(UsageError, match=refused):
        check()


def test_timestamps_at_another_rate_are_refused(tmp_path, capsys):
    src = make_dataset(tmp_path / "src", timestamp_fps=5)  # info.json and the videos say 10
    out = tmp_path / "raw"
    assert cli.main(["import", "lerobot", str(src), "--camera", TOP, "--out", str(out)]) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("rgvlm import:")]
    assert "episode 0" in line and "timestamp 1.0000 s" in line and "at 0.5000 s" in line and not out.exists()


def test_tasks_win_over_goal_unless_overridden(ray_cluster, dataset, tmp_path):
    kept, override = tmp_path / "goal", tmp_path / "override"
    argv = ["import", "lerobot", dataset, "--camera", TOP, "--goal", "tidy up"]
    assert cli.main([*argv, "--out", str(kept)]) == 0
    assert {r["goal"] for r in imported(str(kept)).values()} == set(TASKS)
    assert summary(kept)["goal"].startswith("goal: the dataset's own missions win")
    assert cli.main([*argv, "--override-goal", "--out", str(override)]) == 0
    assert {r["goal"] for r in imported(str(override)).values()} == {"tidy up"}


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


def expected_stats(values: list[float], names: set[str]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    stats = {"min": v.min(), "max": v.max(), "mean": v.mean(), "std": v.std(), "count": len(v)}
    return {k: stats[k] if k in stats else np.quantile(v, int(k[1:]) / 100) for k in names}


def assert_reward_stats(out: Path, src: Path, frames: list[dict]) -> None:
    """meta/stats.json and each episode's stats/reward/* describe the new column, with the statistics the source
    keeps for `action` (the fixture keeps quantiles too); the source's own statistics are unchanged."""
    stats, source = (json.loads((p / "meta/stats.json").read_text()) for p in (out, src))
    assert stats["action"] == source["action"] and set(stats["reward"]) == set(source["action"])
    want = expected_stats([r["reward"] for r in frames], set(source["action"]))
    assert {k: v[0] for k, v in stats["reward"].items()} == pytest.approx(want, abs=1e-6)
    episodes = pq.read_table(out / "meta/episodes").to_pylist()
    source_eps = pq.read_table(src / "meta/episodes").to_pylist()
    for ep, source_ep in zip(episodes, source_eps, strict=True):
        assert {k: v for k, v in ep.items() if not k.startswith("stats/reward/")} == source_ep
        values = [r["reward"] for r in frames if r["episode_index"] == ep["episode_index"]]
        got = {k.split("/")[-1]: v[0] for k, v in ep.items() if k.startswith("stats/reward/")}
        assert got == pytest.approx(expected_stats(values, set(source["action"])), abs=1e-6)


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
    assert_reward_stats(out, Path(dataset), frames)
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
