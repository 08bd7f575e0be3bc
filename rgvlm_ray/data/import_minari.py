"""`rgvlm import minari ID_OR_PATH --out RAW`: a local Minari dataset (hdf5 or arrow) as raw episodes (docs/minari.md).

Observations map to `frames` as follows: an RGB image space (H x W x 3 uint8) is PNG-encoded as is; a MiniGrid /
BabyAI dict (`image` 7x7x3 grid, `direction`, `mission`) gives `symbolic`, `directions` and `frames` drawn from the
grid the way `rgvlm generate` draws them. One Ray task reads `importer.episodes_per_shard` episodes and writes one
shard; episodes it cannot use are skipped with their reason (data/importing.py keeps the balance).

Damaged input: each episode is read on its own, so a missing or unreadable episode (an hdf5 group deleted or
overwritten, an arrow episode folder gone or garbled) is skipped with its reason and the others still import. A
dataset whose metadata or hdf5 file cannot be opened at all is refused up front, naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rgvlm_ray import storage
from rgvlm_ray.config import Config, ImportConfig, StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import ActionSpace
from rgvlm_ray.data.env import ACTION_TEXTS, FrameRenderer, encode_png
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
MINIGRID_KEYS = {"image", "direction", "mission"}


def register_mission_space() -> None:
    """Minari cannot (de)serialize MiniGrid's MissionSpace by itself (stack.md): register it once."""
    from minari.serialization import deserialize_space, serialize_space
    from minigrid.core.mission import MissionSpace

    if MissionSpace in serialize_space.registry:
        return

    @serialize_space.register(MissionSpace)
    def _(space: MissionSpace, to_string: bool = True) -> Any:
        data = {"type": "MissionSpace"}
        return json.dumps(data) if to_string else data

    @deserialize_space.register("MissionSpace")
    def _(data: dict) -> MissionSpace:
        return MissionSpace(mission_func=lambda: "")


def dataset_path(source: str) -> str:
    """The folder holding the dataset's `data/` (a path as given, else an id under MINARI_DATASETS_PATH)."""
    from minari.storage import get_dataset_path

    for candidate in (Path(source), Path(source) / "data"):
        if (candidate / "metadata.json").is_file():
            return str(candidate)
    by_id = Path(get_dataset_path(source)) / "data"
    if (by_id / "metadata.json").is_file():
        return str(by_id)
    raise UsageError(
        f"no local Minari dataset {source!r}: pass a dataset folder, or an id under MINARI_DATASETS_PATH "
        f"(now {os.environ.get('MINARI_DATASETS_PATH', '~/.minari/datasets')}); `minari download ID` fetches one"
    )


def load(path: str):  # -> minari.MinariDataset
    register_mission_space()
    from minari import MinariDataset

    return MinariDataset(path)


HDF5_FILE = "main_data.hdf5"  # minari's name for an hdf5 dataset's one data file


def open_dataset(path: str):  # -> minari.MinariDataset
    """The dataset, or a UsageError naming the file that cannot be read: its metadata.json, or the hdf5 file
    whose superblock or root group (the index of every episode) is damaged."""
    meta_file = Path(path) / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text())
    except Exception as exc:
        raise UsageError(f"{meta_file}: unreadable Minari metadata ({one_line(exc)})") from None
    if meta.get("data_format") == "hdf5":
        import h5py

        data_file = Path(path) / HDF5_FILE
        try:
            with h5py.File(data_file, "r") as f:
                list(f)
        except Exception as exc:
            raise UsageError(
                f"{data_file}: unreadable HDF5 file ({one_line(exc)}); restore the dataset "
                "(`minari download --force ID` for a hub dataset)"
            ) from None
    try:
        return load(path)
    except Exception as exc:
        raise UsageError(f"{path}: not a readable Minari dataset ({one_line(exc)})") from None


def read_episode(ds: Any, index: int) -> Any:  # -> minari EpisodeData | Skipped
    """One episode, or why it cannot be read. Episodes are read one at a time: minari reads a list of them in
    one go, so one bad episode would fail the rest (and in arrow, an empty episode folder shifts the rest)."""
    episode = f"episode {index}"
    try:
        return next(iter(ds.iterate_episodes([index])))
    except (FileNotFoundError, StopIteration):  # arrow: the episode's folder, or its data, is gone
        return Skipped(episode, f"episode missing: no data in {ds.storage.data_path / str(index)}")
    except KeyError as exc:  # hdf5: no such group, or a group whose header is damaged
        if "doesn't exist" in str(exc):
            return Skipped(episode, f"episode missing: {HDF5_FILE} has no group episode_{index}")
        return Skipped(episode, f"episode unreadable: {one_line(exc)}")
    except Exception as exc:  # h5py and pyarrow raise several types for damaged data
        return Skipped(episode, f"episode unreadable: {one_line(exc)}")


def observation_kind(space: Any) -> str:
    """minigrid | image, or a UsageError naming what is supported."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict) and {"image", "direction"} <= set(space.spaces):
        return "minigrid"
    shape = getattr(space, "shape", None)
    if isinstance(space, spaces.Box) and shape and len(shape) == 3 and shape[-1] == 3:
        return "image"
    raise UsageError(
        f"observation space {space} is not supported: rgvlm import minari needs RGB image observations "
        "(Box H x W x 3) or MiniGrid/BabyAI dict observations (image, direction, mission)"
    )


def action_space(space: Any, kind: str) -> ActionSpace:
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        names = list(ACTION_TEXTS[: int(space.n)]) if kind == "minigrid" else None
        return ActionSpace("discrete", names=names, n=int(space.n))
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return ActionSpace(
            "continuous", n=int(space.shape[0]), low=space.low.tolist(), high=space.high.tolist()
        )
    raise UsageError(f"action space {space} is not supported: Discrete(n) or a 1-d Box")


def mission_text(obs: dict) -> str | None:
    mission = obs.get("mission")
    if mission is None or len(mission) == 0:
        return None
    first = mission[0]
    return (first.decode() if isinstance(first, bytes) else str(first)) or None


def episode_row(ep: Any, name: str, kind: str, space: ActionSpace, cfg: ImportConfig) -> dict | Skipped:
    """One Minari episode as a format row, or why it is skipped."""
    episode = f"episode {ep.id}"
    t = len(ep.rewards)
    if t == 0:
        return Skipped(episode, "no actions: the episode has length 0")
    obs = ep.observations
    own = mission_text(obs) if kind == "minigrid" else None
    goal = cfg.goal if cfg.override_goal and cfg.goal else (own or cfg.goal)
    if not goal:
        return Skipped(episode, "no goal: the dataset has no mission; pass --goal TEXT")
    row: dict[str, Any] = {"episode_id": f"minari-{name}-ep{int(ep.id):06d}", "goal": goal}
    if kind == "minigrid":
        grids = np.asarray(obs["image"], dtype=np.uint8)
        renderer = FrameRenderer()
        row["frames"] = [renderer.png(g) for g in grids]
        row["symbolic"] = [g.tobytes() for g in grids]
        row["directions"] = [int(d) for d in obs["direction"]]
    else:
        row["frames"] = [encode_png(resize(np.asarray(im, dtype=np.uint8), cfg.image_size)) for im in obs]
    if len(row["frames"]) != t + 1:
        return Skipped(episode, f"bad observations: {len(row['frames'])} for {t} steps (expected {t + 1})")
    actions = np.asarray(ep.actions)
    if space.kind == "discrete":
        row["actions"] = [int(a) for a in actions]
        if space.names:
            row["action_texts"] = [space.names[a] for a in row["actions"]]
    else:
        row["actions"] = actions.reshape(t, -1).astype(np.float32).tolist()
    row["rewards"] = np.asarray(ep.rewards, dtype=np.float32).tolist()
    row["terminated"] = bool(ep.terminations[-1])
    row["truncated"] = bool(ep.truncations[-1]) and not row["terminated"]
    row["source_episode"] = int(ep.id)
    return row


def import_chunk(
    path: str, indices: list[int], index: int, cfg: ImportConfig, source: dict, scfg: StorageConfig
) -> ShardResult:
    """One Ray task: read these episodes, write one shard."""
    ds = load(path)
    kind = observation_kind(ds.observation_space)
    space = action_space(ds.action_space, kind)
    rows, skipped, warnings = [], [], []
    for i in indices:
        ep = read_episode(ds, i)
        if not isinstance(ep, Skipped):
            try:
                ep = episode_row(ep, source["name"], kind, space, cfg)
            except Exception as exc:  # data that reads but is damaged (wrong shapes, bad bytes)
                ep = Skipped(f"episode {i}", f"episode unreadable: {one_line(exc)}")
        (skipped if isinstance(ep, Skipped) else rows).append(ep)
        lost = "" if isinstance(ep, Skipped) else metadata_lost(ds, i)
        if lost:
            warnings.append(Skipped(f"episode {i}", lost))
    result = write_episodes(rows, skipped, cfg.out, index, space, source, scfg)
    result.warnings = warnings
    return result


def metadata_lost(ds: Any, index: int) -> str:
    """Why the episode's own metadata (its seed, options) will be missing from `rgvlm export minari`, or ""."""
    try:
        next(iter(ds.storage.get_episode_metadata([index])))
    except Exception as exc:  # a damaged metadata.json (arrow) or group attributes (hdf5)
        return f"its own metadata cannot be read ({one_line(exc)}): its seed and options are lost on export"
    return ""


def run(cfg: Config) -> dict:
    from rgvlm_ray.ray_utils import init_ray

    c = cfg.importer
    path = dataset_path(c.source)
    ds = open_dataset(path)
    kind = observation_kind(ds.observation_space)
    action_space(ds.action_space, kind)  # refuse an unsupported space before any task starts
    if kind == "image" and not c.goal:
        raise UsageError(f"{c.source} has image observations and no mission: pass --goal TEXT")
    has_missions = kind == "minigrid" and "mission" in ds.observation_space.spaces
    goal = goal_rule(c.goal, c.override_goal, has_missions)
    if c.goal:
        log.warning(goal)
    fmt.refuse_existing(c.out, c.overwrite, cfg.storage)
    name = (ds.id or storage.basename(c.source)).replace("/", "-")
    source = {"format": "minari", "dataset": c.source, "id": ds.id, "path": path, "name": name}
    episodes = [int(i) for i in ds.episode_indices]
    n = max(1, c.episodes_per_shard)
    start = time.perf_counter()
    init_ray(cfg.ray)
    calls = [
        partial(import_chunk, path, episodes[i : i + n], i // n, c, source, cfg.storage)
        for i in range(0, len(episodes), n)
    ]
    results = run_tasks(calls, c.num_cpus_per_task, "import minari")
    return finish(c.out, results, len(episodes), source, cfg.storage, start, goal)
