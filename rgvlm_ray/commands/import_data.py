"""`rgvlm import minari|lerobot SOURCE --out RAW`.

Exit codes (docs/minari.md#exit-codes): 0 at least one episode written (any skipped ones are listed in
OUT/_import.json); 1 nothing written, with the reasons (as `rgvlm label`'s 1: the command ran, its input gave
nothing usable); 2 refused up front (bad settings, an unreadable dataset file, a frame-rate disagreement); 4 the
storage failed.
"""

from __future__ import annotations

import importlib
import json
import sys

from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError

IMPORTERS = {"minari": "rgvlm_ray.data.import_minari", "lerobot": "rgvlm_ray.data.import_lerobot"}
NOTHING_WRITTEN = 1


def main(cfg: Config) -> int:
    require(cfg, "importer.format", "importer.source", "importer.out")
    module = IMPORTERS.get(cfg.importer.format)
    if module is None:
        raise UsageError(f"unknown format {cfg.importer.format!r}: rgvlm import {' | '.join(IMPORTERS)} ...")
    summary = importlib.import_module(module).run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "skipped_episodes"}, indent=2))
    print(summary["balance"])
    if summary["written"] == 0:
        reasons = ", ".join(f"{why}: {n}" for why, n in summary["skipped_reasons"].items()) or "no episodes"
        print(
            f"rgvlm import: nothing written ({summary['balance']}; {reasons}): "
            f"every episode and its reason is in {summary['out'].rstrip('/')}/_import.json",
            file=sys.stderr,
        )
        return NOTHING_WRITTEN
    return 0
