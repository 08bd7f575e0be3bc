"""One IQL update on a batch, plus the in-memory replay buffer it samples from. No Ray imports here, so
the step can be benchmarked on a machine that has only torch (bench/iql.py).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from rgvlm_ray.config import IQLConfig
from rgvlm_ray.iql.losses import (
    advantage_weights,
    awr_policy_loss,
    expectile_loss,
    polyak_update,
    q_target,
    twin_q_loss,
)
from rgvlm_ray.iql.model import IQLNet

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
    "adv_clipped_frac",
)


@dataclass
class Batch:
    obs: torch.Tensor  # (B, 7, 7, 3) or (B, 56, 56, 3) uint8
    next_obs: torch.Tensor
    action: torch.Tensor  # (B,) int64
    reward: torch.Tensor  # (B,) float32
    done: torch.Tensor  # (B,) float32: 1 only for true terminals
    goal_ids: torch.Tensor  # (G, L) int64: the distinct goals in this batch
    goal_lengths: torch.Tensor  # (G,)
    goal_index: torch.Tensor  # (B,) row of goal_ids for each transition

    def to(self, device: torch.device) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})


@dataclass
class ReplayBuffer:
    """All of one worker's transitions in memory, goals stored once (CORL's ReplayBuffer, plus goals)."""

    obs: torch.Tensor
    next_obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    goal_row: torch.Tensor  # (N,) index into goal_ids
    goal_ids: torch.Tensor  # (G, L)
    goal_lengths: torch.Tensor  # (G,)

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @classmethod
    def from_numpy(cls, cols: dict[str, np.ndarray]) -> ReplayBuffer:
        """From flat transition columns (obs, next_obs, action, reward, done, goal_ids), as
        rgvlm_ray.iql.data.to_transitions produces them."""
        if len(cols["action"]) == 0:
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
            goal_row=goal_row,
            goal_ids=goal_ids,
            goal_lengths=lengths,
        )

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Uniform with replacement, as CORL; each distinct goal in the batch appears once in goal_ids."""
        idx = torch.randint(len(self), (batch_size,), generator=generator, device=self.action.device)
        rows, goal_index = torch.unique(self.goal_row[idx], return_inverse=True)
        return Batch(
            obs=self.obs[idx],
            next_obs=self.next_obs[idx],
            action=self.action[idx],
            reward=self.reward[idx],
            done=self.done[idx],
            goal_ids=self.goal_ids[rows],
            goal_lengths=self.goal_lengths[rows],
            goal_index=goal_index,
        )


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

    def actor_factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps)) if cfg.actor_cosine else 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda _: 1.0, actor_factor])
    return optimizer, scheduler


def q_side(net: IQLNet) -> list[torch.Tensor]:
    """The parameters Q(s, g, .) depends on: what the target network keeps a Polyak copy of."""
    modules = (net.goal_encoder, net.obs_encoder, net.trunk, net.q1, net.q2)
    return [p for m in modules for p in m.parameters()]


def iql_update(
    model: nn.Module,
    net: IQLNet,
    target: IQLNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    batch: Batch,
    cfg: IQLConfig,
) -> torch.Tensor:
    """One fused IQL step; returns the METRICS as one tensor (no host sync until someone reads it).

    `model` is what to call forward on (DDP-wrapped or compiled `net`, or `net` itself). Per step: one online
    encoder pass on s (with autograd), one on s' (without), one target pass on s, and a single backward.
    Deviation from the paper's code (ikostrikov/implicit_q_learning) and CORL, which update V first and use
    the new V in the advantage and the Q target: here all three losses come from one forward pass and are
    summed, so both use V from before this step's update.
    """
    a = batch.action
    q1, q2, v, logits, v_next = model(
        batch.obs,
        batch.next_obs,
        batch.goal_ids,
        batch.goal_lengths,
        batch.goal_index,
        cfg.actor_trains_encoder,
    )
    with torch.no_grad():
        t1, t2 = target.q_values(batch.obs, batch.goal_ids, batch.goal_lengths, batch.goal_index)
        target_q = torch.minimum(t1, t2).gather(1, a[:, None]).squeeze(1)
    adv = target_q - v
    v_loss = expectile_loss(adv, cfg.expectile)
    q1_a = q1.gather(1, a[:, None]).squeeze(1)
    q_loss = twin_q_loss(
        q1_a, q2.gather(1, a[:, None]).squeeze(1), q_target(batch.reward, batch.done, v_next, cfg.discount)
    )
    adv = adv.detach()
    policy_loss = awr_policy_loss(logits, a, adv, cfg.beta, cfg.exp_adv_max)
    optimizer.zero_grad(set_to_none=True)
    (v_loss + q_loss + policy_loss).backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    polyak_update(q_side(target), q_side(net), cfg.tau)
    with torch.no_grad():
        weights = advantage_weights(adv, cfg.beta, cfg.exp_adv_max)
        return torch.stack(
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
                (weights >= cfg.exp_adv_max).float().mean(),
            ]
        )


def metrics_dict(values: torch.Tensor) -> dict[str, float]:
    return dict(zip(METRICS, values.detach().cpu().tolist(), strict=True))


def fit(
    buffer: ReplayBuffer, net: IQLNet, cfg: IQLConfig, steps: int, seed: int = 0
) -> tuple[IQLNet, dict[str, float]]:
    """Train in this process, without Ray: for tests, notebooks and the benchmark's sanity checks."""
    target = copy.deepcopy(net).requires_grad_(False)
    optimizer, scheduler = make_optimizer(net, cfg, steps)
    generator = torch.Generator().manual_seed(seed)
    values = torch.zeros(len(METRICS))
    for _ in range(steps):
        values = iql_update(
            net, net, target, optimizer, scheduler, buffer.sample(cfg.batch_size, generator), cfg
        )
    return net.eval(), metrics_dict(values)
