"""How many updates and CPU-seconds `bc` needs to fit noise-free expert data, per optimiser variant (issue 23).

    .venv/bin/python bench/iql_fit.py                       # 300 episodes, context 8, every variant, 1 thread
    .venv/bin/python bench/iql_fit.py --variants lr1e-3,cos1e-3 --budgets 1500,3000,6000 --episodes 1200

The data: noise-free bot episodes of k = 1..6 (`generate.expert_noise=0`, no detours or abandons), as the study's
BC ceiling trains on. The learner: `iql.learner=bc` at the default model, trained in this process (no Ray), one
torch thread. Every `--eval-every` updates the training-data agreement (argmax pi against the episodes' own
actions, over every training state; iql/agreement.py) is measured; a variant "fits" at the first update count
where it reaches `--target` (0.97, agreement.FIT_THRESHOLD).

Reading a crossing from checkpoints inside one run is only fair when the lr does not decay towards that run's
end (issue 23, item 2): constant-lr variants are read that way; cosine variants run once per budget in
`--budgets` and report the agreement at each budget's end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rgvlm_ray.config import Config, load_config  # noqa: E402
from rgvlm_ray.data.generate import build_shard, episode_plan  # noqa: E402
from rgvlm_ray.iql.agreement import FIT_THRESHOLD, expert_agreement, table_episodes  # noqa: E402
from rgvlm_ray.iql.data import load_buffer, to_transitions  # noqa: E402
from rgvlm_ray.iql.model import IQLNet, ModelSpec, target_heads  # noqa: E402
from rgvlm_ray.iql.trainer import model_spec  # noqa: E402
from rgvlm_ray.iql.update import iql_update, make_optimizer  # noqa: E402
from rgvlm_ray.iql.vocab import Vocab  # noqa: E402

# short name -> (what the table calls it, IQLConfig overrides, cosine). Constant-lr variants are read every
# --eval-every updates inside one run; cosine variants train once per --budgets entry.
VARIANTS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "cos3e-4": ("lr 3e-4 cosine (the default before issue 23)", {"lr": 3e-4}, True),
    "lr3e-4": ("lr 3e-4 constant", {"lr": 3e-4, "actor_cosine": False}, False),
    "lr1e-3": ("lr 1e-3 constant", {"lr": 1e-3, "actor_cosine": False}, False),
    "warmup": ("lr 1e-3 warm-up 200", {"lr": 1e-3, "actor_cosine": False, "warmup_steps": 200}, False),
    "clip": ("lr 1e-3 clip 1.0", {"lr": 1e-3, "actor_cosine": False, "grad_clip": 1.0}, False),
    "batch512": ("lr 1e-3 batch 512", {"lr": 1e-3, "actor_cosine": False, "batch_size": 512}, False),
    "lr3e-3": ("lr 3e-3 constant", {"lr": 3e-3, "actor_cosine": False}, False),
    "cos1e-3": ("lr 1e-3 cosine", {"lr": 1e-3}, True),
    "memory": ("lr 1e-3 cosine, episode memory", {"lr": 1e-3, "memory": "events"}, True),
    "small": ("lr 1e-3 cosine, token 64, hidden 128", {"lr": 1e-3, "token_dim": 64, "hidden": 128}, True),
    "conv": ("lr 1e-3 cosine, conv cells", {"lr": 1e-3, "obs_encoder": "conv"}, True),
    "runs8": ("lr 1e-3 cosine, runs of 8 windows", {"lr": 1e-3, "sample_runs": 8}, True),
    "runs4": ("lr 1e-3 cosine, runs of 4 windows", {"lr": 1e-3, "sample_runs": 4}, True),
}


def expert_table(episodes: int, seed: int) -> Any:
    cfg = load_config(
        overrides={
            "generate.out": "unused",
            "generate.episodes": episodes,
            "generate.seed": seed,
            "generate.expert_noise": 0.0,
            "generate.noise_levels": [],
            "generate.detour": 0.0,
            "generate.abandon": 0.0,
        }
    )
    return build_shard(cfg, episode_plan(cfg.generate))


def train_and_read(
    buffer: Any,
    episodes: list[dict[str, Any]],
    vocab: Vocab,
    cfg: Config,
    steps: int,
    read_at: list[int],
    seed: int,
    stop_at: float = 2.0,
    held_out: list[dict[str, Any]] | None = None,
) -> list[tuple[int, float, float, float]]:
    """Train `steps` bc updates of `cfg.iql` on `buffer`; (updates, agreement with `episodes`' own actions,
    CPU-seconds of updates so far, agreement on `held_out` episodes or NaN) at every `read_at`, stopping at
    the first read that reaches `stop_at`."""
    iql = cfg.iql
    spec: ModelSpec = model_spec(cfg, vocab)
    torch.manual_seed(seed)
    net = IQLNet(spec)
    target = target_heads(net)
    optimizer, scheduler = make_optimizer(net, iql, steps)
    generator = torch.Generator().manual_seed(seed)
    out, cpu = [], 0.0
    for step in range(1, steps + 1):
        t = time.process_time()
        batch = buffer.sample(iql.batch_size, spec.context, generator, iql.sample_runs)
        iql_update(net, net, target, optimizer, scheduler, batch, iql)
        cpu += time.process_time() - t
        if step in read_at:
            net.eval()
            agreement = expert_agreement(net, vocab, episodes, target="actions")["agreement"]
            fresh = (
                expert_agreement(net, vocab, held_out, target="actions")["agreement"]
                if held_out
                else float("nan")
            )
            net.train()
            out.append((step, agreement, cpu, fresh))
            print(
                f"    {step:6d} updates  agreement {agreement:.3f}  held-out {fresh:.3f}  {cpu:7.1f} CPU-s",
                flush=True,
            )
            if agreement >= stop_at:
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="generate seed of the expert data")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--max-updates", type=int, default=6000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--budgets", default="1500,3000", help="cosine variants: one run per budget")
    parser.add_argument("--target", type=float, default=FIT_THRESHOLD)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--held-out",
        type=int,
        default=0,
        help="also read agreement on this many expert episodes of another generate seed (generalisation)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
    t = time.perf_counter()
    table = expert_table(args.episodes, args.seed)
    base = load_config(dotlist=["iql.learner=bc"])
    vocab = Vocab.build(table.column("goal").to_pylist(), base.iql.max_vocab)
    # The same buffer and agreement episodes for every variant: built once, with episode-memory columns (a model
    # without memory ignores them).
    transitions = to_transitions(
        table, "symbolic", "sparse", {"sparse": 1.0}, "zero", 1.0, vocab, memory=True
    )
    buffer = load_buffer([transitions])
    episodes = table_episodes(table, need_expert=False)
    # Another generate seed: other layouts, and missions drawn afresh (few coincide with the training ones).
    held_out = (
        table_episodes(expert_table(args.held_out, args.seed + 10_000), need_expert=False)
        if args.held_out
        else None
    )
    print(
        f"# {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s); "
        f"{args.episodes} noise-free expert episodes (k 1-6, generate seed {args.seed}), {len(buffer)} states, "
        f"generated in {time.perf_counter() - t:.0f} s; fit = training agreement >= {args.target}",
        flush=True,
    )
    rows = []
    for name in names:
        label, overrides, cosine = VARIANTS[name]
        cfg = dataclasses.replace(base, iql=dataclasses.replace(base.iql, **overrides))
        print(f"\n## {label}", flush=True)
        if cosine:
            reads: list[tuple[int, float, float]] = []
            for budget in (int(b) for b in args.budgets.split(",")):
                reads += train_and_read(
                    buffer, episodes, vocab, cfg, budget, [budget], args.seed, held_out=held_out
                )
                if reads[-1][1] >= args.target:
                    break
        else:
            read_at = list(range(args.eval_every, args.max_updates + 1, args.eval_every))
            reads = train_and_read(
                buffer, episodes, vocab, cfg, args.max_updates, read_at, args.seed, args.target, held_out
            )
        fit = next((r for r in reads if r[1] >= args.target), None)
        rows.append((label, fit, reads[-1], reads[-1][2] / reads[-1][0]))
    print(
        "\n| variant | updates to fit | CPU-s to fit | agreement at the last read | held-out agreement there "
        "| CPU-ms per update |"
    )
    print("|---|---|---|---|---|---|")
    for name, fit, last, per_update in rows:
        updates = f"{fit[0]}" if fit else f"> {last[0]}"
        cpu = f"{fit[2]:.0f}" if fit else f"> {last[2]:.0f}"
        print(
            f"| {name} | {updates} | {cpu} | {last[1]:.3f} at {last[0]} | {last[3]:.3f} "
            f"| {per_update * 1000:.1f} |"
        )


if __name__ == "__main__":
    main()
