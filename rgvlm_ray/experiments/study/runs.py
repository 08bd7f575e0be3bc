"""The study's runs: each arm x seed trained (or reused), read back, checked and evaluated, `study.parallel`
at a time from driver threads."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
from dataclasses import replace
from typing import Any

from rgvlm_ray import storage
from rgvlm_ray.config import Config
from rgvlm_ray.experiments.study.arms import Arm, cpus_per_worker
from rgvlm_ray.experiments.study.corpus import Corpus
from rgvlm_ray.experiments.workspace import Workspace

log = logging.getLogger(__name__)


def run_dir(ws: Workspace, arm: Arm, seed: int) -> str:
    return ws.path("runs", arm.name, f"seed{seed}")


def eval_dir(ws: Workspace, arm: Arm, seed: int, split: str) -> str:
    return ws.path("eval", arm.name, f"seed{seed}", split)


def has_curve(cfg: Config, arm: Arm, seed: int) -> bool:
    """Seed 0 of a `study.curve_arms` IQL arm (default context) records a learning curve."""
    s = cfg.study
    return (
        arm.reward in s.curve_arms
        and arm.learner == "iql"
        and not arm.ablation
        and seed == 0
        and s.curve_points > 1
    )


def run_config(ws: Workspace, arm: Arm, seed: int, corpus: Corpus, cpus: float) -> Config:
    cfg = ws.cfg
    train = replace(
        cfg.train,
        in_path=corpus.expert if arm.data == "expert" else corpus.raw,
        labels=corpus.labels_for(arm.reward),
        out_path=run_dir(ws, arm, seed),
        reward=arm.reward,
        seed=seed,
        cpus_per_worker=cpus,
    )
    if has_curve(cfg, arm, seed) and curve_source(cfg) == "checkpoints":
        train = replace(
            train,
            checkpoint_every=max(1, cfg.train.steps // cfg.study.curve_points),
            keep_checkpoints=max(cfg.train.keep_checkpoints, cfg.study.curve_points + 1),
        )
    return replace(cfg, train=train, iql=replace(cfg.iql, context=arm.context, learner=arm.learner))


def read_back(checkpoint: str, cfg: Config) -> dict[str, Any]:
    """What a checkpoint says its run was trained with, from every file that records it: run.json (reward, step,
    seed, context), config.json (train.seed, iql.context) and spec.json (the context of the network built).
    A field a checkpoint does not record is None (older checkpoints have no context)."""
    from rgvlm_ray.iql.checkpoint import read_json

    run = read_json(checkpoint, "run.json", cfg.storage)
    try:
        conf = read_json(checkpoint, "config.json", cfg.storage)
    except FileNotFoundError:
        conf = {}
    spec = read_json(checkpoint, "spec.json", cfg.storage)
    return {
        "checkpoint": checkpoint,
        "reward": run.get("reward"),
        "step": run.get("step"),
        "seed": run.get("seed"),
        "context": run.get("context"),
        "config_seed": conf.get("train", {}).get("seed"),
        "config_context": conf.get("iql", {}).get("context"),
        "spec_context": spec.get("context"),
        "learner": run.get("learner", conf.get("iql", {}).get("learner")),
        "in_path": run.get("in_path"),
        "diagnostics": run.get("diagnostics"),
    }


def check_treatment(
    back: dict[str, Any], arm: Arm, seed: int, where: str, expected_in: str | None = None
) -> None:
    """Fail loudly when a run did not get its arm's reward, seed, context, learner or data (a field a checkpoint
    does not record is skipped, but some record of the seed must exist)."""
    problems = []
    if back["reward"] != arm.reward:
        problems.append(f"reward {back['reward']!r}, expected {arm.reward!r}")
    seeds = {k: back[k] for k in ("seed", "config_seed") if back[k] is not None}
    if not seeds:
        problems.append("no seed recorded in run.json or config.json")
    problems += [f"{k} {v!r}, expected {seed}" for k, v in seeds.items() if v != seed]
    for key in ("context", "config_context", "spec_context"):
        if back[key] is not None and back[key] != arm.context:
            problems.append(f"{key} {back[key]!r}, expected {arm.context}")
    if back.get("learner", "iql") != arm.learner:
        problems.append(f"learner {back.get('learner')!r}, expected {arm.learner!r}")
    if expected_in is not None and back.get("in_path") != expected_in:
        problems.append(f"data {back.get('in_path')!r}, expected {expected_in!r}")
    if problems:
        raise RuntimeError(
            f"run {where} (arm {arm.name}, seed {seed}) was not trained as its arm: " + "; ".join(problems)
        )


def finished_step(run: str, cfg: Config) -> int | None:
    """The latest checkpoint's step when it has reached train.steps (the run is done), else None."""
    from rgvlm_ray.iql.checkpoint import latest_checkpoint, read_json

    latest = latest_checkpoint(run, cfg.storage)
    if latest is None:
        return None
    step = int(read_json(latest, "run.json", cfg.storage).get("step", 0))
    return step if step >= cfg.train.steps else None


def reusable_eval(
    out: str, step: int, cfg: Config, split: str, checkpoint: str | None = None
) -> dict[str, Any] | None:
    """eval.json in `out` when it evaluated this checkpoint step the way this study would (and, when given, that
    very `checkpoint`)."""
    fs, p = storage.get_fs(storage.join(out, "eval.json"), cfg.storage)
    if not fs.exists(p):
        return None
    with fs.open(p, "rb") as f:
        ev = json.load(f)
    same = (
        ev.get("step") == step
        and ev.get("split") == split
        and ev.get("episodes_per_k") == cfg.eval.episodes_per_k
        and ev.get("policy") == cfg.eval.policy
        and checkpoint in (None, ev.get("checkpoint"))
    )
    return ev if same else None


class Clock:
    """Seconds since the arms stage began, and how many trainings run at once (to show they overlap)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.lock = threading.Lock()
        self.training = 0
        self.max_training = 0

    def now(self) -> float:
        return round(time.perf_counter() - self.t0, 2)

    def enter(self) -> None:
        with self.lock:
            self.training += 1
            self.max_training = max(self.max_training, self.training)

    def leave(self) -> None:
        with self.lock:
            self.training -= 1


def curve_steps(cfg: Config) -> list[int]:
    every = max(1, cfg.train.steps // cfg.study.curve_points)
    return [s for s in range(every, cfg.train.steps, every)]


def curve_source(cfg: Config) -> str:
    """Where a learning curve's points come from. While the actor's lr decays to 0 at `train.steps`
    (`iql.actor_cosine`), a checkpoint inside the run is not what a run of that budget would be, and every such
    curve flattens at its end: the schedule, not a plateau. Each point is then a run of its own whose schedule
    ends at that step ("budgets"). With a constant lr the run's own checkpoints are such points ("checkpoints")."""
    return "budgets" if cfg.iql.actor_cosine else "checkpoints"


def budget_dir(cfg: Config, step: int) -> str:
    return storage.join(cfg.train.out_path, f"budget-{step:08d}")


def learning_curve(ws: Workspace, arm: Arm, seed: int, cfg: Config, clock: Clock) -> tuple[list[dict], int]:
    """Evaluations at `curve_steps` (first split): completion and expert agreement by budget; returns (points,
    trainings run now).

    "budgets" (curve_source): each step's run trains into `<run>/budget-<step>` with `train.steps` = step, and its
    final checkpoint is evaluated. "checkpoints": the run's own intermediate checkpoints; one whose eval and
    checkpoint are both gone is recomputed by training the run again from scratch into `<run>/curve-rerun`.
    Each point's eval.json is reused when it evaluated that very checkpoint."""
    from rgvlm_ray.iql import evaluate, trainer
    from rgvlm_ray.iql.checkpoint import checkpoint_name

    split, source, trained = cfg.study.splits[0], curve_source(cfg), 0
    points = []
    for step in curve_steps(cfg):
        out = ws.path("eval", arm.name, f"seed{seed}", "curve", f"step{step:08d}")
        if source == "budgets":
            run = budget_dir(cfg, step)
            checkpoint = storage.join(run, checkpoint_name(step))
            ev = reusable_eval(out, step, cfg, split, checkpoint)
            budget = replace(cfg, train=replace(cfg.train, out_path=run, steps=step, checkpoint_every=step))
            if ev is None and finished_step(run, budget) is None:
                log.info("learning curve of %s: a run of its own with a budget of %d updates", arm.name, step)
                clock.enter()
                try:
                    trainer.train(budget)
                finally:
                    clock.leave()
                trained += 1
        else:
            checkpoint = storage.join(cfg.train.out_path, checkpoint_name(step))
            ev = reusable_eval(out, step, cfg, split)
        if ev is None:
            if source == "checkpoints" and not ckpt_exists(checkpoint, cfg):
                rerun = storage.join(cfg.train.out_path, "curve-rerun")
                log.warning("%s is missing: training %s again into %s for its learning curve",
                            checkpoint, arm.name, rerun)  # fmt: skip
                if finished_step(rerun, cfg) is None:
                    trainer.train(replace(cfg, train=replace(cfg.train, out_path=rerun)))
                    trained += 1
                checkpoint = storage.join(rerun, checkpoint_name(step))
            e = replace(cfg.eval, checkpoint=checkpoint, out=out, split=split)
            evaluate.evaluate(replace(cfg, eval=e))
            ev = reusable_eval(out, step, cfg, split, checkpoint)
            if ev is None:
                raise RuntimeError(f"evaluating {checkpoint} left no matching eval.json in {out}")
        points.append(
            {"step": step, "split": split, "source": source, "checkpoint": ev["checkpoint"],
             "subtask_completion": ev["subtask_completion"], "success_rate": ev["success_rate"],
             "expert_agreement": ev.get("expert_agreement"), "train_agreement": ev.get("train_agreement"),
             "by_k": ev["by_k"]}
        )  # fmt: skip
    return points, trained


def ckpt_exists(checkpoint: str, cfg: Config) -> bool:
    fs, p = storage.get_fs(storage.join(checkpoint, "run.json"), cfg.storage)
    return bool(fs.exists(p))


def run_arm_seed(
    ws: Workspace, arm: Arm, seed: int, corpus: Corpus, cpus: float, clock: Clock
) -> dict[str, Any]:
    """Train (unless finished), read the checkpoint back, and evaluate on every split (unless done)."""
    from rgvlm_ray.iql import evaluate, trainer
    from rgvlm_ray.iql.checkpoint import latest_checkpoint

    cfg = run_config(ws, arm, seed, corpus, cpus)
    run = cfg.train.out_path
    record: dict[str, Any] = {"arm": arm.name, "seed": seed, "run": run, "start_s": clock.now()}
    if finished_step(run, cfg) is not None:
        record["train_reused"] = True
    else:
        record["train_reused"] = False
        record["train_start_s"] = clock.now()
        clock.enter()
        try:
            trainer.train(cfg)
        finally:
            clock.leave()
        record["train_end_s"] = clock.now()
    checkpoint = latest_checkpoint(run, cfg.storage)
    if checkpoint is None:
        raise RuntimeError(f"training {run} wrote no checkpoint")
    back = read_back(checkpoint, cfg)
    check_treatment(back, arm, seed, run, cfg.train.in_path)
    record["read_back"] = back
    record["curve"], record["curve_trainings"] = (
        learning_curve(ws, arm, seed, cfg, clock) if has_curve(ws.cfg, arm, seed) else ([], 0)
    )
    record["evals"] = {}
    for split in cfg.study.splits:
        out = eval_dir(ws, arm, seed, split)
        ev = reusable_eval(out, back["step"], cfg, split)
        reused, start = ev is not None, time.perf_counter()
        if ev is None:
            e = replace(cfg.eval, checkpoint=checkpoint, out=out, split=split)
            evaluate.evaluate(replace(cfg, eval=e))
            ev = reusable_eval(out, back["step"], cfg, split)
            if ev is None:
                raise RuntimeError(f"evaluating {checkpoint} on {split} left no matching eval.json in {out}")
        if ev.get("reward") != arm.reward:  # eval.json copies the reward from the checkpoint it evaluated
            raise RuntimeError(f"{out}/eval.json is for reward {ev.get('reward')!r}, expected {arm.reward!r}")
        record["evals"][split] = {
            "path": out,
            "reused": reused,
            "seconds": None if reused else round(time.perf_counter() - start, 1),
            "step": ev["step"],
            "reward": ev["reward"],
            "episodes_per_k": ev["episodes_per_k"],
            "success_rate": ev["success_rate"],
            "subtask_completion": ev["subtask_completion"],
            "expert_agreement": ev.get("expert_agreement"),
            "train_agreement": ev.get("train_agreement"),
            "fits_training_data": ev.get("fits_training_data"),
            "substitutions": len(ev.get("substitutions") or []),
            "policy": ev.get("policy"),
            "by_k": ev["by_k"],
            "by_chain_kind": ev.get("by_chain_kind"),
        }
    record["end_s"] = clock.now()
    return record


def run_arms(ws: Workspace, arms: list[Arm], corpus: Corpus) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every arm x seed, `study.parallel` at a time. Raises after all have finished if any failed."""
    cpus = cpus_per_worker(ws.cfg)
    clock = Clock()
    jobs = [
        (arm, seed)
        for seed in range(ws.cfg.study.seeds)
        for arm in arms
        if seed < (arm.seeds or ws.cfg.study.seeds)
    ]
    print(
        f"\n=== {len(jobs)} runs ({len(arms)} arms, up to {ws.cfg.study.seeds} seeds), {ws.cfg.study.parallel} at a "
        f"time, {cpus:g} CPU per train worker ===",
        flush=True,
    )
    records, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(ws.cfg.study.parallel, thread_name_prefix="study") as pool:
        futures = {
            pool.submit(run_arm_seed, ws, arm, seed, corpus, cpus, clock): (arm, seed) for arm, seed in jobs
        }
        for future in concurrent.futures.as_completed(futures):
            arm, seed = futures[future]
            try:
                records.append(future.result())
            except Exception as exc:
                log.error("arm %s seed %d failed: %s", arm.name, seed, exc)
                errors.append(f"{arm.name}/seed{seed}: {type(exc).__name__}: {exc}")
    order = {arm.name: i for i, arm in enumerate(arms)}
    records.sort(key=lambda r: (order[r["arm"]], r["seed"]))
    trained = [r for r in records if not r["train_reused"]]
    timing = {
        "seconds": clock.now(),
        "cpus_per_worker": cpus,
        "parallel": ws.cfg.study.parallel,
        "trainings_run": len(trained),
        "curve_trainings_run": sum(r["curve_trainings"] for r in records),
        "max_concurrent_trainings": clock.max_training,
        "train_seconds_sum": round(sum(r["train_end_s"] - r["train_start_s"] for r in trained), 1),
    }
    if errors:
        raise RuntimeError(
            f"{len(errors)} of {len(jobs)} runs failed (rerun to retry; finished runs are kept):\n  "
            + "\n  ".join(errors)
        )
    return records, timing
