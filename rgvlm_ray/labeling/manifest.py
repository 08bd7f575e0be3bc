"""What the labeling job has done to each input shard (layout: rgvlm_ray/labelstore/layout.py).

- `_manifest/<shard>.json`: one record per input shard, written only by the run holding that shard's lease
  (labeling/leases.py), so concurrent runs never overwrite each other's records.
- `_manifest.json`: all records plus totals over every input shard, rewritten at the end of every run.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.labeling.leases import flat_name

DONE = "done"  # every episode labeled ok (some steps may still carry parse errors)
DONE_WITH_ERRORS = "done_with_errors"  # written, but the engine failed on some episodes: a rerun retries it
# Written; some episodes' input cannot be labeled (e.g. an undecodable frame). Bad input is deterministic, so
# this is final until the input or the labeler changes, or `label.retry_errors`.
DONE_BAD_INPUT = "done_bad_input"
QUARANTINED = "quarantined"  # unreadable or invalid input: recorded, skipped until the input changes
FAILED = "failed"  # the run broke before the shard was written
FINAL = (DONE, DONE_BAD_INPUT, QUARANTINED)
LABELED = (DONE, DONE_WITH_ERRORS, DONE_BAD_INPUT)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colour codes Ray puts in task tracebacks


def reason(error: BaseException | str, limit: int = 500) -> str:
    """One line for a record and a terminal: a Ray task error's own cause (not Ray's wrapping traceback),
    without colour codes. The full traceback belongs in the log, not in the record."""
    if isinstance(error, BaseException):
        cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError carries the task's exception
        error = cause if isinstance(cause, BaseException) else error
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    else:
        text = error
    lines = [x.strip() for x in ANSI.sub("", text).splitlines() if x.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


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
    output: str = ""  # the label shard
    bytes_out: int = 0  # its size: a label shard of another size was damaged and is labeled again
    run_id: str = ""
    started: float = 0.0
    finished: float = 0.0
    stats: dict = field(default_factory=dict)

    def is_current(self, identity: str, fingerprint: str, retry_errors: bool = False) -> bool:
        """Nothing to do: same input, same labeler, and finished for good (engine errors are retried)."""
        final = (DONE, QUARANTINED) if retry_errors else FINAL
        return self.identity == identity and self.fingerprint == fingerprint and self.status in final


def record_path(out: str, shard: str) -> str:
    return storage.join(out, "_manifest", flat_name(shard) + ".json")


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
    with storage.atomic_open(record_path(out, record.shard), cfg) as f:
        f.write(json.dumps(asdict(record), indent=2).encode())


def write_manifest(out: str, records: dict[str, ShardRecord], cfg: StorageConfig, totals: dict) -> None:
    body = {
        "updated": time.time(),
        "totals": totals,
        "shards": {k: asdict(v) for k, v in sorted(records.items())},
    }
    with storage.atomic_open(storage.join(out, "_manifest.json"), cfg) as f:
        f.write(json.dumps(body, indent=2).encode())
