"""Per-shard leases: `_leases/<shard>.lease` under the output, so concurrent runs never label the same shard.

A lease is created with an exclusive write (S3 `If-None-Match: *`, or `O_EXCL` locally) and renewed by a
heartbeat every `label.lease_ttl_s / 6`. Another run takes it over once it has expired, or at once when its
holder ran on the same host and that process is gone (a `kill -9`ed driver re-run from the same machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig

HEARTBEATS_PER_TTL = 6  # a lease survives 5 missed beats (slow S3 PUTs, a GC pause) before it expires


def flat_name(shard: str) -> str:
    """A shard's relative path as one file name, for its record, lease and parts."""
    return shard.replace("/", "__")


def new_run_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def holder_is_dead(lease: dict) -> bool:
    """True when the lease's run ran on this host and its process no longer exists."""
    host, _, rest = str(lease.get("run_id", "")).rpartition("-")[0].rpartition("-")
    if host != socket.gethostname() or not rest.isdigit():
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _create_exclusive(path: str, data: bytes, cfg: StorageConfig) -> bool:
    fs, p = storage.get_fs(path, cfg)
    if storage.is_remote(path):
        try:
            fs.pipe_file(p, data, mode="create")
        except FileExistsError:
            return False
        return True
    os.makedirs(os.path.dirname(p), exist_ok=True)
    try:
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


@dataclass
class Lease:
    out: str
    shard: str
    run_id: str
    ttl_s: float
    cfg: StorageConfig
    released: bool = False
    # The heartbeat thread renews while the main thread releases: never renew a released lease.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def path(self) -> str:
        return storage.join(self.out, "_leases", flat_name(self.shard) + ".lease")

    def _body(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "expires": time.time() + self.ttl_s}).encode()

    def holder(self) -> dict | None:
        fs, p = storage.get_fs(self.path, self.cfg)
        try:
            return json.loads(fs.cat_file(p))
        except FileNotFoundError:
            return None
        except ValueError:  # torn or foreign file: treat as expired
            return {"run_id": "?", "expires": 0}

    def is_live(self, holder: dict | None) -> bool:
        """A lease file is held while its run renews it and, on this host, while its process exists."""
        return holder is not None and holder.get("expires", 0) > time.time() and not holder_is_dead(holder)

    def clear_if_dead(self) -> bool:
        """Remove a lease whose run is gone (a driver killed after its shard landed, before it let go), so no
        lease outlives the shard it guarded. True if one was removed."""
        holder = self.holder()
        if holder is None or self.is_live(holder):
            return False
        fs, p = storage.get_fs(self.path, self.cfg)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(p)
        return True

    def acquire(self) -> bool:
        """True if this run now holds the lease. An expired lease (its run died) is taken over."""
        if _create_exclusive(self.path, self._body(), self.cfg):
            return True
        if self.is_live(self.holder()):
            return False
        fs, p = storage.get_fs(self.path, self.cfg)
        fs.rm_file(p)
        # Two runs racing for the same expired lease: the exclusive create lets only one through, and the
        # read-back catches the rare case where a slower run deleted the winner's fresh lease.
        return (
            _create_exclusive(self.path, self._body(), self.cfg)
            and (self.holder() or {}).get("run_id") == self.run_id
        )

    def renew(self) -> None:
        with self._lock:
            # Released here, or by the shard's writer once its record landed: never bring it back.
            if self.released or (self.holder() or {}).get("run_id") != self.run_id:
                return
            with storage.atomic_open(self.path, self.cfg) as f:
                f.write(self._body())

    def release(self) -> None:
        with self._lock:
            self.released = True
            if (self.holder() or {}).get("run_id") == self.run_id:
                fs, p = storage.get_fs(self.path, self.cfg)
                fs.rm_file(p)


class Heartbeat:
    """Renews held leases every ttl/HEARTBEATS_PER_TTL seconds while a run works, so long runs keep them.

    `on_error(exc, path)` hears of each failed renewal; once it returns True (S3 is down: every call would wait
    out its retries) the heartbeat stops, and the run, told so first, stops calling S3 too."""

    def __init__(
        self,
        leases: dict[str, Lease],
        ttl_s: float,
        on_error: Callable[[BaseException, str], bool] = lambda exc, path: False,
    ) -> None:
        self.leases = leases
        self.on_error = on_error
        self.interval = max(ttl_s / HEARTBEATS_PER_TTL, 0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease-heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for lease in list(self.leases.values()):
                try:
                    lease.renew()
                except Exception as exc:  # a missed beat is retried next interval: expiry is the ttl
                    if self.on_error(exc, lease.path):
                        return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
