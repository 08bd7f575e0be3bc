"""The trajectory shard format: Parquet, one row per episode. See docs/format.md."""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data.actions import ActionSpace, action_space, is_continuous_type
from rgvlm_ray.data.checks import (  # noqa: F401 (ValidationIssue, one_line, SYMBOLIC_SHAPE: also used from here)
    BINARY_COLUMNS,
    PNG_COLUMNS,
    SYMBOLIC_SHAPE,
    ValidationIssue,
    binary_sizes,
    check_values,
    decodes,
    invalid_text,
    one_line,
)
from rgvlm_ray.errors import UsageError

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"rgvlm.schema_version"
SPLITS = ("seen", "randomized")

# Columns every shard must have, with their Arrow types. `actions` may instead be list<list<float32>>
# (one vector per step) for continuous actions: see rgvlm_ray/data/actions.py.
CORE_FIELDS: list[pa.Field] = [
    pa.field("episode_id", pa.string(), nullable=False),
    pa.field("goal", pa.string(), nullable=False),
    pa.field("frames", pa.list_(pa.binary())),  # PNG, T+1 observations (the agent's view, or a camera)
    pa.field("actions", pa.list_(pa.int32())),
    pa.field("rewards", pa.list_(pa.float32())),  # the environment's sparse reward (zeros if it has none)
    pa.field("terminated", pa.bool_()),
    pa.field("truncated", pa.bool_()),
]
CONTINUOUS_ACTIONS = pa.list_(pa.list_(pa.float32()))
# Optional columns: our generator writes the first ones, importers the `source_*` ones. Commands that need one
# say so (e.g. label-report needs `progress`, evaluation needs `seed` and `split`).
OPTIONAL_FIELDS: list[pa.Field] = [
    pa.field("action_texts", pa.list_(pa.string())),  # else rendered from actions (docs/format.md)
    pa.field("subtasks", pa.list_(pa.string())),
    pa.field("num_subtasks", pa.int32()),
    pa.field("progress", pa.list_(pa.int32())),  # sub-tasks done after each step; null if unknown
    pa.field("seed", pa.int64()),
    pa.field("split", pa.string()),
    pa.field("frames_full", pa.list_(pa.binary())),  # PNG, T+1 top-down views for the LVLM judge
    pa.field("symbolic", pa.list_(pa.binary())),  # T+1 BabyAI 7x7x3 uint8 grids, raw bytes
    pa.field("directions", pa.list_(pa.int8())),  # T+1 agent directions 0..3
    # T: the BabyAI bot's suggested action at each step, beside the action taken. Never read by training: only
    # evaluation's expert-action agreement (docs/iql.md), and inspect's behaviour summary.
    pa.field("expert_actions", pa.list_(pa.int32())),
    pa.field("source_episode", pa.int64()),  # the episode's index in the imported dataset
    pa.field("source_frames", pa.list_(pa.int64())),  # T+1: each kept frame's index in the source episode
]
EPISODE_SCHEMA = pa.schema(CORE_FIELDS + OPTIONAL_FIELDS)
CORE_COLUMNS = [f.name for f in CORE_FIELDS]

# Per-step columns: their length relative to the number of actions T.
STEP_COLUMNS = {"actions": 0, "action_texts": 0, "rewards": 0, "progress": 0, "expert_actions": 0}
FRAME_COLUMNS = {"frames": 1, "frames_full": 1, "symbolic": 1, "directions": 1, "source_frames": 1}
NULLABLE_COLUMNS = {f.name for f in OPTIONAL_FIELDS}  # unknown or not recorded

# Label columns: every labeler (rgvlm, gvl, clip, blip2, roboclip, oracle, noisyNN) writes the same suffixes under its own prefix,
# so one dataset can carry several labelings and `train --reward MODE` picks one by name.
LABELERS = ("rgvlm", "gvl", "clip", "blip2", "roboclip", "oracle")
# The noisy oracle (rgvlm_ray/labelers/noisy_oracle.py) names itself after its noise level, `noisy` + round(100p)
# as two digits (noisy10, noisy30, noisy100), so several levels sit side by side on one dataset.
NOISY_PREFIX = "noisy"
_NOISY_NAME = re.compile(rf"^{NOISY_PREFIX}(\d{{2,3}})$")
LABEL_STEP_SUFFIXES = ("score", "reward", "window", "status", "message")
LABEL_FIELDS: dict[str, pa.DataType] = {
    "score": pa.list_(pa.float32()),  # raw score per action (0..10 for rgvlm), null when unscored
    "score_std": pa.list_(pa.float32()),  # std over self-consistency samples, null if n=1
    "reward": pa.list_(pa.float32()),  # reward per action, null when unscored
    "window": pa.list_(pa.int32()),  # id of the window that scored each action
    "status": pa.list_(pa.string()),  # ok | parse_error | engine_error | error
    "message": pa.list_(pa.string()),
    "analysis": pa.list_(pa.string()),  # stage-1 text, one per window
    "fingerprint": pa.string(),
    "episode_status": pa.string(),  # ok | bad_input (input cannot be labeled) | error (engine failed)
    "episode_error": pa.string(),
}
# Labelers that judge an episode in overlapping windows (rgvlm) also write these, for label-report's position bias
# and overlap consistency. The others see the whole episode as window 0, where the position is the step index.
WINDOWED_LABELERS = ("rgvlm", "gvl")
WINDOW_FIELDS: dict[str, pa.DataType] = {
    "window_pos": pa.list_(pa.int32()),  # the action's 0-based position in the window that scored it
    # the score the other window gave the action where two windows overlap (the merge keeps one); null elsewhere
    "score_alt": pa.list_(pa.float32()),
}


def noisy_percent(name: str) -> int | None:
    """The noise level in percent of a canonical noisy-oracle name (`noisy30` -> 30), else None."""
    m = _NOISY_NAME.match(name)
    if m is None or int(m.group(1)) > 100 or f"{int(m.group(1)):02d}" != m.group(1):
        return None  # noisy101, noisy030, noisy5: not names noisy_name() writes
    return int(m.group(1))


def is_labeler(name: str) -> bool:
    return name in LABELERS or noisy_percent(name) is not None


def label_column(labeler: str, suffix: str) -> str:
    if not is_labeler(labeler):
        raise ValueError(f"unknown labeler {labeler!r}; expected one of {LABELERS} or {NOISY_PREFIX}NN")
    return f"{labeler}_{suffix}"


def label_fields(labeler: str) -> dict[str, pa.DataType]:
    """The column suffixes `labeler` writes, with their types."""
    return {**LABEL_FIELDS, **(WINDOW_FIELDS if labeler in WINDOWED_LABELERS else {})}


def label_schema(labeler: str) -> pa.Schema:
    return pa.schema([pa.field(label_column(labeler, s), t) for s, t in label_fields(labeler).items()])


def _noisy_labelers(names: Iterable[str], suffixes: Iterable[str]) -> list[str]:
    """Noisy-oracle prefixes of the columns `names` that end in one of `suffixes`, by noise level."""
    found = set()
    for name in names:
        prefix, _, suffix = name.partition("_")
        if suffix in suffixes and noisy_percent(prefix) is not None:
            found.add(prefix)
    return sorted(found, key=lambda n: noisy_percent(n) or 0)


def labelers_in_columns(names: Iterable[str]) -> list[str]:
    """Labeler prefixes that own at least one label column among `names`."""
    found = set()
    for name in names:
        prefix, _, suffix = name.partition("_")
        if (suffix in LABEL_FIELDS or suffix in WINDOW_FIELDS) and is_labeler(prefix):
            found.add(prefix)
    return sorted(found)


def labelers_present(schema: pa.Schema | Iterable[str]) -> list[str]:
    """Labelers with a reward column: the fixed ones (format.LABELERS' order) first, then noisyNN by level."""
    names = list(schema.names if isinstance(schema, pa.Schema) else schema)
    fixed = [name for name in LABELERS if label_column(name, "reward") in names]
    return fixed + _noisy_labelers(names, ("reward",))


class FormatError(UsageError):
    """Input that does not follow docs/format.md. A UsageError: the user must fix or remove the shard, and the
    CLI says which and why in one line (exit 2)."""


def conform(table: pa.Table) -> pa.Table:
    """Cast known columns to the canonical types (extra columns, e.g. labels, pass through)."""
    types = {f.name: f.type for f in EPISODE_SCHEMA}
    if "actions" in table.column_names and is_continuous_type(table.schema.field("actions").type):
        types["actions"] = CONTINUOUS_ACTIONS
    for labeler in (*LABELERS, *_noisy_labelers(table.column_names, LABEL_FIELDS)):
        types.update({f.name: f.type for f in label_schema(labeler)})
    fields = [pa.field(n, types.get(n, table.schema.field(n).type)) for n in table.column_names]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))  # keep e.g. generator metadata


def with_version(table: pa.Table) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta[SCHEMA_VERSION_KEY] = SCHEMA_VERSION.encode()
    return table.replace_schema_metadata(meta)


def require_columns(schema: pa.Schema | Iterable[str], columns: Iterable[str], who: str, why: str) -> None:
    """Refuse, naming what is missing and why `who` needs it, when a dataset lacks generator-only columns."""
    names = set(schema.names if isinstance(schema, pa.Schema) else schema)
    missing = [c for c in columns if c not in names]
    if missing:
        raise UsageError(
            f"{who} needs column(s) {', '.join(missing)} ({why}), which this dataset lacks; "
            "datasets from `rgvlm generate` carry them (docs/format.md)"
        )


def refuse_existing(out: str, overwrite: bool, cfg: StorageConfig | None) -> None:
    """Refuse to write shards over a dataset unless asked to."""
    try:
        existing = list_shards(out, cfg)
    except FileNotFoundError:
        return
    if existing and not overwrite:
        raise UsageError(f"{out} already holds {len(existing)} shard(s); pass --overwrite to replace them")


def shard_bytes(table: pa.Table) -> bytes:
    """One shard as Parquet bytes, in the canonical types and with the schema version."""
    buf = io.BytesIO()
    # Row groups of a few episodes keep readers' memory bounded; frames are already PNG-compressed.
    pq.write_table(with_version(conform(table)), buf, row_group_size=16, compression="zstd")
    return buf.getvalue()


def write_shard(table: pa.Table, path: str, cfg: StorageConfig | None = None) -> int:
    """Atomically write one shard (local or s3://). Returns bytes written."""
    data = shard_bytes(table)
    with storage.atomic_open(path, cfg) as f:
        f.write(data)
    return len(data)


def read_shard(path: str, cfg: StorageConfig | None = None, columns: list[str] | None = None) -> pa.Table:
    fs, p = storage.get_fs(path, cfg)
    try:
        # ParquetFile.read is synchronous: pq.read_table's dataset scanner can free the Python file object on an
        # Arrow worker thread after returning, which aborts the process (exit 134) if the interpreter is
        # exiting (apache/arrow#34314).
        with fs.open(p, "rb") as f, pq.ParquetFile(f) as pf:
            table = pf.read(columns=columns)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt files
        if storage.fault(exc, path, cfg) is not None:  # the storage failed, not the shard
            raise
        raise unreadable(path, exc) from exc
    version = (table.schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    if version is not None and version.decode() != SCHEMA_VERSION:
        raise FormatError(
            f"{storage.basename(path)}: schema version {version.decode()} is not supported "
            f"(this rgvlm-ray reads {SCHEMA_VERSION})"
        )
    return table


def unreadable(path: str, exc: Exception) -> FormatError:
    """The shard and pyarrow's reason, on one line (pyarrow's messages can run over several)."""
    why = " ".join(str(exc).split()) or type(exc).__name__
    return FormatError(f"{path}: cannot read Parquet: {why}")


def read_schema(path: str, cfg: StorageConfig | None = None) -> pa.Schema:
    """A shard's schema from its footer, without reading the data."""
    fs, p = storage.get_fs(path, cfg)
    try:
        with fs.open(p, "rb") as f:
            return pq.read_schema(f)
    except FileNotFoundError:
        raise
    except Exception as exc:  # as read_shard: a corrupt footer is the shard's fault, named
        if storage.fault(exc, path, cfg) is not None:
            raise
        raise unreadable(path, exc) from exc


def list_shards(path: str, cfg: StorageConfig | None = None) -> list[str]:
    """Sorted shard paths (with the scheme kept) under a folder or prefix, or the file itself."""
    fs, p = storage.get_fs(path, cfg)
    if p.endswith(".parquet") and fs.isfile(p):
        return [path]
    if not fs.exists(p):
        raise FileNotFoundError(f"no dataset at {path}")

    def hidden(f: str) -> bool:  # `_manifest/`, `_parts/`, `.x.tmp`: bookkeeping, never shards
        return any(part.startswith((".", "_")) for part in f[len(p) :].split("/"))

    names = sorted(f for f in fs.find(p) if f.endswith(".parquet") and not hidden(f))
    return [storage.with_scheme(path, f) for f in names]


def validate_table(
    table: pa.Table, shard: str, decode: bool = False, space: ActionSpace | None = None, partial: bool = False
) -> list[ValidationIssue]:
    """Check one shard against the format. `decode=True` also decodes every PNG (slow). `space`: the action space
    ids are checked against (default: the one the shard declares). `partial=True` checks a selection of columns
    (what a reader asked for): a core column that is absent is then not a problem here.

    Every value a reader turns into Python is checked before it is: text that is not valid UTF-8 (pyarrow writes
    it) is reported, never decoded."""
    missing = [c for c in CORE_COLUMNS if c not in table.column_names]
    if missing and not partial:
        return [ValidationIssue(shard, None, c, "missing column", fatal=True) for c in missing]
    issues: list[ValidationIssue] = []
    for f in EPISODE_SCHEMA:
        if f.name in table.column_names:
            actual = table.schema.field(f.name).type
            if f.name == "actions" and is_continuous_type(actual):
                f = pa.field("actions", CONTINUOUS_ACTIONS)
            if not _compatible(actual, f.type):
                issues.append(
                    ValidationIssue(shard, None, f.name, f"type {actual}, expected {f.type}", fatal=True)
                )
    if issues:
        return issues
    issues = invalid_text(table, shard)
    if issues:
        return issues
    if space is None:
        try:
            space = action_space(table.schema)
        except ValueError as exc:
            return [ValidationIssue(shard, None, "actions", str(exc), fatal=True)]
    sizes = binary_sizes(table)
    light = [c for c in table.column_names if c not in BINARY_COLUMNS]
    for i, row in enumerate(table.select(light).to_pylist()):
        issues.extend(
            _validate_episode(
                row,
                shard,
                decode and {c: table[c][i] for c in PNG_COLUMNS if c in table.column_names},
                space,
                sizes,
                i,
            )
        )
    return issues


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Same type family (any int width, float width, large/small string, binary or list); `conform` casts."""
    t = pa.types
    if actual == expected:
        return True
    if t.is_list(expected) or t.is_large_list(expected):
        return (t.is_list(actual) or t.is_large_list(actual)) and _compatible(
            actual.value_type, expected.value_type
        )
    families = [
        (t.is_integer, t.is_integer),
        (t.is_floating, lambda a: t.is_floating(a) or t.is_integer(a)),
        (t.is_string, lambda a: t.is_string(a) or t.is_large_string(a)),
        (t.is_binary, lambda a: t.is_binary(a) or t.is_large_binary(a)),
    ]
    return any(is_expected(expected) and accepts(actual) for is_expected, accepts in families)


def _validate_episode(
    row: dict, shard: str, pngs: dict | bool, space: ActionSpace, sizes: dict, index: int
) -> list[ValidationIssue]:
    ep = row.get("episode_id")
    out: list[ValidationIssue] = []

    def bad(column: str | None, message: str) -> None:
        out.append(ValidationIssue(shard, str(ep), column, message))

    if not ep:
        bad("episode_id", "empty episode id")
    if "goal" in row and row["goal"] is None:
        bad("goal", "null")
    if "actions" not in row:  # a reader's selection without actions: the per-step lengths cannot be checked
        return out
    actions = row["actions"]
    if not actions:
        bad("actions", "empty episode: no actions")
        return out
    t = len(actions)
    lengths = {c: v[0][index] for c, v in sizes.items()}
    for column, extra in {**STEP_COLUMNS, **FRAME_COLUMNS}.items():
        value = row.get(column, lengths.get(column, row.get(column)))
        n = len(value) if isinstance(value, list) else value
        if n is None:
            if column not in NULLABLE_COLUMNS and (column in row or column in lengths):
                bad(column, "null")
            continue
        if n != t + extra:
            bad(column, f"length {n}, expected {t + extra} ({t} actions{' + 1' if extra else ''})")
    check_values(row, space, sizes, index, bad)
    if row.get("split") is not None and row["split"] not in SPLITS:
        bad("split", f"{row['split']!r} is not one of {SPLITS}")
    if row.get("subtasks") is not None and row.get("num_subtasks") != len(row["subtasks"]):
        bad("num_subtasks", f"{row.get('num_subtasks')} but {len(row['subtasks'])} subtasks listed")
    progress = row.get("progress")
    if progress is not None and any(
        a is not None and b is not None and b < a for a, b in zip(progress, progress[1:], strict=False)
    ):
        bad("progress", "decreases")
    if pngs:
        for column, value in pngs.items():
            for i, png in enumerate(value.as_py() or []):
                err = decodes(png)
                if err:
                    bad(column, f"frame {i} is not a decodable PNG ({err})")
                    break
    return out


def check_table(table: pa.Table, shard: str, space: ActionSpace | None = None, partial: bool = True) -> None:
    """Refuse a shard (FormatError, one line naming it and its first problem) that a reader cannot use."""
    issues = validate_table(table, shard, space=space, partial=partial)
    if not any(i.fatal for i in issues) and "episode_id" in table.column_names:
        # Readers join labels and cut history windows by id: an id twice in one shard would mix two episodes.
        issues += duplicate_ids({shard: table.column("episode_id").to_pylist()})
    if issues:
        raise FormatError(one_line(issues))


def duplicate_ids(ids_by_shard: dict[str, Iterable[str]]) -> list[ValidationIssue]:
    seen: dict[str, str] = {}
    counts: Counter[str] = Counter()
    issues = []
    for shard, ids in ids_by_shard.items():
        for ep in ids:
            counts[ep] += 1
            if ep in seen:
                issues.append(ValidationIssue(shard, ep, "episode_id", f"duplicate id (also in {seen[ep]})"))
            else:
                seen[ep] = shard
    return issues


def validate(
    path: str,
    cfg: StorageConfig | None = None,
    decode: bool = False,
    on_table: Callable[[str, str, pa.Table], None] | None = None,
) -> list[ValidationIssue]:
    """Validate every shard under `path`; unreadable shards become issues rather than exceptions.

    `on_table(shard_path, name, table)` sees each readable shard, so callers summarise in the same pass.
    """
    issues: list[ValidationIssue] = []
    ids: dict[str, list[str]] = {}
    for shard in list_shards(path, cfg):
        name = storage.basename(shard)
        try:
            table = read_shard(shard, cfg)
        except FormatError as exc:
            issues.append(ValidationIssue(name, None, None, str(exc).split(": ", 1)[-1]))
            continue
        found = validate_table(table, name, decode)
        issues.extend(found)
        if any(i.fatal for i in found):  # its columns cannot be read as episodes: nothing to summarise
            continue
        ids[name] = table.column("episode_id").to_pylist()
        if on_table is not None:
            on_table(shard, name, table)
    return issues + duplicate_ids(ids)
