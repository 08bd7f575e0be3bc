"""Fault injection (`label.chaos`), to rehearse how a labeling run survives crashes and hangs.

- `crash-once:PATH`: the first actor call that finds no file at PATH creates it and kills its process, like an
  OOM kill; Ray restarts the actor and retries the batch.
- `hang-once:PATH`: the first call that finds no file at PATH creates it and never returns, like a wedged
  engine; `label.batch_timeout_s` must fire.
- `hang:PATH`: every call never returns (PATH is only touched), like an engine that is wedged for good.
- `crash-write-once:PATH`: the first label-shard writer that finds no file at PATH dies halfway through
  writing its shard; Ray retries the write task.
- `slow:SECONDS`: every actor call sleeps first, like a slow engine (to kill a run midway in a rehearsal).
- `disk-full:PATH`: the disk fills up just after the first label shard is written, before its record: from then
  on (while PATH exists) every write of a part, label shard, record or summary fails with ENOSPC, in every
  process of the run. Delete PATH to free the space.
PATH is on a disk every actor sees (local runs, or a shared mount). Leave `label.chaos` empty in production.
"""

from __future__ import annotations

import errno
import os
import threading
import time

from rgvlm_ray import storage
from rgvlm_ray.errors import UsageError

MODES = ("crash-once", "hang-once", "hang", "crash-write-once", "slow", "disk-full")


def _claim(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class ChaosLabeler:
    def __init__(self, inner, mode: str, path: str) -> None:
        self.inner, self.mode, self.path = inner, mode, path
        self.name, self.fingerprint = inner.name, inner.fingerprint

    def label_rows(self, rows: list[dict]) -> list[dict]:
        if self.mode == "slow":
            time.sleep(float(self.path))
        elif self.mode in ("crash-once", "hang-once", "hang") and (_claim(self.path) or self.mode == "hang"):
            if self.mode == "crash-once":
                os._exit(1)
            threading.Event().wait()
        return self.inner.label_rows(rows)

    def stats(self) -> dict:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()


def wrap(labeler, spec: str):
    if not spec:
        return labeler
    mode, _, path = spec.partition(":")
    if mode not in MODES or not path:
        raise UsageError(f"label.chaos must be '' or one of {[m + ':PATH' for m in MODES]}, got {spec!r}")
    return labeler if mode == "disk-full" else ChaosLabeler(labeler, mode, path)


def install(spec: str) -> None:
    """Set (or, for any other spec, clear) this process's storage fault for `disk-full`. Called by the driver,
    each actor and each writer task: Ray reuses worker processes, so every task sets its own."""
    mode, _, path = spec.partition(":")
    if mode != "disk-full":
        storage.inject_write_fault = None
        return

    def full(target: str) -> None:
        if os.path.exists(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)

    storage.inject_write_fault = full


def after_label_shard(spec: str) -> None:
    """Called by a writer once its label shard is written, before its record: `disk-full` fills the disk."""
    mode, _, path = spec.partition(":")
    if mode == "disk-full":
        _claim(path)


def during_write(spec: str) -> None:
    """Called by a label-shard writer halfway through its bytes: `crash-write-once` dies there."""
    mode, _, path = spec.partition(":")
    if mode == "crash-write-once" and _claim(path):
        os._exit(1)
