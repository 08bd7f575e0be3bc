"""`rgvlm label`: label a corpus of raw shards into a label set, resumably and without loss.

1. Plan (plan.py): list input shards; skip those whose record matches their content identity and the labeler
   fingerprint (unless --force); lease the rest so concurrent runs never label the same shard.
2. Check: one small Ray task per leased shard reads and validates it; failures are quarantined. An empty shard
   is done at once, with 0 episodes.
3. Label (actors.py): Ray Data reads the good shards, repartitions them into batches of
   `label.episodes_per_batch` episodes and streams them through an `ActorPoolStrategy` pool. Each actor runs
   both stages on its batch and writes the labels (no frames) as part files.
4. Write (writers.py): once the driver has counted every episode of a shard, a Ray task gathers its parts into
   one label shard, atomically, and writes the shard's record; the driver then releases its lease. The driver
   only counts: its memory does not grow with the episodes. A crash loses at most the shards in flight.

Exit codes (exits.py), over the whole label set, not one run: 0 every input shard is labeled (or quarantined,
with --allow-quarantine); 1 a shard failed or is quarantined, or the balance check failed; 2 bad usage; 3
incomplete: some shards are leased by another live run or hit transient engine errors, so a rerun has work to do
(`rgvlm label --status` shows which); 4 the storage failed (the run frees its leases and stops).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import warnings
from collections import Counter, defaultdict

from rgvlm_ray import storage
from rgvlm_ray.config import Config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labelers.labeler import check_config, labeler_fingerprint, labeler_name
from rgvlm_ray.labeling import chaos, orphans
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling import status as st
from rgvlm_ray.labeling.actors import COUNTED, LabelActor, stripped
from rgvlm_ray.labeling.leases import Heartbeat
from rgvlm_ray.labeling.plan import (
    RunState,
    ShardPlan,
    check_shard,
    cross_shard_duplicates,
    input_shards,
    plan,
    shard_ids,
    with_canonical_roots,
)
from rgvlm_ray.labeling.summary import summarize
from rgvlm_ray.labeling.writers import finalize
from rgvlm_ray.labelstore import layout

log = logging.getLogger(__name__)


def new_record(state: RunState, shard: ShardPlan, status: str, **fields: object) -> mf.ShardRecord:
    """This run's record of `shard`; `fields` fill in the rest (error, started, ...)."""
    return mf.ShardRecord(
        shard=shard.name,
        input=shard.path,
        identity=shard.identity,
        fingerprint=state.fingerprint,
        labeler=state.name,
        status=status,
        rows_in=shard.rows_in,
        run_id=state.run_id,
        **fields,  # type: ignore[arg-type]
    )


def storage_fault(state: RunState, exc: BaseException, path: str) -> bool:
    """Note a storage fault (the run then ends with exit 4, after freeing its leases); False if `exc` is not one."""
    fault = storage.fault(exc, path, state.cfg.storage)
    if fault is None:
        return False
    log.debug("storage fault at %s", path, exc_info=exc)  # the traceback, for the log only
    state.faults.append(fault)
    return True


def storage_down(state: RunState, exc: BaseException, path: str) -> bool:
    """A lease renewal failed: if S3 is down (unreachable, or failing after all retries), note it so that the
    run stops calling S3 (exit 4) and return True; any other failure is retried at the next beat."""
    fault = storage.fault(exc, path, state.cfg.storage)
    if fault is None or not fault.storage_down:
        return False
    log.debug("storage fault at %s", path, exc_info=exc)
    state.faults.append(fault)
    return True


def input_vanished(exc: BaseException) -> str:
    """One line if `exc` says a raw shard disappeared under the run (deleted or replaced mid-run), else "".
    Ray Data hands a read task's error on as text, so the text is searched too."""
    for e in storage.chain(exc):
        if isinstance(e, FileNotFoundError):
            return f"an input shard disappeared during the run: {mf.reason(e)}"
        if "RayTaskError" in type(e).__name__ or "UserCodeException" in type(e).__name__:
            found = re.findall(r"(?:FileNotFoundError|No such file or directory)[^\n]*", str(e))
            if found:
                return f"an input shard disappeared during the run: {mf.reason(found[-1])}"
    return ""


def settle(state: RunState, record: mf.ShardRecord) -> None:
    """A shard's record is written (or cannot be): keep it and free the shard's lease."""
    state.records[record.shard] = record
    lease = state.leases.pop(record.shard, None)
    if lease is None or state.storage_down:
        return
    try:
        lease.release()
    except Exception as exc:  # storage down: the lease expires after lease_ttl_s (at once for reruns here)
        if not storage_fault(state, exc, lease.path):
            raise


def finish(state: RunState, shard: ShardPlan, status: str, **fields: object) -> None:
    """Record a shard that no writer recorded (quarantined, failed) and free its lease, even if the record
    cannot be written (a full disk): a shard without a record is simply labeled again by the next run."""
    now = time.time()
    if "error" in fields:
        fields["error"] = mf.reason(str(fields["error"]))
    record = new_record(state, shard, status, started=fields.pop("started", now), finished=now, **fields)
    try:
        if not state.storage_down:
            mf.write_record(state.out, record, state.cfg.storage)
    except Exception as exc:
        if not storage_fault(state, exc, mf.record_path(state.out, shard.name)):
            raise
    settle(state, record)


def quarantine_bad_shards(state: RunState, shards: list[ShardPlan]) -> list[ShardPlan]:
    import ray

    lc, sc = state.cfg.label, state.cfg.storage
    task = ray.remote(num_cpus=lc.num_cpus_per_check)(check_shard)
    results = ray.get([task.remote(s.path, sc) for s in shards])
    # Episode ids must be unique across the dataset too: check the new shards against each other and against
    # the shards already labeled (their ids: one column each, read by Ray tasks).
    labeled = [n for n in state.skipped_current if state.records[n].status in mf.LABELED]
    ids_task = ray.remote(num_cpus=lc.num_cpus_per_check)(shard_ids)
    labeled_ids = ray.get([ids_task.remote(storage.join(lc.in_path, n), sc) for n in labeled])
    ids = dict(zip(labeled, labeled_ids, strict=True))
    ids.update({s.name: r["ids"] for s, r in zip(shards, results, strict=True) if r["ok"]})
    duplicates = cross_shard_duplicates(ids, set(labeled))
    good = []
    for shard, res in zip(shards, results, strict=True):
        shard.rows_in = res["rows"]
        shard.actions = res.get("actions", "")
        error = res["error"] or duplicates.get(shard.name, "")
        if res["ok"] and not error:
            good.append(shard)
        else:
            log.warning("quarantined %s: %s", shard.name, error)
            finish(state, shard, mf.QUARANTINED, error=error)
    return good


def pool_size(episodes: int, episodes_per_batch: int, min_actors: int, max_actors: int) -> tuple[int, int]:
    """(min, max) actors: never more than there are batches to label. Each actor loads the model (minutes for
    an LVLM on a GPU); a scheduled relabel of one small new shard need not load it on every GPU of the pool."""
    batches = max(1, -(-episodes // max(1, episodes_per_batch)))
    top = max(1, min(max_actors, batches))
    return min(min_actors, top), top


def build_dataset(state: RunState, shards: list[ShardPlan]):  # -> ray.data.Dataset
    import ray

    from rgvlm_ray.ray_utils import read_parquet

    cfg, lc = state.cfg, state.cfg.label
    fs, _ = storage.arrow_fs(lc.in_path, cfg.storage)
    names = {stripped(s.path, cfg.storage): s.name for s in shards}
    ds = read_parquet(list(names), cfg.ray, filesystem=fs, include_paths=True)
    episodes = sum(s.rows_in or 0 for s in shards)
    actors = state.actors = pool_size(episodes, lc.episodes_per_batch, lc.min_actors, lc.max_actors)
    log.info("%d episode(s) in batches of %d: %d-%d label actor(s)", episodes, lc.episodes_per_batch, *actors)
    # Small shards arrive as one block each; split them so every actor gets work.
    ds = ds.repartition(
        target_num_rows_per_block=max(1, min(lc.episodes_per_batch, -(-episodes // (2 * actors[1]))))
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
    kwargs = {
        "engine_cfg": cfg.engine,
        "labeler_cfg": cfg.labeler,
        "label_cfg": lc,
        "names": names,
        "spaces": {stripped(s.path, cfg.storage): s.actions for s in shards},
        "run_id": state.run_id,
        "storage_cfg": cfg.storage,
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ds.map_batches(
            LabelActor,
            fn_constructor_kwargs=kwargs,
            batch_size=lc.episodes_per_batch,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1]),
            **resources,
            **fault,
        )


class Writers:
    """Launches one finalize task per complete shard and records each as it lands."""

    def __init__(self, state: RunState) -> None:
        import ray

        self.state, self.pending = state, {}
        self.task = ray.remote(num_cpus=state.cfg.label.num_cpus_per_check, max_retries=3)(finalize)
        self.started = time.time()

    def submit(self, shard: ShardPlan, parts: list[str], tokens: Counter) -> None:
        s, lc = self.state, self.state.cfg.label
        record = new_record(s, shard, "writing", started=self.started)  # the writer sets status and results
        ref = self.task.remote(lc.out_path, record, parts, dict(tokens), lc.chaos, s.cfg.storage)
        self.pending[ref] = shard

    def collect(self, wait_all: bool = False) -> None:
        import ray

        while self.pending:
            timeout = None if wait_all else 0
            ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout)
            for ref in ready:
                shard = self.pending.pop(ref)
                try:
                    record, fault = ray.get(ref)
                except Exception as exc:  # the writer failed for good: the next run labels the shard again
                    if not storage_fault(self.state, exc, layout.shard_path(self.state.out, shard.name)):
                        log.warning("writing the label shard of %s failed: %s", shard.name, mf.reason(exc))
                        log.debug("the writer's traceback:\n%s", exc)  # with -v
                    finish(
                        self.state,
                        shard,
                        mf.FAILED,
                        error=f"writing the label shard failed: {mf.reason(exc)}",
                    )
                    continue
                if fault is not None:  # the shard landed, then S3 went down: stop calling it (exit 4)
                    self.state.faults.append(fault)
                self.landed(record)
            if not wait_all:
                return

    def landed(self, record: mf.ShardRecord) -> None:
        """The writer wrote the shard and its record: count it and free the lease."""
        s, stats = self.state, record.stats
        for key in ("transitions", "windows", *COUNTED):
            s.totals[key] += stats.get(key, 0)
        s.step_status.update(stats["step_status"])
        s.episode_status.update(stats["episode_status"])
        settle(s, record)
        log.info("wrote %s: %d episodes, %s", record.output, record.rows_out, record.status)


def label_shards(state: RunState, shards: list[ShardPlan]) -> None:
    """Stream the actors' small results back; hand each shard to a writer once all its episodes are in."""
    writers = Writers(state)
    by_path = {stripped(s.path, state.cfg.storage): s for s in shards}
    parts: dict[str, list[str]] = defaultdict(list)
    counts: Counter = Counter()
    tokens: dict[str, Counter] = defaultdict(Counter)
    for path, shard in list(by_path.items()):
        if shard.rows_in == 0:  # nothing to label: an empty label shard, done with 0 episodes
            writers.submit(by_path.pop(path), [], Counter())
    try:
        batches = build_dataset(state, list(by_path.values())) if by_path else None
        for batch in batches.iter_batches(batch_size=None, batch_format="pyarrow") if batches else []:
            for row in batch.to_pylist():
                path = row["path"]
                parts[path].append(row["part"])
                counts[path] += row["episodes"]
                tokens[path].update({k: row[k] for k in COUNTED})
                if counts[path] == by_path[path].rows_in:
                    writers.submit(by_path[path], parts.pop(path), tokens.pop(path))
            writers.collect()
            if state.storage_down:  # found by the heartbeat or a writer: the actors' writes fail too
                break
    finally:  # shards already handed to a writer get their record even if the stream broke
        writers.collect(wait_all=True)
    for path in parts:
        shard = by_path[path]
        finish(state, shard, mf.FAILED, error=f"only {counts[path]} of {shard.rows_in} episodes came back")


def check_inputs(cfg: Config) -> None:
    """Refuse up front what would fail on every episode: the oracles need generator-only `progress`."""
    if cfg.engine.kind not in ("oracle", "noisy_oracle"):
        return
    names: list[str] | None = None  # None: no shard readable (each is quarantined by the run)
    for shard in input_shards(cfg.label.in_path, cfg.storage):
        with contextlib.suppress(fmt.FormatError):  # an unreadable shard is quarantined, not refused here
            names = fmt.read_schema(shard, cfg.storage).names
            if "progress" in names:  # one shard without it is that shard's problem, not the dataset's
                return
    why = "ground-truth sub-task progress; label such data with --engine hf|vllm|openai|clip"
    fmt.require_columns(names or ["progress"], ["progress"], f"--engine {cfg.engine.kind}", why)


def run(cfg: Config) -> dict:
    """Label what needs labeling; returns the summary (also written to OUT/summary.json)."""
    from rgvlm_ray.ray_utils import init_ray

    cfg = with_canonical_roots(cfg)
    lc = cfg.label
    check_config(cfg.engine, cfg.labeler)
    check_inputs(cfg)
    state = RunState(
        cfg, labeler_name(cfg.engine.kind, cfg.labeler), labeler_fingerprint(cfg.engine, cfg.labeler)
    )
    chaos.install(lc.chaos)
    start = time.perf_counter()
    try:
        todo = plan(state)
    except Exception as exc:
        release_all(state)  # a fault midway through planning: free what was leased so far
        fault = storage.fault(exc, state.out, cfg.storage)
        if fault is None:
            raise
        raise fault from None
    log.info(
        "%d shard(s) to label, %d current, %d leased by another run",
        len(todo),
        len(state.skipped_current),
        len(state.skipped_leased),
    )
    stopped = "the run stopped before this shard was written"
    if todo:
        init_ray(cfg.ray)
        with Heartbeat(state.leases, lc.lease_ttl_s, on_error=lambda e, p: storage_down(state, e, p)):
            try:
                good = quarantine_bad_shards(state, todo)
                if good:
                    label_shards(state, good)
            except Exception as exc:
                vanished = "" if storage_fault(state, exc, state.out) else input_vanished(exc)
                # The shards not written are then recorded failed (exit 1); a rerun sees the new input.
                if vanished:
                    log.warning("%s", vanished)
                    log.debug("the run stopped", exc_info=exc)
                    stopped = f"the run stopped before this shard was written: {vanished}"
                elif not state.faults:
                    raise
            finally:
                # Leases still held mean the run broke: leave a record and free the shard (finish releases).
                by_name = {s.name: s for s in todo}
                for name in list(state.leases):
                    finish(state, by_name[name], mf.FAILED, error=stopped)
    if state.faults:
        # One line for the user (the CLI prints it, exit 4): records and leases are settled as far as the storage
        # allowed, tracebacks are in the log; _manifest.json and summary.json keep the last good run's.
        raise state.faults[0]
    summary = summarize(state, time.perf_counter() - start)
    try:
        records = mf.load_records(state.out, cfg.storage)
        summary["status"] = st.totals(st.shard_states(state.inputs, records, state.out, cfg.storage))
        summary["left_behind"] = orphans.left_behind(state.inputs, state.out, cfg.storage)
        mf.write_manifest(state.out, records, cfg.storage, summary["status"])
        with storage.atomic_open(storage.join(state.out, "summary.json"), cfg.storage) as f:
            f.write(json.dumps(summary, indent=2).encode())
    except Exception as exc:
        fault = storage.fault(exc, state.out, cfg.storage)
        if fault is None:
            raise
        raise fault from None
    return summary


def release_all(state: RunState) -> None:
    """Free every lease this run holds, best effort (the storage may be what failed)."""
    for name in list(state.leases):
        with contextlib.suppress(Exception):
            state.leases.pop(name).release()
