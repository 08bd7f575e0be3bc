"""`rgvlm import lerobot PATH --out RAW`: a LeRobot v3.0 dataset folder (local or s3://) as raw episodes.

Read with pyarrow and PyAV only (no lerobot, no torchvision). One Ray task per data file. The mapping
(docs/lerobot.md): frame i of an episode is the `--camera` video frame at `from_timestamp + timestamp[i]`; with
`--frame-stride S` frames 0, S, 2S, ... are kept; the action of kept step j is the action recorded at kept frame j,
and its reward is the sum of `next.reward` over the frames it spans (zeros if the dataset has none). The last kept
frame's action is dropped: it has no next observation.

Frames are picked by time, so the times must be right: before any task starts, `check_timing` compares
info.json's `fps` with each video stream's frame rate and time base, and each episode's data timestamps with its
span of the video, and refuses a disagreement beyond half a frame, naming both values. `--fps N` replaces a wrong
info.json `fps`; nothing is corrected silently.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import Any

import numpy as np
import pyarrow.compute as pc

from rgvlm_ray import storage
from rgvlm_ray.config import Config, ImportConfig, StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import ActionSpace
from rgvlm_ray.data.env import encode_png
from rgvlm_ray.data.importing import (
    ShardResult,
    Skipped,
    finish,
    goal_rule,
    one_line,
    resize,
    run_tasks,
    write_episodes,
)
from rgvlm_ray.errors import UsageError

log = logging.getLogger(__name__)


def read_json(root: str, rel: str, cfg: StorageConfig | None) -> dict:
    fs, p = storage.get_fs(storage.join(root, rel), cfg)
    with fs.open(p, "rb") as f:
        return json.loads(f.read())


def load_info(root: str, cfg: StorageConfig | None) -> dict:
    try:
        info = read_json(root, "meta/info.json", cfg)
    except FileNotFoundError:
        raise UsageError(f"{root} is not a LeRobot dataset: meta/info.json is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"{storage.join(root, 'meta/info.json')}: unreadable JSON ({one_line(exc)})"
        ) from None
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


class Frames(list):
    """Decoded RGB frames; `gap` is the time (seconds) of the first wanted frame the video lacks while it has a
    later one (a frame missing in the middle), None when it only ends early or has them all."""

    gap: float | None = None


def decode_frames(path: str, times: list[float], fps: float, cfg: StorageConfig | None) -> Frames:
    """RGB frames at `times` (seconds), each the decoded frame within half a frame of it. Fewer frames come back
    when the video ends early or lacks one (`Frames.gap`); raises for a missing or undecodable file."""
    import av

    tol, out = 0.5 / fps, Frames()
    fs, p = storage.get_fs(path, cfg)
    with fs.open(p, "rb") as f, av.open(f) as container:
        stream = container.streams.video[0]
        container.seek(max(0, int((times[0] - tol) / stream.time_base)), stream=stream, backward=True)
        wanted = iter(times)
        target = next(wanted, None)
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            if target is None:
                break
            if t > target + tol:  # the frame at `target` is missing, and the video goes on past it
                out.gap = target
                break
            if t >= target - tol:
                out.append(frame.to_ndarray(format="rgb24"))
                target = next(wanted, None)
    return out


@dataclass(frozen=True)
class VideoTiming:
    rate: Fraction | None  # frames per second as the stream declares it; None when the container does not say
    time_base: Fraction  # seconds per pts tick


def video_timing(path: str, cfg: StorageConfig | None) -> VideoTiming:
    """The first video stream's frame rate and time base, from the container header (nothing is decoded)."""
    import av

    fs, p = storage.get_fs(path, cfg)
    with fs.open(p, "rb") as f, av.open(f) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        return VideoTiming(Fraction(rate) if rate else None, Fraction(stream.time_base))


def half_frame(fps: float) -> float:
    return 0.5 / fps


def check_video(rel: str, timing: VideoTiming, fps: float, longest: int, fps_from: str) -> None:
    """Refuse a video whose frame rate or time base cannot give the frame at each data timestamp: a rate that
    drifts more than half a frame from `fps` over the longest episode in the file, or a time base coarser than
    one of its frames."""
    rate = float(timing.rate) if timing.rate else None
    if rate is not None:
        drift = max(longest, 1) * abs(1 / fps - 1 / rate)
        if drift > half_frame(max(fps, rate)):
            fix = (
                f"fix `fps` in meta/info.json, or pass --fps {rate:g} to use the video's rate"
                if fps_from == "meta/info.json"
                else f"pass --fps {rate:g}, or leave --fps out to use meta/info.json's"
            )
            raise UsageError(
                f"{fps_from} gives fps {fps:g} but {rel} runs at {rate:g} fps (time base {timing.time_base}): "
                f"over a {longest}-frame episode the frame times drift {drift:.3f} s, more than half a frame; {fix}"
            )
    frame = 1 / (rate or fps)
    if float(timing.time_base) > frame * (1 + 1e-6):  # NTSC's 1001/30000 is exactly one 29.97 fps frame
        raise UsageError(
            f"{rel}: time base {timing.time_base} s is coarser than one frame at {rate or fps:g} fps: frames "
            "cannot be placed within half a frame; re-encode the video"
        )


def check_timestamps(
    data_rel: str, table: Any, eps: list[dict], camera: str, fps: float, fps_from: str
) -> None:
    """Refuse an episode whose data timestamps do not step at `fps`, or whose span differs from its span of the
    video (meta/episodes' from_timestamp..to_timestamp), by more than half a frame."""
    tol = half_frame(fps)
    for ep in eps:
        e = ep["episode_index"]
        data = table.filter(pc.equal(table["episode_index"], e)).sort_by("frame_index")
        if data.num_rows == 0:
            continue
        ts = data["timestamp"].to_numpy().astype(np.float64).ravel()
        frames = data["frame_index"].to_numpy().astype(np.float64)
        want = ts[0] + (frames - frames[0]) / fps
        worst = int(np.argmax(np.abs(ts - want)))
        if abs(ts[worst] - want[worst]) > tol:
            raise UsageError(
                f"{data_rel} episode {e}: frame {int(frames[worst])} has timestamp {ts[worst]:.4f} s, but fps "
                f"{fps:g} ({fps_from}) puts it at {want[worst]:.4f} s; frames would be picked at the wrong times"
            )
        lo, hi = ep.get(f"videos/{camera}/from_timestamp"), ep.get(f"videos/{camera}/to_timestamp")
        if lo is None or hi is None:
            continue
        span, video = ts[-1] - ts[0] + 1 / fps, float(hi) - float(lo)
        if abs(span - video) > tol:
            raise UsageError(
                f"{data_rel} episode {e}: its {data.num_rows} frames last {span:.4f} s at fps {fps:g} "
                f"({fps_from}), but meta/episodes gives it {video:.4f} s of video ({float(lo):g} to {float(hi):g} s)"
            )


def check_timing(
    root: str,
    info: dict,
    camera: str,
    by_file: dict[str, list[dict]],
    fps: float,
    fps_from: str,
    cfg: StorageConfig | None,
) -> None:
    """Every video file of the camera (its header) and every data file's timestamps, before any task starts. A
    file that cannot be read is left to its task, which skips its episodes with the reason."""
    videos: dict[str, int] = defaultdict(int)
    for eps in by_file.values():
        for ep in eps:
            rel = video_path(info, ep, camera)
            videos[rel] = max(videos[rel], int(ep.get("length") or 0))
    for rel, longest in sorted(videos.items()):
        try:
            timing = video_timing(storage.join(root, rel), cfg)
        except Exception:  # missing or undecodable: skipped per episode, with the reason
            continue
        check_video(rel, timing, fps, longest, fps_from)
    needed = ["episode_index", "frame_index", "timestamp"]
    for data_rel, eps in sorted(by_file.items()):
        path = storage.join(root, data_rel)
        try:
            names = fmt.read_schema(path, cfg).names
        except Exception:  # missing or unreadable: skipped per episode by its task, with the reason
            continue
        missing = [c for c in needed if c not in names]
        if missing:
            raise UsageError(f"{path}: no {', '.join(missing)} column(s): not a LeRobot v3.0 data file")
        try:
            table = fmt.read_shard(path, cfg, columns=needed)
        except Exception:  # damaged pages: as above, its task skips its episodes with the reason
            continue
        check_timestamps(data_rel, table, eps, camera, fps, fps_from)


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
    fps: float,
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
            frames = decode_frames(vpath, times, fps, scfg)
        except FileNotFoundError:
            skipped.append(Skipped(name, f"video missing: {video_path(info, ep, camera)}"))
            continue
        except Exception as exc:  # PyAV raises several types for corrupt files
            skipped.append(Skipped(name, f"video undecodable: {video_path(info, ep, camera)}: {exc}"))
            continue
        if len(frames) < len(kept) and frames.gap is not None:
            reason = (
                f"video has a gap: no frame at {frames.gap - start:.3f} s (data frame {kept[len(frames)]}) "
                f"while later frames exist; {len(frames)} of {len(kept)} frames before it"
            )
            skipped.append(Skipped(name, reason))
            continue
        if len(frames) < len(kept):
            reason = f"video shorter than the data: {len(frames)} of {len(kept)} frames decodable"
            skipped.append(Skipped(name, reason))
            continue
        task_index = data["task_index"][0].as_py() if "task_index" in data.column_names else None
        own = (ep.get("tasks") or [None])[0] or task_texts.get(task_index)
        text = c.goal if c.override_goal and c.goal else (own or c.goal)
        if not text:
            skipped.append(Skipped(name, "no goal: the episode has no task; pass --goal TEXT"))
            continue
        rows.append(episode_row(ep, data, frames, kept, text, c))
    return write_episodes(rows, skipped, c.out, index, action_space(info), source, scfg)


def frame_rate(info: dict, override: float) -> tuple[float, str]:
    """The frame rate used, and where it came from (for messages): --fps if given, else info.json's."""
    if override < 0:
        raise UsageError("--fps must be positive")
    if override:
        if info.get("fps") and abs(float(info["fps"]) - override) > 1e-9:
            log.warning("fps: --fps %g in place of meta/info.json's %g", override, float(info["fps"]))
        return float(override), "--fps"
    try:
        fps = float(info["fps"])
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"meta/info.json has no usable `fps` ({info.get('fps')!r}): pass --fps N") from None
    if fps <= 0:
        raise UsageError(f"meta/info.json has fps {fps:g}: pass --fps N with the true frame rate")
    return fps, "meta/info.json"


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
    goal = goal_rule(c.goal, c.override_goal, bool(texts) or any(ep.get("tasks") for ep in eps))
    if c.goal:
        log.warning(goal)
    fps, fps_from = frame_rate(info, c.fps)
    by_file: dict[str, list[dict]] = defaultdict(list)
    for ep in eps:
        rel = info["data_path"].format(chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"])
        by_file[rel].append(ep)
    check_timing(c.source, info, camera, by_file, fps, fps_from, scfg)
    fmt.refuse_existing(c.out, c.overwrite, scfg)
    source = {
        "format": "lerobot",
        "path": c.source,
        "camera": camera,
        "frame_stride": c.frame_stride,
        "fps": fps,
    }
    start = time.perf_counter()
    init_ray(cfg.ray)
    calls = [
        partial(import_file, c.source, rel, group, i, info, camera, texts, c, source, scfg, fps)
        for i, (rel, group) in enumerate(sorted(by_file.items()))
    ]
    results = run_tasks(calls, c.num_cpus_per_task, "import lerobot")
    return finish(c.out, results, len(eps), source, scfg, start, goal)
