"""`rgvlm export minari --in RAW --labels ... --reward MODE --out ID`: the source Minari dataset again, with
`rewards` replaced by MODE's per-step reward (docs/minari.md).

Observations, actions, terminations, truncations and infos are copied from the source dataset, so a d3rlpy / CORL /
TorchRL user trains on exactly their data. So is what describes it: `env_spec` and `eval_env_spec` (so
`recover_environment()` works on the export when it worked on the source), reference scores, author, code link,
requirements and any other dataset metadata, and each episode's seed, options and own metadata. The reward
statistics Minari keeps per episode (`rewards_sum`, ...) are computed again for the new rewards.

Episodes skipped at import (not in RAW) are left out and counted; the others are numbered 0..n-1 as Minari
requires, each keeping its source id in its metadata (`source_episode`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelstore.rewards_out import open_source, rewards

log = logging.getLogger(__name__)

# Dataset metadata the export writes itself: counts and layout, the spaces, and what says where it came from.
OWN_KEYS = {
    "dataset_id",
    "total_episodes",
    "total_steps",
    "dataset_size",
    "data_format",
    "jpeg_encoding",
    "observation_space",
    "action_space",
    "minari_version",
    "algorithm_name",
    "description",
}
# Per-episode metadata that minari writes itself (id, total_steps) or takes from the buffer (seed, options), and
# the reward statistics, which describe the source's rewards.
OWN_EPISODE_KEYS = {"id", "total_steps", "seed", "options"}
REWARD_STATS_PREFIX = "rewards_"


def out_path(dataset_id: str) -> str:
    from minari.storage import get_dataset_path

    return str(get_dataset_path(dataset_id))


def carried_metadata(raw: dict[str, Any]) -> dict[str, Any]:
    """The source's dataset metadata that the export keeps as it is (env_spec, eval_env_spec, ref scores, ...).
    Minari stores author and author_email as lists in JSON and wants sets back."""
    out = {k: v for k, v in raw.items() if k not in OWN_KEYS}
    for key in ("author", "author_email"):
        if isinstance(out.get(key), list):
            out[key] = set(out[key])
    return out


def episode_metadata(source: dict[str, Any], source_id: int, reward: np.ndarray) -> dict[str, Any]:
    """One exported episode's metadata: the source's own keys, its source id, and the reward statistics minari's
    DataCollector writes, for the new reward."""
    from minari.data_collector.callbacks import EpisodeMetadataCallback

    kept = {
        k: v
        for k, v in source.items()
        if k not in OWN_EPISODE_KEYS and not k.startswith(REWARD_STATS_PREFIX) and k != "source_episode"
    }
    return {**kept, "source_episode": source_id, **EpisodeMetadataCallback()({"rewards": reward})}


def source_episode_metadata(src: Any, index: int) -> dict[str, Any] | None:
    """One source episode's metadata; None when it cannot be read (its data was, at import: keep what there is,
    and say what is lost)."""
    try:
        return dict(next(iter(src.storage.get_episode_metadata([index]))))
    except Exception:
        return None


def run(cfg: Config) -> dict:
    import shutil

    import minari
    from minari.dataset.minari_storage import MinariStorage

    from rgvlm_ray.data.import_minari import dataset_path, open_dataset, read_episode
    from rgvlm_ray.data.importing import Skipped

    e = cfg.export
    source, meta = open_source(cfg, "minari")
    path = dataset_path(e.source or meta.get("path", ""))
    src = open_dataset(path)
    raw_meta = MinariStorage.read_raw_metadata(path)
    target = out_path(e.out)
    if (Path(target) / "data").exists():
        if not e.overwrite:
            raise UsageError(
                f"Minari dataset {e.out} already exists at {target}; pass --overwrite to replace it"
            )
        shutil.rmtree(target)
    by_episode = {r.source_episode: r.reward for r in rewards(source, cfg)}
    ids = sorted(by_episode)
    ep_meta = {i: source_episode_metadata(src, i) for i in ids}
    lost = [i for i in ids if ep_meta[i] is None]
    if lost:  # the episodes are exported; what their metadata held is not, and the user is told which
        log.warning("episodes %s: their metadata cannot be read: exported without seed and options", lost)
    ep_meta = {i: m or {} for i, m in ep_meta.items()}
    buffers = []
    for new_id, source_id in enumerate(ids):
        ep = read_episode(src, source_id)
        if isinstance(ep, Skipped):
            raise UsageError(f"{path}: {ep.episode} was imported but can no longer be read: {ep.reason}")
        buffers.append(buffer(ep, by_episode[source_id], new_id, ep_meta.get(source_id, {})))
    exported = minari.create_dataset_from_buffers(
        e.out,
        buffers,
        observation_space=src.observation_space,
        action_space=src.action_space,
        algorithm_name=f"{raw_meta.get('algorithm_name') or 'unknown'} + rgvlm-ray rewards ({e.reward})",
        description=f"{src.id}: rewards replaced by rgvlm-ray `--reward {e.reward}` from {', '.join(e.labels)}"
        + (f". Source: {raw_meta['description']}" if raw_meta.get("description") else ""),
        data_format=raw_meta.get("data_format"),  # the source's: hdf5 or arrow
        jpeg_encoding=False,  # lossless: the observations must equal the source's
    )
    exported.storage.update_metadata(carried_metadata(raw_meta))
    if buffers:
        exported.storage.update_episode_metadata(
            [episode_metadata(ep_meta.get(s, {}), s, by_episode[s]) for s in ids], range(len(ids))
        )
    return {
        "out": e.out,
        "path": target,
        "reward": e.reward,
        "episodes": len(buffers),
        "source_episodes": src.total_episodes,
        "left_out": src.total_episodes - len(buffers),
        "metadata_lost": lost,  # source episodes whose own metadata (seed, options) could not be read
        "env_spec": raw_meta.get("env_spec") is not None,
    }


def buffer(ep: Any, reward: np.ndarray, new_id: int, meta: dict[str, Any]):  # -> minari.EpisodeBuffer
    from minari.data_collector.episode_buffer import EpisodeBuffer

    if len(reward) != len(ep.rewards):
        raise UsageError(f"episode {ep.id}: {len(reward)} labeled steps but the source has {len(ep.rewards)}")
    seed = meta.get("seed")
    return EpisodeBuffer(
        id=new_id,
        seed=None if seed is None else int(seed),
        options=meta.get("options"),
        observations=ep.observations,
        actions=ep.actions,
        rewards=reward.astype(np.float64).tolist(),
        terminations=ep.terminations.tolist(),
        truncations=ep.truncations.tolist(),
        infos=ep.infos or {},
    )
