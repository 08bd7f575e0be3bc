"""Per-step rewards of one `--reward MODE` for every episode of an imported dataset: what the exporters write back
into the source format (export_minari.py, export_lerobot.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from rgvlm_ray.config import Config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.importing import source_metadata
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelstore.join import Source
from rgvlm_ray.labelstore.rewards import check_columns, check_weights, episode_rewards, reward_columns


@dataclass
class EpisodeRewards:
    episode_id: str
    source_episode: int
    source_frames: list[int] | None  # T+1 kept frames' indices in the source episode (LeRobot), else None
    reward: np.ndarray  # T


def open_source(cfg: Config, fmt_name: str) -> tuple[Source, dict]:
    """The joined raw dataset and where it was imported from; refuses data that was not imported from fmt_name."""
    e = cfg.export
    source = Source(e.in_path, list(e.labels), cfg.storage)
    shards = source.shards()
    check_weights(e.reward, cfg.iql.reward_weights)
    check_columns(e.reward, source.columns(), e.in_path, bool(e.labels))
    meta = source_metadata(fmt.read_schema(shards[0], cfg.storage)) or {}
    if meta.get("format") != fmt_name and not e.source:
        raise UsageError(
            f"{e.in_path} was not imported with `rgvlm import {fmt_name}` (it carries no {fmt_name} source): "
            f"export it with `rgvlm export parquet`, or pass --source with the {fmt_name} dataset it came from"
        )
    if "source_episode" not in source.columns():
        raise UsageError(
            f"{e.in_path} has no `source_episode` column: re-import it with `rgvlm import {fmt_name}`"
        )
    return source, meta


def rewards(source: Source, cfg: Config) -> Iterator[EpisodeRewards]:
    """Every episode's reward under export.reward, shard by shard (only the columns needed are read)."""
    mode, columns = cfg.export.reward, list(reward_columns(cfg.export.reward))
    wanted = ["episode_id", "source_episode", *columns]
    has_frames = "source_frames" in source.columns()
    if has_frames:
        wanted.append("source_frames")
    for shard in source.shards():
        table = source.read(shard, wanted)
        for row in table.to_pylist():
            r, _, _ = episode_rewards(
                {c: row[c] for c in columns}, mode, dict(cfg.iql.reward_weights), cfg.iql.null_reward
            )
            frames = row["source_frames"] if has_frames else None
            yield EpisodeRewards(row["episode_id"], int(row["source_episode"]), frames, r)
