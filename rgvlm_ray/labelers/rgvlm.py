"""RG-VLM labeling (arXiv 2504.08772): a two-stage LVLM conversation per window of an episode.

Stage 1: observations + actions + goal -> an analysis of how the actions move the task forward.
Stage 2: that conversation verbatim + the analysis + a scoring request -> one integer 0..10 per action.

Deviations from the paper, and why:
- Long episodes are judged in overlapping windows (windows.py) so prompts fit the model's context; the paper
  shows the whole (short) ALFRED sub-trajectory at once.
- Scores are constrained to {"scores": [...]} with exactly one integer 0..10 per action by JSON-schema
  decoding where the engine supports it; otherwise replies are parsed, checked and re-asked up to
  `labeler.max_parse_retries` times. A score is never invented: failures stay null with a status.
- Optional self-consistency (`labeler.num_samples` > 1): several scoring samples given one analysis; the
  per-step mean is the score and the spread goes to `score_std`.
- reward = reward_scale * score / 10 + reward_shift (the paper uses the score / 10 directly).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from rgvlm_ray.config import EngineConfig, LabelerConfig
from rgvlm_ray.labelers import prompts
from rgvlm_ray.labelers.action_text import action_texts
from rgvlm_ray.labelers.columns import error_columns, label_columns, num_actions
from rgvlm_ray.labelers.engines.base import ChatRequest, Completion, Conversation, Engine
from rgvlm_ray.labelers.images import VIEWS, decode_frames
from rgvlm_ray.labelers.parsing import Parsed, parse_scores
from rgvlm_ray.labelers.windows import Window, make_windows, owners

log = logging.getLogger(__name__)
NAME = "rgvlm"


@dataclass
class Sample:
    """One scoring sample of one window, through its retries."""

    conversation: Conversation
    replies: list[str] = field(default_factory=list)
    scores: list[int] | None = None
    error: str | None = None
    engine_failed: bool = False


@dataclass
class WindowLabel:
    window: Window
    stage1: Conversation
    analysis: str | None = None
    stage2: Conversation | None = None
    samples: list[Sample] = field(default_factory=list)
    scores: list[float] | None = None  # per answer value (rgvlm: per action; mean over parsed samples)
    score_std: list[float] | None = None
    status: str = "ok"
    message: str = ""
    order: list[int] | None = None  # gvl: the window frame shown at each position (the shuffle)


@dataclass
class EpisodeLabel:
    episode_id: str
    num_actions: int
    windows: list[WindowLabel] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Judge:
    """What a prompting strategy over the two-stage driver below defines (rgvlm here, gvl in gvl.py): the
    windows and stage-1 conversations, the stage-2 request, the answer's size, schema and parser, the retry."""

    prepare: Callable[[dict, EngineConfig, LabelerConfig], EpisodeLabel]
    stage2: Callable[[LabelerConfig, WindowLabel, str], Conversation]
    answer_size: Callable[[WindowLabel], int]  # values in one reply
    schema: Callable[[int], dict]
    parse: Callable[[str | None, int], Parsed]
    retry: Callable[[LabelerConfig, Conversation, str, str, int], Conversation]


def scores_budget(cfg: EngineConfig, n: int) -> int:
    """Enough new tokens for the JSON of n scores even one byte per token, so it is never cut short."""
    return max(cfg.max_new_tokens_scores, 16 + 4 * n)


def prepare_episode(row: dict, lcfg: LabelerConfig) -> EpisodeLabel:
    """Windows and stage-1 conversations, or an episode-level error (never raises for bad data)."""
    ep = EpisodeLabel(str(row.get("episode_id")), num_actions(row))
    try:
        if lcfg.view not in VIEWS:
            raise ValueError(f"labeler.view must be one of {VIEWS}, got {lcfg.view!r}")
        t = ep.num_actions
        if t == 0:
            raise ValueError("episode has no actions")
        frames = row.get(lcfg.view)
        if frames is None:
            hint = (
                " (generate with env.full_view=true, or set labeler.view=frames)"
                if lcfg.view == "frames_full"
                else ""
            )
            raise ValueError(f"column {lcfg.view!r} is missing{hint}")
        if len(frames) != t + 1:
            raise ValueError(f"{lcfg.view!r} has {len(frames)} frames for {t} actions (expected {t + 1})")
        texts = action_texts(row, lcfg)
        images = decode_frames(frames, lcfg.image_size)
    except ValueError as exc:
        ep.error = str(exc)
        return ep
    for w in make_windows(t, lcfg.window, lcfg.overlap):
        conv = prompts.stage1_messages(
            lcfg.prompt_version,
            row.get("goal") or "",
            list(texts[w.start : w.end]),
            images[w.start : w.end + 1],
            first_step=w.start + 1,
            total_steps=t,
            view=lcfg.view,
            max_goal_chars=lcfg.max_goal_chars,
        )
        ep.windows.append(WindowLabel(w, conv))
    return ep


class Counters:
    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.windows = 0
        self.parse_failures = 0
        self.engine_errors = 0
        self.retries = 0
        self.stage1_prompt_tokens = 0
        self.stage2_prompt_tokens = 0
        self.stage2_cached_tokens: int | None = None
        self.stage1_completion_tokens = (
            0  # per stage, so a run can be checked against its plan (labeling/cost.py)
        )
        self.stage2_completion_tokens = 0

    def add(self, c: Completion, stage: int) -> None:
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        if stage == 1:
            self.stage1_prompt_tokens += c.prompt_tokens
            self.stage1_completion_tokens += c.completion_tokens
        else:
            self.stage2_prompt_tokens += c.prompt_tokens
            self.stage2_completion_tokens += c.completion_tokens
            if c.cached_tokens is not None:
                self.stage2_cached_tokens = (self.stage2_cached_tokens or 0) + c.cached_tokens

    def as_dict(self) -> dict:
        return dict(vars(self))


def _run(engine: Engine, requests: list[ChatRequest]) -> list[Completion]:
    """Engine call where a whole-call failure becomes a per-request error instead of an exception."""
    if not requests:
        return []
    try:
        return engine.generate(requests)
    except Exception as exc:  # one bad batch must not take the run (or the Ray actor) down
        log.warning("engine call with %d request(s) failed: %s", len(requests), exc)
        message = f"{type(exc).__name__}: {exc}"
        return [Completion(None, error=message) for _ in requests]


def label_episodes(
    engine: Engine,
    ecfg: EngineConfig,
    lcfg: LabelerConfig,
    rows: list[dict],
    stats: Counters,
    judge: Judge | None = None,
) -> list[EpisodeLabel]:
    judge = judge or JUDGE
    episodes = [judge.prepare(r, ecfg, lcfg) for r in rows]
    windows = [w for ep in episodes for w in ep.windows]
    stats.windows += len(windows)

    # Stage 1, every window of every episode in one engine call (the engine batches).
    stage1 = [ChatRequest(w.stage1, None, ecfg.max_new_tokens_analysis, continued=True) for w in windows]
    for w, c in zip(windows, _run(engine, stage1), strict=True):
        stats.add(c, 1)
        if c.text is None:
            stats.engine_errors += 1
            w.status, w.message = "engine_error", f"stage 1: {c.error}"
            continue
        w.analysis = c.text
        w.stage2 = judge.stage2(lcfg, w, c.text)
        w.samples = [Sample(w.stage2) for _ in range(max(1, lcfg.num_samples))]

    # Stage 2 (+ retries): every pending sample in one call per round.
    pending = [(w, k, s) for w in windows for k, s in enumerate(w.samples)]
    for attempt in range(lcfg.max_parse_retries + 1):
        if not pending:
            break
        if attempt:
            stats.retries += len(pending)
        requests = [
            ChatRequest(
                s.conversation,
                judge.schema(judge.answer_size(w)),
                scores_budget(ecfg, judge.answer_size(w)),
                seed=ecfg.seed + k + 1000 * attempt,
            )
            for w, k, s in pending
        ]
        still = []
        for (w, k, s), c in zip(pending, _run(engine, requests), strict=True):
            stats.add(c, 2)
            if c.text is None:
                stats.engine_errors += 1
                s.error, s.engine_failed = f"stage 2: {c.error}", True
                continue  # engine failures are not parse failures: the engine already retried
            s.replies.append(c.text)
            n = judge.answer_size(w)
            parsed = judge.parse(c.text, n)
            if parsed.scores is not None:
                s.scores, s.error = parsed.scores, None
                continue
            stats.parse_failures += 1
            s.error = f"unusable reply after {len(s.replies)} attempt(s): {parsed.error}"
            s.conversation = judge.retry(lcfg, w.stage2, c.text, parsed.error or "", n)
            still.append((w, k, s))
        pending = still

    for w in windows:
        if w.samples:
            _aggregate(w)
    return episodes


def _stage2(lcfg: LabelerConfig, w: WindowLabel, analysis: str) -> Conversation:
    return prompts.stage2_messages(lcfg.prompt_version, w.stage1, analysis, w.window.size, w.window.start + 1)


def _retry(lcfg: LabelerConfig, stage2: Conversation, reply: str, error: str, n: int) -> Conversation:
    return prompts.retry_messages(lcfg.prompt_version, stage2, reply, error, n)


JUDGE = Judge(
    prepare=lambda row, _ecfg, lcfg: prepare_episode(row, lcfg),
    stage2=_stage2,
    answer_size=lambda w: w.window.size,
    schema=prompts.scores_schema,
    parse=parse_scores,
    retry=_retry,
)


def _aggregate(w: WindowLabel) -> None:
    good = [s.scores for s in w.samples if s.scores is not None]
    if not good:
        failed = w.samples[-1]
        w.status = "engine_error" if all(s.engine_failed for s in w.samples) else "parse_error"
        w.message = failed.error or "no usable reply"
        return
    per_step = list(zip(*good, strict=True))
    w.scores = [float(statistics.fmean(v)) for v in per_step]
    if len(good) >= 2:
        w.score_std = [float(statistics.pstdev(v)) for v in per_step]
    if len(good) < len(w.samples):
        w.message = f"{len(good)}/{len(w.samples)} samples usable; last failure: {w.samples[-1].error}"


def _other_score(windows: list[WindowLabel], owner: int, step: int) -> float | None:
    """The score of `step` from the window nearest to its owner that also saw it (the merge keeps only the
    owner's); None where no other window saw the step or that window has no scores. Kept so label-report can
    measure how much two windows disagree on the same step (docs/labeling.md)."""
    seen = [w for w in windows if w.window.id != owner and w.window.start <= step < w.window.end]
    if not seen:
        return None
    w = min(seen, key=lambda w: abs(w.window.id - owner))
    return w.scores[step - w.window.start] if w.scores is not None else None


def to_columns(ep: EpisodeLabel, lcfg: LabelerConfig, fingerprint: str) -> dict:
    if ep.error is not None:
        return error_columns(NAME, ep.num_actions, ep.error, fingerprint)
    t = ep.num_actions
    owner = owners([w.window for w in ep.windows], t)
    score, std, reward, status, message, pos, alt = [], [], [], [], [], [], []
    for step, wid in enumerate(owner):
        w = ep.windows[wid]
        i = step - w.window.start
        s = w.scores[i] if w.scores is not None else None
        score.append(s)
        pos.append(i)
        alt.append(_other_score(ep.windows, wid, step))
        std.append(w.score_std[i] if w.score_std is not None else None)
        reward.append(None if s is None else lcfg.reward_scale * s / 10.0 + lcfg.reward_shift)
        status.append(w.status)
        message.append(w.message)
    return label_columns(
        NAME,
        score=score,
        score_std=std,
        window_pos=pos,
        score_alt=alt,
        reward=reward,
        window=owner,
        status=status,
        message=message,
        analysis=[w.analysis for w in ep.windows],
        fingerprint=fingerprint,
    )
