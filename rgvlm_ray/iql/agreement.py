"""How a checkpoint's policy agrees with actions, without rollouts: with the bot's `expert_actions` on held-out
behaviour episodes (does it filter the behaviour's noise?) and with the run's own training actions (does it fit
its data? issue 23). Both land in eval.json beside the rollout results."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from rgvlm_ray.config import Config, EnvConfig
from rgvlm_ray.data.env import MAX_SUBTASKS, derive_seed
from rgvlm_ray.errors import UsageError
from rgvlm_ray.iql.checkpoint import load_policy
from rgvlm_ray.iql.data import decode_observations
from rgvlm_ray.iql.memory import episode_memory
from rgvlm_ray.iql.model import IQLNet
from rgvlm_ray.iql.vocab import Vocab

log = logging.getLogger(__name__)
KS = tuple(range(1, MAX_SUBTASKS + 1))
HELDOUT_STREAM = 0x48454C44  # the agreement episodes' mission pool: never the training data's
FIT_THRESHOLD = 0.97  # training-action agreement from which a run counts as fitting its data (issue 23)


def episode_windows(obs: np.ndarray, actions: np.ndarray, context: int) -> tuple[torch.Tensor, ...]:
    """(obs, prev_action, valid) of the windows ending at each of an episode's T steps, built as training builds
    them (update.ReplayBuffer.window): position i holds o_i and a_{i-1} + 1 (0 at the first step)."""
    t = len(actions)
    back = np.arange(context - 1, -1, -1)
    rows = np.arange(t)[:, None] - back[None]  # (T, C): steps of each window
    valid = rows >= 0
    rows = np.clip(rows, 0, None)
    prev = np.where(rows > 0, np.asarray(actions, dtype=np.int64)[np.clip(rows - 1, 0, None)] + 1, 0) * valid
    return torch.from_numpy(obs[rows]), torch.from_numpy(prev), torch.from_numpy(valid)


@torch.no_grad()
def expert_agreement(
    net: IQLNet, vocab: Vocab, episodes: list[dict[str, Any]], target: str = "expert_actions"
) -> dict[str, Any]:
    """The share of states where argmax pi equals the bot's suggested action (`expert_actions`), over the states
    a behaviour episode visits. No rollouts: it shows directly whether the learner filters the behaviour's noise.
    Each episode dict: goal, obs (T+1, ...) uint8, actions (T,), expert_actions (T,), k.
    `target="actions"`: agreement with the episode's own actions, i.e. how well the policy fits its data."""
    hits, by_k = 0, {}
    total = 0
    for ep in episodes:
        obs, prev, valid = episode_windows(ep["obs"], ep["actions"], net.spec.context)
        ids, lengths = vocab.encode([ep["goal"]] * len(prev))
        memory = (
            torch.from_numpy(episode_memory(ep["obs"], np.asarray(ep["actions"]))[:-1])
            if net.spec.memory
            else None
        )
        logits = net.logits(obs, prev, valid, torch.from_numpy(ids), torch.from_numpy(lengths), memory=memory)
        agree = (logits.argmax(-1).numpy() == np.asarray(ep[target])).astype(int)
        hits, total = hits + int(agree.sum()), total + len(agree)
        h, n = by_k.get(ep["k"], (0, 0))
        by_k[ep["k"]] = (h + int(agree.sum()), n + len(agree))
    return {
        "agreement": hits / total if total else None,
        "states": total,
        "by_k": {int(k): round(h / n, 4) for k, (h, n) in sorted(by_k.items()) if n},
    }


def table_episodes(table: Any, need_expert: bool = True) -> list[dict[str, Any]]:
    """Format rows with `symbolic` and `expert_actions` -> expert_agreement's episodes (k 0 when unknown).
    `need_expert=False`: rows without expert actions too (for agreement with the data's own actions)."""
    ks = table.column("num_subtasks").to_pylist() if "num_subtasks" in table.column_names else None
    names = ("goal", "symbolic", "actions", "expert_actions")
    cols = [
        table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows for c in names
    ]
    return [
        {"goal": g, "obs": decode_observations(o, "symbolic"), "actions": np.asarray(a), "expert_actions": e,
         "k": ks[i] if ks else 0}
        for i, (g, o, a, e) in enumerate(zip(*cols, strict=True))
        if a and (e is not None or not need_expert)
    ]  # fmt: skip


def training_episodes(run: dict[str, Any], cfg: Config, count: int) -> list[dict[str, Any]]:
    """Up to `count` of the run's own training episodes, spread over its shards (the first ones of each)."""
    from rgvlm_ray.data import format as fmt

    shards = fmt.list_shards(run["in_path"], cfg.storage)
    per_shard = max(1, -(-count // len(shards)))
    out: list[dict[str, Any]] = []
    for shard in shards:
        table = fmt.read_shard(shard, cfg.storage, columns=["goal", "symbolic", "actions", "num_subtasks"])
        out += table_episodes(table.slice(0, per_shard), need_expert=False)
        if len(out) >= count:
            break
    return out[:count]


def train_agreement_result(net: IQLNet, vocab: Vocab, run: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Does the policy fit its own data? argmax pi vs the training episodes' own actions (issue 23). A learner
    that does not fit its data (below FIT_THRESHOLD) cannot show what its reward is worth."""
    count = cfg.eval.train_agreement_episodes
    if count <= 0:
        return {
            "train_agreement": None,
            "train_agreement_note": "not measured: eval.train_agreement_episodes=0",
        }
    if net.spec.obs_mode != "symbolic":
        return {"train_agreement": None, "train_agreement_note": "not measured: iql.obs_mode=image"}
    try:
        episodes = training_episodes(run, cfg, count)
    except (OSError, UsageError, KeyError) as exc:  # the training data moved or was deleted since
        return {
            "train_agreement": None,
            "train_agreement_note": f"not available: {run.get('in_path')}: {exc}",
        }
    result = expert_agreement(net, vocab, episodes, target="actions")
    return {
        "train_agreement": None if result["agreement"] is None else round(result["agreement"], 4),
        "train_agreement_states": result["states"],
        "train_agreement_by_k": result["by_k"],
        "fits_training_data": None if result["agreement"] is None else result["agreement"] >= FIT_THRESHOLD,
    }


def heldout_episodes(run: dict[str, Any], per_k: int) -> list[dict[str, Any]]:
    """Fresh episodes of the training data's own behaviour (noise, detours, abandoning) on missions from a pool
    the training data never drew from: the states a learner that filters the noise must act well in."""
    import pyarrow as pa

    from rgvlm_ray.config import GenerateConfig
    from rgvlm_ray.data import format as fmt
    from rgvlm_ray.data.env import FrameRenderer, find_mission
    from rgvlm_ray.data.generate import generate_episode

    env = EnvConfig(**run["env"])
    b = run["behaviour"]
    gen = GenerateConfig(
        seed=derive_seed(int(run["pool_seed"]), HELDOUT_STREAM), expert_noise=float(b["expert_noise"]),
        noise_levels=list(b.get("noise_levels", [])), detour=float(b.get("detour", 0.0)),
        abandon=float(b.get("abandon", 0.0)),
    )  # fmt: skip
    renderer = FrameRenderer(env.tile_size)
    rows = [
        generate_episode(env, find_mission(env, k, i, gen.seed, "seen"), gen.expert_noise, renderer, gen)
        for k in KS
        for i in range(per_k)
    ]
    return table_episodes(pa.Table.from_pylist(rows, schema=fmt.EPISODE_SCHEMA))


def agreement_result(checkpoint: str, run: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """eval.json's expert_agreement fields; not available (None, with the reason) rather than 0 when the data
    has no expert actions to compare with."""
    from rgvlm_ray.data import format as fmt

    e = cfg.eval
    if e.agreement_in:
        shards = fmt.list_shards(e.agreement_in, cfg.storage)
        tables = [fmt.read_shard(s, cfg.storage) for s in shards]
        missing = [s for s, t in zip(shards, tables, strict=True) if "expert_actions" not in t.column_names]
        if missing or not shards:
            return unavailable(f"{e.agreement_in} has no expert_actions column (e.g. {missing[:1]})")
        episodes = [ep for t in tables for ep in table_episodes(t)]
    elif e.agreement_episodes_per_k <= 0:
        return unavailable("eval.agreement_episodes_per_k=0")
    elif not run.get("behaviour") or run.get("pool_seed") is None or run.get("env_source") != "metadata":
        return unavailable(
            "the training data was not made by `rgvlm generate`, so there is no bot to ask; pass "
            "eval.agreement_in=DATASET with an expert_actions column"
        )
    else:
        episodes = heldout_episodes(run, e.agreement_episodes_per_k)
    net, vocab, _ = load_policy(checkpoint, cfg.storage)
    if net.spec.obs_mode != "symbolic":
        return unavailable("expert-action agreement is measured for iql.obs_mode=symbolic runs only")
    result = expert_agreement(net, vocab, episodes)
    if result["agreement"] is None:
        return unavailable("no states with expert actions")
    return {
        "expert_agreement": round(result["agreement"], 4),
        "expert_agreement_states": result["states"],
        "expert_agreement_by_k": result["by_k"],
        "expert_agreement_note": "held-out" if not e.agreement_in else e.agreement_in,
    }


def agreement_task(checkpoint: str, run: dict[str, Any], cfg: Config) -> dict[str, Any]:
    torch.set_num_threads(1)
    net, vocab, _ = load_policy(checkpoint, cfg.storage)
    return {**agreement_result(checkpoint, run, cfg), **train_agreement_result(net, vocab, run, cfg)}


def unavailable(reason: str) -> dict[str, Any]:
    log.info("expert-action agreement not available: %s", reason)
    return {"expert_agreement": None, "expert_agreement_note": f"not available: {reason}"}
