"""The IQL network: a history-aware, language-conditioned encoder shared by twin Q, V and pi heads.

Input at step t: the goal text and a window of the last `context` observations o_{t-C+1..t} with the C-1
actions taken between them (docs/iql.md, "History"). A chained goal ("go to the red ball, then open the
door") is not Markov in one 7x7 view: only the recent past says which part is done.

- Step tokens: each observation -> a `token_dim` vector (cell embeddings + MLP, or a small CNN), plus an
  embedding of the action that led to it, FiLM-modulated by the pooled goal.
- History: a one-layer transformer whose only query is the window's last step (the other positions' outputs
  would be thrown away), or a GRU (`iql.history`). Learned positions are added per window after the token
  projections (they are linear), so the windows ending at s and at s' share every token: one pass encodes both.
- Goal: words + learned positions; the history state attends over them (`attn`), so it can point at the
  current sub-task's clause. `gru` and `mean` pool the goal once instead (the pre-history encoders).
- Memory (`iql.memory=events`, rgvlm_ray/iql/memory.py): counts (capped) of what the agent has picked up,
  dropped and toggled since the episode began, projected and added to the history state before it picks a
  goal clause: the window cannot say which occurrence of a repeated sub-task is due.
- Heads on the features z: twin Q(., a), V, pi(a), each a 2-layer MLP.
Deviation from the paper and CORL: there Q1, Q2, V and the actor are four separate networks. Sharing one
encoder (`iql.critic_encoder=shared`) is what makes history, pixels and language affordable on CPU; the twin Q
heads stay separate MLPs. `separate` gives the critic (Q1, Q2, V) an encoder of its own, as CORL's networks are
apart: the actor's encoder then learns from the policy loss alone, so IQL with flat weights is exactly BC
(measured: on a shared encoder the critic's losses cost the policy, docs/iql.md "A critic of its own").
With `context=1` the window is the current observation alone (no actions): the memoryless model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

OBS_MODES = ("symbolic", "image")
GOAL_ENCODERS = ("attn", "gru", "mean")
HISTORIES = ("transformer", "gru")
CRITIC_ENCODERS = ("shared", "separate")
OBS_ENCODERS = ("mlp", "conv")
SYMBOLIC_SIZES = (11, 6, 3)  # BabyAI's object, colour and state ids (minigrid.core.constants)
CELL_DIM = 8
CONV_CHANNELS = 32
HEADS = 4
MAX_GOAL_TOKENS = 128
MAX_CLAUSES = 8


@dataclass(frozen=True)
class ModelSpec:
    obs_mode: str
    vocab_size: int
    num_actions: int
    hidden: int = 256
    embed_dim: int = 64
    goal_encoder: str = "attn"
    context: int = 1
    history: str = "transformer"
    token_dim: int = 128
    clause_sep: int = -1  # vocabulary id of "," (goal clauses for goal_encoder=attn); -1: none
    memory: int = 0  # width of the episode-memory input (memory.MEMORY_DIM), 0: none (checkpoints before it)
    obs_encoder: str = "mlp"  # symbolic cells: mlp (one linear layer) | conv (two 3x3 convolutions first)
    critic_encoder: str = "shared"  # shared | separate: the critic's own encoder (older checkpoints: shared)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("obs_mode", self.obs_mode, OBS_MODES),
            ("goal_encoder", self.goal_encoder, GOAL_ENCODERS),
            ("history", self.history, HISTORIES),
            ("critic_encoder", self.critic_encoder, CRITIC_ENCODERS),
            ("obs_encoder", self.obs_encoder, OBS_ENCODERS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.context < 1:
            raise ValueError(f"context must be >= 1, got {self.context}")
        if self.token_dim % HEADS:
            raise ValueError(f"token_dim must be a multiple of {HEADS}, got {self.token_dim}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls(**json.loads(text))


def mlp_head(hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out))


class GoalEncoder(nn.Module):
    """Token ids (G, L), lengths (G,) -> (clauses (G, K, D), mask (G, K), pooled (G, D)), D = token_dim.

    attn: the goal is split at commas into at most MAX_CLAUSES clauses ("go to X, then open Y" -> two), each
    the mean of its words' embeddings plus their positions in the clause, plus the clause's position; the
    history attends over clauses, the granularity of a sub-task. Attending over every word instead cost half
    of a CPU update. gru | mean: one pooled vector (K = 1), as the pre-history encoders.
    """

    def __init__(self, vocab_size: int, embed_dim: int, dim: int, kind: str, clause_sep: int) -> None:
        super().__init__()
        self.kind, self.clause_sep = kind, clause_sep
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        if kind == "gru":
            self.rnn = nn.GRU(embed_dim, 2 * embed_dim, batch_first=True)
            embed_dim *= 2
        elif kind == "attn":
            self.word_pos = nn.Embedding(MAX_GOAL_TOKENS, embed_dim)
            self.clause_pos = nn.Embedding(MAX_CLAUSES, embed_dim)
        self.proj = nn.Sequential(nn.Linear(embed_dim, dim), nn.ReLU())

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ids = ids[:, : min(int(lengths.max()), MAX_GOAL_TOKENS)]
        g, length = ids.shape
        real = torch.arange(length, device=ids.device)[None] < lengths[:, None]
        x = self.embed(ids)
        if self.kind == "gru":
            out, _ = self.rnn(x)  # right padding never reaches the outputs at real positions
            pooled = self.proj(out[torch.arange(g, device=ids.device), (lengths - 1).clamp(0, length - 1)])
            return pooled[:, None], torch.ones(g, 1, dtype=torch.bool, device=ids.device), pooled
        if self.kind == "mean":
            m = real.unsqueeze(-1).to(x.dtype)
            pooled = self.proj((x * m).sum(1) / m.sum(1).clamp(min=1.0))
            return pooled[:, None], torch.ones(g, 1, dtype=torch.bool, device=ids.device), pooled
        sep = ids == self.clause_sep
        clause = torch.cumsum(sep.long(), 1).clamp(max=MAX_CLAUSES - 1)  # (G, L)
        starts = torch.cummax(torch.where(sep, torch.arange(length, device=ids.device) + 1, 0), 1).values
        word_pos = (torch.arange(length, device=ids.device) - starts).clamp(0, MAX_GOAL_TOKENS - 1)
        member = (real & ~sep).to(x.dtype)  # (G, L): words that belong to a clause
        onehot = F.one_hot(clause, MAX_CLAUSES).to(x.dtype) * member.unsqueeze(-1)  # (G, L, K)
        counts = onehot.sum(1)  # (G, K)
        sums = torch.bmm(onehot.transpose(1, 2), x + self.word_pos(word_pos))  # (G, K, E)
        mask = counts > 0
        clauses = self.proj(sums / counts.clamp(min=1.0).unsqueeze(-1) + self.clause_pos.weight)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (clauses * m).sum(1) / m.sum(1).clamp(min=1.0)
        return clauses, mask, pooled


class StepEncoder(nn.Module):
    """Observations (N, 7, 7, 3) or (N, 56, 56, 3) uint8 -> (N, token_dim).

    symbolic: each cell's (object, colour, state) ids -> one summed embedding, then a linear layer over the
    grid: an MLP rather than BabyAI's conv stack, about 10x cheaper on CPU for a 7x7 egocentric grid.
    image: a Nature-DQN shaped CNN scaled down for 56x56 frames (56 -> 13 -> 5 -> 3).
    """

    def __init__(self, obs_mode: str, dim: int, kind: str = "mlp") -> None:
        super().__init__()
        self.obs_mode = obs_mode
        # conv: the same detector at every cell (BabyAI's models are convolutional), for missions whose objects
        # sit where no training episode put them.
        self.conv = (
            nn.Sequential(
                nn.Conv2d(CELL_DIM, CONV_CHANNELS, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(CONV_CHANNELS, CONV_CHANNELS, 3, padding=1),
                nn.ReLU(),
            )
            if obs_mode == "symbolic" and kind == "conv"
            else None
        )
        if obs_mode == "symbolic":
            # Cell embeddings as a multi-hot matmul: an nn.Embedding's backward (a scatter-add) took a fifth
            # of a CPU update at 9 window positions.
            self.embed = nn.Linear(sum(SYMBOLIC_SIZES), CELL_DIM, bias=False)
            offsets = torch.tensor([0, SYMBOLIC_SIZES[0], SYMBOLIC_SIZES[0] + SYMBOLIC_SIZES[1]])
            self.register_buffer("offsets", offsets, persistent=False)
            self.register_buffer("top", torch.tensor(SYMBOLIC_SIZES) - 1, persistent=False)
            width = CONV_CHANNELS if self.conv is not None else CELL_DIM
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(7 * 7 * width, dim), nn.ReLU())
        else:
            self.net = nn.Sequential(
                nn.Conv2d(3, 32, 8, stride=4),
                nn.ReLU(),
                nn.Conv2d(32, 64, 4, stride=2),
                nn.ReLU(),
                nn.Conv2d(64, 64, 3),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(64 * 3 * 3, dim),
                nn.ReLU(),
            )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.obs_mode == "symbolic":
            ids = (torch.minimum(obs.long(), self.top) + self.offsets).flatten(1, 2)  # (N, 49, 3)
            hot = torch.zeros(*ids.shape[:2], sum(SYMBOLIC_SIZES), device=obs.device).scatter_(2, ids, 1.0)
            cells = self.embed(hot)  # (N, 49, CELL_DIM)
            if self.conv is not None:
                cells = self.conv(cells.transpose(1, 2).reshape(-1, CELL_DIM, 7, 7))
            return self.net(cells)
        return self.net(obs.permute(0, 3, 1, 2).float() / 255.0)


class History(nn.Module):
    """Tokens (B, P, D) with validity (B, P) -> one state per window ending at each of the last Q positions.

    Window q covers positions [P - Q - C + 1 + q, P - Q + q]: with Q = 2 these are the windows ending at s
    and at s', which share all but one token.
    """

    def __init__(self, kind: str, dim: int, context: int) -> None:
        super().__init__()
        self.kind, self.context = kind, context
        if kind == "gru":
            self.rnn = nn.GRU(dim, dim, batch_first=True)
            return
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)  # only the windows' last positions are queried
        self.kv = nn.Linear(dim, 2 * dim)
        # Positions within a window, in key and value space (added after the projections: linear).
        self.pos_k = nn.Parameter(torch.zeros(context, dim))
        self.pos_v = nn.Parameter(torch.zeros(context, dim))
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim)
        )

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, queries: int) -> torch.Tensor:
        b, p, d = tokens.shape
        c = self.context
        starts = [p - queries - c + 1 + q for q in range(queries)]
        if self.kind == "gru":
            # Padding is zeroed; each window runs from its own start (windows may differ in their first step).
            x = tokens * valid.unsqueeze(-1).to(tokens.dtype)
            out, _ = self.rnn(torch.cat([x[:, s : s + c] for s in starts], 0))
            return out[:, -1].view(queries, b, d).transpose(0, 1)
        normed = self.norm(tokens)
        k_all, v_all = self.kv(normed).chunk(2, dim=-1)
        idx = torch.tensor([list(range(s, s + c)) for s in starts], device=tokens.device)  # (Q, C)
        keys = k_all[:, idx] + self.pos_k  # (B, Q, C, D)
        values = v_all[:, idx] + self.pos_v
        mask = valid[:, idx]  # (B, Q, C); the last position of every window is always valid
        last = [s + c - 1 for s in starts]
        query = self.q(normed[:, last])  # (B, Q, D)
        # Broadcast products, not einsum: these are thousands of tiny matmuls that bmm runs slowly on CPU.
        h, dh = HEADS, d // HEADS
        keys, values = keys.view(b, queries, c, h, dh), values.view(b, queries, c, h, dh)
        scores = (query.view(b, queries, 1, h, dh) * keys).sum(-1) / math.sqrt(dh)  # (B, Q, C, H)
        attn = torch.softmax(scores.masked_fill(~mask[..., None], float("-inf")), dim=2)
        ctx = (attn.unsqueeze(-1) * values).sum(2).reshape(b, queries, d)
        x = tokens[:, last] + self.out(ctx)
        return x + self.ffn(x)


class Encoder(nn.Module):
    """Goal, window and memory -> features z (B, Q, hidden): everything but the heads."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        d, h = spec.token_dim, spec.hidden
        self.goal_encoder = GoalEncoder(
            spec.vocab_size, spec.embed_dim, d, spec.goal_encoder, spec.clause_sep
        )
        self.step_encoder = StepEncoder(spec.obs_mode, d, spec.obs_encoder)
        # Index 0: no action (the window's first step, or padding); action a is a + 1.
        self.action_embed = nn.Embedding(spec.num_actions + 1, d)
        self.film = nn.Linear(d, 2 * d)
        self.history = History(spec.history, d, spec.context)
        self.memory = nn.Linear(spec.memory, d) if spec.memory else None
        self.goal_query = nn.Linear(d, d)
        self.trunk = nn.Sequential(nn.Linear(2 * d, h), nn.ReLU())

    def encode(
        self,
        obs: torch.Tensor,
        prev_action: torch.Tensor,
        valid: torch.Tensor,
        goal_ids: torch.Tensor,
        goal_lengths: torch.Tensor,
        goal_index: torch.Tensor,
        queries: int,
        memory: torch.Tensor | None = None,
        obs_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Features z (B, Q, hidden) for the windows ending at the last `queries` of P positions.

        obs (B, P, ...) uint8, prev_action (B, P) int64 (0 = none, else action + 1), valid (B, P) bool;
        each distinct goal (goal_ids row) is encoded once and gathered by goal_index (B,); memory (B, Q, M)
        uint8 event counts at each window's last step, required when the spec has memory. With obs_index
        (B, P), obs holds distinct observations (U, ...) and each is encoded once (ReplayBuffer.sample_runs).
        """
        b, p = prev_action.shape
        g_tokens, g_mask, g_pooled = self.goal_encoder(goal_ids, goal_lengths)
        pooled = g_pooled[goal_index]  # (B, D)
        if obs_index is None:
            tokens = self.step_encoder(obs.reshape(b * p, *obs.shape[2:])).view(b, p, -1)
        else:
            tokens = self.step_encoder(obs)[obs_index]
        if self.spec.context > 1:  # context 1: the observation alone, as the memoryless model sees it
            tokens = tokens + self.action_embed(prev_action)
        gamma, beta = self.film(pooled).chunk(2, dim=-1)
        tokens = tokens * (1 + gamma[:, None]) + beta[:, None]
        state = self.history(tokens, valid, queries)  # (B, Q, D)
        if self.memory is not None:
            if memory is None:
                raise ValueError("this model reads episode memory (spec.memory > 0): pass memory counts")
            state = state + self.memory(memory.float())
        # The history state picks the goal clause it needs now (with one pooled goal, K = 1, that is it).
        keys, mask = g_tokens[goal_index], g_mask[goal_index]  # (B, K, D), (B, K)
        scores = torch.bmm(self.goal_query(state), keys.transpose(1, 2)) / math.sqrt(keys.shape[-1])
        attn = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1)  # (B, Q, K)
        goal = torch.bmm(attn, keys)
        return self.trunk(torch.cat([state, goal], dim=-1))


class IQLNet(Encoder):
    """The encoder (the policy's, and the critic's too when shared) plus the heads.

    Its own modules keep the names they had before `critic_encoder` existed, so older checkpoints load.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        h = spec.hidden
        self.critic = Encoder(spec) if spec.critic_encoder == "separate" else None
        self.q1 = mlp_head(h, spec.num_actions)
        self.q2 = mlp_head(h, spec.num_actions)
        self.v = mlp_head(h, 1)
        self.pi = mlp_head(h, spec.num_actions)

    def forward(
        self,
        obs: torch.Tensor,
        prev_action: torch.Tensor,
        valid: torch.Tensor,
        goal_ids: torch.Tensor,
        goal_lengths: torch.Tensor,
        goal_index: torch.Tensor,
        actor_trains_encoder: bool = False,
        memory: torch.Tensor | None = None,
        obs_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The fused training pass over C + 1 positions (the windows ending at s and at s').

        Returns z(s) without gradient (for the target heads), (q1, q2, v, logits) at s, and v at s'.
        memory: (B, 2, M) counts at s and at s'.
        """
        inputs = (obs, prev_action, valid, goal_ids, goal_lengths, goal_index)
        if self.critic is None:
            z = self.encode(*inputs, queries=2, memory=memory, obs_index=obs_index)
            z_s, z_next = z[:, 0], z[:, 1].detach()  # s' only feeds the target r + gamma * V(s')
            z_pi = z_s if actor_trains_encoder else z_s.detach()
        else:
            z = self.critic.encode(*inputs, queries=2, memory=memory, obs_index=obs_index)
            z_s, z_next = z[:, 0], z[:, 1].detach()
            # The actor's own pass over the window ending at s (the first C of the C + 1 positions).
            head_obs = obs if obs_index is not None else obs[:, :-1]
            z_pi = self.encode(
                *(head_obs, prev_action[:, :-1], valid[:, :-1], goal_ids, goal_lengths, goal_index),
                queries=1,
                memory=None if memory is None else memory[:, :1],
                obs_index=None if obs_index is None else obs_index[:, :-1],
            )
            z_pi = z_pi[:, 0] if actor_trains_encoder else z_pi[:, 0].detach()
        with torch.no_grad():
            v_next = self.v(z_next).squeeze(-1)
        return z_s.detach(), self.q1(z_s), self.q2(z_s), self.v(z_s).squeeze(-1), self.pi(z_pi), v_next

    def logits(
        self,
        obs: torch.Tensor,
        prev_action: torch.Tensor,
        valid: torch.Tensor,
        goal_ids: torch.Tensor,
        goal_lengths: torch.Tensor,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Policy logits for windows (B, C, ...) ending at the current step, one goal per row; memory (B, M)."""
        index = torch.arange(obs.shape[0], device=obs.device)
        mem = None if memory is None else memory[:, None]
        z = self.encode(obs, prev_action, valid, goal_ids, goal_lengths, index, queries=1, memory=mem)
        return self.pi(z[:, 0])


def target_heads(net: IQLNet) -> nn.ModuleDict:
    """The Polyak target: copies of the twin Q heads only, applied to the online encoder's features.

    Deviation from the paper and CORL (a target copy of whole Q networks): the shared encoder is not copied,
    which saves a full encoder pass over every window per update; V, not the target, anchors Q's regression.
    """
    import copy

    return nn.ModuleDict({"q1": copy.deepcopy(net.q1), "q2": copy.deepcopy(net.q2)}).requires_grad_(False)
