"""Model options that are off by default, each measured in BENCHMARKS.md ("Replay or generalisation?").

`iql.critic_encoder=separate`: the critic's losses never reach the policy, so IQL with flat weights is BC. The test trains the same network twice from the same start, once as IQL (beta 0: every weight exp(0) = 1) and
once as BC, on the same batches, and reads the actor's parameters back: equal with a critic encoder of its own,
not equal on a shared encoder (the check that the comparison can fail).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rgvlm_ray.config import IQLConfig, load_config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.iql.model import IQLNet, ModelSpec, target_heads
from rgvlm_ray.iql.trainer import check_runs, validate
from rgvlm_ray.iql.update import Batch, ReplayBuffer, fit, iql_update, make_optimizer

CONTEXT, ACTIONS, N = 4, 7, 64


def toy_buffer() -> ReplayBuffer:
    rng = np.random.default_rng(0)
    episode = np.repeat(np.arange(8), N // 8)
    return ReplayBuffer.from_numpy(
        {
            "obs": rng.integers(0, 6, (N, 7, 7, 3)).astype(np.uint8),
            "next_obs": rng.integers(0, 6, (N, 7, 7, 3)).astype(np.uint8),
            "action": rng.integers(0, ACTIONS, N),
            "reward": rng.random(N).astype(np.float32),
            "done": np.zeros(N, np.float32),
            "episode": episode,
            "step": np.tile(np.arange(N // 8), 8),
            "goal_ids": np.stack([[1 + e % 3, 2, 0] for e in episode]),
        }
    )


def actor_after_updates(critic_encoder: str, learner: str, start: dict[str, torch.Tensor]) -> dict:
    spec = ModelSpec("symbolic", 5, ACTIONS, hidden=32, embed_dim=8, context=CONTEXT, token_dim=16)
    spec = ModelSpec(**{**spec.__dict__, "critic_encoder": critic_encoder})
    torch.manual_seed(1)
    net = IQLNet(spec)
    net.load_state_dict({**net.state_dict(), **start})
    cfg = IQLConfig(learner=learner, beta=0.0, batch_size=32, grad_clip=1.0)
    optimizer, scheduler = make_optimizer(net, cfg, 10)
    target, buffer, gen = target_heads(net), toy_buffer(), torch.Generator().manual_seed(2)
    for _ in range(5):
        iql_update(net, net, target, optimizer, scheduler, buffer.sample(32, CONTEXT, gen), cfg)
    return {k: v for k, v in net.state_dict().items() if k in start}


@pytest.mark.parametrize("critic_encoder", ["separate", "shared"])
def test_flat_weighted_iql_is_bc_only_with_a_critic_encoder_of_its_own(critic_encoder: str) -> None:
    torch.manual_seed(0)
    shared = IQLNet(ModelSpec("symbolic", 5, ACTIONS, hidden=32, embed_dim=8, context=CONTEXT, token_dim=16))
    # The actor: every module but the critic's heads (and the critic's encoder, which `shared` has not).
    start = {k: v.clone() for k, v in shared.state_dict().items() if not k.startswith(("q1.", "q2.", "v."))}
    iql = actor_after_updates(critic_encoder, "iql", start)
    bc = actor_after_updates(critic_encoder, "bc", start)
    moved = max((bc[k] - start[k]).abs().max().item() for k in start)
    gap = max((iql[k] - bc[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # BC did learn
    if critic_encoder == "separate":
        assert gap < 1e-6, gap
    else:
        assert gap > 1e-4, gap  # the critic's losses moved the shared encoder


def test_a_separate_critic_checkpoint_round_trips_and_old_specs_load_as_shared() -> None:
    spec = ModelSpec(
        "symbolic", 5, ACTIONS, hidden=32, embed_dim=8, context=CONTEXT, critic_encoder="separate"
    )
    assert ModelSpec.from_json(spec.to_json()) == spec
    old = {k: v for k, v in spec.__dict__.items() if k not in ("critic_encoder", "memory")}
    assert ModelSpec(**old).critic_encoder == "shared"
    net = IQLNet(spec)
    assert net.critic is not None and any(k.startswith("critic.") for k in net.state_dict())
    assert IQLNet(ModelSpec(**old)).critic is None


def test_conv_cells_learn_and_are_refused_for_images() -> None:
    """`iql.obs_encoder=conv`: bc through the convolutions memorises a toy buffer (chance is 1/7)."""
    torch.manual_seed(0)
    buffer = toy_buffer()
    spec = ModelSpec(
        "symbolic", 5, ACTIONS, hidden=32, embed_dim=8, context=1, token_dim=16, obs_encoder="conv"
    )
    net, _ = fit(buffer, IQLNet(spec), IQLConfig(learner="bc", batch_size=64, lr=1e-2), 100)
    assert net.step_encoder.conv is not None
    with torch.no_grad():
        obs, prev, valid = buffer.window(torch.arange(N), 1)
        logits = net.logits(obs[:, :1], prev[:, :1], valid[:, :1], buffer.goal_ids[buffer.goal_row],
                            buffer.goal_lengths[buffer.goal_row])  # fmt: skip
    assert (logits.argmax(-1) == buffer.action).float().mean() > 0.6
    cfg = load_config(
        dotlist=["train.in_path=a", "train.out_path=b", "iql.obs_mode=image", "iql.obs_encoder=conv"]
    )
    with pytest.raises(UsageError, match="obs_encoder=conv applies to symbolic"):
        validate(cfg)


def test_runs_of_windows_encode_each_observation_once_and_match_the_plain_windows() -> None:
    """`iql.sample_runs`: a run's windows are the buffer's own windows of those rows, each observation gathered
    once; the features through obs_index equal those of the plain (B, C + 1) observations."""
    buffer, gen = toy_buffer(), torch.Generator().manual_seed(3)
    batch = buffer.sample(32, CONTEXT, gen, runs=4)
    starts = set(buffer.run_starts(4).tolist())
    assert len(buffer.to(torch.device("cpu")).run_starts(4)) == len(starts)  # a moved copy rebuilds its cache
    # brute force, with some rows left out of sampling (null_reward=drop): runs never cross an episode or a dropped row
    buffer.keep = torch.tensor([i for i in range(N) if i % 5 != 2])
    buffer.__dict__.pop("_run_starts")
    kept, ep = set(buffer.keep.tolist()), [i // (N // 8) for i in range(N)]
    expect = [i for i in range(N - 3) if all(j in kept and ep[j] == ep[i] for j in range(i, i + 4))]
    assert buffer.run_starts(4).tolist() == expect
    buffer = toy_buffer()
    assert batch.obs_index is not None and batch.obs_index.shape == (32, CONTEXT + 1)
    assert len(batch.obs) < 32 * (CONTEXT + 1) / 2  # shared observations are gathered once
    rows = batch_rows(buffer, batch, 4)
    # runs of 4 consecutive steps of one episode, each starting where 4 such steps exist
    assert all(r[0] in starts and r == list(range(r[0], r[0] + 4)) for r in rows)
    flat = torch.tensor([i for r in rows for i in r])
    obs, prev, valid = buffer.window(flat, CONTEXT)
    assert torch.equal(batch.obs[batch.obs_index], obs) and torch.equal(batch.prev_action, prev)
    assert torch.equal(batch.valid, valid)
    torch.manual_seed(0)
    net = IQLNet(ModelSpec("symbolic", 5, ACTIONS, hidden=32, embed_dim=8, context=CONTEXT, token_dim=16))
    args = (batch.prev_action, batch.valid, batch.goal_ids, batch.goal_lengths, batch.goal_index)
    shared = net(batch.obs, *args, obs_index=batch.obs_index)
    plain = net(obs, *args)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(shared, plain, strict=True))


def batch_rows(buffer: ReplayBuffer, batch: Batch, runs: int) -> list[list[int]]:
    """The buffer rows of a run-sampled batch, read back from its s' observations and actions."""
    rows = []
    for i in range(0, len(batch.action), runs):
        found = []
        for j in range(i, i + runs):
            nxt = batch.obs[batch.obs_index[j, -1]]
            match = [
                r
                for r in range(len(buffer.action))
                if torch.equal(buffer.next_obs[r], nxt) and int(buffer.action[r]) == int(batch.action[j])
            ]
            found.append(match[0])
        rows.append(found)
    return rows


def test_runs_longer_than_every_episode_or_not_dividing_the_batch_are_refused() -> None:
    with pytest.raises(UsageError, match="longest in data/ has 5: set iql.sample_runs <= 5"):
        check_runs(8, 5, "data/")
    check_runs(4, 5, "data/")
    cfg = load_config(dotlist=["train.in_path=a", "train.out_path=b", "iql.sample_runs=3"])
    with pytest.raises(UsageError, match="divide iql.batch_size"):
        validate(cfg)
