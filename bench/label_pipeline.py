"""Labeling-job overhead: the same episodes through a plain Python loop, then Ray Data with 1 and 2 actors.

    python bench/label_pipeline.py [--episodes 12] [--window 16]

Each path reads the shards, labels every episode with the tiny offline Qwen2-VL through the hf engine (both
stages, window W), and writes label shards (episode ids and label columns, the job's sidecar layout). Ray's own start-up is excluded; actor start-up (model load) is
included, as the loop includes its model load. The loop runs torch on one thread, as Ray gives an actor with
fractional CPUs (OMP_NUM_THREADS=1), so the 1-actor ratio measures the pipeline's overhead, not thread counts.
Target (issue 4): 1-actor pipeline <= 1.15x the loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from rgvlm_ray import storage
from rgvlm_ray.cli import main as cli
from rgvlm_ray.config import load_config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labelers.labeler import build_labeler
from rgvlm_ray.labeling.actors import label_table
from rgvlm_ray.ray_utils import init_ray


def loop(cfg, src: str, out: str) -> float:
    start = time.perf_counter()
    labeler = build_labeler(cfg.engine, cfg.labeler)
    for shard in fmt.list_shards(src):
        table = fmt.read_shard(shard)
        rows = table.to_pylist()
        labels = []
        for i in range(0, len(rows), cfg.label.episodes_per_batch):
            labels += labeler.label_rows(rows[i : i + cfg.label.episodes_per_batch])
        labeled = label_table(table.column("episode_id").combine_chunks(), labels, labeler.name)
        fmt.write_shard(labeled, storage.join(out, storage.basename(shard)))
    return time.perf_counter() - start


def pipeline(overrides: list[str], actors: int, src: str, out: str) -> float:
    start = time.perf_counter()
    rc = cli(
        [
            "label",
            "--in",
            src,
            "--out",
            out,
            "--actors",
            str(actors),
            "--force",
            *overrides,
            f"label.min_actors={actors}",
        ]
    )
    assert rc == 0, rc
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=36)
    ap.add_argument("--window", type=int, default=16)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-label-")
    model, src = os.path.join(tmp, "vlm"), os.path.join(tmp, "raw")
    assert cli(["make-tiny-vlm", "--out", model]) == 0
    assert (
        cli(
            [
                "generate",
                "--out",
                src,
                "--episodes",
                str(args.episodes),
                "--episodes-per-shard",
                "3",
                "--subtasks",
                "1-2",
                "--seed",
                "5",
            ]
        )
        == 0
    )
    overrides = [
        "--engine",
        "hf",
        "--model",
        model,
        f"labeler.window={args.window}",
        "label.num_cpus_per_actor=0.5",
    ]
    cfg = load_config(dotlist=[f"labeler.window={args.window}", "engine.kind=hf", f"engine.model={model}"])
    init_ray(cfg.ray)
    torch.set_num_threads(1)
    t_loop = loop(cfg, src, os.path.join(tmp, "loop"))
    t_one = pipeline(overrides, 1, src, os.path.join(tmp, "one"))
    t_two = pipeline(overrides, 2, src, os.path.join(tmp, "two"))
    steps = sum(
        len(a)
        for s in fmt.list_shards(src)
        for a in fmt.read_shard(s, columns=["actions"]).column("actions").to_pylist()
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.episodes} episodes, {steps} transitions, window {args.window}"
    )
    print(f"plain loop            {t_loop:7.1f} s  {steps / t_loop:6.1f} transitions/s  1.00x")
    print(
        f"Ray Data, 1 actor     {t_one:7.1f} s  {steps / t_one:6.1f} transitions/s  {t_one / t_loop:.2f}x the loop (target <= 1.15)"
    )
    print(
        f"Ray Data, 2 actors    {t_two:7.1f} s  {steps / t_two:6.1f} transitions/s  {t_two / t_loop:.2f}x the loop, speed-up {t_one / t_two:.2f}x over 1 actor"
    )


if __name__ == "__main__":
    main()
