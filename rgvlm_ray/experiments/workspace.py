"""The output folder a multi-stage command (`rgvlm run`, `rgvlm study`) fills: paths under it, timed stages,
tiny stand-in models and the warning that goes with them.

Its own module so that the commands and their reports (demo.py, demo_report.py, study/)
share these without importing one another.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rgvlm_ray import storage
from rgvlm_ray.config import Config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError

REAL_LVLM = "--engine vllm --model Qwen/Qwen2.5-VL-7B-Instruct label.num_gpus_per_actor=1"
NOISE_WARNING = (
    "RG-VLM labels here come from a tiny, randomly initialised Qwen2-VL: the two-stage pipeline is real, "
    "but the rewards are NOISE, so rgvlm and rgvlm+sparse results say nothing about RG-VLM itself. "
    f"For real labels, point engine.model at an LVLM on a GPU node: `rgvlm run --config gpu-node ...` or add "
    f"`{REAL_LVLM}`."
)


@dataclass
class Stage:
    name: str
    seconds: float
    work: float  # units of `unit` done
    unit: str
    note: str = ""

    @property
    def rate(self) -> float:
        return self.work / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Workspace:
    cfg: Config
    out: str  # local folder or s3:// prefix
    stages: list[Stage] = field(default_factory=list)
    tiny_vlm: bool = False  # RG-VLM labels come from a tiny random model (noise)
    tiny_clip: bool = False

    def path(self, *parts: str) -> str:
        return storage.join(self.out, *parts)

    def timed(self, name: str, unit: str, fn: Callable[[], Any], note: str = "") -> Any:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        work = fn()
        seconds = time.perf_counter() - start
        self.stages.append(Stage(name, seconds, float(work or 0), unit, note))
        return work


def has_shards(path: str, cfg: Config) -> bool:
    try:
        return bool(fmt.list_shards(path, cfg.storage))
    except FileNotFoundError:
        return False


def tiny_model(ws: Workspace, name: str, build: Callable[[str], Any]) -> str:
    """Build a tiny random model once under OUT/models (a rerun reuses it). Labeling actors load it from this
    path, so it must be a local folder (on a cluster, configure a real model instead)."""
    if storage.is_remote(ws.out):
        raise UsageError(
            f"{ws.out} is remote, but tiny stand-in models are built on local disk: set engine.model (and "
            "study.clip_model / run.clip_model) to a hub id or a path every node can read"
        )
    path = ws.path("models", name)
    if not os.path.exists(os.path.join(path, "config.json")):
        build(path)
    return path
