"""`rgvlm import lerobot PATH --out RAW`: a LeRobot v3.0 dataset folder (local or s3://) as raw episodes.

Read with pyarrow and PyAV only (no lerobot, no torchvision). One Ray task per data file. The mapping
(docs/lerobot.md): frame i of an episode is the `--camera` video frame at `from_timestamp + timestamp[i]`; with
`--frame-stride S` frames 0, S, 2S, ... are kept; the action of kept step j is the action recorded at kept frame j,
and its reward is the sum of `next.reward` over the frames it spans (zeros if the dataset has none). The last kept
frame's action is dropped: it has no next observation.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from functools import partial
from typing import Any

import numpy as np
import pyarrow.compute as pc

from rgvlm_ray import storage
from rgvlm_ray.config import Config, ImportConfig, StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import ActionSpace
from rgvlm_ray.data.env import encode_png
from rgvlm_ray.data.importing import ShardResult, Skipped, finish, resize, run_tasks, write_episodes
from rgvlm_ray.errors import UsageError


def read_json(root: str, rel: str, cfg: StorageConfig | None) -> dict:
    fs, p = storage.get_fs(storage.join(root, rel), cfg)
    with fs.open(p, "rb") as f:
        return json.loads(f.read())


def load_info(root: str, cfg: StorageConfig | None) -> dict:
    try:
        info = read_json(root, "meta/info.json", cfg)
    except FileNotFoundError:
        raise UsageError(f"{root} is not a LeRobot dataset: meta/info.json is missing") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise UsageError(
            f"{root} is LeRobot {version or 'of unknown version'}; rgvlm import lerobot reads v3.0. Convert it "
            "with lerobot's `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id ...` first"
        )
    return info


def pick_camera(info: dict, camera: str) -> str:
    cameras = sorted(k for k, f in info.get("features", {}).items() if f.get("dtype") == "video")
    if camera and camera in cameras:
        return camera
    if camera or len(cameras) != 1:
        what = f"no camera {camera!r}" if camera else f"{len(cameras)} cameras"
        raise UsageError(f"{what} in this dataset: pass --camera with one of {cameras or 'none (no videos)'}")
    return cameras[0]


def action_space(info: dict) -> ActionSpace:
    feature = info.get("features", {}).get("action")
    if feature is None:
        raise UsageError("this LeRobot dataset has no `action` feature")
    names = feature.get("names")
    if isinstance(names, dict):  # older datasets: {"motors": [...]}
        names = next(iter(names.values()), None)
    dims = int(np.prod(feature.get("shape") or [1]))
    return ActionSpace("continuous", names=list(names) if names else None, n=dims)


def tasks(root: str, cfg: StorageConfig | None) -> dict[int, str]:
    """task_index -> text. pandas writes the text as the index column (named `task` or `__index_level_0__`)."""
    try:
        table = fmt.read_shard(storage.join(root, "meta/tasks.parquet"), cfg)
    except FileNotFoundError:  # episodes may still name their tasks; else --goal
        return {}
    text = next(c for c in table.column_names if c != "task_index")
    return dict(zip(table["task_index"].to_pylist(), table[text].to_pylist(), strict=True))


def episodes_meta(root: str, cfg: StorageConfig | None) -> list[dict]:
    try:
        shards = sorted(fmt.list_shards(storage.join(root, "meta/episodes"), cfg))
    except FileNotFoundError:
        raise UsageError(f"{root} has no meta/episodes/: not a LeRobot v3.0 dataset") from None
    wanted = lambda c: not c.startswith("stats/")  # noqa: E731 - per-episode stats are large and unused here
    rows = []
    for shard in shards:
        table = fmt.read_shard(shard, cfg)
        rows += table.select([c for c in table.column_names if wanted(c)]).to_pylist()
    return sorted(rows, key=lambda r: r["episode_index"])


def video_path(info: dict, ep: dict, camera: str) -> str:
    return info["video_path"].format(
        video_key=camera,
        chunk_index=ep[f"videos/{camera}/chunk_index"],
        file_index=ep[f"videos/{camera}/file_index"],
    )


def decode_frames(path: str, times: list[float], fps: float, cfg: StorageConfig | None) -> list[np.ndarray]:
    """RGB frames at `times` (seconds), each the decoded frame within half a frame of it. Fewer frames come back
    when the video ends early; raises for a missing or undecodable file."""
    import av

    tol, out = 0.5 / fps, []
    fs, p = storage.get_fs(path, cfg)
    with fs.open(p, "rb") as f, av.open(f) as container:
        stream = container.streams.video[0]
        container.seek(max(0, int((times[0] - tol) / stream.time_base)), stream=stream, backward=True)
        wanted = iter(times)
        target = next(wanted, None)
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            if target is None or t > target + tol:  # done, or a frame is missing: the caller counts them
                break
            if t >= target - tol:
                out.append(frame.to_ndarray(format="rgb24"))
                target = next(wanted, None)
    return out


def episode_row(
    ep: dict, data: Any, frames: list[np.ndarray], kept: list[int], task_text: str, c: ImportConfig
) -> dict:
    """One episode as a format row; `data` is its rows of the data file sorted by frame_index."""
    actions = data["action"].to_pylist()
    per_frame = (
        data["next.reward"].to_pylist() if "next.reward" in data.column_names else [0.0] * len(actions)
    )
    done = data["next.done"].to_pylist()[-1] if "next.done" in data.column_names else True
    # The last step also takes the rewards of the frames after it (the final frame's reward ends the episode).
    spans = list(zip(kept[:-1], [*kept[1:-1], len(actions)], strict=True))
    return {
        "episode_id": f"lerobot-ep{int(ep['episode_index']):06d}",
        "goal": task_text,
        "frames": [encode_png(resize(f, c.image_size)) for f in frames],
        "actions": [np.ravel(actions[a]).astype(np.float32).tolist() for a, _ in spans],
        "rewards": [float(sum(r or 0.0 for r in np.ravel(per_frame[a:b]))) for a, b in spans],
        "terminated": bool(done),
        "truncated": False,
        "source_episode": int(ep["episode_index"]),
        "source_frames": [int(i) for i in data["frame_index"].take(kept).to_pylist()],
    }


def import_file(
    root: str,
    data_rel: str,
    eps: list[dict],
    index: int,
    info: dict,
    camera: str,
    task_texts: dict[int, str],
    c: ImportConfig,
    source: dict,
    scfg: StorageConfig | None,
) -> ShardResult:
    """One Ray task: the episodes of one data file."""
    try:
        table = fmt.read_shard(storage.join(root, data_rel), scfg)
    except Exception as exc:  # a missing or corrupt data file loses only its own episodes
        reason = f"data file unreadable: {data_rel}: {exc}"
        return ShardResult(None, 0, [Skipped(f"episode {e['episode_index']}", reason) for e in eps])
    rows, skipped = [], []
    for ep in eps:
        name = f"episode {ep['episode_index']} ({data_rel})"
        data = table.filter(pc.equal(table["episode_index"], ep["episode_index"])).sort_by("frame_index")
        kept = list(range(0, data.num_rows, c.frame_stride))
        if len(kept) < 2:
            skipped.append(Skipped(name, f"no actions: {data.num_rows} frame(s) at stride {c.frame_stride}"))
            continue
        vpath = storage.join(root, video_path(info, ep, camera))
        start = float(ep[f"videos/{camera}/from_timestamp"])
        times = [start + t for t in data["timestamp"].take(kept).to_pylist()]
        try:
            frames = decode_frames(vpath, times, float(info["fps"]), scfg)
        except FileNotFoundError:
            skipped.append(Skipped(name, f"video missing: {video_path(info, ep, camera)}"))
            continue
        except Exception as exc:  # PyAV raises several types for corrupt files
            skipped.append(Skipped(name, f"video undecodable: {video_path(info, ep, camera)}: {exc}"))
            continue
        if len(frames) < len(kept):
            reason = f"video shorter than the data: {len(frames)} of {len(kept)} frames decodable"
            skipped.append(Skipped(name, reason))
            continue
        task_index = data["task_index"][0].as_py() if "task_index" in data.column_names else None
        text = (ep.get("tasks") or [None])[0] or task_texts.get(task_index) or c.goal
        rows.append(episode_row(ep, data, frames, kept, text, c))
    return write_episodes(rows, skipped, c.out, index, action_space(info), source, scfg)


def run(cfg: Config) -> dict:
    from rgvlm_ray.ray_utils import init_ray

    c, scfg = cfg.importer, cfg.storage
    if c.frame_stride < 1:
        raise UsageError("--frame-stride must be 1 or more")
    info = load_info(c.source, scfg)
    camera = pick_camera(info, c.camera)
    action_space(info)
    texts = tasks(c.source, scfg)
    eps = episodes_meta(c.source, scfg)
    fmt.refuse_existing(c.out, c.overwrite, scfg)
    by_file: dict[str, list[dict]] = defaultdict(list)
    for ep in eps:
        rel = info["data_path"].format(chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"])
        by_file[rel].append(ep)
    source = {"format": "lerobot", "path": c.source, "camera": camera, "frame_stride": c.frame_stride}
    start = time.perf_counter()
    init_ray(cfg.ray)
    calls = [
        partial(import_file, c.source, rel, group, i, info, camera, texts, c, source, scfg)
        for i, (rel, group) in enumerate(sorted(by_file.items()))
    ]
    results = run_tasks(calls, c.num_cpus_per_task, "import lerobot")
    return finish(c.out, results, len(eps), source, scfg, start)
