"""Label shards, written by Ray workers: never by the driver, never half-visible.

Each actor writes the labels of its batch (episode ids and label columns, no frames) as a part file under
`_parts/<shard>/`. When the driver has counted every episode of a shard, a Ray task gathers that shard's parts,
checks them against the raw shard's episode ids, writes the label shard atomically, and deletes the parts.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import StorageError
from rgvlm_ray.labeling import chaos
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling.leases import Lease
from rgvlm_ray.labelstore import layout


def write_part(table: pa.Table, out: str, shard: str, run_id: str, cfg: StorageConfig) -> str:
    path = storage.join(layout.parts_prefix(out, shard), f"{run_id}-{uuid.uuid4().hex[:12]}.parquet")
    fmt.write_shard(table, path, cfg)
    return path


def finalize(
    out: str, record: mf.ShardRecord, parts: list[str], tokens: dict, chaos_spec: str, cfg: StorageConfig
) -> tuple[mf.ShardRecord, StorageError | None]:
    """Gather `parts` into the label shard `out/<shard>`, then write its manifest record (runs as a Ray task, so
    a shard and its record land together even if the driver dies). Returns the record, and the storage fault
    (S3 down) met while tidying up after it, if any."""
    chaos.install(chaos_spec)
    labeler = record.labeler
    ids = fmt.read_shard(record.input, cfg, columns=["episode_id"]).column("episode_id")
    schema = pa.schema([pa.field("episode_id", pa.string()), *fmt.label_schema(labeler)])
    tables = [fmt.conform(fmt.read_shard(p, cfg)).select(schema.names) for p in parts]
    labels = pa.concat_tables([schema.empty_table(), *tables])
    index = pc.index_in(ids, value_set=labels.column("episode_id"))  # first match: a retried batch's twin
    if index.null_count:
        raise RuntimeError(
            f"{record.shard}: {index.null_count} of {len(ids)} episodes have no labels in {parts}"
        )
    table = labels.take(index)
    root = record.input[: -len(record.shard)].rstrip("/") if record.input.endswith(record.shard) else ""
    meta = layout.LabelMeta(
        record.shard,
        record.identity,
        labeler,
        record.fingerprint,
        table.num_rows,
        root and layout.root_id(root),
    )
    data = layout.label_shard_bytes(table, meta)
    path = layout.shard_path(out, record.shard)
    with storage.atomic_open(path, cfg) as f:
        f.write(data[: len(data) // 2])
        chaos.during_write(chaos_spec)
        f.write(data[len(data) // 2 :])
    stats = {**shard_stats(table, labeler), **tokens}
    errors, bad = stats["episode_status"].get("error", 0), stats["episode_status"].get("bad_input", 0)
    record = replace(
        record,
        status=mf.DONE_WITH_ERRORS if errors else mf.DONE_BAD_INPUT if bad else mf.DONE,
        rows_out=table.num_rows,
        episodes_error=errors + bad,
        output=path,
        bytes_out=len(data),
        finished=time.time(),
        stats=stats,
    )
    chaos.after_label_shard(chaos_spec)
    try:
        mf.write_record(out, record, cfg)
    except BaseException:
        # No label shard without its record (disk full, S3 gone): take it back, best effort, and fail the shard.
        with contextlib.suppress(Exception):
            fs, p = storage.get_fs(path, cfg)
            fs.rm_file(p)
        raise
    # The shard is done; parts left by a failing delete are cleared by the next write or `rgvlm label --prune`.
    # Its lease goes with it, here rather than only in the driver: a driver killed now leaves no lease behind.
    # One try for both: if S3 fails the first, the second would only wait out the same retries (the driver
    # frees the lease if it can; else it expires).
    parts_prefix = layout.parts_prefix(out, record.shard)
    try:
        fs, prefix = storage.get_fs(parts_prefix, cfg)
        if fs.exists(prefix):
            fs.rm(prefix, recursive=True)
        Lease(out, record.shard, record.run_id, 0, cfg).release()
    except Exception as exc:
        fault = storage.fault(exc, parts_prefix, cfg)
        if fault is not None and fault.storage_down:  # the driver stops calling S3 too
            return record, fault
    return record, None


def shard_stats(table: pa.Table, name: str) -> dict:
    col = lambda s: table.column(fmt.label_column(name, s))  # noqa: E731
    return {
        "episodes": table.num_rows,
        "transitions": int(pc.sum(pc.list_value_length(col("reward"))).as_py() or 0),
        "windows": int(pc.sum(pc.list_value_length(col("analysis"))).as_py() or 0),
        "step_status": dict(Counter(pc.list_flatten(col("status")).to_pylist())),
        "episode_status": dict(Counter(col("episode_status").to_pylist())),
    }
