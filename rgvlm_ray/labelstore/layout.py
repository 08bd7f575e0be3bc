"""A label set: what one labeling wrote, in its own folder or prefix beside the raw dataset (docs/format.md).

    LABELS/
      <shard>.parquet    one per raw shard, same relative name: `episode_id` + the labeler's `<name>_*` columns.
                         Footer metadata `rgvlm.labels`: raw shard name and content identity, labeler, fingerprint.
      _manifest/ _manifest.json summary.json   what the labeling job did (rgvlm_ray/labeling/manifest.py)
      _leases/ _parts/   in-flight state of running jobs; names starting with `_` are never shards

A label shard is written once, atomically, by a Ray worker, after every episode of its raw shard is labeled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import pyarrow as pa

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt

LABELS_KEY = b"rgvlm.labels"


@dataclass(frozen=True)
class LabelMeta:
    raw_shard: str  # the raw shard's path relative to the raw root
    raw_identity: str  # its content identity when labeled (S3 ETag or sha256)
    labeler: str  # the column prefix
    fingerprint: str
    episodes: int
    # Which raw dataset (root_id of its canonical root): tells "another dataset" from "another version" of a
    # shard. "" in label sets written before it existed.
    raw_root: str = ""


def root_id(root: str) -> str:
    """A short, stable id of a dataset root (its canonical spelling): footers stay small."""
    return hashlib.sha256(storage.canonical(root).encode()).hexdigest()[:16]


def relative_name(root: str, path: str) -> str:
    """A shard's path relative to its dataset root: the name its label shard and records carry.

    `path` comes from `fmt.list_shards(root)`, which lists under `storage.get_fs(root)`'s form of the root (an
    absolute local path, or the bucket/key without the scheme: `storage.fs_path`). The root is put in that same form here, so a
    relative, `./`, trailing-slash or `..` spelling of it cannot shift the cut. A name is never absolute and never
    climbs out with `..`: it is joined under the label set, and must stay there.
    """
    base, full = storage.fs_path(root), storage.fs_path(path)
    if full == base:
        return storage.basename(full)
    prefix = base.rstrip("/") + "/"
    name = full[len(prefix) :] if full.startswith(prefix) else ""
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"shard {path} does not lie under its dataset root {root}")
    return name


def shard_path(labels: str, name: str) -> str:
    # A name from an older, buggy run (or a hand-edited record) must never escape LABELS.
    if name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"bad shard name {name!r}: not a path relative to the dataset root")
    return storage.join(labels, name)


def parts_prefix(labels: str, name: str) -> str:
    """Where actors leave a shard's labeled batches until the shard is complete."""
    return storage.join(labels, "_parts", name.replace("/", "__"))


def label_shard_bytes(table: pa.Table, meta: LabelMeta) -> bytes:
    """One label shard as Parquet bytes, its metadata in the footer."""
    extra = {LABELS_KEY: json.dumps(asdict(meta)).encode()}
    return fmt.shard_bytes(table.replace_schema_metadata({**(table.schema.metadata or {}), **extra}))


def label_meta(schema: pa.Schema) -> LabelMeta | None:
    raw = (schema.metadata or {}).get(LABELS_KEY)
    return LabelMeta(**json.loads(raw)) if raw else None


def is_label_shard(path: str, cfg: StorageConfig) -> bool:
    """True for a readable label shard; False for anything else, unreadable files included (validation reports
    those)."""
    try:
        return label_meta(fmt.read_schema(path, cfg)) is not None
    except (OSError, ValueError):  # pyarrow: ArrowInvalid is a ValueError, IO errors are OSErrors
        return False


def is_label_set(path: str, cfg: StorageConfig) -> bool:
    """True if the first shard under `path` is a label shard (labels only, no episodes)."""
    try:
        shards = fmt.list_shards(path, cfg)
    except FileNotFoundError:
        return False
    return bool(shards) and is_label_shard(shards[0], cfg)
