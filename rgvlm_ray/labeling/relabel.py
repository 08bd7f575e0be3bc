"""`rgvlm relabel`'s labeling half: label only shards added or changed since the manifest, and hold the one
retraining slot. The command (rgvlm_ray/commands/relabel.py) decides whether to retrain and calls the trainer.

Safe to run from cron at any time: a run with nothing new does nothing, and per-shard leases keep overlapping
runs from labeling the same shard. Retraining happens under its own lease (`_leases/_train.lease`), into a
fresh run folder `<train_root>/<UTC timestamp>` (a rerun of `rgvlm train` into an old folder would resume it, not
learn from the new data).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rgvlm_ray import storage
from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labeling import job
from rgvlm_ray.labeling.leases import Heartbeat, Lease

TRAIN_LEASE = "_train"


def check(cfg: Config) -> None:
    if cfg.relabel.then_train and not cfg.relabel.train_root:
        raise UsageError(
            "--then-train needs --train-root (a folder or s3:// prefix for the new training runs)"
        )


def label_new(cfg: Config) -> dict:
    """Label what is new or changed; the labeling job's summary."""
    check(cfg)
    return job.run(cfg)


@contextlib.contextmanager
def training_slot(cfg: Config, run_id: str) -> Iterator[str | None]:
    """A fresh run folder under relabel.train_root while this run holds the training lease; None if another
    run is retraining right now."""
    lease = Lease(cfg.label.out_path, TRAIN_LEASE, run_id, cfg.label.lease_ttl_s, cfg.storage)
    if not lease.acquire():
        yield None
        return
    try:
        with Heartbeat({TRAIN_LEASE: lease}, cfg.label.lease_ttl_s):
            yield storage.join(cfg.relabel.train_root, time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    finally:
        lease.release()
