"""`rgvlm export`."""

from __future__ import annotations

import json

from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.labelstore.export import export


def main(cfg: Config) -> int:
    require(cfg, "export.in_path", "export.out")
    print(json.dumps(export(cfg), indent=2))
    return 0
