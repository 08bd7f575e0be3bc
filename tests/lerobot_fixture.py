"""A LeRobot v3.0 dataset written on the spot with PyAV and pyarrow, to the documented layout (docs/lerobot.md):
two cameras (AV1 and H.264), episodes spread over two data files and two video files per camera."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 10
SIZE = 64
CAMERAS = {"observation.images.top": "libsvtav1", "observation.images.wrist": "libx264"}
ACTION_NAMES = ["x", "y", "gripper"]
TASKS = ["pick up the cube", "open the drawer"]
# (episode length in frames, data/video file index, task index)
EPISODES = [(6, 0, 0), (5, 0, 1), (1, 1, 0), (7, 1, 1)]


def colour(g: int) -> np.ndarray:
    """A solid colour per global frame index, far enough apart to survive lossy video coding."""
    return np.array([(37 * g) % 200 + 20, 200 - (23 * g) % 180, 128], np.uint8)


def action(g: int) -> list[float]:
    return [0.01 * g, -0.02 * g, float(g % 2)]


def action_stats(actions: list[list[float]]) -> dict[str, list]:
    """LeRobot's per-feature statistics (compute_stats), with the quantiles newer versions add."""
    a = np.asarray(actions)
    stats = {k: getattr(np, k)(a, axis=0).tolist() for k in ("min", "max", "mean", "std")}
    stats |= {f"q{q:02d}": np.quantile(a, q / 100, axis=0).tolist() for q in (1, 50, 99)}
    return stats | {"count": [len(a)]}


def write_video(path: Path, frames: list[np.ndarray], codec: str, skip: int | None = None) -> None:
    """`skip`: leave out the frame at this index, keeping the others' times (a gap in the middle)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, FPS)
        for k, rgb in enumerate(frames):
            if k == skip:
                continue
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def make_dataset(
    root: Path,
    drop_video: str = "",
    short_video: str = "",
    info_fps: float = FPS,
    timestamp_fps: float = FPS,
    gap_video: str = "",
) -> Path:
    """drop_video / short_video: a camera whose file-001 video is deleted / loses its last two frames; gap_video: a
    camera whose file-000 video lacks its frame 2 (in the middle of episode 0) and runs on past the data.
    info_fps: the fps meta/info.json declares; timestamp_fps: the rate the data's timestamps are written at (the
    videos are always FPS)."""
    features = {
        "action": {"dtype": "float32", "shape": [3], "names": ACTION_NAMES},
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    }
    for cam in CAMERAS:
        features[cam] = {"dtype": "video", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channels"]}
    data: dict[int, list[dict]] = {0: [], 1: []}
    videos: dict[int, list[np.ndarray]] = {0: [], 1: []}
    meta, g = [], 0
    for ep, (length, file, task) in enumerate(EPISODES):
        start = len(videos[file])
        for i in range(length):
            data[file].append(
                {"action": action(g), "observation.state": [0.0, 1.0], "timestamp": i / timestamp_fps, "frame_index": i,
                 "episode_index": ep, "index": g, "task_index": task, "next.reward": float(i == length - 1)}
            )  # fmt: skip
            videos[file].append(np.broadcast_to(colour(g), (SIZE, SIZE, 3)).copy())
            g += 1
        row = {"episode_index": ep, "tasks": [TASKS[task]], "length": length, "data/chunk_index": 0,
               "data/file_index": file, "dataset_from_index": g - length, "dataset_to_index": g}  # fmt: skip
        row |= {
            f"stats/action/{k}": v for k, v in action_stats([action(i) for i in range(g - length, g)]).items()
        }
        for cam in CAMERAS:
            row |= {f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": file,
                    f"videos/{cam}/from_timestamp": start / FPS, f"videos/{cam}/to_timestamp": (start + length) / FPS}  # fmt: skip
        meta.append(row)
    for file, rows in data.items():
        out = root / f"data/chunk-000/file-{file:03d}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), out)
        for cam, codec in CAMERAS.items():
            frames = videos[file][:-2] if (cam == short_video and file == 1) else videos[file]
            if not (cam == drop_video and file == 1):
                skip = 2 if (cam == gap_video and file == 0) else None
                if (
                    skip is not None
                ):  # 40 trailing frames keep the file's average rate near FPS despite the gap
                    frames = frames + [frames[-1]] * 40
                write_video(root / f"videos/{cam}/chunk-000/file-{file:03d}.mp4", frames, codec, skip)
    (root / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(meta), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0, 1], "task": TASKS}), root / "meta/tasks.parquet")
    info = {
        "codebase_version": "v3.0", "robot_type": "test", "fps": info_fps, "total_episodes": len(EPISODES),
        "total_frames": g, "total_tasks": len(TASKS), "chunks_size": 1000, "splits": {"train": f"0:{len(EPISODES)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4", "features": features,
    }  # fmt: skip
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    stats = {"action": action_stats([action(i) for i in range(g)])}
    (root / "meta/stats.json").write_text(json.dumps(stats))
    return root
