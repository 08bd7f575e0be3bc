"""IQL losses and the update step on tiny hand-made tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgvlm_ray.config import IQLConfig
from rgvlm_ray.errors import UsageError
from rgvlm_ray.iql.losses import (
    advantage_weights,
    awr_policy_loss,
    expectile_loss,
    normalized_advantage,
    policy_weights,
    polyak_update,
    q_target,
    twin_q_loss,
    weight_diagnostics,
)
from rgvlm_ray.iql.model import IQLNet, ModelSpec, target_heads
from rgvlm_ray.iql.update import ReplayBuffer, fit, history_lengths, iql_update, make_optimizer, q_heads
from rgvlm_ray.iql.vocab import Vocab, tokenize
from rgvlm_ray.labelstore.rewards import (
    check_columns,
    check_weights,
    episode_rewards,
    labelers_in,
    reward_columns,
)


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
    with pytest.raises(UsageError, match=r"--engine noisy_oracle labeler\.oracle_noise=0\.3,"):
        check_columns("noisy30+sparse", ["rewards", "oracle_reward"], "data/raw")


def test_reward_modes_combine_any_labeler_with_sparse() -> None:
    from rgvlm_ray.labelers.noisy_oracle import noisy_label
    from rgvlm_ray.labelers.oracle import oracle_label
    from tests.helpers import generated_table

    row = next(r for r in generated_table(episodes=9, subtasks="1-3").to_pylist() if r["num_subtasks"] >= 2)
    cols = {"rewards": row["rewards"], **oracle_label(row), **noisy_label(row, 0.3, 0)}
    assert sum(row["rewards"]) > 0 and sum(cols["oracle_reward"]) == row["num_subtasks"]
    r, keep, nulls = episode_rewards(cols, "oracle+sparse", {"rgvlm": 1.0, "sparse": 1.0}, "zero")
    expected = [a + b for a, b in zip(cols["oracle_reward"], row["rewards"], strict=True)]
    assert r.tolist() == pytest.approx(expected) and keep.all() and nulls == 0
    r, _, _ = episode_rewards(cols, "noisy30+sparse", {"sparse": 2.0, "noisy30": 0.5}, "zero")
    expected = [0.5 * a + 2.0 * b for a, b in zip(cols["noisy30_reward"], row["rewards"], strict=True)]
    assert r.tolist() == pytest.approx(expected)
    r, _, _ = episode_rewards(cols, "noisy30", {"noisy30": 5.0}, "zero")  # one term: weight 1
    assert r.tolist() == pytest.approx(cols["noisy30_reward"])
    assert reward_columns("clip+sparse") == ("clip_reward", "rewards")
    assert reward_columns("rgvlm+sparse") == ("rgvlm_reward", "rewards")
    assert labelers_in("sparse+noisy10+oracle") == ["noisy10", "oracle"] and labelers_in("sparse") == []
    for bad in ("orcale", "oracle+", "noisy5+sparse", "oracle+sparse+oracle", "oracle*2"):
        with pytest.raises(UsageError, match=r"TERM\+TERM"):
            reward_columns(bad)
    check_weights("oracle+sparse", {"rgvlm": 1.0, "sparse": 2.0, "noisy30": 0.5})
    with pytest.raises(UsageError, match="rgvml"):
        check_weights("rgvlm+sparse", {"rgvml": 1.0, "sparse": 1.0})


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
            "episode": np.arange(n),  # one-step episodes
            "step": np.zeros(n, dtype=np.int32),
        }
    )


def test_update_moves_target_by_tau_and_trains_every_head() -> None:
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=32, embed_dim=8, batch_size=16)
    net = IQLNet(ModelSpec("symbolic", 5, 7, cfg.hidden, cfg.embed_dim, "gru", context=3))
    target = target_heads(net)
    before_online = [p.detach().clone() for p in q_heads(net)]
    before_target = [p.detach().clone() for p in target.parameters()]
    opt, sched = make_optimizer(net, cfg, 10)
    iql_update(net, net, target, opt, sched, _one_state_buffer(1.0, 1.0).sample(16, 3), cfg)
    for t0, t1, o1 in zip(before_target, target.parameters(), q_heads(net), strict=True):
        assert torch.allclose(t1, t0 + cfg.tau * (o1.detach() - t0), atol=1e-6)
    assert any(not torch.equal(o0, o1) for o0, o1 in zip(before_online, q_heads(net), strict=True))
    assert all(p.grad is not None for p in net.parameters())


def test_warm_up_ramps_every_lr_and_cosine_still_ends_the_actors_at_zero() -> None:
    cfg = IQLConfig(hidden=32, embed_dim=8, lr=1e-3, warmup_steps=4)
    net = IQLNet(ModelSpec("symbolic", 5, 7, cfg.hidden, cfg.embed_dim, "gru", context=1))
    opt, sched = make_optimizer(net, cfg, 10)
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [round(c, 6) for c, _ in lrs[:5]] == [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3]  # critic: ramp, then flat
    assert lrs[1][1] < lrs[1][0] and lrs[3][1] < 1e-3  # actor: ramp times cosine
    assert sched.lr_lambdas[1](10) == 0.0


def test_grad_clip_bounds_the_global_norm_of_the_step() -> None:
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=32, embed_dim=8, batch_size=16, grad_clip=1e-3)
    net = IQLNet(ModelSpec("symbolic", 5, 7, cfg.hidden, cfg.embed_dim, "gru", context=1))
    target = target_heads(net)
    opt, sched = make_optimizer(net, cfg, 10)
    iql_update(net, net, target, opt, sched, _one_state_buffer(1.0, 1.0).sample(16, 1), cfg)
    norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in net.parameters() if p.grad is not None])
    )
    assert norm <= 1e-3 * (1 + 1e-4)


@pytest.mark.parametrize(("done", "expected"), [(1.0, 1.0), (0.0, 1.0 / (1 - 0.5))])
def test_update_learns_the_value_of_a_one_state_mdp(done: float, expected: float) -> None:
    """r = 1 forever in one state: Q -> 1 if every step is terminal, else 1 / (1 - gamma)."""
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=32, embed_dim=8, batch_size=32, discount=0.5, lr=3e-3, tau=0.1)
    net = IQLNet(ModelSpec("symbolic", 5, 7, cfg.hidden, cfg.embed_dim, "mean"))
    _, metrics = fit(_one_state_buffer(1.0, done), net, cfg, steps=400)
    assert metrics["q_mean"] == pytest.approx(expected, rel=0.1)
    assert metrics["v_mean"] == pytest.approx(expected, rel=0.1)


def _episodes_buffer(lengths: list[int]) -> ReplayBuffer:
    """Episodes whose observations carry (episode, step) in their first cell, to read windows back."""
    episode = np.concatenate([np.full(t, e) for e, t in enumerate(lengths)])
    step = np.concatenate([np.arange(t) for t in lengths]).astype(np.int32)
    obs = np.zeros((len(step), 7, 7, 3), dtype=np.uint8)
    obs[:, 0, 0, 0], obs[:, 0, 0, 1] = episode, step
    nxt = obs.copy()
    nxt[:, 0, 0, 1] += 1
    return ReplayBuffer.from_numpy(
        {
            "obs": obs,
            "next_obs": nxt,
            "action": (step % 7).astype(np.int64),
            "reward": np.zeros(len(step), np.float32),
            "done": np.zeros(len(step), np.float32),
            "goal_ids": np.tile([[2, 0]], (len(step), 1)),
            "goal_length": np.ones(len(step)),
            "episode": episode,
            "step": step,
        }
    )


def test_windows_end_at_t_and_never_cross_episodes() -> None:
    buffer = _episodes_buffer([2, 5])  # rows 0-1: episode 0; rows 2-6: episode 1
    obs, prev, valid = buffer.window(torch.tensor([0, 3, 6]), context=4)
    assert obs.shape == (3, 5, 7, 7, 3)
    # Row 0 (episode 0, step 0): three padded positions, then s, then s'.
    assert valid[0].tolist() == [False, False, False, True, True]
    assert obs[0, 3:, 0, 0, 1].tolist() == [0, 1] and prev[0].tolist() == [0, 0, 0, 0, 1]
    # Row 3 (episode 1, step 1): the window must not reach back into episode 0.
    assert valid[1].tolist() == [False, False, True, True, True]
    assert obs[1, 2:, 0, 0, 0].tolist() == [1, 1, 1] and obs[1, 2:, 0, 0, 1].tolist() == [0, 1, 2]
    assert prev[1, 2:].tolist() == [0, 1, 2]  # no action before step 0; then a_0 + 1 = 1, a_1 + 1 = 2
    # Row 6 (episode 1, step 4): a full window of steps 1..4, then s' = step 5.
    assert valid[2].all() and obs[2, :, 0, 0, 1].tolist() == [1, 2, 3, 4, 5]
    assert prev[2].tolist() == [1, 2, 3, 4, 5]


def test_history_lengths_restart_at_episode_and_shard_cuts() -> None:
    # Episode 7 split between two workers: this buffer starts at its step 3.
    hist = history_lengths(np.array([7, 7, 8, 8, 8]), np.array([3, 4, 0, 1, 3]))
    assert hist.tolist() == [0, 1, 0, 1, 0]  # step 3 after step 1: a gap, so a new run


def test_context_one_ignores_history() -> None:
    """context=1 is the memoryless model: changing earlier observations or actions changes nothing."""
    torch.manual_seed(0)
    net = IQLNet(ModelSpec("symbolic", 5, 7, 32, 8, "attn", context=1))
    obs = torch.randint(0, 11, (4, 2, 7, 7, 3), dtype=torch.uint8)
    prev = torch.randint(0, 8, (4, 2))
    ids, lengths, index = torch.tensor([[2, 3]]), torch.tensor([2]), torch.zeros(4, dtype=torch.long)
    valid = torch.ones(4, 2, dtype=torch.bool)
    out = net(obs, prev, valid, ids, lengths, index)
    out2 = net(obs, torch.randint(0, 8, (4, 2)), valid, ids, lengths, index)
    assert all(torch.equal(a, b) for a, b in zip(out, out2, strict=True))


def test_history_model_reads_earlier_steps_and_ignores_padding() -> None:
    torch.manual_seed(0)
    net = IQLNet(ModelSpec("symbolic", 5, 7, 32, 8, "attn", context=3))
    obs = torch.randint(0, 11, (2, 4, 7, 7, 3), dtype=torch.uint8)
    prev = torch.randint(1, 8, (2, 4))
    ids, lengths, index = torch.tensor([[2, 3]]), torch.tensor([2]), torch.zeros(2, dtype=torch.long)
    valid = torch.ones(2, 4, dtype=torch.bool)
    base = net(obs, prev, valid, ids, lengths, index)[1]
    changed = obs.clone()
    changed[:, 1] = (changed[:, 1] + 1) % 11  # an earlier step inside the window of s
    assert not torch.allclose(net(changed, prev, valid, ids, lengths, index)[1], base)
    pad = valid.clone()
    pad[:, 0] = False  # position 0 becomes padding: what it holds must not matter
    masked = net(obs, prev, pad, ids, lengths, index)[1]
    other = obs.clone()
    other[:, 0] = 0
    assert torch.allclose(net(other, prev, pad, ids, lengths, index)[1], masked, atol=1e-6)


WRONG = 0.25


def _cue_buffer(n_episodes: int = 64) -> tuple[ReplayBuffer, np.ndarray]:
    """A T-maze in miniature: step 0 shows a cue, step 1 nothing, step 2 the junction; the data's last action
    repeats the cue (action 0 or 1) and only that earns a reward. Only a window reaching step 0 can act right."""
    rng = np.random.default_rng(0)
    cues = rng.integers(0, 2, n_episodes)
    obs = np.zeros((n_episodes, 3, 7, 7, 3), dtype=np.uint8)
    obs[:, 0, 3, 3, 0] = 5 + cues  # a key (5) or a ball (6) in front of the agent, then an empty view,
    obs[:, 2, 3, 3, 0] = 2  # then a wall: the junction, where the cue decides the turn
    actions = np.stack([np.full(n_episodes, 2), np.full(n_episodes, 2), cues], 1)
    rewards = np.zeros((n_episodes, 3), dtype=np.float32)
    rewards[:, 2] = 1.0
    # Some of the behaviour data is wrong at the last step (no reward then): IQL must prefer the cue's action.
    wrong = rng.random(n_episodes) < WRONG
    actions[wrong, 2] = 1 - cues[wrong]
    rewards[wrong, 2] = 0.0
    done = np.zeros((n_episodes, 3), dtype=np.float32)
    done[:, 2] = 1.0
    nxt = np.concatenate([obs[:, 1:], obs[:, :1] * 0], 1)
    return ReplayBuffer.from_numpy(
        {
            "obs": obs.reshape(-1, 7, 7, 3),
            "next_obs": nxt.reshape(-1, 7, 7, 3),
            "action": actions.reshape(-1),
            "reward": rewards.reshape(-1),
            "done": done.reshape(-1),
            "goal_ids": np.tile([[2, 0]], (3 * n_episodes, 1)),
            "goal_length": np.ones(3 * n_episodes),
            "episode": np.repeat(np.arange(n_episodes), 3),
            "step": np.tile(np.arange(3), n_episodes),
        }
    ), cues


@pytest.mark.parametrize(("context", "solves"), [(3, True), (1, False)])
def test_history_window_solves_what_one_view_cannot(context: int, solves: bool) -> None:
    """The critic must rank the cue's action first at the junction iff its window reaches the cue.

    With `actor_trains_encoder=false`: with the policy's gradient on the shared encoder (the default), this
    toy task was learned in only 1 of 4 seeds at 300 updates (docs/iql.md, "What trains what").
    """
    torch.manual_seed(0)
    buffer, cues = _cue_buffer()
    cfg = IQLConfig(hidden=64, embed_dim=8, token_dim=32, batch_size=64, lr=3e-3, beta=10.0, context=context,
                    actor_trains_encoder=False)  # fmt: skip
    net = IQLNet(ModelSpec("symbolic", 5, 7, cfg.hidden, cfg.embed_dim, "attn", context, token_dim=32))
    net, _ = fit(buffer, net, cfg, steps=300)
    last = torch.arange(len(cues)) * 3 + 2  # every episode's junction
    obs, prev, valid = buffer.window(last, context)
    with torch.no_grad():
        z = net.encode(
            obs, prev, valid, torch.tensor([[2]]), torch.tensor([1]), torch.zeros_like(last), queries=2
        )
        q = torch.minimum(net.q1(z[:, 0]), net.q2(z[:, 0]))[:, :2]
    accuracy = float((q.argmax(1).numpy() == cues).mean())
    print(f"context {context}: Q ranks the cue's action first at {accuracy:.2f} of junctions")
    assert (accuracy >= 0.9) if solves else (accuracy <= 0.7)


# --- weights that select (issue 16) ----------------------------------------------------------------------------


def test_normalized_advantage_is_zero_not_nan_when_every_advantage_is_equal() -> None:
    for adv in (torch.zeros(8), torch.full((8,), 0.3), torch.tensor([2.0])):
        out = normalized_advantage(adv)
        assert torch.isfinite(out).all() and (out == 0).all()
    out = normalized_advantage(torch.tensor([0.0, 0.01, 0.02, 0.03]))
    assert out.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-4)
    # beta * A_norm: the weights' spread no longer depends on the advantages' scale
    small, _ = policy_weights(torch.tensor([0.0, 0.01, 0.02, 0.03]), 1.0, 100.0, "std", "exp")
    large, _ = policy_weights(torch.tensor([0.0, 10.0, 20.0, 30.0]), 1.0, 100.0, "std", "exp")
    assert torch.allclose(small, large)
    flat, exponent = policy_weights(torch.full((4,), 0.5), 3.0, 100.0, "std", "exp")
    assert torch.equal(flat, torch.ones(4)) and torch.equal(exponent, torch.zeros(4))


def test_policy_weights_binary_is_crr_indicator_and_none_is_cloning() -> None:
    adv = torch.tensor([-0.2, 0.0, 0.1, 3.0])
    binary, _ = policy_weights(adv, 5.0, 100.0, "none", "binary")
    assert binary.tolist() == [0.0, 0.0, 1.0, 1.0]
    clone, _ = policy_weights(adv, 5.0, 100.0, "none", "none")
    assert clone.tolist() == [1.0] * 4
    exp, exponent = policy_weights(adv, 5.0, 100.0, "none", "exp")
    assert exp.tolist() == pytest.approx(advantage_weights(adv, 5.0).tolist())
    assert exponent.tolist() == pytest.approx((5.0 * adv).tolist())


def test_weight_diagnostics_ess_spread_clip_and_rewarded_ratio() -> None:
    flat = weight_diagnostics(torch.ones(4), torch.zeros(4), torch.tensor([0.0, 0, 0, 1]), 100.0)
    ess, spread, clipped, ratio = flat.tolist()
    assert (ess, spread, clipped, ratio) == pytest.approx((1.0, 0.0, 0.0, 1.0))
    # one transition carries the batch: ESS = 1/N; it is the rewarded one: ratio N
    peaked = weight_diagnostics(
        torch.tensor([0.0, 0, 0, 100.0]), torch.tensor([0.0, 0, 0, 5.0]), torch.tensor([0.0, 0, 0, 1]), 100.0
    )
    assert peaked.tolist()[:3] == pytest.approx(
        [0.25, float(torch.tensor([0.0, 0, 0, 5.0]).std(unbiased=False)), 0.25]
    )
    assert peaked[3].item() == pytest.approx(4.0)
    none_rewarded = weight_diagnostics(torch.ones(3), torch.zeros(3), torch.zeros(3), 100.0)
    assert torch.isnan(none_rewarded[3])
    all_zero = weight_diagnostics(torch.zeros(3), torch.zeros(3), torch.zeros(3), 100.0)  # binary, no A > 0
    assert all_zero[0].item() == 0.0


def _two_action_buffer(n: int = 128) -> ReplayBuffer:
    """One state, two dataset actions half and half: action 2 ends the episode with reward 1, action 0 with 0.
    Behaviour cloning cannot prefer either; a learner that uses the reward must pick action 2."""
    obs = np.zeros((n, 7, 7, 3), dtype=np.uint8)
    action = np.where(np.arange(n) % 2 == 0, 2, 0)
    return ReplayBuffer.from_numpy(
        {
            "obs": obs,
            "next_obs": obs,
            "action": action,
            "reward": (action == 2).astype(np.float32) * 0.05,  # a small reward: a small advantage scale
            "done": np.ones(n, dtype=np.float32),
            "goal_ids": np.tile([[2, 3, 0]], (n, 1)),
            "goal_length": np.full(n, 2),
            "episode": np.arange(n),
            "step": np.zeros(n, dtype=np.int32),
        }
    )


def _p_good(cfg: IQLConfig, seed: int = 0) -> tuple[float, dict[str, float]]:
    torch.manual_seed(seed)
    net = IQLNet(ModelSpec("symbolic", 5, 7, cfg.hidden, cfg.embed_dim, "mean"))
    net, metrics = fit(_two_action_buffer(), net, cfg, steps=200, seed=seed)
    with torch.no_grad():
        logits = net.logits(
            torch.zeros(1, 1, 7, 7, 3, dtype=torch.uint8), torch.zeros(1, 1, dtype=torch.long),
            torch.ones(1, 1, dtype=torch.bool), torch.tensor([[2, 3]]), torch.tensor([2]),
        )  # fmt: skip
    return torch.softmax(logits, -1)[0, 2].item(), metrics


def test_the_learner_tells_rewards_apart_where_behaviour_cloning_cannot() -> None:
    """What docs/iql.md ("Weights that select") measured, on one state with a good and a bad action: BC stays at
    half and half; the Polyak target heads on the moving shared encoder make the advantage point the wrong way;
    the online heads give the right sign but, at this reward scale, flat exp(beta A) weights; normalised
    advantages (or CRR's filter) on the online heads select the good action."""
    base = dict(hidden=32, embed_dim=8, token_dim=32, batch_size=64, lr=3e-3, context=1)
    bc, _ = _p_good(IQLConfig(**base, learner="bc"))
    lagging, lag_metrics = _p_good(IQLConfig(**base))
    flat, flat_metrics = _p_good(IQLConfig(**base, advantage_q="online"))
    norm, norm_metrics = _p_good(IQLConfig(**base, advantage_q="online", adv_norm="std", beta=2.0))
    binary, _ = _p_good(IQLConfig(**base, advantage_q="online", weighting="binary"))
    assert bc == pytest.approx(0.5, abs=0.1)
    assert lag_metrics["reward_weight_ratio"] < 1.0 and lagging < 0.4
    assert flat_metrics["beta_adv_std"] < 0.3 and flat_metrics["awr_ess"] > 0.9 and flat < 0.7
    assert norm_metrics["beta_adv_std"] == pytest.approx(2.0, abs=0.05)
    assert norm_metrics["reward_weight_ratio"] > 1.3
    assert norm > 0.8 and binary > 0.8
