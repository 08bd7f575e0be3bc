"""The study's arms (reward mode x history length x learner) and the checks of its settings (docs/study.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rgvlm_ray.config import Config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError

log = logging.getLogger(__name__)
TEMPLATE = "X"  # the labeler placeholder in study.modes
ABLATION_TEMPLATE = "X+sparse"
ABLATION_MODE = "oracle+sparse"  # the arm the context ablation varies
FIXED_LABELERS = ("oracle", "clip", "rgvlm")
BASELINES = ("bc", "filtered_bc")
CEILING = "bc_expert"  # BC on noise-free expert data: the architecture's ceiling


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
