"""Episode memory (rgvlm_ray/iql/memory.py): what it counts, and that evaluation sees what training saw."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from minigrid.utils.baby_ai_bot import BabyAIBot

from rgvlm_ray.config import EnvConfig, IQLConfig
from rgvlm_ray.data.env import NUM_ACTIONS, find_mission, make_env, rollout
from rgvlm_ray.iql.agreement import expert_agreement
from rgvlm_ray.iql.evaluate import checkpoint_policy
from rgvlm_ray.iql.memory import (
    CAP,
    COLOURS,
    MEMORY_DIM,
    OBJECT_TYPES,
    OBJECTS,
    episode_memory,
    resolve_memory,
)
from rgvlm_ray.iql.model import IQLNet, ModelSpec
from rgvlm_ray.iql.update import ReplayBuffer
from rgvlm_ray.iql.vocab import Vocab

PICKUP, TOGGLE = 3, 5


@functools.cache  # one search per action set for the whole file
def bot_episode(want: frozenset[int]) -> tuple:
    """A noise-free bot episode whose actions include every action in `want`, with the env's own record of what
    each pickup picked up and each toggle toggled: (spec, views, actions, truth {step: (action, type, colour)})."""
    cfg = EnvConfig()
    for index in range(60):
        spec = find_mission(cfg, 3, index, 0, "seen")
        env = make_env(cfg, spec)
        bot, obs = BabyAIBot(env), env.gen_obs()
        views, actions, truth = [obs["image"]], [], {}
        for step in range(env.max_steps):
            front = env.grid.get(*env.front_pos)
            action = int(bot.replan())
            obs, _, terminated, truncated, _ = env.step(action)
            views.append(obs["image"])
            actions.append(action)
            acted = env.carrying if action == PICKUP else front if action == TOGGLE else None
            if acted is not None:
                truth[step] = (action, acted.type, acted.color)
            if terminated or truncated:
                break
        if want <= set(actions):
            return spec, np.stack(views), np.asarray(actions), truth
    raise AssertionError(f"no mission among 60 whose bot episode uses actions {want}")


def channel_index(channel: int, obj_type: str, colour: str) -> int:
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    obj = (OBJECT_TO_IDX[obj_type] - OBJECT_TYPES[0]) * COLOURS + COLOR_TO_IDX[colour]
    return channel * OBJECTS + obj


def test_memory_counts_what_the_env_says_was_picked_up_and_toggled() -> None:
    _, views, actions, truth = bot_episode(frozenset({PICKUP, TOGGLE}))
    memory = episode_memory(views, actions)
    assert memory.shape == (len(actions) + 1, MEMORY_DIM) and not memory[0].any()
    assert (np.diff(memory.astype(int), axis=0) >= 0).all()  # counts only grow
    pickups, toggles = memory[:, :OBJECTS], memory[:, 2 * OBJECTS :]
    for step, (action, obj_type, colour) in truth.items():
        channel = 0 if action == PICKUP else 2
        i = channel_index(channel, obj_type, colour)
        assert memory[step + 1, i] == min(memory[step, i] + 1, CAP), (step, action, obj_type, colour)
    # Nothing else was counted: every increase of a pickup/toggle count is one the env recorded.
    for counts, action in ((pickups, PICKUP), (toggles, TOGGLE)):
        increases = int((np.diff(counts.astype(int), axis=0) > 0).sum())
        assert increases <= sum(a == action for a, _, _ in truth.values())
        assert increases >= min(1, sum(a == action for a, _, _ in truth.values()))


def test_evaluation_tracks_the_memory_training_computes() -> None:
    """Replay a bot episode through checkpoint_policy (the net scripted to the bot's actions): the memory the
    policy is given at each step is the training data's memory (episode_memory) at that step."""
    spec, views, actions, _ = bot_episode(frozenset({PICKUP}))
    vocab = Vocab.build(["go to the red ball, then pick up a key"])
    net = IQLNet(ModelSpec("symbolic", len(vocab), NUM_ACTIONS, 32, 8, context=4, memory=MEMORY_DIM))
    seen: list[np.ndarray] = []

    def scripted(obs, prev, valid, ids, lengths, memory=None):  # records its input, replays the bot
        seen.append(memory[0].numpy().copy())
        return torch.nn.functional.one_hot(torch.tensor([int(actions[len(seen) - 1])]), NUM_ACTIONS).float()

    net.logits = scripted  # type: ignore[method-assign]
    result = rollout(EnvConfig(), spec, checkpoint_policy(net, vocab, greedy=True, seed=0)(spec))
    assert result.steps == len(actions) and result.success
    np.testing.assert_array_equal(np.stack(seen), episode_memory(views, actions)[:-1])


def test_buffer_windows_carry_memory_at_s_and_next() -> None:
    _, views, actions, _ = bot_episode(frozenset({PICKUP}))
    memory = episode_memory(views, actions)
    t = len(actions)
    cols = {
        "obs": views[:-1],
        "next_obs": views[1:],
        "action": actions,
        "reward": np.zeros(t, np.float32),
        "done": np.zeros(t, np.float32),
        "goal_ids": np.ones((t, 4), np.int32),
        "episode": np.zeros(t, np.int64),
        "step": np.arange(t),
        "memory": memory[:-1],
        "next_memory": memory[1:],
    }
    buffer = ReplayBuffer.from_numpy(cols)
    batch = buffer.sample(64, 4, torch.Generator().manual_seed(0))
    assert batch.memory is not None and batch.memory.shape == (64, 2, MEMORY_DIM)
    # s' memory is s memory plus that step's events: never smaller, and larger at a first pickup.
    assert (batch.memory[:, 1].int() >= batch.memory[:, 0].int()).all()
    picked = (batch.action == PICKUP) & (batch.memory[:, 0].int().sum(1) == 0)
    if picked.any():
        assert (batch.memory[picked, 1].int().sum(1) > batch.memory[picked, 0].int().sum(1)).all()


def test_agreement_feeds_memory_and_a_model_without_it_loads() -> None:
    vocab = Vocab.build(["go to the red ball"])
    _, views, actions, _ = bot_episode(frozenset({PICKUP}))
    episode = {
        "goal": "go to the red ball",
        "obs": views,
        "actions": actions,
        "expert_actions": actions,
        "k": 3,
    }
    with_memory = IQLNet(ModelSpec("symbolic", len(vocab), NUM_ACTIONS, 32, 8, context=4, memory=MEMORY_DIM))
    assert expert_agreement(with_memory, vocab, [episode])["states"] == len(actions)
    old = json.loads(with_memory.spec.to_json())
    del old["memory"]  # a checkpoint written before episode memory existed
    assert ModelSpec.from_json(json.dumps(old)).memory == 0
    with pytest.raises(ValueError, match="pass memory counts"):
        ids, lengths = vocab.encode(["go to the red ball"])
        window = torch.from_numpy(views[None, :4])
        prev, valid = torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool)
        with_memory.logits(window, prev, valid, torch.from_numpy(ids), torch.from_numpy(lengths))


@pytest.mark.parametrize(
    ("kind", "obs_mode", "width"),
    [("none", "symbolic", 0), ("none", "image", 0), ("events", "symbolic", MEMORY_DIM)],
)
def test_memory_setting(kind: str, obs_mode: str, width: int) -> None:
    assert resolve_memory(kind, obs_mode) == width


def test_memory_setting_refuses_what_it_cannot_read() -> None:
    assert IQLConfig().memory == "none"
    with pytest.raises(ValueError, match="iql.obs_mode=symbolic"):
        resolve_memory("events", "image")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_memory("auto", "symbolic")


def test_train_refuses_event_memory_on_images_in_one_line(tmp_path, capsys) -> None:
    from rgvlm_ray.cli import main as cli

    args = ["train", "--in", str(tmp_path), "--out", str(tmp_path / "run"), "iql.memory=events"]
    assert cli([*args, "iql.obs_mode=image"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "iql.memory=none" in err, err
