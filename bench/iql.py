"""IQL update throughput: our fused step vs a plain CORL-style update, same networks, same batches.

    .venv/bin/python bench/iql.py                       # symbolic + image, 1 and 2 DDP workers, CPU
    .venv/bin/python bench/iql.py --device cuda --compile   # on a GPU machine (no Ray needed)

Reference ("CORL-style"): a line-by-line port of CORL's `ImplicitQLearning.train` (algorithms/offline/iql.py)
to the same IQLNet: next_v under no_grad, then a V step, a Q step (then Polyak, per-parameter loop) and an
actor step, each with its own forward, backward and Adam optimizer; every transition encodes its own goal.
Under DDP the reference all-reduces gradients after each of its three backward passes.
Ours (rgvlm_ray.iql.update.iql_update): one online pass on s with autograd, one on s' without, one target
pass, one backward and one optimizer step; each distinct goal in the batch is encoded once; fused Polyak.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rgvlm_ray.config import IQLConfig  # noqa: E402
from rgvlm_ray.iql.losses import expectile_loss  # noqa: E402
from rgvlm_ray.iql.model import IQLNet, ModelSpec  # noqa: E402
from rgvlm_ray.iql.update import Batch, ReplayBuffer, iql_update, make_optimizer, q_side  # noqa: E402

VOCAB, ACTIONS, GOALS = 40, 7, 60


def synthetic_buffer(obs_mode: str, n: int, seed: int = 0) -> ReplayBuffer:
    """Shapes and goal statistics of the k = 1..6 datasets: 60 missions of 5..50 tokens."""
    rng = np.random.default_rng(seed)
    shape, high = ((7, 7, 3), 11) if obs_mode == "symbolic" else ((56, 56, 3), 256)
    lengths = rng.integers(5, 51, GOALS)
    goals = np.zeros((GOALS, 50), dtype=np.int64)
    for g, length in enumerate(lengths):
        goals[g, :length] = rng.integers(2, VOCAB, length)
    rows = rng.integers(0, GOALS, n)
    return ReplayBuffer.from_numpy(
        {
            "obs": rng.integers(0, high, (n, *shape), dtype=np.uint8),
            "next_obs": rng.integers(0, high, (n, *shape), dtype=np.uint8),
            "action": rng.integers(0, ACTIONS, n),
            "reward": (rng.random(n) < 0.05).astype(np.float32),
            "done": (rng.random(n) < 0.02).astype(np.float32),
            "goal_ids": goals[rows],
            "goal_length": lengths[rows],
        }
    )


def allreduce_grads(params: list[torch.nn.Parameter]) -> None:
    if dist.is_initialized():
        world = dist.get_world_size()
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world


class CorlStyle:
    """CORL's IQL update structure on the shared-encoder network."""

    def __init__(self, net: IQLNet, cfg: IQLConfig, steps: int, dedupe: bool = False) -> None:
        self.net, self.cfg, self.dedupe = net, cfg, dedupe
        self.target = copy.deepcopy(net).requires_grad_(False)
        actor = list(net.pi.parameters())
        encoder = [p for m in (net.goal_encoder, net.obs_encoder, net.trunk) for p in m.parameters()]
        self.v_params = encoder + list(net.v.parameters())
        self.q_params = encoder + list(net.q1.parameters()) + list(net.q2.parameters())
        self.pi_params = (encoder if cfg.actor_trains_encoder else []) + actor
        self.v_opt = torch.optim.Adam(self.v_params, lr=cfg.lr)
        self.q_opt = torch.optim.Adam(self.q_params, lr=cfg.lr)
        self.actor_opt = torch.optim.Adam(self.pi_params, lr=cfg.lr)
        self.actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, steps)

    def z(self, net: IQLNet, obs: torch.Tensor, b: Batch) -> torch.Tensor:
        if self.dedupe:  # our goal trick alone, to separate its gain from the fused step's
            return net.features(obs, net.goals(b.goal_ids, b.goal_lengths, b.goal_index))
        rows = b.goal_index  # one goal encoding per transition, as a per-row MLP/GRU would do
        return net.features(obs, net.goal_encoder(b.goal_ids[rows], b.goal_lengths[rows]))

    def update(self, b: Batch) -> None:
        net, cfg, a = self.net, self.cfg, b.action[:, None]
        with torch.no_grad():
            next_v = net.v(self.z(net, b.next_obs, b)).squeeze(-1)
        # _update_v
        with torch.no_grad():
            zt = self.z(self.target, b.obs, b)
            target_q = torch.minimum(self.target.q1(zt), self.target.q2(zt)).gather(1, a).squeeze(1)
        v = net.v(self.z(net, b.obs, b)).squeeze(-1)
        adv = target_q - v
        v_loss = expectile_loss(adv, cfg.expectile)
        self.v_opt.zero_grad()
        v_loss.backward()
        allreduce_grads(self.v_params)
        self.v_opt.step()
        # _update_q
        targets = b.reward + (1.0 - b.done) * cfg.discount * next_v
        z = self.z(net, b.obs, b)
        q1, q2 = net.q1(z).gather(1, a).squeeze(1), net.q2(z).gather(1, a).squeeze(1)
        q_loss = (F.mse_loss(q1, targets) + F.mse_loss(q2, targets)) / 2
        self.q_opt.zero_grad()
        q_loss.backward()
        allreduce_grads(self.q_params)
        self.q_opt.step()
        with torch.no_grad():
            for tp, sp in zip(q_side(self.target), q_side(net), strict=True):
                tp.data.copy_((1 - cfg.tau) * tp.data + cfg.tau * sp.data)
        # _update_policy
        exp_adv = torch.exp(cfg.beta * adv.detach()).clamp(max=cfg.exp_adv_max)
        logits = net.pi(self.z(net, b.obs, b))
        policy_loss = (exp_adv * F.cross_entropy(logits, b.action, reduction="none")).mean()
        self.actor_opt.zero_grad()
        policy_loss.backward()
        allreduce_grads(self.pi_params)
        self.actor_opt.step()
        self.actor_sched.step()


def make_ours(net: IQLNet, cfg: IQLConfig, steps: int, ddp: bool, compile_: bool):
    target = copy.deepcopy(net).requires_grad_(False)
    opt, sched = make_optimizer(net, cfg, steps)
    model = torch.nn.parallel.DistributedDataParallel(net) if ddp else net
    if compile_:
        model = torch.compile(model)
    return lambda b: iql_update(model, net, target, opt, sched, b, cfg)


def timed(
    update, buffer: ReplayBuffer, cfg: IQLConfig, device: torch.device, steps: int, warmup: int
) -> float:
    gen = torch.Generator().manual_seed(0)
    batches = [buffer.sample(cfg.batch_size, gen).to(device) for _ in range(warmup + steps)]
    for b in batches[:warmup]:
        update(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    for b in batches[warmup:]:
        update(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def measure(rank: int, world: int, args: argparse.Namespace, mode: str, results: dict) -> None:
    if world > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(args.port))
        dist.init_process_group("gloo" if args.device == "cpu" else "nccl", rank=rank, world_size=world)
    torch.set_num_threads(args.threads_per_worker)
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    cfg = IQLConfig(obs_mode=mode, batch_size=args.batch_size)
    buffer = synthetic_buffer(mode, 4096, seed=rank)
    steps = args.steps if mode == "symbolic" else max(5, args.steps // 3)
    rates: dict[str, list[float]] = {"ours": [], "corl": [], "corl_dedupe": []}
    for _ in range(args.rounds):  # interleaved rounds: both see the same machine load
        torch.manual_seed(0)
        net = IQLNet(ModelSpec(mode, VOCAB, ACTIONS, cfg.hidden, cfg.embed_dim, cfg.goal_encoder)).to(device)
        rates["ours"].append(
            timed(make_ours(net, cfg, 10_000, world > 1, args.compile), buffer, cfg, device, steps, 3)
        )
        torch.manual_seed(0)
        net = IQLNet(ModelSpec(mode, VOCAB, ACTIONS, cfg.hidden, cfg.embed_dim, cfg.goal_encoder)).to(device)
        rates["corl"].append(timed(CorlStyle(net, cfg, 10_000).update, buffer, cfg, device, steps, 3))
        torch.manual_seed(0)
        net = IQLNet(ModelSpec(mode, VOCAB, ACTIONS, cfg.hidden, cfg.embed_dim, cfg.goal_encoder)).to(device)
        rates["corl_dedupe"].append(
            timed(CorlStyle(net, cfg, 10_000, True).update, buffer, cfg, device, steps, 3)
        )
    if rank == 0:
        results[(mode, world)] = {k: statistics.median(v) for k, v in rates.items()}
    if world > 1:
        dist.destroy_process_group()


def run_world(world: int, args: argparse.Namespace, mode: str) -> dict:
    if world == 1:
        results: dict = {}
        measure(0, 1, args, mode, results)
        return results[(mode, 1)]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(measure, args=(world, args, mode, results), nprocs=world, join=True)
        return dict(results[(mode, world)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="symbolic,image")
    parser.add_argument("--workers", default="1,2", help="DDP world sizes to measure")
    parser.add_argument("--steps", type=int, default=20, help="timed updates per round (image: a third)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        help="1: OpenMP threads spin badly on a shared 2-core machine",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile our forward (slow start on CPU)"
    )
    parser.add_argument("--port", type=int, default=29531)
    args = parser.parse_args()
    rows = []
    for mode in args.modes.split(","):
        for world in (int(w) for w in args.workers.split(",")):
            r = run_world(world, args, mode)
            rows.append({"mode": mode, "workers": world, **r, "speedup": r["ours"] / r["corl"]})
            rows[-1]["speedup_vs_dedupe"] = r["ours"] / r["corl_dedupe"]
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{datetime.date.today()} {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"device {args.device}, batch {args.batch_size}, compile {args.compile}\n")  # fmt: skip
    print(
        "| obs mode | DDP workers | ours, updates/s per worker | CORL-style | speedup "
        "| CORL-style + goal dedupe | speedup over that | ours, samples/s (all workers) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        total = r["ours"] * args.batch_size * r["workers"]
        print(
            f"| {r['mode']} | {r['workers']} | {r['ours']:.1f} | {r['corl']:.1f} | **{r['speedup']:.2f}x** "
            f"| {r['corl_dedupe']:.1f} | {r['speedup_vs_dedupe']:.2f}x | {total:,.0f} |"
        )


if __name__ == "__main__":
    main()
