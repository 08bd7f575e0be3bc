"""Raw episodes joined with label sets, by shard and `episode_id`: what every reader of labels sees.

`Source(raw, labels)` stands for the joined dataset. Each raw shard is read with its label shards (same
relative name) and checked before its columns are joined; a mismatch is an error naming the shard, never a
silent join of wrong rows:
- a label shard made from a different version of the raw shard (content identity differs);
- a label shard that is missing, unreadable (e.g. truncated) or lacks some of the raw shard's episodes;
- two label sets (or a label set and the raw shard itself) carrying the same labeler prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from rgvlm_ray import storage
from rgvlm_ray.config import RayConfig, StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelstore import layout


class JoinError(UsageError):
    """Raw episodes and a label set that do not belong together."""


@dataclass
class Source:
    raw: str  # raw dataset: folder, s3:// prefix or one shard (may itself carry label columns)
    labels: list[str] = field(default_factory=list)  # label sets written by `rgvlm label`
    cfg: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        # Read on Ray workers, whose working directory is not the user's: one absolute, canonical spelling.
        self.raw = storage.canonical(self.raw)
        self.labels = [storage.canonical(p) for p in self.labels]

    def shards(self) -> list[str]:
        try:
            shards = fmt.list_shards(self.raw, self.cfg)
        except FileNotFoundError:
            raise UsageError(f"--in {self.raw}: no dataset there") from None
        if not shards:
            raise UsageError(f"--in {self.raw}: no .parquet shards found")
        for labels in self.labels:  # else each shard would be "missing" from a set that is not there at all
            fs, p = storage.get_fs(labels, self.cfg)
            if not fs.exists(p):
                raise UsageError(
                    f"--labels {labels}: no label set there (no such folder or prefix); pass the --out of an "
                    f"`rgvlm label` run, or label into it: `rgvlm label --in {self.raw} --out {labels}`"
                )
        if layout.is_label_shard(shards[0], self.cfg):
            raise UsageError(
                f"--in {self.raw} is a label set (labels only): pass the raw dataset as --in and this as --labels"
            )
        return shards

    def name(self, shard: str) -> str:
        return layout.relative_name(self.raw, shard)

    def columns(self) -> list[str]:
        """Column names of the joined dataset, from the first shard's footers (no data read)."""
        first = self.shards()[0]
        names = list(fmt.read_schema(first, self.cfg).names)
        for labels in self.labels:
            path = layout.shard_path(labels, self.name(first))
            try:
                names += [c for c in fmt.read_schema(path, self.cfg).names if c != "episode_id"]
            except FileNotFoundError:
                raise missing_shard(labels, self.raw, self.name(first)) from None
        return names

    def read(self, shard: str, columns: list[str] | None = None) -> pa.Table:
        """One raw shard joined with its label shards, rows in raw order; `columns` selects (None: all)."""
        raw = fmt.read_shard(shard, self.cfg, columns=self._raw_columns(shard, columns))
        # The one check every reader goes through (docs/format.md#validation): a shard a reader cannot use is
        # refused here, in one line naming it, before any of its values reach Python.
        absent = [c for c in columns or [] if c in fmt.CORE_COLUMNS and c not in raw.column_names]
        if absent:
            raise fmt.FormatError(f"{shard}: column {absent[0]!r}: missing column")
        fmt.check_table(raw, shard, partial=columns is not None)
        if not self.labels:
            return raw
        name, identity = self.name(shard), storage.content_identity(shard, self.cfg)
        owners = {p: "the raw dataset" for p in fmt.labelers_in_columns(raw.column_names)}
        for labels in self.labels:
            table = read_label_shard(labels, name, identity, self.raw, self.cfg)
            for prefix in fmt.labelers_in_columns(table.column_names):
                if prefix in owners:
                    raise JoinError(
                        f"{labels} and {owners[prefix]} both carry {prefix!r} labels for {name}: "
                        "pass each labeler's label set once"
                    )
                owners[prefix] = labels
            wanted = [
                c for c in table.column_names if c != "episode_id" and (columns is None or c in columns)
            ]
            raw = append_aligned(raw, table, wanted, f"{labels}/{name}")
        return raw if columns is None else raw.select([c for c in columns if c in raw.column_names])

    def _raw_columns(self, shard: str, columns: list[str] | None) -> list[str] | None:
        if columns is None:
            return None
        present = fmt.read_schema(shard, self.cfg).names
        return [c for c in dict.fromkeys(["episode_id", *columns]) if c in present]


def missing_shard(labels: str, raw: str, name: str) -> JoinError:
    return JoinError(
        f"label set {labels} has no label shard for raw shard {name}: label it with "
        f"`rgvlm label --in {raw} --out {labels}` (its _manifest.json says why it is missing)"
    )


def read_label_shard(labels: str, name: str, identity: str, raw: str, cfg: StorageConfig) -> pa.Table:
    path = layout.shard_path(labels, name)
    try:
        table = fmt.read_shard(path, cfg)
    except FileNotFoundError:
        raise missing_shard(labels, raw, name) from None
    except fmt.FormatError as exc:
        raise JoinError(
            f"label shard {path} cannot be read ({exc}); relabel it: `rgvlm label --in {raw} --out {labels}`"
        ) from None
    meta = layout.label_meta(table.schema)
    if meta is None:
        raise JoinError(f"{path} is not a label shard (no {layout.LABELS_KEY.decode()} metadata)")
    if meta.raw_identity != identity and meta.raw_root and meta.raw_root != layout.root_id(raw):
        # Relabeling in place would overwrite the labels of the dataset this label set belongs to.
        raise JoinError(
            f"label set {labels} was made from another dataset, not {raw}: label {raw} into a new label set, "
            f"`rgvlm label --in {raw} --out NEW_LABELS`, and pass that as --labels"
        )
    if meta.raw_identity != identity:
        raise JoinError(
            f"{path} was labeled from a different version of raw shard {name} "
            f"(labeled {meta.raw_identity[:24]}, now {identity[:24]}): if {raw} changed since, relabel it with "
            f"`rgvlm label --in {raw} --out {labels}`; if {labels} was made from another dataset, label {raw} "
            "into a new label set instead (`--out NEW_LABELS`)"
        )
    return table


def label_shard_problem(
    labels: str, name: str, identity: str, raw: str, cfg: StorageConfig, size: int = -1, rows: int = -1
) -> tuple[str, str] | None:
    """(state, reason) if a reader would refuse the label shard of raw shard `name`, else None.

    The checks `read_label_shard` makes (there, readable, a label shard, made from this version of the raw shard:
    `identity`), plus the size and row count its manifest record gives (`size`, `rows`; -1: unknown). States:
    `label_missing` (deleted), `truncated` (shorter than written), `damaged` (anything else a reader refuses).
    """
    path = layout.shard_path(labels, name)
    fs, p = storage.get_fs(path, cfg)
    try:
        actual = int(fs.info(p)["size"])
    except FileNotFoundError:
        return "label_missing", f"{path} is gone"
    if size >= 0 and actual != size:
        state = "truncated" if actual < size else "damaged"
        return state, f"{path} holds {actual} bytes, {size} when it was written"
    try:
        table = read_label_shard(labels, name, identity, raw, cfg)
    except JoinError as exc:
        return "damaged", str(exc)
    if rows >= 0 and table.num_rows != rows:
        return "damaged", f"{path} holds {table.num_rows} episodes, {rows} when it was written"
    return None


def append_aligned(raw: pa.Table, labels: pa.Table, columns: list[str], where: str) -> pa.Table:
    """`raw` with `columns` of `labels` appended, matched by episode_id; every raw episode must be there."""
    index = pc.index_in(raw.column("episode_id"), value_set=labels.column("episode_id"))
    missing = index.null_count
    if missing or labels.num_rows != raw.num_rows:
        absent = pc.filter(raw.column("episode_id"), pc.is_null(index)).to_pylist()[:3]
        raise JoinError(
            f"{where}: {missing} of the raw shard's {raw.num_rows} episodes are missing "
            f"(e.g. {absent}) and it has {labels.num_rows} rows; relabel it with --force"
        )
    aligned = labels.select(columns).take(index)
    for name in columns:
        raw = raw.append_column(labels.schema.field(name), aligned.column(name))
    return raw


def read_dataset(source: Source, columns: list[str], ray_cfg: RayConfig):  # -> ray.data.Dataset
    """The joined dataset as Ray Data blocks, one read task per raw shard."""
    import ray

    from rgvlm_ray.ray_utils import read_parquet

    shards = source.shards()
    if not source.labels:
        fs, _ = storage.arrow_fs(shards[0], source.cfg)
        paths = [storage.get_fs(s, source.cfg)[1] for s in shards]
        return read_parquet(paths, ray_cfg, filesystem=fs, columns=columns)
    items = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
    return items.map_batches(
        _read_batch, batch_size=1, batch_format="pyarrow", fn_kwargs={"source": source, "columns": columns}
    )


def _read_batch(batch: pa.Table, source: Source, columns: list[str]) -> pa.Table:
    tables = [source.read(shard, columns) for shard in batch.column("shard").to_pylist()]
    return pa.concat_tables(tables, promote_options="permissive")
