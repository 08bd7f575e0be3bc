"""`rgvlm generate`."""

from __future__ import annotations

import json

from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.data.generate import run


def main(cfg: Config) -> int:
    require(cfg, "generate.out")
    print(json.dumps(run(cfg), indent=2))
    return 0
