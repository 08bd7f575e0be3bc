"""The estimate: time and GPU-hours from the counts, a rate and the assumptions; `plan_run` puts it together."""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from rgvlm_ray import storage
from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers.engines import LVLM_ENGINES
from rgvlm_ray.labelers.labeler import check_config, labeler_fingerprint
from rgvlm_ray.labeling.cost.calibrate import Calibration, actor_threads, calibrate
from rgvlm_ray.labeling.cost.count import Counts, EpisodeCount, TokenCounter, count, load_counting_processor
from rgvlm_ray.labeling.plan import input_shards, with_canonical_roots

# The prefix share an engine serves from cache by default: vllm's prefix cache and the hf engine's prefix reuse
# (engine.hf.prefix_reuse, issue 19) serve all of it; openai depends on the server.
CACHING_ENGINES = {"vllm": 1.0, "hf": 1.0}


@dataclass
class Assumptions:
    analysis_tokens: float  # per window, in stage 2's prompt
    stage1_completion: float  # per window
    stage2_completion: float | None  # per window and sample; None: the budget
    prefix_cache: float
    tokens_per_s: float | None
    windows_per_s: float | None
    startup_s: float
    sources: dict[str, str]  # where each came from: setting | calibration | budget | engine default


CALIBRATION_BATCHES = 4  # fewer engine batches than this, and a calibration's rate is mostly its first batch


def calibration_warnings(cfg: Config, cal: Calibration | None) -> list[str]:
    """What makes a calibration's rate unreliable, in words for the plan."""
    if cal is None:
        return []
    enough = CALIBRATION_BATCHES * max(1, cfg.engine.batch_size)
    if cal.windows >= enough:
        return []
    return [
        f"calibration timed only {cal.windows} windows, under {CALIBRATION_BATCHES} x engine.batch_size"
        f" ({enough}): its rate is unreliable; use --calibrate {enough} or more"
    ]


def assumptions(cfg: Config, cal: Calibration | None) -> Assumptions:
    p, ecfg = cfg.plan, cfg.engine
    src: dict[str, str] = {}

    def pick(name: str, setting, measured, default, default_source: str):
        if setting is not None:
            src[name] = "setting"
            return setting
        if measured is not None:
            src[name] = "calibration"
            return measured
        src[name] = default_source
        return default

    a = pick(
        "analysis_tokens",
        p.analysis_tokens,
        cal and cal.analysis_tokens,
        ecfg.max_new_tokens_analysis,
        "budget",
    )
    g1 = pick(
        "stage1_completion", None, cal and cal.stage1_completion, ecfg.max_new_tokens_analysis, "budget"
    )
    g2 = pick("stage2_completion", None, cal and cal.stage2_completion, None, "budget")
    cache = pick(
        "prefix_cache",
        p.prefix_cache,
        cal and cal.prefix_cache,
        0.0 if ecfg.kind == "hf" and not ecfg.hf.prefix_reuse else CACHING_ENGINES.get(ecfg.kind, 0.0),
        "engine default",
    )
    if src["prefix_cache"] == "calibration" and cache > 1.0:
        # A cache can serve a token or two past stage 1's prompt (the turn's closing tokens), so a measured
        # share can come out a hair above 1: the share is at most the whole prefix.
        src["prefix_cache"] = f"calibration, measured {cache:.4f}, clamped to 1"
        cache = 1.0
    if not 0.0 <= cache <= 1.0:
        raise UsageError(f"plan.prefix_cache is a share of the prefix, 0..1; got {cache}")
    tps = wps = None
    if p.tokens_per_s > 0:
        tps, src["throughput"] = p.tokens_per_s, "setting"
    elif p.windows_per_s > 0:
        wps, src["throughput"] = p.windows_per_s, "setting"
    elif cal is not None:
        tps, src["throughput"] = cal.tokens_per_s, "calibration"
    startup = pick("startup_s", p.startup_s, cal and cal.load_s + cal.warmup_s, 0.0, "none")
    return Assumptions(a, g1, g2, cache, tps, wps, startup, src)


def work(e: EpisodeCount, cfg: Config, a: Assumptions, cache: float) -> dict[str, float]:
    """An episode's tokens per stage under the assumptions; `computed` is what the actor spends time on."""
    s = max(1, cfg.labeler.num_samples)
    s1_completion = e.windows * a.stage1_completion
    s2_prompt = s * (e.stage2_base + e.windows * a.analysis_tokens)
    s2_completion = s * (e.stage2_budget if a.stage2_completion is None else e.windows * a.stage2_completion)
    cached = cache * s * e.stage1_prompt
    computed = e.stage1_prompt + s1_completion + s2_prompt - cached + s2_completion
    return {
        "s2_prompt": s2_prompt,
        "s1_completion": s1_completion,
        "s2_completion": s2_completion,
        "cached": cached,
        "computed": computed,
    }


def seconds_of(e: EpisodeCount, cfg: Config, a: Assumptions, cache: float) -> float:
    if a.tokens_per_s:
        return work(e, cfg, a, cache)["computed"] / a.tokens_per_s
    return e.windows / (a.windows_per_s or 1.0)


def makespan(costs: list[float], actors: int) -> float:
    """When the last of `actors` finishes, each taking the next batch as soon as it is free (Ray Data's pool)."""
    free = [0.0] * max(1, actors)
    for c in costs:
        heapq.heappush(free, heapq.heappop(free) + c)
    return max(free)


def batch_costs(counts: Counts, cfg: Config, a: Assumptions, cache: float, actors: int) -> list[float]:
    """Per batch, its seconds: batches of the size job.build_dataset makes for this many actors."""
    size = max(1, min(cfg.label.episodes_per_batch, -(-counts.episodes // (2 * actors))))
    out = []
    for eps in counts.by_shard.values():
        for i in range(0, len(eps), size):
            out.append(sum(seconds_of(e, cfg, a, cache) for e in eps[i : i + size]))
    return out


def actor_counts(max_actors: int) -> list[int]:
    return sorted({1, max(1, max_actors)} | {2**k for k in range(1, 12) if 2**k < max_actors})


def cpu_share(cfg: Config, actors: int) -> float:
    """The share of its measured speed each CPU actor keeps when `actors` of them run: their torch threads share
    the CPUs left after the driver, the read tasks and the writers (plan.driver_cpus). The calibration ran one
    actor's threads alone, so 1.0 while they fit. On cpu-2core two single-threaded actors ran 1.28-1.48x faster
    than one, not 2x (BENCHMARKS.md). GPU actors: 1.0."""
    if cfg.label.num_gpus_per_actor > 0:
        return 1.0
    cpus = cfg.plan.cluster_cpus or cfg.ray.num_cpus or os.cpu_count() or 1
    threads = actor_threads(cfg.label.num_cpus_per_actor)
    free = max(float(threads), cpus - cfg.plan.driver_cpus)
    return min(1.0, free / (actors * threads))


def estimates(counts: Counts, cfg: Config, a: Assumptions) -> list[dict]:
    if a.tokens_per_s is None and a.windows_per_s is None:
        return []
    gpus = cfg.label.num_gpus_per_actor
    rows = []
    for n in actor_counts(cfg.label.max_actors):
        share = cpu_share(cfg, n)
        row: dict = {"actors": n, "gpus": n * gpus, "cpu_share": round(share, 3)}
        for suffix, cache in (("", a.prefix_cache), ("_without_prefix_cache", 0.0)):
            wall = a.startup_s + makespan(batch_costs(counts, cfg, a, cache, n), n) / share
            row[f"wall_s{suffix}"] = round(wall, 3)
            row[f"actor_hours{suffix}"] = round(wall * n / 3600, 4)
            row[f"gpu_hours{suffix}"] = round(wall * n * gpus / 3600, 4)
        rows.append(row)
    return rows


def stages(counts: Counts, cfg: Config, a: Assumptions) -> dict:
    t = counts.total()
    s = max(1, cfg.labeler.num_samples)
    sums: dict[str, float] = {}
    for eps in counts.by_shard.values():
        for e in eps:
            for k, v in work(e, cfg, a, a.prefix_cache).items():
                sums[k] = sums.get(k, 0.0) + v
    return {
        "stage1": {
            "windows": t.windows,
            "images": t.images,
            "prompt_tokens": t.stage1_prompt,
            "completion_budget": t.windows * cfg.engine.max_new_tokens_analysis,
            "completion_expected": round(sums.get("s1_completion", 0.0)),
        },
        "stage2": {
            "windows": t.windows,
            "samples_per_window": s,
            "images": t.images * s,
            "prompt_tokens": round(sums.get("s2_prompt", 0.0)),
            "prompt_tokens_without_analysis": t.stage2_base * s,
            "shared_prefix_tokens": t.stage1_prompt * s,
            "cached_tokens": round(sums.get("cached", 0.0)),
            "completion_budget": t.stage2_budget * s,
            "completion_expected": round(sums.get("s2_completion", 0.0)),
        },
        "computed_tokens": round(sums.get("computed", 0.0)),
    }


def plan_run(cfg: Config, clock: Callable[[], float] = time.perf_counter) -> dict:
    """The whole plan as one JSON-able dict (`render` prints it); `clock` times the calibration."""
    lc = cfg.label
    if cfg.engine.kind not in LVLM_ENGINES:
        raise UsageError(
            f"--plan estimates an LVLM judge (--engine {'|'.join(LVLM_ENGINES)}); --engine {cfg.engine.kind} "
            "prompts no model: its cost is reading the data once"
        )
    check_config(cfg.engine, cfg.labeler)
    if cfg.plan.calibrate < 0:
        raise UsageError(f"--calibrate takes a number of windows, got {cfg.plan.calibrate}")
    cfg = (
        with_canonical_roots(cfg)
        if lc.out_path
        else replace(cfg, label=replace(lc, in_path=storage.canonical(lc.in_path)))
    )
    model = cfg.plan.processor or cfg.engine.model
    counter = TokenCounter(
        load_counting_processor(model, None if cfg.plan.processor else cfg.engine.revision)
    )
    start = time.perf_counter()
    counts = count(cfg, counter)
    count_s = time.perf_counter() - start
    cal = None
    if cfg.plan.calibrate:
        paths = counts.paths or input_shards(cfg.label.in_path, cfg.storage)  # all labeled: any of them
        cal = calibrate(cfg, paths, cfg.plan.calibrate, counter, clock)
    a = assumptions(cfg, cal)
    return {
        "in": cfg.label.in_path,
        "out": cfg.label.out_path or None,
        "engine": cfg.engine.kind,
        "model": cfg.engine.model,
        "processor": model,
        "fingerprint": labeler_fingerprint(cfg.engine, cfg.labeler),
        "window": cfg.labeler.window,
        "overlap": cfg.labeler.overlap,
        "engine_batch_size": cfg.engine.batch_size,
        "episodes_per_batch": lc.episodes_per_batch,
        "gpus_per_actor": lc.num_gpus_per_actor,
        "shards": {
            "total": counts.shards,
            "to_label": counts.shards_to_label,
            "already_labeled": len(counts.shards_labeled),
        },
        "episodes": counts.episodes,
        "actions": counts.actions,
        "bad_input_episodes": len(counts.bad_input),
        "bad_input_examples": dict(list(counts.bad_input.items())[:3]),
        "counting_s": round(count_s, 3),
        "exact_token_counts": "processor"
        if not counter.fast
        else "processor (text + per-image-size counts, checked)",
        **stages(counts, cfg, a),
        "assumptions": {k: v for k, v in asdict(a).items()},
        "calibration": asdict(cal) if cal else None,
        "estimates": estimates(counts, cfg, a),
        "warnings": calibration_warnings(cfg, cal),
    }
