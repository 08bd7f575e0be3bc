"""IQL losses (Kostrikov, Nair & Levine 2021, "Offline RL with Implicit Q-Learning"), discrete actions.

Plain functions on tensors so they can be checked on tiny hand-made inputs (tests/test_iql_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Paper eq. (5), L2^tau(u) = |tau - 1(u < 0)| u^2 with u = Q(s,a) - V(s), averaged over the batch.

    tau > 0.5 weights under-estimates of V (u > 0) more, so V tracks an upper expectile of Q over the
    dataset's actions: an implicit max over in-distribution actions.
    """
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.pow(2)).mean()


def q_target(reward: torch.Tensor, done: torch.Tensor, next_v: torch.Tensor, discount: float) -> torch.Tensor:
    """Paper eq. (6): r + gamma * (1 - done) * V(s'). `done` is 1 only for true terminals, not time limits."""
    return reward + discount * (1.0 - done) * next_v


def twin_q_loss(q1: torch.Tensor, q2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Both Q heads regress the same target (CORL: the mean of the two MSEs).

    Deviation from TorchRL's DiscreteIQLLoss, which sums them: with one shared encoder and one optimizer,
    the mean gives Q half TorchRL's weight against V and pi on the encoder (docs/iql.md).
    """
    return 0.5 * (F.mse_loss(q1, target) + F.mse_loss(q2, target))


def advantage_weights(adv: torch.Tensor, beta: float, max_weight: float = 100.0) -> torch.Tensor:
    """Paper eq. (7) weights exp(beta * A), clipped at 100 as in the authors' code and CORL."""
    return torch.exp(beta * adv).clamp(max=max_weight)


def awr_policy_loss(
    logits: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor, beta: float, max_weight: float = 100.0
) -> torch.Tensor:
    """Advantage-weighted behaviour cloning: -mean(exp(beta * A) * log pi(a|s)) over dataset actions."""
    weights = advantage_weights(adv.detach(), beta, max_weight)
    return (weights * F.cross_entropy(logits, actions, reduction="none")).mean()


@torch.no_grad()
def polyak_update(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, in one fused op per tensor list."""
    torch._foreach_lerp_(target, online, tau)
