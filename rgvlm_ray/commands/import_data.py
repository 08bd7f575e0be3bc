"""`rgvlm import minari|lerobot SOURCE --out RAW`."""

from __future__ import annotations

import importlib
import json

from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError

IMPORTERS = {"minari": "rgvlm_ray.data.import_minari", "lerobot": "rgvlm_ray.data.import_lerobot"}


def main(cfg: Config) -> int:
    require(cfg, "importer.format", "importer.source", "importer.out")
    module = IMPORTERS.get(cfg.importer.format)
    if module is None:
        raise UsageError(f"unknown format {cfg.importer.format!r}: rgvlm import {' | '.join(IMPORTERS)} ...")
    summary = importlib.import_module(module).run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "skipped_episodes"}, indent=2))
    print(summary["balance"])
    return 0
