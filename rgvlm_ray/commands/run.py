"""`rgvlm run`: the end-to-end demo."""

from __future__ import annotations

from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.experiments.demo import run
from rgvlm_ray.experiments.workspace import NOISE_WARNING


def main(cfg: Config) -> int:
    require(cfg, "run.out")
    path = run(cfg)
    print(f"\nwrote {path}")
    if not cfg.engine.model:
        print(f"NOTE: {NOISE_WARNING}")
    return 0
