"""Small builders shared by tests: real episodes from the generator, and a tiny synthetic one."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from rgvlm_ray.config import EnvConfig, load_config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.generate import build_shard, episode_plan


@functools.lru_cache(maxsize=64)  # the bot plays every episode; ~64 small tables stay in memory, read-only
def generated_table(episodes: int = 6, subtasks: str = "1-6", seed: int = 0, noise: float = 0.25) -> pa.Table:
    cfg = load_config(
        overrides={
            "generate.out": "unused",
            "generate.episodes": episodes,
            "generate.subtasks": subtasks,
            "generate.seed": seed,
            "generate.expert_noise": noise,
        }
    )
    return build_shard(cfg, episode_plan(cfg.generate))


def env_config() -> EnvConfig:
    return EnvConfig()


def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def table_from_rows(rows_: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows_, schema=fmt.EPISODE_SCHEMA).drop_columns(["frames_full"])


REPO = Path(__file__).resolve().parents[1]


def cli_env() -> dict[str, str]:
    """The environment of an `rgvlm` process joined to the session's Ray cluster, importing this checkout."""
    import ray

    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}


def run_cli(cwd: str | Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`rgvlm ARGS` as a user runs it: its own process, in `cwd`, on the session's Ray cluster. What it prints
    is what a user sees (tracebacks included), and a crash cannot take the test process with it."""
    return subprocess.run(
        [sys.executable, "-m", "rgvlm_ray.cli", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(*args: str, **popen: Any) -> subprocess.Popen:
    """`rgvlm ARGS` started in the background on the session's Ray cluster (to kill or fault it mid-run)."""
    return subprocess.Popen([sys.executable, "-m", "rgvlm_ray.cli", *args], env=cli_env(), **popen)
