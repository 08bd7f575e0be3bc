"""`rgvlm label` (and `rgvlm label --status`, `rgvlm label --prune`, `rgvlm label --plan`)."""

from __future__ import annotations

import json

from rgvlm_ray.cli import require
from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labeling import exits, job, orphans, status
from rgvlm_ray.labeling.plan import inventory, with_canonical_roots
from rgvlm_ray.labeling.summary import exit_code as summary_exit_code


def main(cfg: Config) -> int:
    if cfg.label.plan:
        from rgvlm_ray.labeling import cost

        require(cfg, "label.in_path")
        if cfg.labeler.strategy != "rgvlm":
            # cost.py counts RG-VLM's windows and prompts; GVL's differ (an anchor frame, no actions).
            raise UsageError(f"--plan estimates labeler.strategy=rgvlm only, not {cfg.labeler.strategy!r}")
        plan = cost.plan_run(cfg)
        print(json.dumps(plan, indent=2) if cfg.plan.json else cost.render(plan))
        return exits.OK
    require(cfg, "label.in_path", "label.out_path")
    cfg = with_canonical_roots(cfg)
    lc = cfg.label
    if lc.status or lc.prune:
        shards, records = inventory(lc.in_path, lc.out_path, cfg.storage)
        if lc.prune:
            found = orphans.find([name for name, _, _ in shards], lc.out_path, cfg.storage)
            removed = orphans.prune(found, cfg.storage)
            print(f"{lc.out_path}: removed {removed} path(s) left by raw shards that no longer exist")
            if not lc.status:
                return exits.OK
            records = {n: r for n, r in records.items() if n in {name for name, _, _ in shards}}
        summary, text = status.report(
            {name: identity for name, _, identity in shards}, records, lc.in_path, lc.out_path, cfg.storage
        )
        print(text)
        return status.exit_code(summary["by_state"], lc.allow_quarantine)
    summary = job.run(cfg)
    print(json.dumps(summary, indent=2))
    return summary_exit_code(summary, lc.allow_quarantine)
