"""`rgvlm export [parquet|minari|lerobot]`."""

from __future__ import annotations

import importlib
import json

from rgvlm_ray import storage
from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError

EXPORTERS = {
    "parquet": "rgvlm_ray.labelstore.export:export",
    "minari": "rgvlm_ray.labelstore.export_minari:run",
    "lerobot": "rgvlm_ray.labelstore.export_lerobot:run",
}


def main(cfg: Config) -> int:
    require(cfg, "export.in_path", "export.out")
    if cfg.export.format != "minari":  # a Minari dataset id, not a path
        storage.require_folder(cfg.export.out, "--out", cfg.storage)
    target = EXPORTERS.get(cfg.export.format)
    if target is None:
        raise UsageError(f"unknown format {cfg.export.format!r}: rgvlm export [{' | '.join(EXPORTERS)}] ...")
    module, func = target.split(":")
    print(json.dumps(getattr(importlib.import_module(module), func)(cfg), indent=2))
    return 0
