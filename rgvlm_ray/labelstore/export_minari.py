"""`rgvlm export minari --in RAW --labels ... --reward MODE --out ID`: the source Minari dataset again, with
`rewards` replaced by MODE's per-step reward (docs/minari.md).

Observations, actions, terminations and truncations are copied from the source dataset, so a d3rlpy / CORL /
TorchRL user trains on exactly their data. Episodes skipped at import (not in RAW) are left out and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelstore.rewards_out import open_source, rewards


def out_path(dataset_id: str) -> str:
    from minari.storage import get_dataset_path

    return str(get_dataset_path(dataset_id))


def run(cfg: Config) -> dict:
    import shutil

    from rgvlm_ray.data.import_minari import dataset_path, load

    e = cfg.export
    source, meta = open_source(cfg, "minari")
    src = load(dataset_path(e.source or meta.get("path", "")))
    target = out_path(e.out)
    if (Path(target) / "data").exists():
        if not e.overwrite:
            raise UsageError(
                f"Minari dataset {e.out} already exists at {target}; pass --overwrite to replace it"
            )
        shutil.rmtree(target)
    by_episode = {r.source_episode: r.reward for r in rewards(source, cfg)}
    buffers = [
        buffer(ep, by_episode[int(ep.id)]) for ep in src.iterate_episodes() if int(ep.id) in by_episode
    ]
    import minari

    minari.create_dataset_from_buffers(
        e.out,
        buffers,
        observation_space=src.observation_space,
        action_space=src.action_space,
        algorithm_name=f"{src.storage.metadata.get('algorithm_name') or 'unknown'} + rgvlm-ray rewards ({e.reward})",
        description=f"{src.id}: rewards replaced by rgvlm-ray `--reward {e.reward}` from {', '.join(e.labels)}",
        data_format=src.storage.metadata.get("data_format"),  # the source's: hdf5 or arrow
        jpeg_encoding=False,  # lossless: the observations must equal the source's
    )
    return {
        "out": e.out,
        "path": target,
        "reward": e.reward,
        "episodes": len(buffers),
        "source_episodes": src.total_episodes,
        "left_out": src.total_episodes - len(buffers),
    }


def buffer(ep, reward: np.ndarray):  # -> minari.EpisodeBuffer
    from minari.data_collector.episode_buffer import EpisodeBuffer

    if len(reward) != len(ep.rewards):
        raise UsageError(f"episode {ep.id}: {len(reward)} labeled steps but the source has {len(ep.rewards)}")
    return EpisodeBuffer(
        id=int(ep.id),
        observations=ep.observations,
        actions=ep.actions,
        rewards=reward.astype(np.float64).tolist(),
        terminations=ep.terminations.tolist(),
        truncations=ep.truncations.tolist(),
        infos=ep.infos or {},
    )
