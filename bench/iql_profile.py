"""Where one IQL update's CPU goes (issue 23, item 1): each part's forward + backward timed alone, then
torch.profiler's top ops over a few whole updates.

    .venv/bin/python bench/iql_profile.py                  # default model, symbolic, 1 thread
    .venv/bin/python bench/iql_profile.py --sample-runs 4  # with runs of consecutive windows

The buffer is bench/iql.py's synthetic one (the shapes of the k = 1..6 datasets). Results: BENCHMARKS.md,
"Where an update's time goes".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from iql import ACTIONS, COMMA, VOCAB, synthetic_buffer  # noqa: E402

from rgvlm_ray.config import IQLConfig  # noqa: E402
from rgvlm_ray.iql.model import IQLNet, ModelSpec, target_heads  # noqa: E402
from rgvlm_ray.iql.update import iql_update, make_optimizer  # noqa: E402


def cpu_ms(fn: Callable[[], object], n: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--learner", default="iql")
    parser.add_argument("--sample-runs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dataclasses.replace(IQLConfig(), learner=args.learner, sample_runs=args.sample_runs)
    spec = ModelSpec(
        *("symbolic", VOCAB, ACTIONS, cfg.hidden, cfg.embed_dim, cfg.goal_encoder, cfg.context),
        *(cfg.history, cfg.token_dim, COMMA),
    )
    torch.manual_seed(0)
    net = IQLNet(spec)
    target, (optimizer, scheduler) = target_heads(net), make_optimizer(net, cfg, 10_000)
    buffer, gen = synthetic_buffer("symbolic", 20_000), torch.Generator().manual_seed(0)
    b = buffer.sample(cfg.batch_size, cfg.context, gen, cfg.sample_runs)
    obs = b.obs if b.obs_index is not None else b.obs.reshape(-1, *b.obs.shape[2:])
    tokens = torch.randn(cfg.batch_size, cfg.context + 1, cfg.token_dim, requires_grad=True)

    def step_encoder() -> None:
        net.zero_grad()
        net.step_encoder(obs).sum().backward()

    def history() -> None:
        net.zero_grad()
        net.history(tokens, b.valid, 2).sum().backward()

    def whole() -> None:
        net.zero_grad()
        out = net(*(b.obs, b.prev_action, b.valid, b.goal_ids, b.goal_lengths, b.goal_index, True),
                  obs_index=b.obs_index)  # fmt: skip
        sum(o.sum() for o in out[1:5]).backward()

    def update() -> None:
        batch = buffer.sample(cfg.batch_size, cfg.context, gen, cfg.sample_runs)
        iql_update(net, net, target, optimizer, scheduler, batch, cfg)

    print(f"# learner {cfg.learner}, context {cfg.context}, batch {cfg.batch_size}, sample_runs {cfg.sample_runs}, "
          f"{args.threads} thread(s); {len(obs)} observations encoded per update")  # fmt: skip
    print("| part | CPU-ms (forward + backward) |\n|---|---|")
    for name, fn in (("step encoder", step_encoder), ("history", history), ("whole forward + backward", whole),
                     ("whole update (sample, forward, backward, Adam, Polyak)", update)):  # fmt: skip
        print(f"| {name} | {cpu_ms(fn, args.repeats):.1f} |")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.repeats):
            update()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
