"""`rgvlm study`: the paper's experiment as one command on Ray (docs/study.md).

1. Data: `study.in_path`, or a dataset generated into OUT/data/raw (reused when present).
2. Labels: every labeler in `study.labelers` labels the raw data into its own label set, OUT/data/labels-<name>.
   A labeler that fails is recorded and its arms are skipped; the others go on. `rgvlm label-report` statistics
   (Spearman rho of the labels against true progress, and its shuffled baseline) join every label set.
   Each run joins the raw data with the label sets its reward names (`train.labels`).
3. Arms: `sparse`; for each labeler X that succeeded and each template of `study.modes`, the mode with X put in;
   `oracle+sparse` at each `study.contexts` value (a history-length ablation). Each arm x seed is one Ray Train
   run in OUT/runs/<arm>/seed<i>, evaluated on every split into OUT/eval/<arm>/seed<i>/<split>. Up to
   `study.parallel` of them run side by side, each from a driver thread: Ray Train V2's `TorchTrainer.fit()` works
   from threads, and threads cost nothing while they wait. After training, each run's checkpoint is read back
   and the study stops with an error naming the run if its reward, seed or context is not its arm's.
4. study.md, plots and study.json (study/report.py).

A rerun on the same OUT reuses everything finished: data, labels the manifests say are current, runs whose latest
checkpoint reached `train.steps` (not retrained) and evaluations of that very checkpoint step (not recomputed).
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from rgvlm_ray import storage
from rgvlm_ray.config import Config, EngineConfig, LabelerConfig, redacted
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError
from rgvlm_ray.experiments.workspace import NOISE_WARNING, Stage, Workspace, has_shards, tiny_model

log = logging.getLogger(__name__)
TEMPLATE = "X"  # the labeler placeholder in study.modes
ABLATION_TEMPLATE = "X+sparse"
ABLATION_MODE = "oracle+sparse"  # the arm the context ablation varies
FIXED_LABELERS = ("oracle", "clip", "rgvlm")
BASELINES = ("bc", "filtered_bc")
CEILING = "bc_expert"  # BC on noise-free expert data: the architecture's ceiling
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Arm:
    name: str  # folder under runs/ and eval/: filesystem-safe, e.g. oracle_sparse, oracle_sparse-ctx1
    reward: str  # train.reward
    context: int  # iql.context
    labeler: str | None = None  # the labeler X whose labels the reward reads; None for sparse
    template: str = "sparse"  # the study.modes entry it came from (X, X+sparse, ...)
    ablation: bool = False  # a context-ablation arm
    learner: str = "iql"  # iql.learner: iql | bc | filtered_bc
    data: str = "raw"  # raw | expert (noise-free bot data on the same missions: the BC ceiling)
    seeds: int | None = None  # None: study.seeds; the ceiling runs once


def arm_name(reward: str, context: int, default_context: int) -> str:
    name = reward.replace("+", "_")
    return name if context == default_context else f"{name}-ctx{context}"


def substitute(template: str, labeler: str) -> str:
    """Put a labeler into a mode template: ("X+sparse", "noisy30") -> "noisy30+sparse"."""
    return "+".join(labeler if term == TEMPLATE else term for term in template.split("+"))


def plan_arms(
    labelers: list[str],
    modes: list[str],
    contexts: list[int],
    default_context: int,
    modes_for: dict[str, list[str]] | None = None,
    baselines: list[str] | None = None,
    expert_ceiling: bool = False,
) -> list[Arm]:
    """Every arm for the labelers that succeeded, in report order: sparse, the baselines, per labeler its modes
    (`modes`, or `modes_for[labeler]`), the ablation."""
    d = default_context
    arms = [Arm("sparse", "sparse", d)]
    arms += [Arm(name, "sparse", d, learner=name) for name in baselines or []]
    if expert_ceiling:
        arms.append(Arm(CEILING, "sparse", d, learner="bc", data="expert", seeds=1))
    for x in labelers:
        templates = (modes_for or {}).get(x, modes)
        arms += [Arm(arm_name(substitute(t, x), d, d), substitute(t, x), d, x, t) for t in templates]
    if "oracle" in labelers:
        for c in contexts:
            if c != d:
                name = arm_name(ABLATION_MODE, c, d)
                arms.append(Arm(name, ABLATION_MODE, c, "oracle", ABLATION_TEMPLATE, ablation=True))
    unique: dict[str, Arm] = {}
    for arm in arms:
        unique.setdefault(arm.name, arm)
    return list(unique.values())


# --- checks ----------------------------------------------------------------------------------------------------


def validate(cfg: Config) -> None:
    from rgvlm_ray.labelers.engines import LVLM_ENGINES
    from rgvlm_ray.labelstore.rewards import reward_terms

    s = cfg.study
    if not s.out:
        raise UsageError("the study needs study.out (--out)")
    for name in s.labelers:
        if name not in FIXED_LABELERS and fmt.noisy_percent(name) is None:
            raise UsageError(
                f"study.labelers: unknown labeler {name!r}; use oracle, clip, rgvlm or noisyNN (e.g. noisy30)"
            )
    if len(set(s.labelers)) != len(s.labelers):
        raise UsageError(f"study.labelers lists a labeler twice: {s.labelers}")
    unknown = sorted(set(s.modes_for) - set(s.labelers))
    if unknown:
        raise UsageError(f"study.modes_for names labelers the study does not run: {unknown}")
    for template in [*s.modes, *(t for ts in s.modes_for.values() for t in ts)]:
        if TEMPLATE not in template.split("+"):
            raise UsageError(f"study.modes: {template!r} has no {TEMPLATE} term (e.g. X or X+sparse)")
        reward_terms(substitute(template, "oracle"))  # UsageError for a malformed mode
    if "rgvlm" in s.labelers and cfg.engine.kind not in LVLM_ENGINES:
        raise UsageError(f"labeler rgvlm needs engine.kind in {LVLM_ENGINES}, got {cfg.engine.kind!r}")
    unknown = sorted(set(s.baselines) - set(BASELINES))
    if unknown:
        raise UsageError(f"study.baselines: unknown {unknown}; choose from {list(BASELINES)}")
    if s.curve_points < 0:
        raise UsageError(f"study.curve_points must be >= 0, got {s.curve_points}")
    if s.seeds < 1 or s.parallel < 1:
        raise UsageError("--seeds and study.parallel must be at least 1")
    if not s.splits or any(split not in fmt.SPLITS for split in s.splits):
        raise UsageError(f"study.splits must be a non-empty list of {fmt.SPLITS}, got {s.splits}")
    if any(c < 1 for c in s.contexts) or cfg.iql.context < 1:
        raise UsageError(
            f"study.contexts and iql.context must be positive, got {s.contexts} / {cfg.iql.context}"
        )


def cpus_per_worker(cfg: Config) -> float:
    """train.cpus_per_worker, or a share that leaves one CPU for Ray Data while `study.parallel` runs train
    side by side (the 2-core deadlock trap: workers holding every CPU wait forever for data no task can read)."""
    from rgvlm_ray.ray_utils import cluster_cpus

    total, busy = cluster_cpus(), cfg.study.parallel * cfg.train.workers
    cpus = cfg.train.cpus_per_worker
    if cpus is None:
        cpus = round(min(1.0, max(0.1, (total - 1.0) / busy)), 2)
    elif not cfg.train.use_gpu and busy * cpus > total - 1.0:
        log.warning(
            "study.parallel x train.workers x train.cpus_per_worker = %d x %d x %g CPUs leaves no CPU of %g "
            "for Ray Data: trainings may wait for each other, or deadlock on a small machine",
            cfg.study.parallel, cfg.train.workers, cpus, total,
        )  # fmt: skip
    return float(cpus)


# --- stages ------------------------------------------------------------------------------------------------------


def raw_data(ws: Workspace) -> str:
    from rgvlm_ray.data import generate as gen

    cfg = ws.cfg
    if cfg.study.in_path:
        return cfg.study.in_path
    raw = ws.path("data", "raw")
    if has_shards(raw, cfg):
        print(f"reusing {raw}")
        return raw
    ws.timed(
        "generate",
        "transitions",
        lambda: gen.run(replace(cfg, generate=replace(cfg.generate, out=raw)))["transitions"],
    )
    return raw


def expert_data(ws: Workspace) -> str:
    """Noise-free bot episodes on the raw data's missions (same generate.seed and k), for the BC ceiling."""
    from rgvlm_ray.data import generate as gen

    cfg = ws.cfg
    out = ws.path("data", "expert")
    if has_shards(out, cfg):
        print(f"reusing {out}")
        return out
    g = replace(cfg.generate, out=out, expert_noise=0.0, noise_levels=[], detour=0.0, abandon=0.0)
    ws.timed("generate (expert, for the BC ceiling)", "transitions",
             lambda: gen.run(replace(cfg, generate=g))["transitions"])  # fmt: skip
    return out


def models(ws: Workspace) -> None:
    """Tiny random stand-ins for the models a listed labeler needs and the config leaves empty (noise)."""
    from rgvlm_ray.labelers.tiny_vlm import build_clip, build_qwen2_vl

    cfg = ws.cfg
    if "rgvlm" in cfg.study.labelers and not cfg.engine.model:
        ws.tiny_vlm = True
        cfg.engine.model = tiny_model(ws, "tiny-qwen2-vl", build_qwen2_vl)
    if "clip" in cfg.study.labelers and not cfg.study.clip_model:
        ws.tiny_clip = True
        cfg.study.clip_model = tiny_model(ws, "tiny-clip", build_clip)


def labeler_settings(cfg: Config, name: str) -> tuple[EngineConfig, LabelerConfig]:
    """(engine, labeler) settings that write `name`'s columns."""
    percent = fmt.noisy_percent(name)
    if percent is not None:
        return replace(cfg.engine, kind="noisy_oracle", model=""), replace(
            cfg.labeler, oracle_noise=percent / 100
        )
    if name == "oracle":
        return replace(cfg.engine, kind="oracle", model=""), cfg.labeler
    if name == "clip":
        return replace(cfg.engine, kind="clip", model=cfg.study.clip_model), cfg.labeler
    return cfg.engine, cfg.labeler  # rgvlm: the configured LVLM engine


@dataclass
class Corpus:
    """The raw dataset and one label set per labeler that succeeded."""

    raw: str
    labels: dict[str, str]
    expert: str = ""  # noise-free data for the ceiling arm

    def labels_for(self, reward: str) -> list[str]:
        """The label sets a reward mode reads: only those its terms name."""
        from rgvlm_ray.labelstore.rewards import labelers_in

        return [self.labels[name] for name in labelers_in(reward)]


def label_one(ws: Workspace, name: str, in_path: str, out_path: str) -> dict[str, Any]:
    from rgvlm_ray.labeling import job

    cfg = ws.cfg
    engine, labeler = labeler_settings(cfg, name)
    label = replace(cfg.label, in_path=in_path, out_path=out_path)
    if engine.kind in ("oracle", "noisy_oracle"):  # computed from the data: no GPU to hold
        label = replace(label, num_gpus_per_actor=0.0)
    summary = job.run(replace(cfg, engine=engine, labeler=labeler, label=label))
    code = job.exit_code(summary, cfg.label.allow_quarantine)
    if code != 0:
        raise RuntimeError(f"the labeling job exited {code}: see {storage.join(out_path, 'summary.json')}")
    if summary["labeler"] != name:
        raise RuntimeError(f"the labeling job wrote {summary['labeler']!r} columns, not {name!r}")
    return summary


def error_summary(exc: BaseException, limit: int = 400) -> str:
    """One line for a report: the exception's type and first line, and the root cause (a Ray error carries the
    remote traceback, whose last line is the original exception), without terminal colour codes."""
    lines = [ln.strip() for ln in ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    if len(lines) > 1:
        text += f" ... {lines[-1]}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def label_all(ws: Workspace, raw: str) -> tuple[dict[str, dict[str, Any]], Corpus]:
    """Label the raw dataset with every labeler, each into its own label set (data/labels-NAME). A failure is
    recorded, not raised: that labeler's arms are skipped."""
    outcome: dict[str, dict[str, Any]] = {}
    corpus = Corpus(raw, {})
    for name in ws.cfg.study.labelers:
        out = ws.path("data", f"labels-{name}")
        start = time.perf_counter()
        print(f"\n=== label ({name}) {raw} -> {out} ===", flush=True)
        try:
            summary = label_one(ws, name, raw, out)
        except Exception as exc:  # one broken labeler must not sink the study: its arms are skipped
            log.exception("labeling with %s failed; its arms are skipped", name)
            outcome[name] = {
                "status": "failed",
                "error": error_summary(exc),
                "in": raw,
                "out": out,
                "seconds": round(time.perf_counter() - start, 1),
            }
            continue
        seconds = time.perf_counter() - start
        ws.stages.append(Stage(f"label ({name})", seconds, summary["transitions"], "transitions"))
        outcome[name] = {
            "status": "ok",
            "in": raw,
            "out": out,
            "seconds": round(seconds, 1),
            "transitions": summary["transitions"],
            "shards_labeled": summary["shards"]["labeled"],
            "shards_current": summary["shards"]["skipped_current"],
        }
        corpus.labels[name] = out
    return outcome, corpus


def label_quality(ws: Workspace, corpus: Corpus, names: list[str]) -> dict[str, Any]:
    """Per labeler: Spearman rho of cumulative labels vs. true progress (mean over k) and the shuffled baseline."""
    from rgvlm_ray.label_quality import report as label_report

    if not names:
        return {"reports": [], "by_labeler": {}}
    try:
        reports, _, _ = label_report.build(corpus.raw, list(corpus.labels.values()), ws.cfg.storage)
    except UsageError as exc:
        return {"error": str(exc), "reports": [], "by_labeler": {}}
    reports = [r for r in reports if r["labeler"] in names]
    by_labeler = {}
    for r in reports:
        shuffled = [
            row["spearman_shuffled_mean"] for row in r["by_k"] if row["spearman_shuffled_mean"] is not None
        ]
        by_labeler[r["labeler"]] = {
            "spearman": r["spearman_mean_over_k"],
            "spearman_shuffled": round(sum(shuffled) / len(shuffled), 4) if shuffled else None,
        }
    return {"reports": reports, "by_labeler": by_labeler}


# --- runs ----------------------------------------------------------------------------------------------------------


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
    if has_curve(cfg, arm, seed):
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


def reusable_eval(out: str, step: int, cfg: Config, split: str) -> dict[str, Any] | None:
    """eval.json in `out` when it evaluated this checkpoint step the way this study would."""
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
    every = cfg.train.checkpoint_every
    return [s for s in range(every, cfg.train.steps, every)]


def learning_curve(ws: Workspace, arm: Arm, seed: int, cfg: Config) -> list[dict[str, Any]]:
    """Evaluations of the intermediate checkpoints (first split): completion and expert agreement by step.

    Each point's eval.json is reused when it evaluated that step; a point whose eval and checkpoint are both
    gone (deleted, or pruned by an older keep_checkpoints) is recomputed by training the run again from scratch
    into its own folder, `<run>/curve-rerun`."""
    from rgvlm_ray.iql import evaluate, trainer
    from rgvlm_ray.iql.checkpoint import checkpoint_name

    split = cfg.study.splits[0]
    points = []
    for step in curve_steps(cfg):
        out = ws.path("eval", arm.name, f"seed{seed}", "curve", f"step{step:08d}")
        ev = reusable_eval(out, step, cfg, split)
        if ev is None:
            checkpoint = storage.join(cfg.train.out_path, checkpoint_name(step))
            if not ckpt_exists(checkpoint, cfg):
                rerun = storage.join(cfg.train.out_path, "curve-rerun")
                log.warning("%s is missing: training %s again into %s for its learning curve",
                            checkpoint, arm.name, rerun)  # fmt: skip
                if finished_step(rerun, cfg) is None:
                    trainer.train(replace(cfg, train=replace(cfg.train, out_path=rerun)))
                checkpoint = storage.join(rerun, checkpoint_name(step))
            e = replace(cfg.eval, checkpoint=checkpoint, out=out, split=split)
            evaluate.evaluate(replace(cfg, eval=e))
            ev = reusable_eval(out, step, cfg, split)
            if ev is None:
                raise RuntimeError(f"evaluating {checkpoint} left no matching eval.json in {out}")
        points.append(
            {"step": step, "split": split, "subtask_completion": ev["subtask_completion"],
             "success_rate": ev["success_rate"], "expert_agreement": ev.get("expert_agreement"),
             "by_k": ev["by_k"]}
        )  # fmt: skip
    return points


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
    record["curve"] = learning_curve(ws, arm, seed, cfg) if has_curve(ws.cfg, arm, seed) else []
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
            "policy": ev.get("policy"),
            "by_k": ev["by_k"],
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
        "max_concurrent_trainings": clock.max_training,
        "train_seconds_sum": round(sum(r["train_end_s"] - r["train_start_s"] for r in trained), 1),
    }
    if errors:
        raise RuntimeError(
            f"{len(errors)} of {len(jobs)} runs failed (rerun to retry; finished runs are kept):\n  "
            + "\n  ".join(errors)
        )
    return records, timing


# --- the command -------------------------------------------------------------------------------------------------


def reused_lists(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    train = [f"{r['arm']}/seed{r['seed']}" for r in records if r["train_reused"]]
    evals = [f"{r['arm']}/seed{r['seed']}/{s}" for r in records for s, e in r["evals"].items() if e["reused"]]
    return {"train": train, "eval": evals}


def run(cfg: Config) -> dict[str, Any]:
    """The whole study; returns what study.json holds (also written to OUT/study.json with study.md)."""
    from rgvlm_ray.experiments.study.report import report_files
    from rgvlm_ray.iql.evaluate import write_outputs
    from rgvlm_ray.ray_utils import init_ray

    validate(cfg)
    cfg = copy.deepcopy(cfg)  # tiny model paths are filled in below
    out = cfg.study.out if storage.is_remote(cfg.study.out) else storage.get_fs(cfg.study.out)[1]
    ws = Workspace(cfg, out)
    start = time.perf_counter()
    init_ray(cfg.ray)
    raw = raw_data(ws)
    models(ws)
    if ws.tiny_vlm:
        print(f"\nNOTE: {NOISE_WARNING}")
    from rgvlm_ray.data.inspect import summarize as inspect_data

    behaviour = inspect_data(raw, cfg.storage).get("behaviour")
    outcome, corpus = label_all(ws, raw)
    ok = [name for name in cfg.study.labelers if outcome[name]["status"] == "ok"]
    quality = label_quality(ws, corpus, ok)
    # The ceiling replays the generator's missions without noise: there is none to replay for a given --in.
    ceiling = cfg.study.expert_ceiling and not cfg.study.in_path
    if cfg.study.expert_ceiling and not ceiling:
        print("no BC ceiling: study.in_path is not generated here, so there are no noise-free episodes of it")
    arms = plan_arms(
        ok, cfg.study.modes, cfg.study.contexts, cfg.iql.context, dict(cfg.study.modes_for),
        list(cfg.study.baselines), ceiling,
    )  # fmt: skip
    if ceiling:
        corpus.expert = expert_data(ws)
    records, timing = run_arms(ws, arms, corpus)
    ws.stages.append(Stage("train + evaluate (all runs)", timing["seconds"], len(records), "runs"))
    study = {
        "out": out,
        "created_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": round(time.perf_counter() - start, 1),
        "settings": {
            "labelers": cfg.study.labelers,
            "modes": cfg.study.modes,
            "seeds": cfg.study.seeds,
            "splits": cfg.study.splits,
            "contexts": cfg.study.contexts,
            "baselines": list(cfg.study.baselines),
            "expert_ceiling": cfg.study.expert_ceiling,
            "learner": {
                k: getattr(cfg.iql, k) for k in ("adv_norm", "weighting", "beta", "discount", "expectile")
            },
            "eval_policy": cfg.eval.policy,
            "behaviour": {
                "expert_noise": cfg.generate.expert_noise,
                "noise_levels": list(cfg.generate.noise_levels),
                "detour": cfg.generate.detour,
                "abandon": cfg.generate.abandon,
            },
            "default_context": cfg.iql.context,
            "parallel": cfg.study.parallel,
            "train_steps": cfg.train.steps,
            "train_workers": cfg.train.workers,
            "episodes_per_k": cfg.eval.episodes_per_k,
            "eval_max_steps": cfg.eval.max_steps,
            "eval_stall_steps": cfg.eval.stall_steps,
            "generated": not cfg.study.in_path,
            "episodes": cfg.generate.episodes,
            "subtasks": cfg.generate.subtasks,
        },
        "behaviour_data": behaviour,
        "tiny_vlm": ws.tiny_vlm,
        "tiny_clip": ws.tiny_clip,
        "data": {"raw": raw, "labels": corpus.labels, "expert": corpus.expert},
        "labelers": outcome,
        "label_quality": quality,
        "arms": [asdict(a) for a in arms],
        "skipped_labelers": [n for n in cfg.study.labelers if n not in ok],
        "runs": records,
        "reused": reused_lists(records),
        "timing": timing,
        "stages": [{**asdict(s), "rate": s.rate} for s in ws.stages],
        "config": redacted(cfg),
    }
    files = report_files(study)
    files["study.json"] = json.dumps(study, indent=2, default=str).encode()
    write_outputs(out, files, cfg.storage)
    return study
