"""`rgvlm export`: raw episodes joined with label sets, written as one table per shard (today's joined format),
for tools that want a single table. Ray tasks write the shards, one per raw shard, atomically."""

from __future__ import annotations

from rgvlm_ray import storage
from rgvlm_ray.config import Config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelstore.join import Source


def export_shard(source: Source, shard: str, out: str) -> dict:
    """Join one raw shard with its label shards and write it under the same name (runs as a Ray task)."""
    table = source.read(shard)
    path = storage.join(out, source.name(shard))
    return {
        "shard": source.name(shard),
        "episodes": table.num_rows,
        "bytes": fmt.write_shard(table, path, source.cfg),
    }


def export(cfg: Config) -> dict:
    import ray

    from rgvlm_ray.ray_utils import init_ray

    e = cfg.export
    if not e.in_path or not e.out:
        raise UsageError("export needs --in RAW and --out JOINED")
    # Written by Ray tasks, whose working directory is not the user's: one absolute, canonical spelling.
    out = storage.canonical(e.out)
    if storage.canonical(e.in_path) == out:
        raise UsageError("--out must differ from --in")
    source = Source(e.in_path, list(e.labels), cfg.storage)
    shards = source.shards()
    fmt.refuse_existing(out, e.overwrite, cfg.storage)
    init_ray(cfg.ray)
    task = ray.remote(num_cpus=0.5)(export_shard)
    written = ray.get([task.remote(source, shard, out) for shard in shards])
    return {
        "in": e.in_path,
        "labels": list(e.labels),
        "out": e.out,
        "shards": len(written),
        "episodes": sum(w["episodes"] for w in written),
        "bytes": sum(w["bytes"] for w in written),
        "columns": source.columns(),
    }
