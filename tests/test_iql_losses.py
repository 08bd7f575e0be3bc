"""IQL losses and the update step on tiny hand-made tensors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rgvlm_ray.config import IQLConfig
from rgvlm_ray.errors import UsageError
from rgvlm_ray.iql.losses import (
    advantage_weights,
    awr_policy_loss,
    expectile_loss,
    polyak_update,
    q_target,
    twin_q_loss,
)
from rgvlm_ray.iql.model import IQLNet, ModelSpec
from rgvlm_ray.iql.rewards import check_columns, episode_rewards
from rgvlm_ray.iql.update import ReplayBuffer, fit, iql_update, make_optimizer, q_side
from rgvlm_ray.iql.vocab import Vocab, tokenize


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: OpenMP threads only spin against the other processes on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_expectile_loss_is_asymmetric() -> None:
    up, down = torch.tensor([2.0]), torch.tensor([-2.0])
    assert expectile_loss(up, 0.8).item() == pytest.approx(0.8 * 4)
    assert expectile_loss(down, 0.8).item() == pytest.approx(0.2 * 4)
    # tau = 0.5 is half the mean squared error
    diff = torch.tensor([1.0, -3.0, 0.5])
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * float((diff**2).mean()))


def test_expectile_minimiser_is_an_upper_expectile() -> None:
    q = torch.tensor([0.0, 0.0, 0.0, 1.0])
    grid = torch.linspace(0, 1, 1001)
    losses = torch.stack([expectile_loss(q - v, 0.9) for v in grid])
    best = grid[losses.argmin()].item()
    # closed form for {0,0,0,1}: 0.9 (1 - v) = 0.1 * 3 v  ->  v = 0.75, far above the mean 0.25
    assert best == pytest.approx(0.75, abs=1e-3)
    losses_low = torch.stack([expectile_loss(q - v, 0.1) for v in grid])
    assert grid[losses_low.argmin()].item() < 0.25


def test_q_target_stops_bootstrapping_at_terminals() -> None:
    target = q_target(
        torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([2.0, 2.0, -1.0]), 0.9
    )
    assert target.tolist() == pytest.approx([2.8, 1.0, -0.9])


def test_advantage_weights_are_clipped() -> None:
    w = advantage_weights(torch.tensor([0.0, 1.0, 10.0, -1.0]), beta=3.0, max_weight=100.0)
    assert w.tolist() == pytest.approx([1.0, float(np.exp(3.0)), 100.0, float(np.exp(-3.0))], rel=1e-5)


def test_awr_policy_loss_weights_the_log_likelihood() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    actions = torch.tensor([0, 1])
    adv = torch.tensor([0.0, 100.0])  # the second weight clips at 100
    expected = (1.0 * -np.log(0.5) + 100.0 * -np.log(0.8)) / 2
    assert awr_policy_loss(logits, actions, adv, beta=1.0).item() == pytest.approx(expected, rel=1e-5)
    # no gradient flows into the advantage
    adv = torch.tensor([0.5, 0.5], requires_grad=True)
    awr_policy_loss(logits.requires_grad_(), actions, adv, beta=1.0).backward()
    assert adv.grad is None


def test_twin_q_loss_and_polyak() -> None:
    t = torch.tensor([1.0, 1.0])
    assert twin_q_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 3.0]), t).item() == pytest.approx(
        0.5 * (1 + 2)
    )
    target, online = [torch.zeros(3)], [torch.ones(3)]
    polyak_update(target, online, 0.25)
    assert target[0].tolist() == pytest.approx([0.25] * 3)


def test_vocab_roundtrip_and_unknown_words() -> None:
    assert tokenize("Go to the red ball, then open a door") == [
        "go",
        "to",
        "the",
        "red",
        "ball",
        ",",
        "then",
        "open",
        "a",
        "door",
    ]
    vocab = Vocab.build(["go to the red ball", "go to a key, then open a door"])
    assert vocab.tokens[:2] == ("<pad>", "<unk>") and vocab.max_len == 9
    ids, lengths = vocab.encode(["go to the purple ball", "open"], length=6)
    assert ids.shape == (2, 6) and lengths.tolist() == [5, 1]
    assert ids[0, 3] == 1 and ids[0, 5] == 0  # "purple" is unknown; then padding
    assert Vocab.from_json(vocab.to_json()) == vocab


def test_rewards_null_rules_and_weights() -> None:
    cols = {"rgvlm_reward": [0.5, None, 1.0], "rewards": [0.0, 0.0, 0.9]}
    r, keep, nulls = episode_rewards(cols, "rgvlm", {}, "zero")
    assert r.tolist() == pytest.approx([0.5, 0.0, 1.0]) and keep.all() and nulls == 1
    r, keep, _ = episode_rewards(cols, "rgvlm", {}, "drop")
    assert keep.tolist() == [True, False, True]
    r, _, _ = episode_rewards(cols, "rgvlm+sparse", {"rgvlm": 0.5, "sparse": 2.0}, "zero")
    assert r.tolist() == pytest.approx([0.25, 0.0, 0.5 + 1.8])


def test_missing_reward_column_names_the_labeling_command() -> None:
    with pytest.raises(UsageError, match=r"rgvlm label --in data/raw --out \S+ --engine hf"):
        check_columns("rgvlm+sparse", ["rewards", "oracle_reward"], "data/raw")
    with pytest.raises(UsageError, match="--engine clip"):
        check_columns("clip", ["rewards"], "data/raw")
    check_columns("sparse", ["rewards"], "data/raw")


def _one_state_buffer(reward: float, done: float, n: int = 64) -> ReplayBuffer:
    """Every transition: the same grid and goal, action 2, a fixed reward."""
    obs = np.zeros((n, 7, 7, 3), dtype=np.uint8)
    return ReplayBuffer.from_numpy(
        {
            "obs": obs,
            "next_obs": obs,
            "action": np.full(n, 2),
            "reward": np.full(n, reward, dtype=np.float32),
            "done": np.full(n, done, dtype=np.float32),
            "goal_ids": np.tile([[2, 3, 0]], (n, 1)),
            "goal_length": np.full(n, 2),
        }
    )


def test_update_moves_target_by_tau_and_trains_every_head() -> None:
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=32, embed_dim=8, batch_size=16)
    net = IQLNet(ModelSpec("symbolic", 5, 7, cfg.hidden, cfg.embed_dim, "gru"))
    target = copy.deepcopy(net).requires_grad_(False)
    before_online = [p.detach().clone() for p in q_side(net)]
    before_target = [p.detach().clone() for p in q_side(target)]
    opt, sched = make_optimizer(net, cfg, 10)
    iql_update(net, net, target, opt, sched, _one_state_buffer(1.0, 1.0).sample(16), cfg)
    for t0, t1, o1 in zip(before_target, q_side(target), q_side(net), strict=True):
        assert torch.allclose(t1, t0 + cfg.tau * (o1.detach() - t0), atol=1e-6)
    assert any(not torch.equal(o0, o1) for o0, o1 in zip(before_online, q_side(net), strict=True))
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(("done", "expected"), [(1.0, 1.0), (0.0, 1.0 / (1 - 0.5))])
def test_update_learns_the_value_of_a_one_state_mdp(done: float, expected: float) -> None:
    """r = 1 forever in one state: Q -> 1 if every step is terminal, else 1 / (1 - gamma)."""
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=32, embed_dim=8, batch_size=32, discount=0.5, lr=3e-3, tau=0.1)
    net = IQLNet(ModelSpec("symbolic", 5, 7, cfg.hidden, cfg.embed_dim, "mean"))
    _, metrics = fit(_one_state_buffer(1.0, done), net, cfg, steps=400)
    assert metrics["q_mean"] == pytest.approx(expected, rel=0.1)
    assert metrics["v_mean"] == pytest.approx(expected, rel=0.1)
