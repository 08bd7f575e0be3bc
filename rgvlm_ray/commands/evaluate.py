"""`rgvlm evaluate`."""

from __future__ import annotations

from rgvlm_ray import storage
from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.iql.evaluate import evaluate


def main(cfg: Config) -> int:
    require(cfg, "eval.checkpoint", "eval.out")
    storage.require_folder(cfg.eval.out, "--out", cfg.storage)
    _, table = evaluate(cfg)
    print(table)
    print(f"wrote eval.json, eval.md, eval.png to {cfg.eval.out}")
    return 0
