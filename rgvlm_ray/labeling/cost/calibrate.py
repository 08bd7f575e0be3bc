"""Calibration: a short real labeling run here, timed, that measures the rates the estimate uses."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rgvlm_ray.config import Config
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers import prompts
from rgvlm_ray.labelers.engines.base import ChatRequest, Completion
from rgvlm_ray.labelers.rgvlm import prepare_episode
from rgvlm_ray.labelers.windows import make_windows
from rgvlm_ray.labeling.cost.count import TokenCounter, shard_rows


def computed_tokens(c) -> int:
    """What an engine spent time on (rgvlm.Counters): prompt tokens not served from a cache, and completions."""
    return c.prompt_tokens - (c.stage2_cached_tokens or 0) + c.completion_tokens


class StageMeter:
    """Wraps the engine to split completion tokens by stage (stage 1 asks free text, stage 2 a schema)."""

    def __init__(self, engine) -> None:
        self.engine, self.model_id, self.supports_schema = engine, engine.model_id, engine.supports_schema
        self.completion = {1: 0, 2: 0}

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        out = self.engine.generate(requests)
        for r, c in zip(requests, out, strict=True):
            self.completion[1 if r.schema is None else 2] += c.completion_tokens
        return out

    def close(self) -> None:
        self.engine.close()


@dataclass
class Calibration:
    windows: int
    seconds: float  # labeling only, after a one-window warm-up
    load_s: float  # building the labeler: the model load, each actor's startup
    warmup_s: float  # what the first engine call took beyond its work at the measured rate
    tokens_per_s: float  # prompt tokens computed (cached ones excluded) + completion tokens, per second
    windows_per_s: float
    analysis_tokens: float  # per window, as stage 2's prompt holds it
    stage1_completion: float  # per window
    stage2_completion: float  # per window and sample
    prefix_cache: float  # stage-2 cached tokens / the stage-1 prompt tokens they repeat
    failed_windows: int
    threads: int = 1  # torch threads it ran on: an actor's (actor_threads)


def truncated(row: dict, actions: int) -> dict:
    """The episode cut after `actions` actions (with their observations): its first windows, unchanged."""
    out = dict(row)
    for key in ("actions", "action_texts"):
        if out.get(key) is not None:
            out[key] = out[key][:actions]
    for key in ("frames", "frames_full"):
        if out.get(key) is not None:
            out[key] = out[key][: actions + 1]
    return out


def sample_rows(cfg: Config, paths: list[str], windows: int) -> Iterator[dict]:
    """Episodes in input order up to `windows` windows in all; the last one cut to the windows still needed."""
    lc = cfg.labeler
    for path in paths:
        for row in shard_rows(path, cfg):
            t = len(row.get("actions") or [])
            spans = make_windows(t, lc.window, lc.overlap)
            if not spans or prepare_episode(row, lc).error is not None:
                continue
            if len(spans) >= windows:
                yield truncated(row, spans[windows - 1].end)
                return
            windows -= len(spans)
            yield row


def actor_threads(num_cpus: float) -> int:
    """The torch threads a labeling actor computes on: Ray sets OMP_NUM_THREADS to an actor's whole CPUs, and to 1
    for a fractional share (the default 0.5), and torch takes its thread count from it."""
    return max(1, int(num_cpus))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def calibrate(
    cfg: Config,
    paths: list[str],
    windows: int,
    counter: TokenCounter,
    clock: Callable[[], float] = time.perf_counter,
) -> Calibration:
    """Label `windows` windows here, timed by `clock` (tests on a shared machine pass CPU time)."""
    from rgvlm_ray.labelers.labeler import build_labeler
    from rgvlm_ray.labelers.rgvlm import Counters

    rows = list(sample_rows(cfg, paths, windows))
    if not rows:
        raise UsageError("--calibrate found no labelable episode in the data")
    # Time it on the threads an actor gets, not this process's: with every core, a CPU calibration ran many times
    # faster or slower than the actors it predicts (issue 24).
    threads = actor_threads(cfg.label.num_cpus_per_actor)
    with torch_threads(threads):
        start = clock()
        labeler = build_labeler(cfg.engine, cfg.labeler)
        load_s = clock() - start
        try:
            meter = StageMeter(labeler.engine)
            labeler.engine = meter
            # A first engine call pays one-off costs (kernels, allocations) an actor pays once: time it apart.
            start = clock()
            labeler.label_episodes([truncated(rows[0], min(len(rows[0]["actions"]), cfg.labeler.window))])
            warmup_s, warmup_tokens = clock() - start, computed_tokens(labeler.counters)
            labeler.counters, meter.completion = Counters(), {1: 0, 2: 0}
            start = clock()
            eps = []
            for i in range(0, len(rows), max(1, cfg.label.episodes_per_batch)):  # as an actor gets them
                eps += labeler.label_episodes(rows[i : i + max(1, cfg.label.episodes_per_batch)])
            seconds = clock() - start
        finally:
            labeler.close()
    c = labeler.counters
    done = [w for ep in eps for w in ep.windows if w.stage2 is not None]
    s = max(1, cfg.labeler.num_samples)
    with_analysis = counter.count([w.stage2 for w in done])
    empty = counter.count(
        [
            prompts.stage2_messages(
                cfg.labeler.prompt_version, w.stage1, "", w.window.size, w.window.start + 1
            )
            for w in done
        ]
    )
    rate = computed_tokens(c) / seconds
    n = max(1, c.windows)
    return Calibration(
        windows=c.windows,
        seconds=round(seconds, 3),
        load_s=round(load_s, 3),
        warmup_s=round(max(0.0, warmup_s - warmup_tokens / rate), 3),
        tokens_per_s=rate,
        windows_per_s=c.windows / seconds,
        analysis_tokens=(sum(with_analysis) - sum(empty)) / max(1, len(done)),
        stage1_completion=meter.completion[1] / n,
        stage2_completion=meter.completion[2] / max(1, len(done) * s),
        prefix_cache=(c.stage2_cached_tokens or 0) / max(1, c.stage1_prompt_tokens * s),
        failed_windows=sum(w.status != "ok" for ep in eps for w in ep.windows),
        threads=threads,
    )
