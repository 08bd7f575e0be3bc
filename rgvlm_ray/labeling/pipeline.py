"""`rgvlm label`: label a corpus of trajectory shards with Ray Data actor pools, resumably and without loss.

1. Plan: list input shards; skip those whose manifest record matches their content identity and the labeler
   fingerprint (unless --force); lease the rest so concurrent runs never label the same shard.
2. Check: one small Ray task per leased shard reads and validates it; failures are quarantined.
3. Label: Ray Data reads the good shards, repartitions them into batches of `label.episodes_per_batch` episodes,
   and streams them through an `ActorPoolStrategy` pool. Each actor loads its engine once and runs both stages
   on its batch, so stage 2 reuses stage 1's prefix cache on the same engine.
4. Write: the driver regroups labeled episodes by input shard, and writes each shard atomically under the same
   name once all its episodes are back, then its manifest record, then releases its lease. A crash loses at
   most the shards in flight, which the next run labels again; a shard is never half-written or duplicated.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from rgvlm_ray import storage
from rgvlm_ray.config import Config, EngineConfig, LabelConfig, LabelerConfig, StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labeling import chaos
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling.columns import label_columns, num_actions
from rgvlm_ray.labeling.labeler import build_labeler, check_config, labeler_fingerprint, labeler_name

log = logging.getLogger(__name__)
PATH_COL = "path"  # added by read_parquet(include_paths=True)
TOKENS_COL = "__tokens"  # per-batch engine token counts, carried on the batch's first row; never written


# --- the actor -------------------------------------------------------------------------------------------


class LabelActor:
    """Holds one engine for its lifetime; labels a batch of episodes per call."""

    def __init__(self, engine_cfg: EngineConfig, labeler_cfg: LabelerConfig, label_cfg: LabelConfig) -> None:
        self.labeler = chaos.wrap(build_labeler(engine_cfg, labeler_cfg), label_cfg.chaos)
        self.timeout_s = label_cfg.batch_timeout_s
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.hung = False

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.hung:
            # The previous call never returned and still holds the engine: exit so Ray restarts this actor
            # with a fresh engine and retries this batch on it.
            os._exit(1)
        rows = batch.drop_columns([PATH_COL]).to_pylist()
        before = self.labeler.stats()
        try:
            labels = self.pool.submit(self.labeler.label_rows, rows).result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            self.hung = True
            labels = self._failed(
                rows, f"engine call timed out after label.batch_timeout_s={self.timeout_s}s"
            )
        except Exception as exc:  # an engine crash must not drop episodes: record it on each of them
            labels = self._failed(rows, f"{type(exc).__name__}: {exc}")
        after = self.labeler.stats()
        tokens = {k: after.get(k, 0) - before.get(k, 0) for k in ("prompt_tokens", "completion_tokens")}
        return attach_labels(batch, labels, self.labeler.name, tokens)

    def _failed(self, rows: list[dict], message: str) -> list[dict]:
        name, fp = self.labeler.name, self.labeler.fingerprint
        return [
            label_columns(
                name,
                score=[None] * num_actions(r),
                reward=[None] * num_actions(r),
                window=[None] * num_actions(r),
                status=["engine_error"] * num_actions(r),
                message=[message] * num_actions(r),
                analysis=[],
                fingerprint=fp,
                episode_status="error",
                episode_error=message,
            )
            for r in rows
        ]


def attach_labels(batch: pa.Table, labels: list[dict], name: str, tokens: dict) -> pa.Table:
    """The batch with this labeler's columns replaced by `labels`, typed as format.LABEL_FIELDS says."""
    schema = fmt.label_schema(name)
    batch = batch.drop_columns([c for c in schema.names if c in batch.column_names])
    for f in schema:
        batch = batch.append_column(f, pa.array([row[f.name] for row in labels], type=f.type))
    token_rows = [json.dumps(tokens) if i == 0 else None for i in range(batch.num_rows)]
    return batch.append_column(TOKENS_COL, pa.array(token_rows, type=pa.string()))


# --- planning ------------------------------------------------------------------------------------------


@dataclass
class ShardPlan:
    name: str
    path: str
    identity: str
    rows_in: int | None = None
    ids: list[str] = field(default_factory=list)


def relative_name(root: str, path: str) -> str:
    if path == root:
        return storage.basename(path)
    return path[len(root.rstrip("/")) + 1 :]


def check_shard(path: str, cfg: StorageConfig) -> dict:
    """Read and validate one shard (runs as a Ray task). Never raises for bad input."""
    try:
        table = fmt.read_shard(path, cfg)
    except Exception as exc:
        return {"ok": False, "rows": None, "ids": [], "error": str(exc)}
    issues = fmt.validate_table(table, storage.basename(path))
    ids = table.column("episode_id").to_pylist() if "episode_id" in table.column_names else []
    issues += fmt.duplicate_ids({storage.basename(path): ids})
    if issues:
        shown = "; ".join(str(i) for i in issues[:5]) + (
            f"; ... {len(issues) - 5} more" if len(issues) > 5 else ""
        )
        return {"ok": False, "rows": table.num_rows, "ids": ids, "error": f"invalid: {shown}"}
    return {"ok": True, "rows": table.num_rows, "ids": ids, "error": ""}


# --- the job -------------------------------------------------------------------------------------------


@dataclass
class RunState:
    cfg: Config
    name: str  # labeler name
    fingerprint: str
    run_id: str = field(default_factory=mf.new_run_id)
    records: dict[str, mf.ShardRecord] = field(default_factory=dict)
    leases: dict[str, mf.Lease] = field(default_factory=dict)
    skipped_current: list[str] = field(default_factory=list)
    skipped_leased: list[str] = field(default_factory=list)
    totals: Counter = field(default_factory=Counter)
    step_status: Counter = field(default_factory=Counter)
    episode_status: Counter = field(default_factory=Counter)

    @property
    def out(self) -> str:
        return self.cfg.label.out_path


def plan(state: RunState) -> list[ShardPlan]:
    lc, sc = state.cfg.label, state.cfg.storage
    try:
        paths = fmt.list_shards(lc.in_path, sc)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if not paths:
        raise UsageError(f"no .parquet shards under {lc.in_path}")
    state.records = mf.load_records(state.out, sc)
    todo = []
    for path in paths:
        name = relative_name(lc.in_path, path)
        identity = mf.content_identity(path, sc)
        record = state.records.get(name)
        if not lc.force and record is not None and record.is_current(identity, state.fingerprint):
            state.skipped_current.append(name)
            continue
        lease = mf.Lease(state.out, name, state.run_id, lc.lease_ttl_s, sc)
        if not lease.acquire():
            state.skipped_leased.append(name)
            continue
        state.leases[name] = lease
        todo.append(ShardPlan(name, path, identity))
    return todo


def finish(state: RunState, shard: ShardPlan, status: str, **fields: object) -> None:
    now = time.time()
    record = mf.ShardRecord(
        shard=shard.name,
        input=shard.path,
        identity=shard.identity,
        fingerprint=state.fingerprint,
        labeler=state.name,
        status=status,
        rows_in=shard.rows_in,
        run_id=state.run_id,
        started=fields.pop("started", now),  # type: ignore[arg-type]
        finished=now,
        **fields,  # type: ignore[arg-type]
    )
    mf.write_record(state.out, record, state.cfg.storage)
    state.records[shard.name] = record
    lease = state.leases.pop(shard.name, None)
    if lease is not None:
        lease.release()


def quarantine_bad_shards(state: RunState, shards: list[ShardPlan]) -> list[ShardPlan]:
    import ray

    task = ray.remote(num_cpus=state.cfg.label.num_cpus_per_check)(check_shard)
    results = ray.get([task.remote(s.path, state.cfg.storage) for s in shards])
    good = []
    for shard, res in zip(shards, results, strict=True):
        shard.rows_in, shard.ids = res["rows"], res["ids"]
        if res["ok"]:
            good.append(shard)
        else:
            log.warning("quarantined %s: %s", shard.name, res["error"])
            finish(state, shard, mf.QUARANTINED, error=res["error"])
    return good


def build_dataset(state: RunState, shards: list[ShardPlan]):  # -> ray.data.Dataset
    import ray

    cfg, lc = state.cfg, state.cfg.label
    fs, _ = storage.arrow_fs(lc.in_path, cfg.storage)
    paths = [storage.get_fs(s.path, cfg.storage)[1] for s in shards]
    ds = ray.data.read_parquet(paths, filesystem=fs, include_paths=True)
    episodes = sum(s.rows_in or 0 for s in shards)
    # Small shards arrive as one block each; split them so every actor gets work.
    ds = ds.repartition(
        target_num_rows_per_block=max(1, min(lc.episodes_per_batch, -(-episodes // (2 * lc.max_actors))))
    )
    resources: dict = {"num_cpus": lc.num_cpus_per_actor}
    if lc.num_gpus_per_actor:
        resources["num_gpus"] = lc.num_gpus_per_actor
    # Ray Data's defaults are unbounded restarts and retries, which would loop forever on an engine that
    # always crashes. Ray 2.60 deprecates every `ray_remote_args` but offers no named parameter for these.
    fault: dict = {}
    if lc.max_restarts >= 0:
        fault["max_restarts"] = lc.max_restarts
    if lc.max_task_retries >= 0:
        fault["max_task_retries"] = lc.max_task_retries
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ds.map_batches(
            LabelActor,
            fn_constructor_kwargs={"engine_cfg": cfg.engine, "labeler_cfg": cfg.labeler, "label_cfg": lc},
            batch_size=lc.episodes_per_batch,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=lc.min_actors, max_size=lc.max_actors),
            **resources,
            **fault,
        )


def write_shard_output(state: RunState, shard: ShardPlan, parts: list[pa.Table], started: float) -> None:
    table = pa.concat_tables(parts, promote_options="permissive")
    tokens = Counter()
    for cell in table.column(TOKENS_COL).to_pylist():
        if cell:
            tokens.update(json.loads(cell))
    table = table.drop_columns([PATH_COL, TOKENS_COL])
    order = {ep: i for i, ep in enumerate(shard.ids)}
    table = table.take(sorted(range(table.num_rows), key=lambda i: order[table["episode_id"][i].as_py()]))
    out_path = storage.join(state.out, shard.name)
    fmt.write_shard(table, out_path, state.cfg.storage)
    stats = shard_stats(table, state.name, tokens)
    state.totals.update({k: v for k, v in stats.items() if isinstance(v, int)})
    state.step_status.update(stats["step_status"])
    state.episode_status.update(stats["episode_status"])
    errors = stats["episode_status"].get("error", 0)
    status = mf.DONE_WITH_ERRORS if errors else mf.DONE
    finish(
        state,
        shard,
        status,
        rows_out=table.num_rows,
        episodes_error=errors,
        output=out_path,
        started=started,
        stats=stats,
    )
    log.info("wrote %s: %d episodes (%d errored)", out_path, table.num_rows, errors)


def shard_stats(table: pa.Table, name: str, tokens: Counter) -> dict:
    col = lambda s: table.column(fmt.label_column(name, s))  # noqa: E731
    return {
        "episodes": table.num_rows,
        "transitions": int(pc.sum(pc.list_value_length(table.column("actions"))).as_py() or 0),
        "windows": int(pc.sum(pc.list_value_length(col("analysis"))).as_py() or 0),
        "prompt_tokens": int(tokens.get("prompt_tokens", 0)),
        "completion_tokens": int(tokens.get("completion_tokens", 0)),
        "step_status": dict(Counter(pc.list_flatten(col("status")).to_pylist())),
        "episode_status": dict(Counter(col("episode_status").to_pylist())),
    }


def label_shards(state: RunState, shards: list[ShardPlan]) -> None:
    """Stream labeled batches back and write each shard as soon as all its episodes have arrived."""
    by_path = {storage.get_fs(s.path, state.cfg.storage)[1]: s for s in shards}
    parts: dict[str, list[pa.Table]] = {path: [] for path in by_path}
    counts: Counter = Counter()
    started = time.time()
    for batch in build_dataset(state, shards).iter_batches(batch_size=None, batch_format="pyarrow"):
        for path in pc.unique(batch.column(PATH_COL)).to_pylist():
            part = batch.filter(pc.equal(batch.column(PATH_COL), path))
            parts[path].append(part)
            counts[path] += part.num_rows
            if counts[path] == by_path[path].rows_in:
                write_shard_output(state, by_path[path], parts.pop(path), started)
    for path in parts:
        shard = by_path[path]
        finish(state, shard, mf.FAILED, error=f"only {counts[path]} of {shard.rows_in} episodes came back")


def summarize(state: RunState, seconds: float) -> dict:
    records = [r for r in state.records.values() if r.run_id == state.run_id]
    quarantined = [r for r in records if r.status == mf.QUARANTINED]
    failed = [r for r in records if r.status == mf.FAILED]
    episodes_in = sum(r.rows_in or 0 for r in records)
    labeled_ok = state.episode_status.get("ok", 0)
    errored = state.episode_status.get("error", 0)
    in_quarantine = sum(r.rows_in or 0 for r in quarantined)
    in_failed = sum(r.rows_in or 0 for r in failed)
    steps = sum(state.step_status.values())
    return {
        "run_id": state.run_id,
        "labeler": state.name,
        "fingerprint": state.fingerprint,
        "in": state.cfg.label.in_path,
        "out": state.out,
        "shards": {
            "labeled": sum(r.status in (mf.DONE, mf.DONE_WITH_ERRORS) for r in records),
            "quarantined": [r.shard for r in quarantined],
            "unreadable": [r.shard for r in quarantined if r.rows_in is None],
            "failed": [r.shard for r in failed],
            "skipped_current": len(state.skipped_current),
            "skipped_leased_by_other_run": state.skipped_leased,
        },
        "episodes": {
            "in": episodes_in,
            "labeled": labeled_ok,
            "errored": errored,
            "in_quarantined_shards": in_quarantine,
            "in_failed_shards": in_failed,
            "balanced": episodes_in == labeled_ok + errored + in_quarantine + in_failed,
        },
        "transitions": state.totals.get("transitions", 0),
        "windows": state.totals.get("windows", 0),
        "prompt_tokens": state.totals.get("prompt_tokens", 0),
        "completion_tokens": state.totals.get("completion_tokens", 0),
        "seconds": round(seconds, 2),
        "transitions_per_s": round(state.totals.get("transitions", 0) / max(seconds, 1e-9), 1),
        "parse_failure_rate": round(state.step_status.get("parse_error", 0) / steps, 4) if steps else 0.0,
        "step_status": dict(state.step_status),
        "episode_status": dict(state.episode_status),
    }


def run(cfg: Config) -> dict:
    """Label what needs labeling; returns the summary (also written to OUT/summary.json)."""
    from rgvlm_ray.ray_utils import init_ray

    lc = cfg.label
    if storage.join(lc.in_path, "") == storage.join(lc.out_path, ""):
        raise UsageError("--out must differ from --in: labeled shards keep their input names")
    check_config(cfg.engine, cfg.labeler)
    state = RunState(
        cfg, labeler_name(cfg.engine.kind, cfg.labeler), labeler_fingerprint(cfg.engine, cfg.labeler)
    )
    start = time.perf_counter()
    todo = plan(state)
    log.info(
        "%d shard(s) to label, %d current, %d leased by another run",
        len(todo),
        len(state.skipped_current),
        len(state.skipped_leased),
    )
    if todo:
        init_ray(cfg.ray)
        with mf.Heartbeat(state.leases, lc.lease_ttl_s):
            try:
                good = quarantine_bad_shards(state, todo)
                if good:
                    label_shards(state, good)
            finally:
                # Leases still held mean the run broke: leave a record and free the shard (finish releases).
                by_name = {s.name: s for s in todo}
                for name in list(state.leases):
                    finish(
                        state, by_name[name], mf.FAILED, error="the run stopped before this shard was written"
                    )
    summary = summarize(state, time.perf_counter() - start)
    mf.write_manifest(state.out, mf.load_records(state.out, cfg.storage), cfg.storage)
    with storage.atomic_open(storage.join(state.out, "summary.json"), cfg.storage) as f:
        f.write(json.dumps(summary, indent=2).encode())
    return summary


def exit_code(summary: dict, allow_quarantine: bool) -> int:
    """Print the balance check and what needs attention; 0 only if nothing does."""
    ep, shards = summary["episodes"], summary["shards"]
    print(
        f"episodes in {ep['in']} = labeled {ep['labeled']} + errored {ep['errored']} + in quarantined shards "
        f"{ep['in_quarantined_shards']} + in failed shards {ep['in_failed_shards']}: "
        + ("balanced" if ep["balanced"] else "NOT BALANCED")
    )
    if shards["unreadable"]:
        print(f"note: unreadable shards have unknown episode counts: {', '.join(shards['unreadable'])}")
    if ep["errored"]:
        print(
            f"{ep['errored']} episode(s) errored (see *_episode_error); their shards are labeled again next run"
        )
    if not ep["balanced"]:
        return 1
    if shards["failed"]:
        print(f"failed shards (rerun to retry): {', '.join(shards['failed'])}")
        return 1
    if shards["quarantined"] and not allow_quarantine:
        manifest = storage.join(summary["out"], "_manifest.json")
        print(f"quarantined shards (see {manifest}): {', '.join(shards['quarantined'])}")
        print("exiting non-zero; pass --allow-quarantine to accept them")
        return 1
    return 0


def main(cfg: Config) -> int:
    from rgvlm_ray.cli import require

    require(cfg, "label.in_path", "label.out_path")
    summary = run(cfg)
    print(json.dumps(summary, indent=2))
    return exit_code(summary, cfg.label.allow_quarantine)
