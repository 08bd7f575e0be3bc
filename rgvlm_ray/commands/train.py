"""`rgvlm train`."""

from __future__ import annotations

import json

from rgvlm_ray import storage
from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.iql.trainer import train


def main(cfg: Config) -> int:
    require(cfg, "train.in_path", "train.out_path")
    storage.require_folder(cfg.train.out_path, "--out", cfg.storage)
    print(json.dumps(train(cfg), indent=2, default=str))
    return 0
