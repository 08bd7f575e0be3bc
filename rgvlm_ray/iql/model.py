"""The IQL network: one shared observation+goal encoder, heads for twin Q(s,g,.), V(s,g) and pi(a|s,g).

Which losses train what (see docs/iql.md):
- the encoder (observation layers, goal embedding/GRU, FiLM, trunk): the Q and V losses, and the policy
  loss too when `iql.actor_trains_encoder` (default): after few updates the critic's features alone left the
  policy at 40% success on k = 1 where the shared gradient reached 82% (docs/iql.md);
- each head: its own loss.
Deviation from the paper and CORL: there, Q1, Q2, V and the actor are four separate networks. Sharing the
encoder is what makes pixel and language inputs affordable on CPU; the twin Q heads stay separate MLPs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

OBS_MODES = ("symbolic", "image")
GOAL_ENCODERS = ("gru", "mean")
SYMBOLIC_VALUES = 16  # BabyAI object (0..10), colour (0..5) and state (0..2) ids each fit below 16


@dataclass(frozen=True)
class ModelSpec:
    obs_mode: str
    vocab_size: int
    num_actions: int
    hidden: int = 256
    embed_dim: int = 64
    goal_encoder: str = "gru"

    def __post_init__(self) -> None:
        if self.obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {self.obs_mode!r}")
        if self.goal_encoder not in GOAL_ENCODERS:
            raise ValueError(f"goal_encoder must be one of {GOAL_ENCODERS}, got {self.goal_encoder!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls(**json.loads(text))


def mlp_head(hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class GoalEncoder(nn.Module):
    """Token ids (G, L) with lengths (G,) -> (G, hidden): a GRU's state at the last real token, or a mean."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        if kind == "gru":
            # A 2*embed_dim state, not `hidden`: the GRU's sequential steps dominate a CPU update otherwise.
            self.rnn = nn.GRU(embed_dim, 2 * embed_dim, batch_first=True)
            self.proj = nn.Sequential(nn.Linear(2 * embed_dim, hidden), nn.ReLU())
        else:
            self.proj = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU())

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if self.kind == "gru":
            # Right padding never reaches the outputs at real positions, so no packing is needed.
            out, _ = self.rnn(x)
            last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
            return self.proj(out.gather(1, last).squeeze(1))
        mask = (ids != 0).unsqueeze(-1).to(x.dtype)
        return self.proj((x * mask).sum(1) / mask.sum(1).clamp(min=1.0))


class ObsEncoder(nn.Module):
    """Observation -> (B, hidden), FiLM-conditioned on the goal between two stages (as BabyAI's models are).

    symbolic: per-cell embeddings, then an MLP over the 7x7 grid. An MLP rather than BabyAI's conv stack
    because on CPU it is about 10x cheaper at batch 256, and a 7x7 egocentric grid is small enough for it.
    image: a Nature-DQN shaped CNN scaled down for 56x56 frames (56 -> 13 -> 5 -> 3).
    """

    def __init__(self, obs_mode: str, hidden: int) -> None:
        super().__init__()
        self.obs_mode = obs_mode
        if obs_mode == "symbolic":
            # Each cell's (object, colour, state) ids -> one summed embedding: a bag of words per cell.
            self.embed = nn.Embedding(3 * SYMBOLIC_VALUES, 16)
            self.register_buffer("offsets", torch.arange(3) * SYMBOLIC_VALUES, persistent=False)
            self.pre = nn.Sequential(nn.Flatten(), nn.Linear(7 * 7 * 16, hidden), nn.ReLU())
            self.post = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
            film_channels = hidden
        else:
            film_channels = 64
            self.pre = nn.Sequential(
                nn.Conv2d(3, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, film_channels, 4, stride=2), nn.ReLU()
            )
            self.post = nn.Sequential(
                nn.Conv2d(film_channels, 64, 3),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(64 * 3 * 3, hidden),
                nn.ReLU(),
            )
        self.film = nn.Linear(hidden, 2 * film_channels)

    def forward(self, obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        if self.obs_mode == "symbolic":
            x = self.embed(obs.long() + self.offsets).sum(-2)  # (B, 7, 7, 16)
        else:
            x = obs.permute(0, 3, 1, 2).float() / 255.0
        h = self.pre(x)
        gamma, beta = self.film(goal).chunk(2, dim=1)
        if h.dim() == 4:
            gamma, beta = gamma[..., None, None], beta[..., None, None]
        return self.post(h * (1 + gamma) + beta)


class IQLNet(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        h = spec.hidden
        self.goal_encoder = GoalEncoder(spec.vocab_size, spec.embed_dim, h, spec.goal_encoder)
        self.obs_encoder = ObsEncoder(spec.obs_mode, h)
        self.trunk = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU())
        self.q1 = mlp_head(h, spec.num_actions)
        self.q2 = mlp_head(h, spec.num_actions)
        self.v = mlp_head(h, 1)
        self.pi = mlp_head(h, spec.num_actions)

    def features(self, obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Shared features z(s, g); `goal` is already one encoded goal per row."""
        return self.trunk(torch.cat([self.obs_encoder(obs, goal), goal], dim=-1))

    def goals(self, ids: torch.Tensor, lengths: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Encode each distinct goal once, then gather one row per transition."""
        return self.goal_encoder(ids, lengths)[index]

    def forward(
        self,
        obs: torch.Tensor,
        next_obs: torch.Tensor,
        goal_ids: torch.Tensor,
        goal_lengths: torch.Tensor,
        goal_index: torch.Tensor,
        actor_trains_encoder: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """The fused training pass: every online output one IQL update needs, from one encoder pass on s.

        Returns (q1, q2, v, logits) at s and v at s' (no gradient: it only builds the Q target).
        """
        g = self.goals(goal_ids, goal_lengths, goal_index)
        z = self.features(obs, g)
        with torch.no_grad():
            # s' only feeds the target r + gamma * V(s'): encoding it without autograd halves the backward.
            v_next = self.v(self.features(next_obs, g)).squeeze(-1)
        z_pi = z if actor_trains_encoder else z.detach()
        return self.q1(z), self.q2(z), self.v(z).squeeze(-1), self.pi(z_pi), v_next

    def q_values(
        self, obs: torch.Tensor, goal_ids: torch.Tensor, goal_lengths: torch.Tensor, goal_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.features(obs, self.goals(goal_ids, goal_lengths, goal_index))
        return self.q1(z), self.q2(z)

    def logits(self, obs: torch.Tensor, goal_ids: torch.Tensor, goal_lengths: torch.Tensor) -> torch.Tensor:
        """Policy logits for a batch of observations that share one goal each (no dedupe)."""
        index = torch.arange(obs.shape[0], device=obs.device)
        return self.pi(self.features(obs, self.goals(goal_ids, goal_lengths, index)))
