"""IQL update cost per sample, side by side on the same batches: the history model at the default context,
the same model at context 1, context 1 with the pre-history GRU goal encoder, and a CORL-style MLP update.

    .venv/bin/python bench/iql.py                          # symbolic observations, CPU, 1 thread
    .venv/bin/python bench/iql.py --device cuda --modes symbolic,image     # a GPU machine (no Ray needed)

CORL-style reference: a port of CORL's `ImplicitQLearning.train` (algorithms/offline/iql.py) for discrete
actions: separate Q1, Q2 (twin), V and actor MLPs (2 x 256 hidden) on the flattened observation and a fixed
goal embedding (no history, no language learning), a target copy of both Q networks, three Adams (V, Q,
actor) stepped one after another. It is the cost floor of a memoryless MLP, not a model that solves chains.
Arms run in interleaved rounds so that each sees the same machine load; the median round is reported.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rgvlm_ray.config import IQLConfig  # noqa: E402
from rgvlm_ray.iql.losses import expectile_loss  # noqa: E402
from rgvlm_ray.iql.model import IQLNet, ModelSpec, target_heads  # noqa: E402
from rgvlm_ray.iql.update import Batch, ReplayBuffer, iql_update, make_optimizer  # noqa: E402

VOCAB, ACTIONS, GOALS, COMMA = 40, 7, 60, 3
LEGACY_REV = "4c75334"  # the last commit with the memoryless model (before history windows)


def synthetic_buffer(obs_mode: str, n: int, seed: int = 0) -> ReplayBuffer:
    """Shapes and statistics of the k = 1..6 datasets: 60 chained goals of 1..6 clauses (5..50 tokens),
    episodes of 10..120 steps."""
    rng = np.random.default_rng(seed)
    shape, high = ((7, 7, 3), 11) if obs_mode == "symbolic" else ((56, 56, 3), 256)
    goals = np.zeros((GOALS, 50), dtype=np.int64)
    for g in range(GOALS):
        clauses = [list(rng.integers(4, VOCAB, rng.integers(4, 8))) for _ in range(rng.integers(1, 7))]
        words = [w for i, c in enumerate(clauses) for w in ([COMMA] if i else []) + c][:50]
        goals[g, : len(words)] = words
    lengths = rng.integers(10, 121, n // 10 + 1)
    episode = np.repeat(np.arange(len(lengths)), lengths)[:n]
    step = np.concatenate([np.arange(t) for t in lengths])[:n]
    rows = rng.integers(0, GOALS, len(lengths))[episode]
    return ReplayBuffer.from_numpy(
        {
            "obs": rng.integers(0, high, (n, *shape), dtype=np.uint8),
            "next_obs": rng.integers(0, high, (n, *shape), dtype=np.uint8),
            "action": rng.integers(0, ACTIONS, n),
            "reward": (rng.random(n) < 0.05).astype(np.float32),
            "done": (rng.random(n) < 0.02).astype(np.float32),
            "goal_ids": goals[rows],
            "goal_length": (goals[rows] != 0).sum(1),
            "episode": episode,
            "step": step,
        }
    )


def mlp(inp: int, out: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out)
    )


class CorlStyle:
    """CORL's IQL update: four separate MLPs, three optimizers, Polyak over the twin Q networks."""

    def __init__(self, obs_dim: int, cfg: IQLConfig, steps: int, device: torch.device) -> None:
        self.cfg = cfg
        self.goal_table = torch.randn(VOCAB, 64, device=device)  # fixed goal embedding (bag of words)
        inp = obs_dim + 64
        self.q1, self.q2 = mlp(inp, ACTIONS).to(device), mlp(inp, ACTIONS).to(device)
        self.v, self.actor = mlp(inp, 1).to(device), mlp(inp, ACTIONS).to(device)
        self.q_target = copy.deepcopy(nn.ModuleList([self.q1, self.q2])).requires_grad_(False)
        self.v_opt = torch.optim.Adam(self.v.parameters(), lr=cfg.lr)
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=cfg.lr)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, steps)

    def inputs(self, obs: torch.Tensor, b: Batch) -> torch.Tensor:
        goal = self.goal_table[b.goal_ids].mean(1)[b.goal_index]
        return torch.cat([obs.flatten(1).float() / 10.0, goal], 1)

    def update(self, b: Batch) -> None:
        cfg, a = self.cfg, b.action[:, None]
        s, s2 = self.inputs(b.obs[:, -2], b), self.inputs(b.obs[:, -1], b)
        with torch.no_grad():
            next_v = self.v(s2).squeeze(-1)
            tq = torch.minimum(self.q_target[0](s), self.q_target[1](s)).gather(1, a).squeeze(1)
        v = self.v(s).squeeze(-1)
        adv = tq - v
        v_loss = expectile_loss(adv, cfg.expectile)
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()
        targets = b.reward + (1.0 - b.done) * cfg.discount * next_v
        q1, q2 = self.q1(s).gather(1, a).squeeze(1), self.q2(s).gather(1, a).squeeze(1)
        q_loss = (F.mse_loss(q1, targets) + F.mse_loss(q2, targets)) / 2
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        with torch.no_grad():
            for tp, sp in zip(
                self.q_target.parameters(), [*self.q1.parameters(), *self.q2.parameters()], strict=True
            ):
                tp.data.copy_((1 - cfg.tau) * tp.data + cfg.tau * sp.data)
        exp_adv = torch.exp(cfg.beta * adv.detach()).clamp(max=cfg.exp_adv_max)
        policy_loss = (exp_adv * F.cross_entropy(self.actor(s), b.action, reduction="none")).mean()
        self.actor_opt.zero_grad()
        policy_loss.backward()
        self.actor_opt.step()
        self.actor_sched.step()


def ours(cfg: IQLConfig, mode: str, device: torch.device, compile_: bool):
    spec = ModelSpec(
        *(mode, VOCAB, ACTIONS, cfg.hidden, cfg.embed_dim, cfg.goal_encoder, cfg.context),
        *(cfg.history, cfg.token_dim, COMMA),
    )
    net = IQLNet(spec).to(device)
    target = target_heads(net)
    opt, sched = make_optimizer(net, cfg, 10_000)
    model = torch.compile(net) if compile_ else net
    return lambda b: iql_update(model, net, target, opt, sched, b, cfg)


def legacy(cfg: IQLConfig, mode: str, device: torch.device, rev: str):
    """The pre-history model and update step, loaded from git at `rev`: today's context-1 update before this
    change (GRU goal encoder, target copy of the whole Q side, separate passes on s, s' and the target)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pkg = os.path.join(tempfile.mkdtemp(prefix="legacy-iql-"), "legacy_iql")
    os.makedirs(pkg)
    for name in ("model", "update", "losses"):
        text = subprocess.run(
            ["git", "-C", root, "show", f"{rev}:rgvlm_ray/iql/{name}.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        with open(os.path.join(pkg, f"{name}.py"), "w") as f:
            f.write(text.replace("rgvlm_ray.iql.", "legacy_iql."))
    open(os.path.join(pkg, "__init__.py"), "w").close()
    sys.path.insert(0, os.path.dirname(pkg))
    import legacy_iql.model as old_model
    import legacy_iql.update as old_update

    net = old_model.IQLNet(old_model.ModelSpec(mode, VOCAB, ACTIONS, cfg.hidden, cfg.embed_dim, "gru")).to(
        device
    )
    target = copy.deepcopy(net).requires_grad_(False)
    opt, sched = old_update.make_optimizer(net, cfg, 10_000)

    def update(b: Batch) -> None:
        old = old_update.Batch(
            *(b.obs[:, -2], b.obs[:, -1], b.action, b.reward, b.done),
            *(b.goal_ids, b.goal_lengths, b.goal_index),
        )
        old_update.iql_update(net, net, target, opt, sched, old, cfg)

    return update


def timed(update, batches: list[Batch], device: torch.device, warmup: int = 3) -> float:
    for b in batches[:warmup]:
        update(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in batches[warmup:]:
        update(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (len(batches) - warmup) / (time.perf_counter() - start)


def arms(default: IQLConfig) -> dict[str, IQLConfig]:
    return {
        f"history, context {default.context} (default)": default,
        "context 1": IQLConfig(**{**vars(default), "context": 1}),
        "context 1, GRU goal (pre-history inputs)": IQLConfig(
            **{**vars(default), "context": 1, "goal_encoder": "gru"}
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="symbolic")
    parser.add_argument("--steps", type=int, default=20, help="timed updates per round (image: a third)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU cost per core)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile our forward (GPU)")
    parser.add_argument(
        "--legacy-rev", default=LEGACY_REV, help="git rev of the memoryless model ('' to skip)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for mode in args.modes.split(","):
        default = IQLConfig(obs_mode=mode, batch_size=args.batch_size)
        buffer = synthetic_buffer(mode, 8192)
        steps = args.steps if mode == "symbolic" else max(5, args.steps // 3)
        gen = torch.Generator().manual_seed(0)
        idx_batches = [buffer.sample(args.batch_size, default.context, gen) for _ in range(steps + 3)]
        rates: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, cfg in arms(default).items():
                # The same transitions for every arm: the default-context windows, cut to each arm's context.
                batches = [cut(b, cfg.context).to(device) for b in idx_batches]
                torch.manual_seed(0)
                rates.setdefault(name, []).append(
                    timed(ours(cfg, mode, device, args.compile), batches, device)
                )
            batches = [b.to(device) for b in idx_batches]
            obs_dim = int(np.prod(batches[0].obs.shape[2:]))
            corl = CorlStyle(obs_dim, default, 10_000, device)
            rates.setdefault("CORL-style MLPs (memoryless)", []).append(timed(corl.update, batches, device))
            if args.legacy_rev:
                old = legacy(default, mode, device, args.legacy_rev)
                rates.setdefault(f"before history ({args.legacy_rev}): context 1", []).append(
                    timed(old, batches, device)
                )
        base_arm = f"before history ({args.legacy_rev}): context 1" if args.legacy_rev else None
        base = statistics.median(rates[base_arm or "context 1, GRU goal (pre-history inputs)"])
        for name, values in rates.items():
            r = statistics.median(values)
            rows.append({"mode": mode, "arm": name, "updates_per_s": r, "samples_per_s": r * args.batch_size,
                         "cost_vs_baseline": base / r})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"device {args.device}, {args.threads} thread(s), batch {args.batch_size}, compile {args.compile}\n")  # fmt: skip
    print(f"| obs | arm | updates/s | samples/s | CPU per sample vs {base_arm or 'context 1 + GRU goal'} |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['arm']} | {r['updates_per_s']:.1f} | {r['samples_per_s']:,.0f} "
              f"| **{r['cost_vs_baseline']:.2f}x** |")  # fmt: skip


def cut(b: Batch, context: int) -> Batch:
    """The same transitions with the last `context` observations (plus s') of each window."""
    keep = slice(b.obs.shape[1] - context - 1, None)
    return Batch(
        **{**vars(b), "obs": b.obs[:, keep], "prev_action": b.prev_action[:, keep], "valid": b.valid[:, keep]}
    )


if __name__ == "__main__":
    main()
