"""`rgvlm run`: the end-to-end demo. Generate, label three ways, train IQL per reward source, evaluate by k,
and write `report.md`.

Each labeler writes its own label set beside the raw data (data/labels-<labeler>: labels only, no frames), and
each training run joins the raw data with the label sets its own `train.reward` names (`train.labels`). The report labels every row from what the run wrote (`reward` in its checkpoint's run.json, copied
into eval.json), never from folder names or the configured list.

Every stage is the production code path (the same functions as `rgvlm generate|label|train|evaluate|compare`),
writing under OUT/. A rerun on the same OUT reuses what is done: existing data, labels the manifest says are
current, finished training runs (which resume to `train.steps`), so an interrupted demo picks up where it stopped.

With no `engine.model`, RG-VLM labels come from a tiny, randomly initialised Qwen2-VL built on the spot: the
two-stage code is exercised for real, but its rewards are noise. Point `engine.model` at a real LVLM to change
that; nothing else changes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace

from rgvlm_ray import storage
from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.experiments.demo_report import write_report
from rgvlm_ray.experiments.workspace import NOISE_WARNING, Workspace, has_shards, tiny_model

log = logging.getLogger(__name__)
LABELERS = ("oracle", "clip", "rgvlm")


def labels_path(state: Workspace, labeler: str) -> str:
    return state.path("data", f"labels-{labeler}")


def arm_name(reward: str) -> str:
    """A reward mode as a folder name: `oracle+sparse` -> `oracle_sparse`."""
    return reward.replace("+", "_")


def generate(state: Workspace) -> int:
    from rgvlm_ray.data import generate as gen

    raw = state.path("data", "raw")
    if has_shards(raw, state.cfg):
        print(f"reusing {raw}")
        return 0
    summary = gen.run(replace(state.cfg, generate=replace(state.cfg.generate, out=raw)))
    print(json.dumps({k: summary[k] for k in ("episodes", "transitions", "success_rate_by_k")}))
    return summary["transitions"]


def models(state: Workspace) -> None:
    """Stand in tiny random models for the ones not configured, and remember that the labels are noise."""
    from rgvlm_ray.labelers.tiny_vlm import build_clip, build_qwen2_vl

    if not state.cfg.engine.model:
        state.tiny_vlm = True
        state.cfg.engine.model = tiny_model(state, "tiny-qwen2-vl", build_qwen2_vl)
    if not state.cfg.run.clip_model:
        state.tiny_clip = True
        state.cfg.run.clip_model = tiny_model(state, "tiny-clip", build_clip)


def label(state: Workspace, labeler: str) -> int:
    from rgvlm_ray.labeling import job
    from rgvlm_ray.labeling.summary import exit_code as summary_exit_code

    cfg = state.cfg
    engine = (
        cfg.engine
        if labeler == "rgvlm"
        else replace(cfg.engine, kind=labeler, model=cfg.run.clip_model if labeler == "clip" else "")
    )
    label_cfg = replace(cfg.label, in_path=state.path("data", "raw"), out_path=labels_path(state, labeler))
    summary = job.run(replace(cfg, engine=engine, label=label_cfg))
    if summary_exit_code(summary, cfg.label.allow_quarantine) != 0:
        raise RuntimeError(f"labeling with {labeler} did not complete: see {label_cfg.out_path}/summary.json")
    return summary["transitions"]


def train(state: Workspace, reward: str) -> int:
    """One IQL run on `reward` (train.reward): the raw data joined with the label sets the reward names."""
    from rgvlm_ray.iql import trainer
    from rgvlm_ray.labelstore.rewards import labelers_in

    cfg = state.cfg
    t = replace(
        cfg.train,
        in_path=state.path("data", "raw"),
        labels=[labels_path(state, name) for name in labelers_in(reward)],
        out_path=state.path("runs", arm_name(reward)),
        reward=reward,
    )
    trainer.train(replace(cfg, train=t))
    return cfg.train.steps


def evaluate(state: Workspace, reward: str) -> int:
    from rgvlm_ray.iql import evaluate as ev

    cfg = state.cfg
    name = arm_name(reward)
    e = replace(
        cfg.eval, checkpoint=state.path("runs", name), out=state.path("eval", name), split=cfg.run.eval_split
    )
    ev.evaluate(replace(cfg, eval=e))
    return 6 * cfg.eval.episodes_per_k


def train_and_evaluate(state: Workspace) -> int:
    """Each arm trains then evaluates; `run.parallel` arms side by side (driver threads: Ray Train start-up, ~30 s
    a run on 2 cores, overlaps), each train worker on a CPU share that leaves one CPU for Ray Data."""
    from concurrent.futures import ThreadPoolExecutor

    from rgvlm_ray.ray_utils import cluster_cpus

    cfg = state.cfg
    if cfg.train.cpus_per_worker is None:
        share = (cluster_cpus() - 1.0) / (cfg.run.parallel * cfg.train.workers)
        cfg.train.cpus_per_worker = round(min(1.0, max(0.1, share)), 2)

    def arm(reward: str) -> int:
        steps = train(state, reward)
        evaluate(state, reward)
        return steps

    with ThreadPoolExecutor(cfg.run.parallel, thread_name_prefix="demo") as pool:
        return sum(pool.map(arm, cfg.run.rewards))


def compare(state: Workspace) -> None:
    from rgvlm_ray.iql import compare as cmp

    c = replace(
        state.cfg.compare,
        runs=[state.path("eval", arm_name(r)) for r in state.cfg.run.rewards],
        out=state.path("compare"),
        title="IQL success by sub-task count, per reward source",
    )
    cmp.compare(replace(state.cfg, compare=c))


def check_rewards(rewards: list[str]) -> None:
    """Every mode must be one `rgvlm train` knows and use only the labelers the demo runs."""
    from rgvlm_ray.labelstore.rewards import labelers_in

    for reward in rewards:
        unknown = [x for x in labelers_in(reward) if x not in LABELERS]  # UsageError for a malformed mode
        if unknown:
            raise UsageError(
                f"run.rewards: {reward!r} needs labeler(s) {unknown}, but the demo labels with {list(LABELERS)}"
            )
    duplicates = sorted({arm_name(r) for r in rewards if rewards.count(r) > 1})
    if duplicates:
        raise UsageError(f"run.rewards lists {duplicates} more than once")


def run(cfg: Config) -> str:
    """The whole demo into run.out; returns the path of report.md."""
    from rgvlm_ray.ray_utils import init_ray

    if not cfg.run.out:
        raise UsageError("the demo needs run.out (--out)")
    if cfg.run.parallel < 1:
        raise UsageError(f"run.parallel must be at least 1, got {cfg.run.parallel}")
    check_rewards(cfg.run.rewards)
    if storage.is_remote(cfg.run.out):
        raise UsageError("run.out must be a local folder (the demo writes report.md and plots there)")
    state = Workspace(cfg, os.path.abspath(cfg.run.out))
    start = time.perf_counter()
    init_ray(cfg.ray)
    state.timed("generate", "transitions", lambda: generate(state))
    models(state)
    if state.tiny_vlm:
        print(f"\nNOTE: {NOISE_WARNING}")
    for labeler in LABELERS:
        state.timed(f"label ({labeler})", "transitions", lambda labeler=labeler: label(state, labeler))
    state.timed(
        f"train + evaluate ({len(cfg.run.rewards)} arms, {cfg.run.parallel} at a time)",
        "updates",
        lambda: train_and_evaluate(state),
        "incl. Ray Train start-up",
    )
    compare(state)
    evals = [state.path("eval", arm_name(r)) for r in cfg.run.rewards]
    labels = {name: labels_path(state, name) for name in LABELERS}
    return write_report(state, time.perf_counter() - start, evals, state.path("data", "raw"), labels)
