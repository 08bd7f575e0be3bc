"""`rgvlm relabel`: the scheduled job. Label only shards added or changed since the manifest, then optionally
retrain on the whole labeled corpus.

Safe to run from cron at any time: a run with nothing new does nothing, and per-shard leases keep overlapping
runs from labeling the same shard. Retraining happens only when this run labeled something, under its own lease
(`_leases/_train.lease`), into a fresh run folder `<train_root>/<UTC timestamp>` (a rerun of `rgvlm train`
into an old folder would resume it, not learn from the new data).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

from rgvlm_ray import storage
from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling import pipeline

log = logging.getLogger(__name__)
TRAIN_LEASE = "_train"


def retrain(cfg: Config, run_id: str) -> str | None:
    """Train on the labeled corpus into a new run folder; None if another run is training right now."""
    from rgvlm_ray.iql.trainer import main as train_main

    lease = mf.Lease(cfg.label.out_path, TRAIN_LEASE, run_id, cfg.label.lease_ttl_s, cfg.storage)
    if not lease.acquire():
        log.warning("another run is retraining (lease %s); skipping", lease.path)
        return None
    out = storage.join(cfg.relabel.train_root, time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    try:
        with mf.Heartbeat({TRAIN_LEASE: lease}, cfg.label.lease_ttl_s):
            rc = train_main(replace(cfg, train=replace(cfg.train, in_path=cfg.label.out_path, out_path=out)))
    finally:
        lease.release()
    if rc != 0:
        raise RuntimeError(f"retraining into {out} failed with exit code {rc}")
    return out


def main(cfg: Config) -> int:
    from rgvlm_ray.cli import require

    require(cfg, "label.in_path", "label.out_path")
    if cfg.relabel.then_train and not cfg.relabel.train_root:
        raise UsageError(
            "--then-train needs --train-root (a folder or s3:// prefix for the new training runs)"
        )
    summary = pipeline.run(cfg)
    labeled = summary["shards"]["labeled"]
    print(json.dumps(summary, indent=2))
    print(
        f"relabel: {labeled} new or changed shard(s) labeled, {summary['shards']['skipped_current']} current, "
        f"{len(summary['shards']['skipped_leased_by_other_run'])} leased by another run"
    )
    rc = pipeline.exit_code(summary, cfg.label.allow_quarantine)
    if cfg.relabel.then_train and rc == 0:
        if labeled or cfg.relabel.train_always:
            out = retrain(cfg, summary["run_id"])
            print(f"retrained: {out}" if out else "retraining skipped: another run holds the training lease")
        else:
            print("nothing new labeled: no retraining")
    return rc
