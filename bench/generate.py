"""Generation speed on one core: raw `env.step` vs step + agent-view render + PNG, as a ratio.

    python bench/generate.py [--steps 20000]

Target (issue 2): >= 1,000 rendered, PNG-encoded transitions/s per core.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np

from rgvlm_ray.config import EnvConfig
from rgvlm_ray.data.env import (
    RANDOM_ACTIONS,
    EpisodeSpec,
    FrameRenderer,
    encode_png,
    make_env,
    render_symbolic,
)
from rgvlm_ray.data.generate import build_shard, episode_plan


def steps_per_s(n: int, on_step: Callable | None) -> float:
    """Random actions over k=3 missions, resetting on episode end; `on_step(env, obs)` adds per-step work."""
    cfg = EnvConfig()
    rng = np.random.default_rng(0)
    env = make_env(cfg, EpisodeSpec(3, 0, 0))
    start = time.perf_counter()
    for i in range(n):
        obs, _, term, trunc, _ = env.step(int(rng.integers(RANDOM_ACTIONS)))
        if on_step is not None:
            on_step(env, obs)
        if term or trunc:
            env = make_env(cfg, EpisodeSpec(3, i, 0))
    return n / (time.perf_counter() - start)


def generator_transitions_per_s(episodes: int) -> float:
    from rgvlm_ray.config import load_config

    cfg = load_config(overrides={"generate.out": "-", "generate.episodes": episodes})
    start = time.perf_counter()
    table = build_shard(cfg, episode_plan(cfg.generate))
    steps = sum(len(a) for a in table.column("actions").to_pylist())
    return steps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--episodes", type=int, default=60)
    args = ap.parse_args()
    tile = EnvConfig().tile_size
    renderer = FrameRenderer(tile)
    raw = steps_per_s(args.steps, None)
    uncached = steps_per_s(args.steps, lambda env, obs: encode_png(render_symbolic(obs["image"], tile)))
    cached = steps_per_s(args.steps, lambda env, obs: renderer.png(obs["image"]))
    full = generator_transitions_per_s(args.episodes)
    print(
        f"machine: {platform.processor() or platform.machine()}, 1 core, python {platform.python_version()}"
    )
    print(f"raw env.step                              {raw:9.0f} steps/s")
    print(
        f"step + render + PNG (no cache)            {uncached:9.0f} transitions/s  ratio {uncached / raw:.2f}"
    )
    print(f"step + render + PNG (FrameRenderer cache) {cached:9.0f} transitions/s  ratio {cached / raw:.2f}")
    print(f"whole generator (bot, noise, acceptance)  {full:9.0f} transitions/s  ratio {full / raw:.2f}")
    print(f"target >= 1000 rendered transitions/s per core: {'met' if cached >= 1000 else 'NOT met'}")


if __name__ == "__main__":
    main()
