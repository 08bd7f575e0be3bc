"""The ALFRED-like chain environment: the bot solves every k, progress is monotone, seeds are deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from minigrid.utils.baby_ai_bot import BabyAIBot

from rgvlm_ray.data.env import (
    MAX_SUBTASKS,
    ChainLevel,
    EpisodeSpec,
    accepted,
    expert_completion_steps,
    find_mission,
    make_env,
    rollout,
)
from rgvlm_ray.data.generate import FrameRenderer, generate_episode
from tests.helpers import env_config, generated_table


@pytest.mark.parametrize("k", range(1, MAX_SUBTASKS + 1))
def test_bot_solves_every_k_with_spaced_subtasks(k):
    cfg = env_config()
    for index in range(3):
        spec = find_mission(cfg, k, index, pool_seed=7, split="seen")
        env = make_env(cfg, spec)
        assert len(env.subtasks) == k and env.mission.count(", then ") == k - 1
        steps = expert_completion_steps(env)
        assert steps is not None and len(steps) == k
        assert all(b - a > 1 for a, b in zip(steps, steps[1:], strict=False))


def test_progress_never_decreases_and_ends_at_k_on_success():
    table = generated_table(episodes=12)
    for row in table.to_pylist():
        p = row["progress"]
        assert all(b >= a for a, b in zip(p, p[1:], strict=False))
        assert 0 <= p[-1] <= row["num_subtasks"]
        success = row["terminated"] and row["rewards"][-1] > 0
        assert (p[-1] == row["num_subtasks"]) == success
        # sparse reward: non-zero only on the final, successful step
        assert sum(r > 0 for r in row["rewards"]) == int(success)


def test_generation_is_deterministic_for_a_seed():
    cfg = env_config()
    spec = find_mission(cfg, 3, 0, pool_seed=11, split="seen")
    a = generate_episode(cfg, spec, 0.3, FrameRenderer())
    b = generate_episode(cfg, spec, 0.3, FrameRenderer())
    assert a == b
    other = generate_episode(cfg, find_mission(cfg, 3, 0, pool_seed=12, split="seen"), 0.3, FrameRenderer())
    assert other["goal"] != a["goal"] or other["actions"] != a["actions"]


def test_randomized_split_keeps_mission_and_moves_initial_state():
    cfg = env_config()
    moved = 0
    for index in range(4):
        seen = make_env(cfg, find_mission(cfg, 2, index, 3, "seen"))
        rand = make_env(cfg, find_mission(cfg, 2, index, 3, "randomized"))
        assert seen.mission == rand.mission
        moved += not np.array_equal(seen.gen_obs()["image"], rand.gen_obs()["image"])
    assert moved >= 3


def test_rejects_unknown_split_and_k():
    with pytest.raises(ValueError, match="split"):
        make_env(env_config(), EpisodeSpec(1, 0, 0, "train"))
    with pytest.raises(ValueError, match="num_subtasks"):
        ChainLevel(7)


def test_random_policy_rarely_succeeds_and_rollout_reports_progress():
    cfg = env_config()
    rng = np.random.default_rng(0)
    specs = [find_mission(cfg, 1, i, 0, "seen") for i in range(5)]
    results = [rollout(cfg, s, lambda obs: int(rng.integers(6))) for s in specs]
    assert all(r.steps > 0 and r.subtasks_done in (0, 1) for r in results)
    assert all(r.success == (r.subtasks_done == 1) for r in results)
    assert all(accepted(cfg, s) for s in specs)


def test_a_stalled_episode_ends_after_stall_steps_keeping_its_progress():
    cfg = env_config()

    def spin(obs: dict) -> int:
        return 0  # turning left forever completes nothing

    for i in range(3):
        spec = find_mission(cfg, 3, i, 0, "seen")
        full, cut = rollout(cfg, spec, spin), rollout(cfg, spec, spin, stall_steps=12)
        assert full.steps > 12 and full.subtasks_done == 0
        assert cut.steps == 12 and not cut.success and cut.subtasks_done == 0
    # the limit counts steps since the last completed sub-task, not since the start: the bot's chained k = 3
    # episodes, whose sub-tasks each take fewer steps than the limit, are never cut
    spec = find_mission(cfg, 3, 0, 0, "seen")
    steps = expert_completion_steps(make_env(cfg, spec))
    limit = max(b - a for a, b in zip([0, *steps], steps, strict=False)) + 1
    assert steps[-1] > limit  # the whole episode is longer than the limit
    env = make_env(cfg, spec)
    bot, actions = BabyAIBot(env), []
    while not env.mission_done:
        actions.append(bot.replan())
        env.step(actions[-1])
    plan = iter(actions)
    done = rollout(cfg, spec, lambda obs: next(plan), stall_steps=limit)
    assert done.success and done.steps == steps[-1]
