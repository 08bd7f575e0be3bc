"""The behaviour mixture (`rgvlm generate --detour/--abandon`, noise levels), the bot's `expert_actions` beside the
actions taken, inspect's behaviour summary, and evaluation's expert-action agreement."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pytest
import torch

from rgvlm_ray.config import EnvConfig, GenerateConfig, load_config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.env import find_mission
from rgvlm_ray.data.generate import FrameRenderer, build_shard, episode_plan, generate_episode
from rgvlm_ray.data.inspect import Behaviour
from rgvlm_ray.iql.agreement import (
    agreement_result,
    episode_windows,
    expert_agreement,
    table_episodes,
    train_agreement_result,
)
from rgvlm_ray.iql.model import IQLNet, ModelSpec
from rgvlm_ray.iql.vocab import Vocab


@functools.lru_cache(maxsize=8)  # the bot plays every episode: ~4 s a table, and tests share them read-only
def _table(**generate: object) -> pa.Table:
    cfg = load_config(overrides={"generate.out": "unused", "generate.episodes": 24, "generate.seed": 3,
                                 **{f"generate.{k}": v for k, v in generate.items()}})  # fmt: skip
    return build_shard(cfg, episode_plan(cfg.generate))


def test_expert_actions_sit_beside_the_actions_taken():
    table = _table(expert_noise=0.5)
    assert fmt.validate_table(table, "shard") == []  # a step column: one entry per action
    agree = []
    for row in table.to_pylist():
        assert len(row["expert_actions"]) == len(row["actions"])
        agree += [a == e for a, e in zip(row["actions"], row["expert_actions"], strict=True)]
    # half the steps are random (1 in 6 of them the bot's action by chance): agreement ~ 0.5 + 0.5 / 6
    assert 0.45 < np.mean(agree) < 0.75
    noise_free = _table(expert_noise=0.0)
    for row in noise_free.to_pylist():
        assert row["actions"] == row["expert_actions"]


def test_the_plain_noisy_bot_is_unchanged_by_a_mixture_of_zero():
    env = EnvConfig()
    spec = find_mission(env, 3, 0, pool_seed=11, split="seen")
    plain = generate_episode(env, spec, 0.3, FrameRenderer())
    mixed = generate_episode(env, spec, 0.3, FrameRenderer(), GenerateConfig(expert_noise=0.3))
    assert plain == mixed


def test_detours_and_abandoned_episodes_make_a_mixture_that_bc_cannot_just_copy():
    base, mixed = _table(expert_noise=0.0), _table(expert_noise=0.0, detour=1.0, abandon=0.5)
    b, m = Behaviour(), Behaviour()
    b.add(base)
    m.add(mixed)
    assert b.result()["expert_agreement"] == 1.0  # noise-free: every action is the bot's
    # detours are systematic walks away from the current sub-task: actions the bot would not take
    assert m.result()["expert_agreement"] < 0.9
    rows = mixed.to_pylist()
    abandoned = [r for r in rows if r["truncated"] and not r["terminated"]]
    assert abandoned, "abandon=0.5 over 24 episodes left none"
    for r in abandoned:  # gave up before the last sub-task: a truncated failure, never a terminal
        assert r["progress"][-1] < r["num_subtasks"] and sum(r["rewards"]) == 0
    success = np.mean([r["terminated"] and r["rewards"][-1] > 0 for r in rows])
    assert success < np.mean([r["terminated"] and r["rewards"][-1] > 0 for r in base.to_pylist()])
    by_k = m.result()["by_k"]
    assert set(by_k) == {1, 2, 3, 4, 5, 6} and all(0 <= r["subtask_completion"] <= 1 for r in by_k.values())


def test_generate_refuses_probabilities_outside_0_1(tmp_path, capsys):
    from rgvlm_ray.cli import main

    assert main(["generate", "--out", str(tmp_path / "d"), "--detour", "1.5"]) == 2
    assert "generate.detour=1.5" in capsys.readouterr().err


def _net_preferring(action: int, vocab: Vocab, context: int = 3) -> IQLNet:
    torch.manual_seed(0)
    net = IQLNet(ModelSpec("symbolic", len(vocab), 7, 16, 8, "mean", context=context, token_dim=16))
    with torch.no_grad():
        net.pi[-1].weight.zero_()
        net.pi[-1].bias.zero_()
        net.pi[-1].bias[action] = 10.0
    return net.eval()


def test_expert_agreement_counts_states_where_argmax_pi_is_the_bots_action():
    table = _table(expert_noise=0.5)
    episodes = table_episodes(table)
    vocab = Vocab.build(table.column("goal").to_pylist(), 100)
    experts = np.concatenate([np.asarray(e["expert_actions"]) for e in episodes])
    for action in (0, 2):
        result = expert_agreement(_net_preferring(action, vocab), vocab, episodes)
        assert result["agreement"] == pytest.approx(float(np.mean(experts == action)))
        assert result["states"] == len(experts)
    # Windows are built as training builds them: the previous action + 1, 0 before the episode's start.
    obs = np.arange(4)[:, None, None, None] * np.ones((1, 7, 7, 3), dtype=np.uint8)
    o, prev, valid = episode_windows(obs.astype(np.uint8), np.array([4, 5, 6]), context=2)
    assert valid.tolist() == [[False, True], [True, True], [True, True]]
    assert prev.tolist() == [[0, 0], [0, 5], [5, 6]]
    assert o[:, -1, 0, 0, 0].tolist() == [0, 1, 2]


def test_agreement_is_not_available_rather_than_zero_without_expert_actions(tmp_path):
    table = _table(expert_noise=0.5).drop_columns(["expert_actions"])
    fmt.write_shard(table, str(tmp_path / "imported" / "shard-00000.parquet"))
    cfg = load_config(overrides={"eval.agreement_in": str(tmp_path / "imported")})
    result = agreement_result("unused", {}, cfg)
    assert result["expert_agreement"] is None and "no expert_actions" in result["expert_agreement_note"]
    imported_run = {"env_source": "unknown", "pool_seed": None, "behaviour": None}
    result = agreement_result("unused", imported_run, load_config())
    assert result["expert_agreement"] is None and "not available" in result["expert_agreement_note"]


def test_training_agreement_reads_the_runs_own_episodes_and_says_whether_it_fits(tmp_path):
    """A policy that always picks action a agrees with its training actions exactly as often as they are a."""
    table = _table(expert_noise=0.5)
    for i in range(2):  # two shards: the sample spreads over them
        fmt.write_shard(table.slice(12 * i, 12), str(tmp_path / "räw data" / f"shard-{i:05d}.parquet"))
    actions = np.concatenate(table["actions"].to_pylist())
    vocab = Vocab.build(table["goal"].to_pylist())
    net = IQLNet(ModelSpec("symbolic", len(vocab), 7, 32, 8, context=2, clause_sep=vocab.clause_separator()))
    run = {"in_path": str(tmp_path / "räw data")}
    cfg = load_config(overrides={"eval.train_agreement_episodes": 24})
    for action in (2, 5):
        with torch.no_grad():
            net.pi[-1].weight.zero_()
            net.pi[-1].bias.copy_(torch.nn.functional.one_hot(torch.tensor(action), 7).float() * 50)
        result = train_agreement_result(net, vocab, run, cfg)
        assert result["train_agreement"] == round(float(np.mean(actions == action)), 4)
        assert result["train_agreement_states"] == len(actions)
        assert result["fits_training_data"] is False
    # the same episodes, every action 5: the policy that always picks 5 fits them
    fives = pa.array([[5] * len(a) for a in table["actions"].to_pylist()], table.schema.field("actions").type)
    fmt.write_shard(table.set_column(table.schema.get_field_index("actions"), "actions", fives),
                    str(tmp_path / "fives" / "shard-00000.parquet"))  # fmt: skip
    result = train_agreement_result(net, vocab, {"in_path": str(tmp_path / "fives")}, cfg)
    assert result["train_agreement"] == 1.0 and result["fits_training_data"] is True
    missing = train_agreement_result(net, vocab, {"in_path": str(tmp_path / "gone")}, cfg)
    assert missing["train_agreement"] is None and "not available" in missing["train_agreement_note"]


def test_episodes_per_mission_records_each_mission_several_times_each_its_own_draw():
    single = _table(expert_noise=0.3, abandon=0.5, subtasks="1-2", episodes=12)
    table = _table(expert_noise=0.3, abandon=0.5, subtasks="1-2", episodes=12, episodes_per_mission=3)
    rows = table.to_pylist()
    assert len({r["episode_id"] for r in rows}) == len(rows) == 12
    by_mission: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        by_mission.setdefault((r["num_subtasks"], r["seed"]), []).append(r)
    assert len(by_mission) == 4 and all(len(v) == 3 for v in by_mission.values())
    for group in by_mission.values():
        # the same mission and initial state (layout), recorded three times
        assert len({r["goal"] for r in group}) == 1 and len({r["symbolic"][0] for r in group}) == 1
    # each recording draws its own noise: the action sequences differ
    assert sum(len({tuple(r["actions"]) for r in g}) > 1 for g in by_mission.values()) >= 3
    # repeat 0 of every mission is the episode a single recording gives
    first = {r["episode_id"]: r for r in rows if "-r" not in r["episode_id"]}
    for r in single.to_pylist():
        if r["episode_id"] in first:
            assert r["actions"] == first[r["episode_id"]]["actions"]
    summary = Behaviour()
    summary.add(table)
    result = summary.result()
    assert result["missions"] == 4 and result["episodes_per_mission"] == 3.0
    successes = {
        key: any(r["terminated"] and r["rewards"][-1] > 0 for r in g) for key, g in by_mission.items()
    }
    assert result["missions_with_a_success"] == sum(successes.values())
