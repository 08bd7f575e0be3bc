"""Minari datasets made on the spot, offline, by minari's own DataCollector (stack.md: Minari 0.5.4, offline)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rgvlm_ray.data.env import ChainLevel
from rgvlm_ray.data.import_minari import register_mission_space


def chain_dataset(dataset_id: str, data_format: str, episodes: int = 4, max_steps: int = 6) -> None:
    """Random-policy episodes of our BabyAI chain env (k = 1, 2), truncated at `max_steps`."""
    import minari
    from minari import DataCollector

    register_mission_space()
    env = DataCollector(ChainLevel(1, max_steps=max_steps), data_format=data_format, record_infos=False)
    rng = np.random.default_rng(0)
    for i in range(episodes):
        env.reset(seed=i)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(int(rng.integers(6)))
            done = terminated or truncated
    env.create_dataset(dataset_id, algorithm_name="random", description="rgvlm-ray test fixture")
    env.close()
    minari.load_dataset(dataset_id)  # it must open with the real loader


class Reacher(gym.Env):
    """A tiny image-observation, Box-action env: enough for the continuous path with no simulator."""

    observation_space = spaces.Box(0, 255, (16, 16, 3), np.uint8)
    action_space = spaces.Box(-1.0, 1.0, (3,), np.float32)

    def __init__(self, length: int = 5) -> None:
        self.length, self.t = length, 0

    def _obs(self) -> np.ndarray:
        return np.full((16, 16, 3), 40 * self.t, np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(action[0] > 0), self.t >= self.length, False, {}


def reacher_dataset(dataset_id: str, episodes: int = 3) -> None:
    from minari import DataCollector

    env = DataCollector(Reacher(), record_infos=False)
    rng = np.random.default_rng(1)
    for i in range(episodes):
        env.reset(seed=i)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
            done = terminated or truncated
    env.create_dataset(dataset_id, algorithm_name="random", description="rgvlm-ray test fixture")
    env.close()


BABYAI_ENV = "BabyAI-GoToLocal-v0"


def babyai_dataset(dataset_id: str, data_format: str, episodes: int = 4, max_steps: int = 6) -> None:
    """A stock BabyAI env made by id, so the dataset carries an `env_spec` that `recover_environment()` can make
    (minigrid registers its ids on import, offline), with the optional metadata an export must keep."""
    import minigrid  # noqa: F401 - registers the BabyAI-* ids
    from minari import DataCollector

    register_mission_space()
    env = DataCollector(
        gym.make(BABYAI_ENV, max_steps=max_steps), data_format=data_format, record_infos=False
    )
    rng = np.random.default_rng(2)
    for i in range(episodes):
        env.reset(seed=100 + i)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(int(rng.integers(6)))
            done = terminated or truncated
    env.create_dataset(
        dataset_id,
        algorithm_name="random",
        description="rgvlm-ray test fixture",
        author="rgvlm-ray tests",
        code_permalink="https://example.org/rgvlm-ray/tests",
        requirements=["minigrid>=3.0"],
    )
    env.close()
