"""`rgvlm compare`."""

from __future__ import annotations

from rgvlm_ray import storage
from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.iql.compare import compare


def main(cfg: Config) -> int:
    require(cfg, "compare.out")
    storage.require_folder(cfg.compare.out, "--out", cfg.storage)
    _, table = compare(cfg)
    print(table)
    print(f"wrote compare.json, compare.md, compare.png to {cfg.compare.out}")
    return 0
