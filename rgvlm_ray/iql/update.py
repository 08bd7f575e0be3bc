"""One IQL update on a batch, plus the in-memory replay buffer it samples from. No Ray imports here, so
the step can be benchmarked on a machine that has only torch (bench/iql.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from rgvlm_ray.config import IQLConfig
from rgvlm_ray.iql.losses import (
    expectile_loss,
    policy_weights,
    polyak_update,
    q_target,
    twin_q_loss,
    weight_diagnostics,
    weighted_bc_loss,
)
from rgvlm_ray.iql.model import IQLNet, target_heads

METRICS = (
    "q_loss",
    "v_loss",
    "policy_loss",
    "q_mean",
    "v_mean",
    "adv_mean",
    "adv_std",
    "adv_max",
    "adv_weight_mean",
    "awr_ess",
    "beta_adv_std",
    "adv_clipped_frac",
    "reward_weight_ratio",
)
LEARNERS = ("iql", "bc", "filtered_bc")
ADV_NORMS = ("none", "std")
WEIGHTINGS = ("exp", "binary")
ADVANTAGE_QS = ("target", "online")


def moved(obj: Any, device: torch.device) -> Any:
    """A copy of a dataclass of tensors (or None) with every field on `device`."""
    return type(obj)(
        **{
            f.name: None if (v := getattr(obj, f.name)) is None else v.to(device, non_blocking=True)
            for f in fields(obj)
        }
    )


@dataclass
class Batch:
    """B windows of C + 1 positions: the last C observations up to s, then s' (docs/iql.md, "History")."""

    obs: torch.Tensor  # (B, C+1, 7, 7, 3) or (B, C+1, 56, 56, 3) uint8
    prev_action: torch.Tensor  # (B, C+1) int64: the action that led to each observation + 1; 0 = none
    valid: torch.Tensor  # (B, C+1) bool: False before the episode's first observation (padding)
    action: torch.Tensor  # (B,) int64
    reward: torch.Tensor  # (B,) float32
    done: torch.Tensor  # (B,) float32: 1 only for true terminals
    goal_ids: torch.Tensor  # (G, L) int64: the distinct goals in this batch
    goal_lengths: torch.Tensor  # (G,)
    goal_index: torch.Tensor  # (B,) row of goal_ids for each transition
    memory: torch.Tensor | None = None  # (B, 2, M) uint8 episode-memory counts at s and s' (iql/memory.py)
    # With runs of consecutive windows (iql.sample_runs > 1): obs holds each distinct observation once, (U, ...),
    # and obs_index (B, C+1) says which one sits at each window position.
    obs_index: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        return moved(self, device)


@dataclass
class ReplayBuffer:
    """All of one worker's transitions in memory, in episode order, goals stored once (CORL's ReplayBuffer,
    plus goals and windows). Rows of one episode are contiguous and in step order, so the window ending at
    row i is rows i-C+1..i, cut where `history` says its episode's rows begin (its first step, or where a
    data shard split the episode)."""

    obs: torch.Tensor
    next_obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    history: torch.Tensor  # (N,) rows of the same episode directly before this one, in this buffer
    keep: torch.Tensor  # (N,) indices of the rows that are sampled (null_reward=drop leaves some out)
    goal_row: torch.Tensor  # (N,) index into goal_ids
    goal_ids: torch.Tensor  # (G, L)
    goal_lengths: torch.Tensor  # (G,)
    memory: torch.Tensor | None = None  # (N, M) uint8 episode-memory counts at s; None: no memory columns
    next_memory: torch.Tensor | None = None  # (N, M) at s'

    def __len__(self) -> int:
        return int(self.keep.shape[0])

    def to(self, device: torch.device) -> ReplayBuffer:
        """A copy on `device` (its fields only: caches such as run_starts are rebuilt there)."""
        return moved(self, device)

    @classmethod
    def from_numpy(cls, cols: dict[str, np.ndarray]) -> ReplayBuffer:
        """From flat transition columns in episode order, as rgvlm_ray.iql.data.to_transitions produces them."""
        keep = np.flatnonzero(cols["keep"]) if "keep" in cols else np.arange(len(cols["action"]))
        if len(keep) == 0:
            raise ValueError("no transitions to train on")
        ids = torch.from_numpy(np.ascontiguousarray(cols["goal_ids"])).long()
        goal_ids, goal_row = torch.unique(ids, dim=0, return_inverse=True)
        lengths = (goal_ids != 0).sum(1).clamp(min=1)
        t = lambda name, dtype: torch.from_numpy(np.ascontiguousarray(cols[name])).to(dtype)  # noqa: E731
        return cls(
            obs=t("obs", torch.uint8),
            next_obs=t("next_obs", torch.uint8),
            action=t("action", torch.long),
            reward=t("reward", torch.float32),
            done=t("done", torch.float32),
            history=torch.from_numpy(history_lengths(cols["episode"], cols["step"])),
            keep=torch.from_numpy(keep).long(),
            goal_row=goal_row,
            goal_ids=goal_ids,
            goal_lengths=lengths,
            memory=t("memory", torch.uint8) if "memory" in cols else None,
            next_memory=t("next_memory", torch.uint8) if "next_memory" in cols else None,
        )

    def window_rows(self, idx: torch.Tensor, context: int) -> tuple[torch.Tensor, ...]:
        """(rows of `obs` at the C positions ending at s, prev_action of all C + 1 positions, valid) for `idx`;
        the last position, s', is next_obs[idx]."""
        back = torch.arange(context - 1, -1, -1, device=idx.device)  # C-1 .. 0 steps before s
        valid = self.history[idx, None] >= back  # (B, C): inside the episode
        rows = (idx[:, None] - back).clamp(min=0)
        first = self.history[rows] == 0
        prev = torch.where(first, 0, self.action[(rows - 1).clamp(min=0)] + 1) * valid
        prev = torch.cat([prev, self.action[idx, None] + 1], 1)
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], 1)
        return rows, prev, valid

    def window(self, idx: torch.Tensor, context: int) -> tuple[torch.Tensor, ...]:
        """(obs, prev_action, valid) of the C + 1 positions ending at s' for the rows `idx`."""
        rows, prev, valid = self.window_rows(idx, context)
        return torch.cat([self.obs[rows], self.next_obs[idx, None]], 1), prev, valid

    def run_starts(self, runs: int) -> torch.Tensor:
        """Rows that begin `runs` kept rows of one episode segment, step after step (cached per length)."""
        cache = self.__dict__.setdefault("_run_starts", {})
        if runs not in cache:
            n = len(self.history)
            kept = torch.zeros(n, dtype=torch.long, device=self.keep.device)
            kept[self.keep] = 1
            # good[i]: row i is kept and continues row i - 1 (history counts the episode's rows before it); a run
            # starting at a kept row i needs rows i+1 .. i+runs-1 good
            good = kept * (self.history > 0).long()
            total = torch.cat([torch.zeros(1, dtype=torch.long, device=good.device), good.cumsum(0)])
            starts = torch.arange(max(n - runs + 1, 0), device=good.device)
            cont = total[starts + runs] - total[starts + 1]  # continuations among rows i+1 .. i+runs-1
            cache[runs] = starts[(kept[starts] == 1) & (cont == runs - 1)]
        return cache[runs]

    def sample(
        self, batch_size: int, context: int, generator: torch.Generator | None = None, runs: int = 1
    ) -> Batch:
        """Uniform with replacement over kept rows, as CORL; each distinct goal appears once in goal_ids.

        runs > 1: batch_size / runs uniform starts, each followed by the next runs - 1 steps of its episode.
        Consecutive windows share all but one observation, so each distinct observation is gathered (and
        encoded) once: 4 windows of context 8 carry 15 distinct observations where 4 independent ones carry
        36 (bench/iql_fit.py measures what the less independent samples cost the fit: docs/iql.md).
        """
        if runs > 1:
            return self.sample_runs(batch_size, context, runs, generator)
        pick = torch.randint(len(self), (batch_size,), generator=generator, device=self.keep.device)
        idx = self.keep[pick]
        rows, goal_index = torch.unique(self.goal_row[idx], return_inverse=True)
        obs, prev, valid = self.window(idx, context)
        return self.batch(idx, rows, goal_index, obs, prev, valid)

    def sample_runs(
        self, batch_size: int, context: int, runs: int, generator: torch.Generator | None = None
    ) -> Batch:
        starts = self.run_starts(runs)
        if len(starts) == 0 or batch_size % runs:
            raise ValueError(
                f"iql.sample_runs={runs}: needs iql.batch_size divisible by it and episodes with at least "
                f"{runs} steps (this worker's data has {len(starts)} such starts)"
            )
        pick = torch.randint(len(starts), (batch_size // runs,), generator=generator, device=self.keep.device)
        idx = (starts[pick, None] + torch.arange(runs, device=starts.device)).reshape(-1)
        goals, goal_index = torch.unique(self.goal_row[idx], return_inverse=True)
        rows, prev, valid = self.window_rows(idx, context)
        # Sources: row r of obs is id r, next_obs[i] is id N + i; gather each distinct one once. torch.unique
        # sorts, so the obs rows come first and the next_obs rows after them.
        n = len(self.history)
        unique, index = torch.unique(torch.cat([rows, n + idx[:, None]], 1), return_inverse=True)
        split = int((unique < n).sum())
        obs = torch.cat([self.obs[unique[:split]], self.next_obs[unique[split:] - n]])
        return self.batch(idx, goals, goal_index, obs, prev, valid, obs_index=index)

    def batch(
        self,
        idx: torch.Tensor,
        goals: torch.Tensor,
        goal_index: torch.Tensor,
        obs: torch.Tensor,
        prev: torch.Tensor,
        valid: torch.Tensor,
        obs_index: torch.Tensor | None = None,
    ) -> Batch:
        return Batch(
            obs=obs,
            prev_action=prev,
            valid=valid,
            action=self.action[idx],
            reward=self.reward[idx],
            done=self.done[idx],
            goal_ids=self.goal_ids[goals],
            goal_lengths=self.goal_lengths[goals],
            goal_index=goal_index,
            memory=None
            if self.memory is None or self.next_memory is None
            else torch.stack([self.memory[idx], self.next_memory[idx]], 1),
            obs_index=obs_index,
        )


def history_lengths(episode: np.ndarray, step: np.ndarray) -> np.ndarray:
    """For each row, how many rows directly before it continue the same episode step by step."""
    episode, step = np.asarray(episode), np.asarray(step, dtype=np.int64)
    cont = np.zeros(len(step), dtype=bool)
    cont[1:] = (episode[1:] == episode[:-1]) & (step[1:] == step[:-1] + 1)
    # Length of the run of True ending at each row: index minus the index of the last break.
    idx = np.arange(len(step))
    last_break = np.maximum.accumulate(np.where(cont, 0, idx))
    return (idx - last_break).astype(np.int64)


def make_optimizer(
    net: IQLNet, cfg: IQLConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """One Adam with two groups: everything but the policy head, and the policy head (cosine-decayed).

    Deviation from CORL: CORL keeps three optimizers (V, Q, actor) stepped one after another; with a shared
    encoder one optimizer over the summed loss needs a single backward pass.
    """
    actor = list(net.pi.parameters())
    actor_ids = {id(p) for p in actor}
    critic = [p for p in net.parameters() if id(p) not in actor_ids]
    optimizer = torch.optim.Adam([{"params": critic}, {"params": actor}], lr=cfg.lr)
    steps = max(total_steps, 1)

    def warmup(step: int) -> float:
        return min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0

    def actor_factor(step: int) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps)) if cfg.actor_cosine else 1.0
        return warmup(step) * cosine

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [warmup, actor_factor])
    return optimizer, scheduler


def clip_groups(net: IQLNet) -> list[list[torch.Tensor]]:
    """Parameters whose gradient norm is clipped together: all of them on a shared encoder; with a critic
    encoder of its own, the actor's and the critic's apart (a large critic gradient must not shrink the
    actor's step, or flat-weighted IQL would no longer be BC)."""
    if net.critic is None:
        return [list(net.parameters())]
    critic = {id(p) for m in (net.critic, net.q1, net.q2, net.v) for p in m.parameters()}
    params = list(net.parameters())
    return [[p for p in params if id(p) not in critic], [p for p in params if id(p) in critic]]


def q_heads(net: IQLNet) -> list[torch.Tensor]:
    """The online parameters the target keeps a Polyak copy of (see model.target_heads)."""
    return [*net.q1.parameters(), *net.q2.parameters()]


def iql_update(
    model: nn.Module,
    net: IQLNet,
    target: nn.ModuleDict,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    batch: Batch,
    cfg: IQLConfig,
) -> torch.Tensor:
    """One fused IQL step; returns the METRICS as one tensor (no host sync until someone reads it).

    `model` is what to call forward on (DDP-wrapped or compiled `net`, or `net` itself). Per step: one
    encoder pass over the C + 1 positions (windows ending at s and s', with autograd), the target Q heads on
    its detached features, and a single backward.
    Deviation from the paper's code (ikostrikov/implicit_q_learning) and CORL, which update V first and use
    the new V in the advantage and the Q target: here all three losses come from one forward pass and are
    summed, so both use V from before this step's update.
    """
    a = batch.action
    z, q1, q2, v, logits, v_next = model(
        batch.obs,
        batch.prev_action,
        batch.valid,
        batch.goal_ids,
        batch.goal_lengths,
        batch.goal_index,
        cfg.actor_trains_encoder or cfg.learner != "iql",  # BC has no critic to train the encoder
        memory=batch.memory,
        obs_index=batch.obs_index,
    )
    with torch.no_grad():
        # online: the Polyak heads lag the shared encoder they read (deviation 8), so on a fast-moving encoder
        # their Q(s, a) drifts from the online one; measured in docs/iql.md ("Weights that select").
        heads = (q1, q2) if cfg.advantage_q == "online" else (target["q1"](z), target["q2"](z))
        target_q = torch.minimum(*heads).gather(1, a[:, None]).squeeze(1)
    adv = target_q - v
    v_loss = expectile_loss(adv, cfg.expectile)
    q1_a = q1.gather(1, a[:, None]).squeeze(1)
    q_loss = twin_q_loss(
        q1_a, q2.gather(1, a[:, None]).squeeze(1), q_target(batch.reward, batch.done, v_next, cfg.discount)
    )
    adv = adv.detach()
    # bc / filtered_bc (the study's baselines, CORL's BC and BC-N%): plain cloning, and no critic on the
    # shared encoder; filtered_bc's episode filter is in the buffer (data.py), not here.
    weighting = cfg.weighting if cfg.learner == "iql" else "none"
    weights, exponent = policy_weights(adv, cfg.beta, cfg.exp_adv_max, cfg.adv_norm, weighting)
    policy_loss = weighted_bc_loss(logits, a, weights)
    loss = policy_loss if cfg.learner != "iql" else v_loss + q_loss + policy_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        for params in clip_groups(net):
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    polyak_update(list(target.parameters()), q_heads(net), cfg.tau)
    with torch.no_grad():
        return torch.cat(
            [
                torch.stack(
                    [
                        q_loss.detach(),
                        v_loss.detach(),
                        policy_loss.detach(),
                        q1_a.detach().mean(),
                        v.detach().mean(),
                        adv.mean(),
                        adv.std(),
                        adv.max(),
                        weights.mean(),
                    ]
                ),
                weight_diagnostics(weights, exponent, batch.reward, cfg.exp_adv_max),
            ]
        )


class MetricMeans:
    """Means of the update metrics over the steps since the last report (one step's weights are noisy);
    NaNs (reward_weight_ratio on a batch without a rewarded transition) are left out of their mean. The sums
    stay on the metrics' device, so adding a step costs no host sync; `pop` reads them once per report."""

    def __init__(self) -> None:
        self.total = torch.zeros(len(METRICS))
        self.count = torch.zeros(len(METRICS))

    def add(self, values: torch.Tensor) -> None:
        values = values.detach()
        if self.total.device != values.device:
            self.total, self.count = self.total.to(values.device), self.count.to(values.device)
        seen = ~torch.isnan(values)
        self.total += torch.where(seen, values, 0.0)
        self.count += seen

    def pop(self) -> dict[str, float]:
        means = torch.where(self.count > 0, self.total / self.count.clamp(min=1), float("nan"))
        self.total.zero_()
        self.count.zero_()
        return metrics_dict(means)


def metrics_dict(values: torch.Tensor) -> dict[str, float]:
    return dict(zip(METRICS, values.detach().cpu().tolist(), strict=True))


def fit(
    buffer: ReplayBuffer, net: IQLNet, cfg: IQLConfig, steps: int, seed: int = 0
) -> tuple[IQLNet, dict[str, float]]:
    """Train in this process, without Ray: for tests, notebooks and the benchmark's sanity checks."""
    target = target_heads(net)
    optimizer, scheduler = make_optimizer(net, cfg, steps)
    generator = torch.Generator().manual_seed(seed)
    means = MetricMeans()
    for step in range(steps):
        batch = buffer.sample(cfg.batch_size, net.spec.context, generator, cfg.sample_runs)
        values = iql_update(net, net, target, optimizer, scheduler, batch, cfg)
        if step >= steps - max(1, steps // 10):  # the last tenth: where the run ended, not how it began
            means.add(values)
    return net.eval(), means.pop()
