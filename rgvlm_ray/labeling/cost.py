"""What a labeling run will cost, before it starts (`rgvlm label --plan`; docs/labeling.md, "Before a large run").

Counts, exact and without loading weights: every input shard is read (the columns the judge sees) and each
episode is cut into the very windows and stage-1 conversations the job builds (`rgvlm.prepare_episode`); their
prompt tokens are counted by the model's own processor. Stage 2's prompt is stage 1's, then the analysis, then
the scoring request: it is counted exactly with an empty analysis, and the analysis adds `analysis_tokens` per
window (measured by --calibrate, else the analysis budget, an upper bound).

Time, a model with one measured rate per actor:
- work = prompt tokens computed + completion tokens, where a prefix cache serves `prefix_cache` of stage 2's
  shared prefix (the whole stage-1 prompt) instead of computing it again; seconds = work / tokens_per_s
  (or windows / windows_per_s);
- the job's batches (label.episodes_per_batch episodes, split as job.build_dataset splits them) go to the next
  free actor in input order; wall time = startup_s + the last actor's finish; GPU-hours = wall time x actors x
  label.num_gpus_per_actor (an actor holds its GPU for the whole run).
The rate comes from `plan.tokens_per_s` / `plan.windows_per_s` (bench/label_engine.py measures both), or from
--calibrate N: a real labeling run here on N windows of the data, timed after a warm-up, with the model load
timed as startup_s.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rgvlm_ray import storage
from rgvlm_ray.config import Config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import action_space
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers import prompts
from rgvlm_ray.labelers.action_text import with_space
from rgvlm_ray.labelers.engines import LVLM_ENGINES
from rgvlm_ray.labelers.engines.base import ChatRequest, Completion, Conversation, images_of
from rgvlm_ray.labelers.labeler import check_config, labeler_fingerprint
from rgvlm_ray.labelers.rgvlm import EpisodeLabel, prepare_episode, scores_budget
from rgvlm_ray.labelers.windows import make_windows
from rgvlm_ray.labeling.plan import input_shards, inventory, record_current, with_canonical_roots
from rgvlm_ray.labelstore import layout

log = logging.getLogger(__name__)
# The prefix share an engine serves from cache by default: vllm's prefix cache and the hf engine's prefix reuse
# (engine.hf.prefix_reuse, issue 19) serve all of it; openai depends on the server.
CACHING_ENGINES = {"vllm": 1.0, "hf": 1.0}


class TokenCounter:
    """Prompt tokens of conversations exactly as the hf engine's processor counts them, without the model.

    The processor's image step is most of its cost, and an image's token count depends only on its size, so a
    prompt is counted as its tokenized text plus, per image, the tokens the processor adds for that size
    (measured once per size). The first conversations are also counted the slow way, by the processor itself;
    if the two ever differ, every count is made the slow way.
    """

    def __init__(self, processor, checks: int = 3) -> None:
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.checks = checks
        self.fast = True
        self._per_image: dict[tuple[int, int, str], int] = {}

    def _text(self, conv: Conversation) -> str:
        from rgvlm_ray.labelers.engines.hf import to_hf_messages

        return self.processor.apply_chat_template(
            to_hf_messages(conv), tokenize=False, add_generation_prompt=True
        )

    def _slow(self, text: str, images: list) -> int:
        return len(self.processor(text=[text], images=images or None)["input_ids"][0])

    def _image_tokens(self, image) -> int:
        key = (image.width, image.height, image.mode)
        if key not in self._per_image:
            one = self._text([{"role": "user", "content": [{"type": "image", "image": image}]}])
            self._per_image[key] = self._slow(one, [image]) - len(self.tokenizer(one)["input_ids"])
        return self._per_image[key]

    def count(self, convs: list[Conversation]) -> list[int]:
        texts = [self._text(c) for c in convs]
        images = [list(images_of(c)) for c in convs]
        if not self.fast:
            return [self._slow(t, ims) for t, ims in zip(texts, images, strict=True)]
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]] if texts else []
        out = [n + sum(self._image_tokens(im) for im in ims) for n, ims in zip(lengths, images, strict=True)]
        for i in range(min(self.checks, len(convs))):
            self.checks -= 1
            slow = self._slow(texts[i], images[i])
            if slow != out[i]:
                log.info(
                    "fast token count %d != processor's %d: counting every prompt with the processor",
                    out[i],
                    slow,
                )
                self.fast = False
                return [self._slow(t, ims) for t, ims in zip(texts, images, strict=True)]
        return out


def load_counting_processor(model: str, revision: str | None):
    """The model's processor from a local folder, or from a hub id's files already in the local cache: the
    plan never downloads (and loads no weights)."""
    from rgvlm_ray.labelers.engines.hf import load_processor

    path = Path(model).expanduser()
    if path.is_dir():
        return load_processor(str(path), None)
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(model, revision=revision, local_files_only=True)
    except Exception as exc:  # not cached, or not a hub id at all
        raise UsageError(
            f"--plan counts tokens with {model}'s processor, and no local copy of it is here ({type(exc).__name__}): "
            f"fetch its processor files only (no weights): `hf download {model} --exclude '*.safetensors' '*.bin'`, "
            "or pass plan.processor=DIR with a folder holding them"
        ) from None
    return load_processor(local, None)


@dataclass
class EpisodeCount:
    """One episode's share of the bill: stage 2 is counted per sample and without its analysis."""

    windows: int = 0
    images: int = 0  # per stage: stage 2 shows the same images again
    stage1_prompt: int = 0
    stage2_base: int = 0  # stage-2 prompt tokens of one sample, analysis empty
    stage2_budget: int = 0  # scoring tokens allowed, one sample


@dataclass
class Counts:
    shards: int = 0
    shards_to_label: int = 0
    shards_labeled: list[str] = field(default_factory=list)  # already current in --out: not counted
    episodes: int = 0
    actions: int = 0
    bad_input: dict[str, str] = field(default_factory=dict)  # episode id -> why it cannot be labeled
    # Per shard to label, its episodes in input order (the job's batches never mix shards' orders).
    by_shard: dict[str, list[EpisodeCount]] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)  # of the shards to label

    def total(self) -> EpisodeCount:
        out = EpisodeCount()
        for eps in self.by_shard.values():
            for e in eps:
                for k, v in vars(e).items():
                    setattr(out, k, getattr(out, k) + v)
        return out


def count_episode(ep: EpisodeLabel, cfg: Config, counter: TokenCounter) -> EpisodeCount:
    lcfg, ecfg = cfg.labeler, cfg.engine
    stage1 = [w.stage1 for w in ep.windows]
    stage2 = [
        prompts.stage2_messages(lcfg.prompt_version, w.stage1, "", w.window.size, w.window.start + 1)
        for w in ep.windows
    ]
    n1, n2 = counter.count(stage1), counter.count(stage2)
    return EpisodeCount(
        windows=len(ep.windows),
        images=sum(w.window.size + 1 for w in ep.windows),
        stage1_prompt=sum(n1),
        stage2_base=sum(n2),
        stage2_budget=sum(scores_budget(ecfg, w.window.size) for w in ep.windows),
    )


JUDGE_COLUMNS = ("episode_id", "goal", "actions", "action_texts")


def shard_rows(path: str, cfg: Config) -> list[dict]:
    """The shard's episodes with only the columns the judge sees, each with its action space."""
    schema = fmt.read_schema(path, cfg.storage)
    columns = [c for c in (*JUDGE_COLUMNS, cfg.labeler.view) if c in schema.names]
    table = fmt.read_shard(path, cfg.storage, columns=columns)
    return with_space(table.to_pylist(), action_space(schema))


def shards_to_plan(cfg: Config, counts: Counts) -> list[tuple[str, str]]:
    """(name, path) of the shards a `rgvlm label` with these settings would label: with --out, those its
    manifest records as current for this labeler are left out, as the job leaves them."""
    lc, sc = cfg.label, cfg.storage
    if not lc.out_path:
        paths = input_shards(lc.in_path, sc)
        counts.shards = len(paths)
        return [(layout.relative_name(lc.in_path, p), p) for p in paths]
    shards, records = inventory(lc.in_path, lc.out_path, sc)
    counts.shards = len(shards)
    fingerprint = labeler_fingerprint(cfg.engine, cfg.labeler)
    todo = []
    for name, path, identity in shards:
        if record_current(records.get(name), identity, fingerprint, lc):
            counts.shards_labeled.append(name)
        else:
            todo.append((name, path))
    return todo


def count(cfg: Config, counter: TokenCounter) -> Counts:
    counts = Counts()
    for name, path in shards_to_plan(cfg, counts):
        counts.shards_to_label += 1
        counts.paths.append(path)
        eps = []
        for row in shard_rows(path, cfg):
            ep = prepare_episode(row, cfg.labeler)
            counts.episodes += 1
            counts.actions += ep.num_actions
            if ep.error is not None:
                counts.bad_input[ep.episode_id] = ep.error
            eps.append(count_episode(ep, cfg, counter))
        counts.by_shard[name] = eps
    return counts


# ---- calibration: a short real labeling run ------------------------------------------------------------------


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


# ---- the estimate ----------------------------------------------------------------------------------------------


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


def estimates(counts: Counts, cfg: Config, a: Assumptions) -> list[dict]:
    if a.tokens_per_s is None and a.windows_per_s is None:
        return []
    gpus = cfg.label.num_gpus_per_actor
    rows = []
    for n in actor_counts(cfg.label.max_actors):
        row: dict = {"actors": n, "gpus": n * gpus}
        for suffix, cache in (("", a.prefix_cache), ("_without_prefix_cache", 0.0)):
            wall = a.startup_s + makespan(batch_costs(counts, cfg, a, cache, n), n)
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


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.1f} min"
    return f"{math.floor(minutes / 60)} h {round(minutes % 60):02d} min"


def render(plan: dict) -> str:
    s1, s2, a = plan["stage1"], plan["stage2"], plan["assumptions"]
    src = a["sources"]
    lines = [
        f"plan: label {plan['in']}" + (f" into {plan['out']}" if plan["out"] else ""),
        f"  engine {plan['engine']}, model {plan['model']}, window {plan['window']} (overlap {plan['overlap']})",
        f"  shards {plan['shards']['to_label']} to label of {plan['shards']['total']}"
        + (
            f" ({plan['shards']['already_labeled']} already labeled)"
            if plan["shards"]["already_labeled"]
            else ""
        )
        + f"; episodes {plan['episodes']:,}, actions {plan['actions']:,}"
        + (f", {plan['bad_input_episodes']} unlabelable (bad input)" if plan["bad_input_episodes"] else ""),
        "",
        f"  {'':8s} {'windows':>9s} {'images':>9s} {'prompt tokens':>14s} {'cached':>12s} {'completion':>11s} {'budget':>11s}",
        f"  {'stage 1':8s} {s1['windows']:9,d} {s1['images']:9,d} {s1['prompt_tokens']:14,d} {'-':>12s}"
        f" {s1['completion_expected']:11,d} {s1['completion_budget']:11,d}",
        f"  {'stage 2':8s} {s2['windows'] * s2['samples_per_window']:9,d} {s2['images']:9,d} {s2['prompt_tokens']:14,d}"
        f" {s2['cached_tokens']:12,d} {s2['completion_expected']:11,d} {s2['completion_budget']:11,d}",
        "",
        f"  stage 2 repeats stage 1's prompt: {s2['shared_prefix_tokens']:,} tokens"
        f" ({s2['shared_prefix_tokens'] / max(1, s2['prompt_tokens']):.0%} of its prompt);"
        f" served from a prefix cache: {a['prefix_cache']:.0%} ({src['prefix_cache']})",
        f"  analysis tokens per window {a['analysis_tokens']:.1f} ({src['analysis_tokens']}); prompt tokens counted by"
        f" {plan['processor']}'s processor",
    ]
    cal = plan["calibration"]
    if cal:
        lines.append(
            f"  calibration: {cal['windows']} windows in {cal['seconds']:.2f} s after a {cal['load_s']:.1f} s load"
            f" and a warm-up ({cal['warmup_s']:.1f} s more than its work), on {cal.get('threads', 1)} torch"
            " thread(s) as an actor:"
            f" {cal['tokens_per_s']:,.0f} tokens/s, {cal['windows_per_s']:.2f} windows/s"
            + (f", {cal['failed_windows']} windows failed" if cal["failed_windows"] else "")
        )
    lines += [f"  warning: {w}" for w in plan.get("warnings", [])]
    if not plan["estimates"]:
        lines += [
            "",
            "  no throughput given: pass plan.tokens_per_s=N or plan.windows_per_s=N per actor (bench/label_engine.py"
            " measures both), or --calibrate N to time a real run on N windows here",
        ]
        return "\n".join(lines)
    rate = (
        f"{a['tokens_per_s']:,.0f} tokens/s" if a["tokens_per_s"] else f"{a['windows_per_s']:,.2f} windows/s"
    )
    lines += [
        "",
        f"  time at {rate} per actor ({src['throughput']}), startup {a['startup_s']:.1f} s per actor:",
        f"  {'actors':>6s} {'GPUs':>6s} {'wall time':>12s} {'actor-hours':>12s} {'GPU-hours':>10s} {'no prefix cache':>16s}",
    ]
    for e in plan["estimates"]:
        lines.append(
            f"  {e['actors']:6d} {e['gpus']:6g} {duration(e['wall_s']):>12s} {e['actor_hours']:12.3f}"
            f" {e['gpu_hours']:10.3f} {duration(e['wall_s_without_prefix_cache']):>16s}"
        )
    return "\n".join(lines)
