"""Label sets as a sidecar, measured side by side in one run:

    python bench/label_store.py [--episodes 200] [--scale 10] [--repeats 3]

1. Bytes a labeling writes / input bytes, with `env.full_view=true` frames: the label set (labels, manifest,
   summary), next to the joined copy `rgvlm export` writes (what every labeling wrote before label sets).
   For the oracle and for RG-VLM through the tiny Qwen2-VL (its stage-1 analyses are stored too).
   Target: <= 5%.
2. The labeling driver's peak RSS for N and scale x N episodes (the same episodes under new ids), each
   `rgvlm label` a separate process joined to one Ray cluster. Target: ratio <= 1.2 (flat in dataset size).
3. `rgvlm train`'s data loading (vocabulary/return pass, then every transition decoded and delivered) from raw +
   `--labels` against the exported pre-joined dataset, alternating, median of --repeats. Target: <= 1.10x.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray

from rgvlm_ray import storage
from rgvlm_ray.cli import main as cli
from rgvlm_ray.config import load_config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.iql import data
from rgvlm_ray.iql.vocab import Vocab
from rgvlm_ray.labelstore.join import Source, read_dataset

REPO = Path(__file__).resolve().parents[1]


def folder_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run(*args: str) -> None:
    assert cli(list(args)) == 0, args


def bytes_ratio(tmp: str, episodes: int, model: str) -> None:
    raw = os.path.join(tmp, "full-view")
    run("generate", "--out", raw, "--episodes", str(episodes), "--episodes-per-shard", "12", "--subtasks", "1-3",
        "env.full_view=true")  # fmt: skip
    raw_bytes = folder_bytes(raw)
    print(
        f"\n1. bytes written by a labeling / input bytes ({episodes} episodes with frames_full, {raw_bytes / 1e6:.1f} MB)"
    )
    for name, engine in (("oracle", ["--engine", "oracle"]), ("rgvlm", ["--engine", "hf", "--model", model])):
        labels, joined = os.path.join(tmp, f"labels-{name}"), os.path.join(tmp, f"joined-{name}")
        run(
            "label",
            "--in",
            raw,
            "--out",
            labels,
            *engine,
            "labeler.window=16",
            "engine.max_new_tokens_analysis=32",
        )
        run("export", "--in", raw, "--labels", labels, "--out", joined)
        side, copy = folder_bytes(labels), folder_bytes(joined)
        print(f"   {name:7s} label set {side / 1e3:8.1f} kB = {side / raw_bytes:6.2%} of input (target <= 5%);"
              f"   joined copy {copy / 1e6:6.2f} MB = {copy / raw_bytes:6.1%}")  # fmt: skip


def replicate(src: str, dst: str, times: int) -> None:
    """`times` copies of every shard of `src`, episode ids suffixed so that every copy is new data."""
    for shard in fmt.list_shards(src):
        table = fmt.read_shard(shard)
        for i in range(times):
            ids = [f"{e}-c{i}" for e in table.column("episode_id").to_pylist()]
            copy = table.set_column(table.column_names.index("episode_id"), "episode_id", [ids])
            fmt.write_shard(copy, os.path.join(dst, f"c{i:02d}-{storage.basename(shard)}"))


def driver_rss(raw: str, out: str) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one `rgvlm label --engine oracle` process joined to this Ray cluster."""
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rgvlm_ray.cli", "label", "--in", raw, "--out", out, "--engine", "oracle"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def rss_ratio(tmp: str, raw: str, episodes: int, scale: int) -> None:
    big = os.path.join(tmp, f"raw-x{scale}")
    replicate(raw, big, scale)
    small_rss, small_s = driver_rss(raw, os.path.join(tmp, "rss-small"))
    big_rss, big_s = driver_rss(big, os.path.join(tmp, "rss-big"))
    print(f"\n2. labeling driver's peak RSS (oracle): {episodes} episodes {small_rss:.0f} MB in {small_s:.0f} s; "
          f"{episodes * scale} episodes {big_rss:.0f} MB in {big_s:.0f} s; ratio {big_rss / small_rss:.2f} "
          "(target <= 1.2)")  # fmt: skip


def load_seconds(raw: str, labels: list[str], reward: str) -> float:
    """What `rgvlm train` does before its first update: both data passes, every transition delivered."""
    cfg = load_config(dotlist=[f"train.reward={reward}", f"train.in_path={raw}"])
    start = time.perf_counter()
    info = data.inspect_dataset(Source(raw, labels, cfg.storage))
    data.check_dataset(info, reward, cfg.iql.obs_mode)
    stats = data.reward_stats(info, cfg)
    vocab = Vocab.build(stats.goals, cfg.iql.max_vocab)
    ds = data.transitions(
        read_dataset(info.data, data.episode_columns(cfg), cfg.ray), cfg, vocab, stats.scale(True)
    )
    rows = sum(len(b["action"]) for b in ds.iter_batches(batch_size=4096, batch_format="numpy"))
    assert rows == stats.steps, (rows, stats.steps)
    return time.perf_counter() - start


def join_cost(tmp: str, raw: str, repeats: int) -> None:
    labels, joined = os.path.join(tmp, "labels-oracle-sym"), os.path.join(tmp, "joined-oracle-sym")
    run("label", "--in", raw, "--out", labels, "--engine", "oracle")
    run("export", "--in", raw, "--labels", labels, "--out", joined)
    load_seconds(joined, [], "oracle+sparse")  # warm-up: imports, Ray Data start-up
    with_join, pre_joined = [], []
    for _ in range(repeats):
        with_join.append(load_seconds(raw, [labels], "oracle+sparse"))
        pre_joined.append(load_seconds(joined, [], "oracle+sparse"))
    a, b = statistics.median(with_join), statistics.median(pre_joined)
    print(f"\n3. train data loading, reward oracle+sparse, median of {repeats}: raw + --labels {a:.2f} s, "
          f"pre-joined {b:.2f} s; ratio {a / b:.2f} (target <= 1.10)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full-view-episodes", type=int, default=36)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-store-")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {tmp}")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    model = os.path.join(tmp, "vlm")
    run("make-tiny-vlm", "--out", model)
    bytes_ratio(tmp, args.full_view_episodes, model)
    raw = os.path.join(tmp, "raw")
    run("generate", "--out", raw, "--episodes", str(args.episodes), "--episodes-per-shard", "50")
    rss_ratio(tmp, raw, args.episodes, args.scale)
    join_cost(tmp, raw, args.repeats)


if __name__ == "__main__":
    main()
