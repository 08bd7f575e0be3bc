"""`rgvlm generate`: an offline dataset from the BabyAI bot with epsilon-noise, one Ray task per shard."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import asdict

import numpy as np
import pyarrow as pa
from minigrid.utils.baby_ai_bot import BabyAIBot

from rgvlm_ray import storage
from rgvlm_ray.config import Config, EnvConfig, GenerateConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.env import (
    ACTION_TEXTS,
    MAX_SUBTASKS,
    RANDOM_ACTIONS,
    ChainLevel,
    EpisodeSpec,
    FrameRenderer,
    derive_seed,
    encode_png,
    find_mission,
    full_view_rgb,
    make_env,
)
from rgvlm_ray.errors import UsageError

log = logging.getLogger(__name__)
GENERATOR_KEY = b"rgvlm.generator"
NOISE_STREAM = 0x4E4F4953
DROP = ACTION_TEXTS.index("drop")


def parse_subtasks(text: str) -> list[int]:
    """ "1-6" -> [1..6], "3" -> [3], "1,2,5" -> [1, 2, 5]."""
    try:
        ks: list[int] = []
        for part in str(text).split(","):
            lo, _, hi = part.strip().partition("-")
            ks.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UsageError(f"--subtasks must look like '1-6', '3' or '1,2,5', got {text!r}") from None
    if not ks or min(ks) < 1 or max(ks) > MAX_SUBTASKS:
        raise UsageError(f"--subtasks must be within 1..{MAX_SUBTASKS}, got {text!r}")
    return sorted(set(ks))


def episode_plan(cfg: GenerateConfig) -> list[tuple[int, int]]:
    """(k, index within k) for every episode, cycling through the requested k so each shard mixes them."""
    ks = parse_subtasks(cfg.subtasks)
    return [(ks[g % len(ks)], g // len(ks)) for g in range(cfg.episodes)]


def _bot_action(
    env: ChainLevel, bot: BabyAIBot, prev: int | None, rng: np.random.Generator
) -> tuple[BabyAIBot, int]:
    """The bot's suggestion. After random actions confuse its plan, a fresh bot replans from here; if even
    that fails (e.g. it refuses to start while carrying), drop what is carried or act randomly, then retry."""
    try:
        return bot, int(bot.replan(prev))
    except Exception:
        pass
    bot = BabyAIBot(env)
    try:
        return bot, int(bot.replan())
    except Exception:
        return bot, DROP if env.carrying is not None else int(rng.integers(RANDOM_ACTIONS))


def generate_episode(env_cfg: EnvConfig, spec: EpisodeSpec, noise: float, renderer: FrameRenderer) -> dict:
    """One behaviour-policy episode as a format row."""
    env = make_env(env_cfg, spec)
    rng = np.random.default_rng(derive_seed(spec.mission_seed, spec.index, NOISE_STREAM))
    bot = BabyAIBot(env)
    obs = env.gen_obs()
    frames, symbolic, directions = (
        [renderer.png(obs["image"])],
        [obs["image"].tobytes()],
        [obs["direction"]],
    )
    full = [encode_png(full_view_rgb(env, env_cfg.full_tile_size))] if env_cfg.full_view else None
    actions, rewards, progress = [], [], []
    prev: int | None = None
    terminated = truncated = False
    while not (terminated or truncated):
        bot, action = _bot_action(env, bot, prev, rng)
        if rng.random() < noise:
            action = int(rng.integers(RANDOM_ACTIONS))
        obs, reward, terminated, truncated, _ = env.step(action)
        prev = action
        actions.append(action)
        rewards.append(float(reward))
        progress.append(env.progress())
        frames.append(renderer.png(obs["image"]))
        symbolic.append(obs["image"].tobytes())
        directions.append(obs["direction"])
        if full is not None:
            full.append(encode_png(full_view_rgb(env, env_cfg.full_tile_size)))
    return {
        "episode_id": spec.episode_id,
        "goal": env.mission,
        "subtasks": list(env.subtasks),
        "num_subtasks": spec.num_subtasks,
        "frames": frames,
        "actions": actions,
        "action_texts": [ACTION_TEXTS[a] for a in actions],
        "rewards": rewards,
        "terminated": bool(terminated),
        "truncated": bool(truncated and not terminated),
        "progress": progress,
        "seed": spec.mission_seed,
        "split": spec.split,
        "frames_full": full,
        "symbolic": symbolic,
        "directions": directions,
    }


def generator_metadata(cfg: Config) -> dict[bytes, bytes]:
    """Stored in each shard so evaluation can rebuild the same environment and seed pool."""
    meta = {"pool_seed": cfg.generate.seed, "env": asdict(cfg.env), "expert_noise": cfg.generate.expert_noise}
    return {GENERATOR_KEY: json.dumps(meta).encode()}


def build_shard(cfg: Config, plan: list[tuple[int, int]]) -> pa.Table:
    renderer = FrameRenderer(cfg.env.tile_size)
    rows = []
    for k, index in plan:
        spec = find_mission(cfg.env, k, index, cfg.generate.seed, cfg.generate.split)
        rows.append(generate_episode(cfg.env, spec, cfg.generate.expert_noise, renderer))
    table = pa.Table.from_pylist(rows, schema=fmt.EPISODE_SCHEMA)
    if not cfg.env.full_view:
        table = table.drop_columns(["frames_full"])
    return table.replace_schema_metadata(generator_metadata(cfg))


def shard_stats(table: pa.Table) -> dict:
    success = [
        bool(t) and r[-1] > 0
        for t, r in zip(table["terminated"].to_pylist(), table["rewards"].to_pylist(), strict=True)
    ]
    return {
        "episodes": table.num_rows,
        "transitions": sum(len(a) for a in table["actions"].to_pylist()),
        "k": table["num_subtasks"].to_pylist(),
        "success": success,
    }


def _generate_shard(cfg: Config, plan: list[tuple[int, int]], path: str) -> dict:
    table = build_shard(cfg, plan)
    nbytes = fmt.write_shard(table, path, cfg.storage)
    return {**shard_stats(table), "bytes": nbytes, "path": path}


def summarize(results: list[dict], seconds: float) -> dict:
    by_k: dict[int, list[bool]] = defaultdict(list)
    for r in results:
        for k, ok in zip(r["k"], r["success"], strict=True):
            by_k[k].append(ok)
    transitions = sum(r["transitions"] for r in results)
    episodes = sum(r["episodes"] for r in results)
    return {
        "shards": len(results),
        "episodes": episodes,
        "transitions": transitions,
        "success_rate": round(sum(sum(v) for v in by_k.values()) / max(episodes, 1), 3),
        "success_rate_by_k": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_k.items())},
        "episodes_by_k": {k: len(v) for k, v in sorted(by_k.items())},
        "bytes_written": sum(r["bytes"] for r in results),
        "seconds": round(seconds, 2),
        "transitions_per_s": round(transitions / max(seconds, 1e-9), 1),
    }


def run(cfg: Config) -> dict:
    """Generate the dataset; returns the summary."""
    import ray
    from tqdm import tqdm

    from rgvlm_ray.ray_utils import init_ray

    g = cfg.generate
    if g.split not in fmt.SPLITS:
        raise UsageError(f"--split must be one of {fmt.SPLITS}, got {g.split!r}")
    if g.episodes < 1 or g.episodes_per_shard < 1:
        raise UsageError("--episodes and --episodes-per-shard must be positive")
    plan = episode_plan(g)
    fmt.refuse_existing(g.out, g.overwrite, cfg.storage)
    init_ray(cfg.ray)
    task = ray.remote(num_cpus=g.num_cpus_per_task)(_generate_shard)
    start = time.perf_counter()
    pending = [
        task.remote(
            cfg,
            plan[i : i + g.episodes_per_shard],
            storage.join(g.out, f"shard-{i // g.episodes_per_shard:05d}.parquet"),
        )
        for i in range(0, len(plan), g.episodes_per_shard)
    ]
    results = []
    with tqdm(total=len(plan), desc="generate", unit="episode") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in ray.get(done):
                results.append(r)
                bar.update(r["episodes"])
    return {"out": g.out, **summarize(results, time.perf_counter() - start)}
