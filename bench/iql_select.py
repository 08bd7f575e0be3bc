"""Do the actor's advantage weights select good actions? Learner variants side by side on the same data (issue 16).

    .venv/bin/python bench/iql_select.py                            # the table in docs/iql.md, ~15 min on 2 cores
    .venv/bin/python bench/iql_select.py --steps 2000 --only default,bc

Per variant, trained in this process with `iql.update.fit` (no Ray, one thread), on the same generated episodes
of the study's behaviour mixture (generate seed 5, `oracle+sparse` computed from the ground-truth progress):
- agreement: expert-action agreement on held-out behaviour episodes (missions of seed 77; docs/iql.md);
- ess, beta_sd_a, rewarded_x: the weight diagnostics over the last tenth of the updates;
- auc_a: how well the learned advantage Q(s, a) - V(s) ranks the bot's actions above the behaviour's others, on
  4,096 training transitions (0.5: no information), i.e. whether the critic can tell good actions from bad at all.
Two variants run at a time (one thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rgvlm_ray.config import IQLConfig, load_config  # noqa: E402
from rgvlm_ray.data.generate import build_shard, episode_plan  # noqa: E402

VARIANTS: dict[str, dict[str, object]] = {
    "bc": {"learner": "bc"},
    "default": {},
    "norm-b1": {"adv_norm": "std", "beta": 1.0},
    "norm-b2": {"adv_norm": "std", "beta": 2.0},
    "binary": {"weighting": "binary"},
    "online": {"advantage_q": "online"},
    "online-norm-b1": {"advantage_q": "online", "adv_norm": "std", "beta": 1.0},
    "online-binary": {"advantage_q": "online", "weighting": "binary"},
}
MIXTURE = ["generate.expert_noise=0.2", "generate.detour=0.6", "generate.abandon=0.3"]


def episodes(n: int, seed: int) -> pa.Table:
    cfg = load_config(
        dotlist=["generate.out=unused", f"generate.episodes={n}", f"generate.seed={seed}", *MIXTURE]
    )
    table = build_shard(cfg, episode_plan(cfg.generate))
    oracle = [np.diff([0, *p]).astype(np.float32).tolist() for p in table["progress"].to_pylist()]
    return table.append_column("oracle_reward", pa.array(oracle, pa.list_(pa.float32())))


def advantage_auc(net: object, buffer: object, experts: np.ndarray, context: int) -> float:
    from scipy.stats import mannwhitneyu

    g = torch.Generator().manual_seed(1)
    idx = buffer.keep[torch.randint(len(buffer), (4096,), generator=g)]
    rows, goal_index = torch.unique(buffer.goal_row[idx], return_inverse=True)
    obs, prev, valid = buffer.window(idx, context)
    with torch.no_grad():
        _, q1, q2, v, _, _ = net(
            obs, prev, valid, buffer.goal_ids[rows], buffer.goal_lengths[rows], goal_index
        )
        adv = (torch.minimum(q1, q2).gather(1, buffer.action[idx][:, None]).squeeze(1) - v).numpy()
    good = buffer.action[idx].numpy() == experts[idx.numpy()]
    return float(mannwhitneyu(adv[good], adv[~good]).statistic / (good.sum() * (~good).sum()))


def run(name: str, overrides: dict[str, object], train: pa.Table, held: pa.Table, steps: int) -> dict:
    from rgvlm_ray.iql.agreement import expert_agreement, table_episodes
    from rgvlm_ray.iql.data import to_transitions
    from rgvlm_ray.iql.model import IQLNet, ModelSpec
    from rgvlm_ray.iql.update import ReplayBuffer, fit
    from rgvlm_ray.iql.vocab import Vocab

    torch.set_num_threads(1)
    cfg = IQLConfig(**overrides)  # type: ignore[arg-type]
    vocab = Vocab.build(train["goal"].to_pylist(), cfg.max_vocab)
    weights = {"oracle": 1.0, "sparse": 1.0}
    buffer = ReplayBuffer.from_numpy(
        to_transitions(train, "symbolic", "oracle+sparse", weights, "zero", 1.0, vocab)
    )
    spec = ModelSpec("symbolic", len(vocab), 7, cfg.hidden, cfg.embed_dim, cfg.goal_encoder, cfg.context,
                     cfg.history, cfg.token_dim, vocab.clause_separator())  # fmt: skip
    torch.manual_seed(0)
    start = time.perf_counter()
    net, m = fit(buffer, IQLNet(spec), cfg, steps, seed=0)
    experts = np.concatenate([e for a, e in zip(train["actions"].to_pylist(), train["expert_actions"].to_pylist(),
                                                 strict=True) if a])  # fmt: skip
    return {
        "variant": name,
        "overrides": overrides,
        "steps": steps,
        "seconds": round(time.perf_counter() - start),
        "agreement": round(expert_agreement(net, vocab, table_episodes(held))["agreement"], 3),
        "ess": round(m["awr_ess"], 2),
        "beta_sd_a": round(m["beta_adv_std"], 2),
        "rewarded_x": round(m["reward_weight_ratio"], 2),
        "auc_a": round(advantage_auc(net, buffer, experts, spec.context), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    train, held = episodes(args.episodes, 5), episodes(60, 77)
    agree = np.mean([a == e for a, e in zip(*(np.concatenate(train[c].to_pylist()) for c in ("actions", "expert_actions")), strict=True)])  # fmt: skip
    print(f"behaviour data: {train.num_rows} episodes, actions equal to the bot's {agree:.3f}", flush=True)
    with ProcessPoolExecutor(2) as pool:
        futures = [pool.submit(run, n, VARIANTS[n], train, held, args.steps) for n in names]
        for future in futures:
            print(json.dumps(future.result()), flush=True)


if __name__ == "__main__":
    main()
