"""Planning a labeling run: which input shards need labels, leased so concurrent runs never share one."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace

from rgvlm_ray import storage
from rgvlm_ray.config import Config, LabelConfig, StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import action_space
from rgvlm_ray.errors import StorageError, UsageError
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling.leases import Lease, new_run_id
from rgvlm_ray.labelstore import layout
from rgvlm_ray.labelstore.join import label_shard_problem

log = logging.getLogger(__name__)


@dataclass
class ShardPlan:
    name: str  # relative to the input root; its label shard and record carry the same name
    path: str
    identity: str
    rows_in: int | None = None
    actions: str = ""  # the shard's action space (data/actions.py JSON), from check_shard


@dataclass
class RunState:
    """One run's plan and progress. The driver holds only this: counts and records, never episodes."""

    cfg: Config
    name: str  # labeler name
    fingerprint: str
    run_id: str = field(default_factory=new_run_id)
    inputs: list[str] = field(default_factory=list)  # every input shard's name, for the status
    records: dict[str, mf.ShardRecord] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    skipped_current: list[str] = field(default_factory=list)
    skipped_leased: list[str] = field(default_factory=list)
    totals: Counter = field(default_factory=Counter)
    step_status: Counter = field(default_factory=Counter)
    episode_status: Counter = field(default_factory=Counter)
    faults: list[StorageError] = field(default_factory=list)  # storage faults met: the run ends with exit 4
    actors: tuple[int, int] | None = None  # the label pool's (min, max) size, once started

    @property
    def out(self) -> str:
        return self.cfg.label.out_path

    @property
    def storage_down(self) -> bool:
        """S3 is unreachable or failing after retries: writing records or freeing leases would only wait out the
        same retries (minutes per call), so the run stops trying; its leases expire after lease_ttl_s."""
        return any(f.storage_down for f in self.faults)


def with_canonical_roots(cfg: Config) -> Config:
    """`cfg` with --in and --out in their one canonical spelling (storage.canonical): a relative or symlinked
    spelling then names the same shards, the same label shards and records, on the driver and on every worker.
    Refuses an --out that is, holds or lies inside --in: its label shards would be listed as raw shards."""
    lc = cfg.label
    in_path, out_path = storage.canonical(lc.in_path), storage.canonical(lc.out_path)
    if in_path == out_path:
        raise UsageError("--out must differ from --in: a label set is written beside the raw dataset")
    for inner, outer in ((out_path, in_path), (in_path, out_path)):
        if inner.startswith(outer.rstrip("/") + "/"):
            raise UsageError(
                f"--out {lc.out_path} and --in {lc.in_path} are nested: write the label set beside the raw "
                "dataset (e.g. data/raw and data/labels-NAME), never inside it or around it"
            )
    return replace(cfg, label=replace(lc, in_path=in_path, out_path=out_path))


def input_shards(in_path: str, cfg: StorageConfig) -> list[str]:
    try:
        paths = fmt.list_shards(in_path, cfg)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if not paths:
        raise UsageError(f"no .parquet shards under {in_path}")
    if layout.is_label_shard(paths[0], cfg):
        raise UsageError(f"--in {in_path} is a label set: pass the raw dataset it was made from")
    return paths


def output_intact(state: RunState, record: mf.ShardRecord) -> bool:
    """A finished record's label shard is still there, whole and readable, as a reader would check it (a
    truncated, deleted or damaged one is labeled again). It is looked for under this --out, not at the recorded
    path: a label set may have been moved or copied."""
    if record.status == mf.QUARANTINED:
        return True
    lc, sc = state.cfg.label, state.cfg.storage
    problem = label_shard_problem(
        state.out, record.shard, record.identity, lc.in_path, sc, record.bytes_out, record.rows_out
    )
    if problem is not None:
        log.warning("%s: %s (%s); labeling it again", record.shard, problem[0].replace("_", " "), problem[1])
    return problem is None


def record_root(record: mf.ShardRecord) -> str:
    """The raw dataset a record's shard came from."""
    return record.input[: -len(record.shard)].rstrip("/") if record.input.endswith(record.shard) else ""


def refuse_other_dataset(
    in_path: str, out: str, records: dict[str, mf.ShardRecord], identities: set[str]
) -> None:
    """Never label (or prune) one dataset into another's label set: that would overwrite its labels. A label set
    belongs to --in when its records name --in as their root, or share shard contents with it (a moved copy)."""
    if not records or any(record_root(r) == in_path for r in records.values()):
        return
    if any(r.identity in identities for r in records.values()):
        return
    roots = sorted({record_root(r) or r.input for r in records.values()})
    raise UsageError(
        f"--out {out} holds the labels of another dataset ({', '.join(roots[:3])}), not of --in {in_path}: "
        f"label it into a new label set, `rgvlm label --in {in_path} --out NEW_LABELS`; {out} stays as it is"
    )


def inventory(lc_in: str, out: str, sc: StorageConfig) -> tuple[list[tuple[str, str, str]], dict]:
    """(name, path, content identity) of every input shard, and the label set's records, after checking that
    the label set belongs to this dataset."""
    shards = [
        (layout.relative_name(lc_in, p), p, storage.content_identity(p, sc)) for p in input_shards(lc_in, sc)
    ]
    records = mf.load_records(out, sc)
    refuse_other_dataset(lc_in, out, records, {identity for _, _, identity in shards})
    return shards, records


def record_current(record: mf.ShardRecord | None, identity: str, fingerprint: str, lc: LabelConfig) -> bool:
    """The manifest says this shard needs no labeling by this labeler (its label shard is not checked here)."""
    return (
        record is not None
        and not lc.force
        and record.is_current(identity, fingerprint, lc.retry_errors)
        and not record.error.startswith(DUPLICATE)  # the other shard may have changed
    )


def plan(state: RunState) -> list[ShardPlan]:
    lc, sc = state.cfg.label, state.cfg.storage
    shards, state.records = inventory(lc.in_path, state.out, sc)
    todo = []
    for name, path, identity in shards:
        state.inputs.append(name)
        record = state.records.get(name)
        current = record_current(record, identity, state.fingerprint, lc) and output_intact(state, record)
        lease = Lease(state.out, name, state.run_id, lc.lease_ttl_s, sc)
        if current:
            lease.clear_if_dead()
            state.skipped_current.append(name)
            continue
        if not lease.acquire():
            state.skipped_leased.append(name)
            continue
        state.leases[name] = lease
        todo.append(ShardPlan(name, path, identity))
    return todo


def check_shard(path: str, cfg: StorageConfig) -> dict:
    """Read and validate one shard (runs as a Ray task). Never raises for bad input."""
    try:
        table = fmt.read_shard(path, cfg)
    except Exception as exc:
        if storage.fault(exc, path, cfg) is not None:  # the storage failed, not the shard: never quarantine
            raise
        return {"ok": False, "rows": None, "error": str(exc)}
    try:
        issues = fmt.validate_table(table, storage.basename(path))
    except Exception as exc:  # a check that fails must quarantine, never stop the run (ids and leases stay)
        return {
            "ok": False,
            "rows": table.num_rows,
            "error": f"cannot be checked: {type(exc).__name__}: {exc}",
        }
    readable = not any(i.fatal for i in issues)  # ids that are not UTF-8 must not reach Python
    ids = table.column("episode_id").to_pylist() if readable else []
    issues += fmt.duplicate_ids({storage.basename(path): ids})
    if issues:
        shown = "; ".join(str(i) for i in issues[:5]) + (
            f"; ... {len(issues) - 5} more" if len(issues) > 5 else ""
        )
        return {"ok": False, "rows": table.num_rows, "error": f"invalid: {shown}"}
    actions = action_space(table.schema).to_json()
    return {"ok": True, "rows": table.num_rows, "error": "", "actions": actions, "ids": ids}


def shard_ids(path: str, cfg: StorageConfig) -> list[str]:
    """A labeled shard's episode ids (runs as a Ray task: one column read), to check new shards against."""
    try:
        return fmt.read_shard(path, cfg, columns=["episode_id"]).column("episode_id").to_pylist()
    except (FileNotFoundError, fmt.FormatError):  # gone or unreadable since: nothing to collide with
        return []


DUPLICATE = "duplicate episode ids"  # a quarantine that depends on other shards: checked again every run


def cross_shard_duplicates(ids: dict[str, list[str]], labeled: set[str]) -> dict[str, str]:
    """Shards to quarantine, with why: those holding an episode id that a shard before them holds too. Shards
    already labeled (`labeled`) come first, so a new shard never takes an id from a labeled one; the rest go in
    input order. Readers join by shard and id, and train would see such an episode twice."""
    owner: dict[str, str] = {}
    bad: dict[str, str] = {}
    for name in sorted(ids, key=lambda n: (n not in labeled, n)):
        clashes = [(ep, owner[ep]) for ep in ids[name] if ep in owner]
        if clashes:
            ep, other = clashes[0]
            bad[name] = (
                f"{DUPLICATE}: {len(clashes)} also in {other} (e.g. {ep!r}); remove them from one shard"
            )
            continue  # a quarantined shard owns none of its ids
        owner.update(dict.fromkeys(ids[name], name))
    return bad
