"""What the labeling job has done to each input shard, and who is doing it now.

Layout under the output folder or prefix (names starting with `_` are not shards):
- `_manifest/<shard>.json`: one record per input shard, written only by the run holding that shard's lease, so
  concurrent runs never overwrite each other's records.
- `_manifest.json`: all records, rewritten at the end of every run for people and dashboards.
- `_leases/<shard>.lease`: held while a run labels the shard. Created with an exclusive write (S3
  `If-None-Match: *`, or `O_EXCL` locally), renewed by a heartbeat, and taken over only once expired.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig

DONE = "done"  # every episode labeled ok (some steps may still carry parse errors)
DONE_WITH_ERRORS = "done_with_errors"  # written, but some episodes errored: a rerun labels it again
QUARANTINED = "quarantined"  # unreadable or invalid input: recorded, skipped until the input changes
FAILED = "failed"  # the run broke before the shard was written


@dataclass
class ShardRecord:
    shard: str  # path relative to the input root, e.g. "shard-00003.parquet"
    input: str
    identity: str  # S3 ETag or local sha256 of the input
    fingerprint: str
    labeler: str
    status: str
    rows_in: int | None = None
    rows_out: int = 0
    episodes_error: int = 0
    error: str = ""
    output: str = ""
    run_id: str = ""
    started: float = 0.0
    finished: float = 0.0
    stats: dict = field(default_factory=dict)

    def is_current(self, identity: str, fingerprint: str) -> bool:
        """Nothing to do: same input, same labeler, and finished for good (errors are retried)."""
        return (
            self.identity == identity
            and self.fingerprint == fingerprint
            and self.status in (DONE, QUARANTINED)
        )


def content_identity(path: str, cfg: StorageConfig) -> str:
    """ETag on S3 (no download); sha256 of the bytes locally."""
    fs, p = storage.get_fs(path, cfg)
    if storage.is_remote(path):
        info = fs.info(p)
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        return f"etag:{etag}:{info.get('size')}"
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _flat(shard: str) -> str:
    """A shard's relative path as one file name, for its record and its lease."""
    return shard.replace("/", "__")


def _record_path(out: str, shard: str) -> str:
    return storage.join(out, "_manifest", _flat(shard) + ".json")


def load_records(out: str, cfg: StorageConfig) -> dict[str, ShardRecord]:
    fs, p = storage.get_fs(storage.join(out, "_manifest"), cfg)
    if not fs.exists(p):
        return {}
    records = {}
    for f in fs.find(p):
        if f.endswith(".json"):
            data = json.loads(fs.cat_file(f))
            records[data["shard"]] = ShardRecord(**data)
    return records


def write_record(out: str, record: ShardRecord, cfg: StorageConfig) -> None:
    with storage.atomic_open(_record_path(out, record.shard), cfg) as f:
        f.write(json.dumps(asdict(record), indent=2).encode())


def write_manifest(out: str, records: dict[str, ShardRecord], cfg: StorageConfig) -> None:
    body = {"updated": time.time(), "shards": {k: asdict(v) for k, v in sorted(records.items())}}
    with storage.atomic_open(storage.join(out, "_manifest.json"), cfg) as f:
        f.write(json.dumps(body, indent=2).encode())


# --- leases --------------------------------------------------------------------------------------------


def new_run_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


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
        return storage.join(self.out, "_leases", _flat(self.shard) + ".lease")

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

    def acquire(self) -> bool:
        """True if this run now holds the lease. An expired lease (its run died) is taken over."""
        if _create_exclusive(self.path, self._body(), self.cfg):
            return True
        current = self.holder()
        if current is not None and current.get("expires", 0) > time.time():
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
            if self.released:
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
    """Renews held leases every ttl/3 seconds while a run works, so long runs keep them."""

    def __init__(self, leases: dict[str, Lease], ttl_s: float) -> None:
        self.leases = leases
        self.interval = max(ttl_s / 3, 1.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease-heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for lease in list(self.leases.values()):
                # A missed beat is retried next interval: expiry is the ttl, not the interval.
                with contextlib.suppress(Exception):
                    lease.renew()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
