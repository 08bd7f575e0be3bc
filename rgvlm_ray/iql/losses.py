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


def normalized_advantage(adv: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(A - mean A) / sd A over the batch, so beta sets the weights' spread in units of the batch's own spread.

    Centering only rescales exp(beta * A) by a batch constant (the weights' ratios are unchanged) and keeps the
    clip from biting on a batch whose advantages are all large. When every advantage is equal (a constant
    reward, or a critic that has learned nothing yet) the sd is ~0: the result is 0, weights 1, behaviour
    cloning, never a division by zero.
    """
    centered = adv - adv.mean()
    sd = adv.std(unbiased=False) if adv.numel() > 1 else adv.new_zeros(())
    return torch.where(sd > eps, centered / sd.clamp(min=eps), torch.zeros_like(centered))


def policy_weights(
    adv: torch.Tensor, beta: float, max_weight: float, norm: str, weighting: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-transition actor weights, the exponent beta * A they came from), from detached advantages.

    weighting `exp`: IQL's exp(beta * A) (A normalised first when norm is `std`); `binary`: CRR's indicator
    1[A > 0] on the raw advantage (Wang et al. 2020, "Critic Regularized Regression"), whose weights cannot
    be flattened by a small advantage scale; `none`: all ones, behaviour cloning.
    """
    adv = adv.detach()
    scaled = beta * (normalized_advantage(adv) if norm == "std" else adv)
    if weighting == "binary":
        return (adv > 0).to(adv.dtype), scaled
    if weighting == "none":
        return torch.ones_like(adv), scaled
    return torch.exp(scaled).clamp(max=max_weight), scaled


def weighted_bc_loss(logits: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """-mean(w * log pi(a|s)) over dataset actions, w given (no gradient through it)."""
    return (weights.detach() * F.cross_entropy(logits, actions, reduction="none")).mean()


def awr_policy_loss(
    logits: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor, beta: float, max_weight: float = 100.0
) -> torch.Tensor:
    """Advantage-weighted behaviour cloning: -mean(exp(beta * A) * log pi(a|s)) over dataset actions."""
    return weighted_bc_loss(logits, actions, advantage_weights(adv.detach(), beta, max_weight))


def weight_diagnostics(
    weights: torch.Tensor, exponent: torch.Tensor, reward: torch.Tensor, max_weight: float
) -> torch.Tensor:
    """Whether the actor's weights select: [awr_ess, beta_adv_std, adv_clipped_frac, reward_weight_ratio].

    awr_ess: effective sample size (sum w)^2 / (N sum w^2) as a share of the batch: 1 is behaviour cloning,
    small means few transitions carry the loss. beta_adv_std: sd of the exponent beta * A (below ~0.3 the
    weights are nearly flat). reward_weight_ratio: mean weight on transitions with a non-zero reward over the
    mean weight of all (NaN when the batch has none). A batch of all-zero weights (binary, no A > 0) has
    ESS 0.
    """
    n = weights.numel()
    total = weights.sum()
    ess = torch.where(total > 0, total.pow(2) / (n * weights.pow(2).sum()).clamp(min=1e-12), total * 0)
    rewarded = reward != 0
    mean_w = weights.mean().clamp(min=1e-12)
    ratio = torch.where(
        rewarded.any(),
        (weights * rewarded).sum() / rewarded.sum().clamp(min=1) / mean_w,
        torch.full_like(mean_w, float("nan")),
    )
    return torch.stack(
        [ess, exponent.std(unbiased=False), (weights >= max_weight).to(weights.dtype).mean(), ratio]
    )


@torch.no_grad()
def polyak_update(target: list[torch.Tensor], online: list[torch.Tensor], tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, in one fused op per tensor list."""
    torch._foreach_lerp_(target, online, tau)
