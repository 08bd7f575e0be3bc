"""`rgvlm run`: the end-to-end demo. Generate, label three ways, train IQL per reward source, evaluate by k,
and write `report.md`.

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
from dataclasses import dataclass, field, replace

from rgvlm_ray import storage
from rgvlm_ray.config import Config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError

log = logging.getLogger(__name__)
REAL_LVLM = "--engine vllm --model Qwen/Qwen2.5-VL-7B-Instruct label.num_gpus_per_actor=1"
NOISE_WARNING = (
    "RG-VLM labels in this demo come from a tiny, randomly initialised Qwen2-VL: the two-stage pipeline is real, "
    "but the rewards are NOISE, so rgvlm and rgvlm+sparse results say nothing about RG-VLM itself. "
    f"For real labels, point engine.model at an LVLM on a GPU node: `rgvlm run --config gpu-node ...` or add "
    f"`{REAL_LVLM}`."
)
# Which labeled dataset each reward mode trains from (labels are namespaced, so `sparse` can use any).
SOURCE_OF = {
    "sparse": "oracle",
    "oracle": "oracle",
    "clip": "clip",
    "rgvlm": "rgvlm",
    "rgvlm+sparse": "rgvlm",
}


@dataclass
class Stage:
    name: str
    seconds: float
    work: float  # units of `unit` done
    unit: str
    note: str = ""

    @property
    def rate(self) -> float:
        return self.work / self.seconds if self.seconds > 0 else 0.0


@dataclass
class DemoState:
    cfg: Config
    out: str
    stages: list[Stage] = field(default_factory=list)
    tiny_vlm: bool = False
    tiny_clip: bool = False

    def path(self, *parts: str) -> str:
        return storage.join(self.out, *parts)

    def timed(self, name: str, unit: str, fn, note: str = ""):
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        work = fn()
        self.stages.append(Stage(name, time.perf_counter() - start, float(work or 0), unit, note))
        return work


def _has_shards(path: str, cfg: Config) -> bool:
    try:
        return bool(fmt.list_shards(path, cfg.storage))
    except FileNotFoundError:
        return False


def generate(state: DemoState) -> int:
    from rgvlm_ray.data import generate as gen

    raw = state.path("data", "raw")
    if _has_shards(raw, state.cfg):
        print(f"reusing {raw}")
        return 0
    summary = gen.run(replace(state.cfg, generate=replace(state.cfg.generate, out=raw)))
    print(json.dumps({k: summary[k] for k in ("episodes", "transitions", "success_rate_by_k")}))
    return summary["transitions"]


def _tiny_model(state: DemoState, name: str, build) -> str:
    """Build a tiny random model once under OUT/models (a rerun reuses it)."""
    path = state.path("models", name)
    if not os.path.exists(os.path.join(path, "config.json")):
        build(path)
    return path


def models(state: DemoState) -> None:
    """Stand in tiny random models for the ones not configured, and remember that the labels are noise."""
    from rgvlm_ray.labeling.tiny_vlm import build_clip, build_qwen2_vl

    if not state.cfg.engine.model:
        state.tiny_vlm = True
        state.cfg.engine.model = _tiny_model(state, "tiny-qwen2-vl", build_qwen2_vl)
    if not state.cfg.run.clip_model:
        state.tiny_clip = True
        state.cfg.run.clip_model = _tiny_model(state, "tiny-clip", build_clip)


def label(state: DemoState, labeler: str) -> int:
    from rgvlm_ray.labeling import pipeline

    cfg = state.cfg
    engine = (
        cfg.engine
        if labeler == "rgvlm"
        else replace(cfg.engine, kind=labeler, model=cfg.run.clip_model if labeler == "clip" else "")
    )
    label_cfg = replace(
        cfg.label, in_path=state.path("data", "raw"), out_path=state.path("data", f"labeled-{labeler}")
    )
    summary = pipeline.run(replace(cfg, engine=engine, label=label_cfg))
    if pipeline.exit_code(summary, cfg.label.allow_quarantine) != 0:
        raise RuntimeError(f"labeling with {labeler} did not complete: see {label_cfg.out_path}/summary.json")
    return summary["transitions"]


def train(state: DemoState, reward: str) -> int:
    from rgvlm_ray.iql import trainer

    cfg = state.cfg
    t = replace(
        cfg.train,
        in_path=state.path("data", f"labeled-{SOURCE_OF[reward]}"),
        out_path=state.path("runs", reward.replace("+", "_")),
    )
    if trainer.main(replace(cfg, train=t)) != 0:
        raise RuntimeError(f"training with --reward {reward} failed")
    return cfg.train.steps


def evaluate(state: DemoState, reward: str) -> int:
    from rgvlm_ray.iql import evaluate as ev

    cfg = state.cfg
    name = reward.replace("+", "_")
    e = replace(
        cfg.eval, checkpoint=state.path("runs", name), out=state.path("eval", name), split=cfg.run.eval_split
    )
    if ev.main(replace(cfg, eval=e)) != 0:
        raise RuntimeError(f"evaluating {name} failed")
    return 6 * cfg.eval.episodes_per_k


def compare(state: DemoState) -> None:
    from rgvlm_ray.iql import compare as cmp

    c = replace(
        state.cfg.compare,
        runs=[state.path("eval", r.replace("+", "_")) for r in state.cfg.run.rewards],
        out=state.path("compare"),
        title="IQL success by sub-task count, per reward source",
    )
    cmp.main(replace(state.cfg, compare=c))


def main(cfg: Config) -> int:
    from rgvlm_ray.cli import require
    from rgvlm_ray.ray_utils import init_ray

    require(cfg, "run.out")
    unknown = [r for r in cfg.run.rewards if r not in SOURCE_OF]
    if unknown:
        raise UsageError(f"run.rewards: unknown reward mode(s) {unknown}; choose from {sorted(SOURCE_OF)}")
    if storage.is_remote(cfg.run.out):
        raise UsageError("run.out must be a local folder (the demo writes report.md and plots there)")
    state = DemoState(cfg, os.path.abspath(cfg.run.out))
    start = time.perf_counter()
    init_ray(cfg.ray)
    state.timed("generate", "transitions", lambda: generate(state))
    models(state)
    if state.tiny_vlm:
        print(f"\nNOTE: {NOISE_WARNING}")
    for labeler in ("rgvlm", "clip", "oracle"):
        state.timed(f"label ({labeler})", "transitions", lambda labeler=labeler: label(state, labeler))
    for reward in cfg.run.rewards:
        state.timed(
            f"train ({reward})",
            "updates",
            lambda reward=reward: train(state, reward),
            "incl. Ray Train start-up",
        )
    for reward in cfg.run.rewards:
        state.timed(f"evaluate ({reward})", "episodes", lambda reward=reward: evaluate(state, reward))
    compare(state)
    from rgvlm_ray.demo_report import write_report

    path = write_report(state, time.perf_counter() - start)
    print(f"\nwrote {path}")
    if state.tiny_vlm:
        print(f"NOTE: {NOISE_WARNING}")
    return 0
