"""A learning test that can fail: IQL on a small k = 1 dataset must clearly beat a random policy.

Trained in-process (the update step is the same one Ray Train runs; tests/test_iql_train.py covers the
Ray Train path). Evaluated on a fixed set of seen missions with fixed sampling seeds.
"""

from __future__ import annotations

import pyarrow as pa
import torch

from rgvlm_ray.config import EnvConfig, IQLConfig
from rgvlm_ray.data.env import NUM_ACTIONS, FrameRenderer, find_mission
from rgvlm_ray.data.generate import generate_episode
from rgvlm_ray.iql.data import to_transitions
from rgvlm_ray.iql.evaluate import checkpoint_policy, random_policy, run_missions, summarize
from rgvlm_ray.iql.model import IQLNet, ModelSpec
from rgvlm_ray.iql.update import ReplayBuffer, fit
from rgvlm_ray.iql.vocab import Vocab
from rgvlm_ray.labelers.oracle import oracle_label

EPISODES, STEPS, EVAL_MISSIONS = 40, 500, 30


def k1_dataset(env: EnvConfig) -> pa.Table:
    """Noisy-expert episodes (25% random actions) on k = 1 missions 0..EPISODES-1, oracle-labeled."""
    renderer = FrameRenderer(env.tile_size)
    rows = [
        generate_episode(env, find_mission(env, 1, i, 0, "seen"), 0.25, renderer) for i in range(EPISODES)
    ]
    for row in rows:
        row.update(oracle_label(row))
    return pa.Table.from_pylist(rows)


def test_iql_beats_random_on_k1(one_thread) -> None:
    torch.manual_seed(0)
    env = EnvConfig()
    table = k1_dataset(env)
    vocab = Vocab.build(table["goal"].to_pylist())
    cfg = IQLConfig(batch_size=128, hidden=128)
    buffer = ReplayBuffer.from_numpy(to_transitions(table, "symbolic", "oracle", {}, "zero", 1.0, vocab))
    spec = ModelSpec(
        *("symbolic", len(vocab), NUM_ACTIONS, cfg.hidden, cfg.embed_dim, cfg.goal_encoder, cfg.context),
        clause_sep=vocab.clause_separator(),
    )
    net, metrics = fit(buffer, IQLNet(spec), cfg, STEPS, seed=0)

    missions = list(range(EVAL_MISSIONS))
    trained = summarize(
        run_missions(env, checkpoint_policy(net, vocab, greedy=False, seed=1), 1, missions, 0, "seen")
    )
    baseline = summarize(run_missions(env, random_policy(seed=1), 1, missions, 0, "seen"))
    ours, rand = trained[0]["success_rate"], baseline[0]["success_rate"]
    print(f"k=1 success: IQL {ours:.2f}, random {rand:.2f}; final metrics {metrics}")
    assert ours >= rand + 0.2 and ours >= 2 * rand, (ours, rand)
