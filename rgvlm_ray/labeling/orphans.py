"""State left behind in a label set: records, part files, leases and label shards of raw shards that no longer
exist, and part files no live run holds (a run that broke on a storage fault).

A raw shard deleted (or renamed) after it was labeled, or mid-run, leaves its record, and perhaps its `_parts/`,
a lease and its label shard, behind. `rgvlm label --status` reports them; `rgvlm label --prune` removes them.
Nothing a live run holds is touched, nor the records and label shards of input shards that still exist.
"""

from __future__ import annotations

import contextlib

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling.leases import Lease, flat_name
from rgvlm_ray.labelstore import layout

KINDS = (
    "label_shards",
    "parts",
    "leases",
    "records",
)  # removal order: records last, so a failed prune is seen


def _children(prefix: str, cfg: StorageConfig) -> list[str]:
    fs, p = storage.get_fs(prefix, cfg)
    if not fs.exists(p):
        return []
    return sorted(storage.basename(c) for c in fs.ls(p, detail=False))


def find(inputs: list[str], out: str, cfg: StorageConfig) -> dict[str, list[str]]:
    """Paths under `out` that belong to no current input shard, by kind."""
    names, flat = set(inputs), {flat_name(n) for n in inputs}
    leases = [f for f in _children(storage.join(out, "_leases"), cfg) if f.endswith(".lease")]
    try:
        label_shards = [p for p in fmt.list_shards(out, cfg) if layout.relative_name(out, p) not in names]
    except FileNotFoundError:
        label_shards = []
    return {
        "label_shards": label_shards,
        "parts": [  # parts matter only to the live run holding their shard's lease
            storage.join(out, "_parts", d)
            for d in _children(storage.join(out, "_parts"), cfg)
            if d not in flat or not _held(out, d, cfg)
        ],
        "leases": [
            storage.join(out, "_leases", f)
            for f in leases
            if not _held(out, f.removesuffix(".lease"), cfg)  # a dead run's lease guards nothing
        ],
        "records": sorted(mf.record_path(out, n) for n in mf.load_records(out, cfg) if n not in names),
    }


def _held(out: str, flat: str, cfg: StorageConfig) -> bool:
    lease = Lease(out, flat, "", 0, cfg)  # a flat name is its own flat name: same lease path
    return lease.is_live(lease.holder())


def prune(found: dict[str, list[str]], cfg: StorageConfig) -> int:
    """Remove what `find` found; returns how many paths were removed."""
    removed = 0
    for kind in KINDS:
        for path in found.get(kind, []):
            fs, p = storage.get_fs(path, cfg)
            with contextlib.suppress(FileNotFoundError):
                fs.rm(p, recursive=True)
                removed += 1
    return removed


def count(found: dict[str, list[str]]) -> int:
    return sum(len(v) for v in found.values())


def left_behind(inputs: list[str], out: str, cfg: StorageConfig) -> dict[str, int]:
    """How many paths of each kind `find` finds: said after every labeling run, not only by --status (relabel
    from cron would otherwise never mention a deleted raw shard's label shard)."""
    return {kind: len(paths) for kind, paths in find(inputs, out, cfg).items() if paths}


def advice(counts: dict[str, int], in_path: str, out: str) -> str:
    kinds = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items())
    return (
        f"left behind by raw shards that no longer exist (or by runs that broke): {kinds}; "
        f"`rgvlm label --in {in_path} --out {out} --prune` removes them"
    )
