"""`rgvlm label` (and `rgvlm label --status`)."""

from __future__ import annotations

import json

from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.labeling import job, status
from rgvlm_ray.labeling.plan import input_shards, with_canonical_roots
from rgvlm_ray.labelstore.layout import relative_name


def main(cfg: Config) -> int:
    require(cfg, "label.in_path", "label.out_path")
    cfg = with_canonical_roots(cfg)
    lc = cfg.label
    if lc.status:
        names = [relative_name(lc.in_path, p) for p in input_shards(lc.in_path, cfg.storage)]
        summary, text = status.report(names, lc.in_path, lc.out_path, cfg.storage)
        print(text)
        return status.exit_code(summary["by_state"], lc.allow_quarantine)
    summary = job.run(cfg)
    print(json.dumps(summary, indent=2))
    return job.exit_code(summary, lc.allow_quarantine)
