"""`gvl`: GVL-style progress prompting (Ma et al., 2024, "Vision Language Models are In-Context Value
Learners") over the same LVLM engines and two-stage driver as RG-VLM (rgvlm.py): `labeler.strategy=gvl`.

Per window of the episode (windows.py, as RG-VLM's), the judge sees the goal, the episode's initial frame as an
anchor whose task completion is 0%, and the window's frames in a random order; it is asked for each shown
frame's task completion, 0..100. Shuffling is GVL's point: it breaks the temporal correlation that makes a
model just count upwards. Per action t (frame t to frame t+1), from the window that owns t:
  score  = p_{t+1}                                    (the progress of the reached frame, 0..100)
  reward = reward_scale * (p_{t+1} - p_t) / 100 + reward_shift
so an episode's return telescopes to its progress gained (the delta is taken within one window: two windows'
percentages need not share a scale, so they are never mixed).

Deviations from the paper, and why:
- Two stages, like RG-VLM's: stage 1 asks for a short description of each shuffled frame (GVL's model writes
  one before each percentage), stage 2 extends that conversation verbatim and asks for the percentages as
  {"progress": [...]}, one integer 0..100 per shown frame, constrained by JSON schema where the engine can. So
  the percentages cannot be malformed, and stage 2 reuses stage 1's prefix (hf prefix reuse, vLLM's cache).
  `labeler.num_samples` > 1 draws several stage-2 samples (mean kept, spread in `score_std`); replies that do
  not parse are re-asked up to `labeler.max_parse_retries` times.
- Windows: an episode longer than `labeler.window` actions is judged in overlapping windows so the prompt fits
  the model's context (GVL shows one whole trajectory). Every window shows the episode's initial frame as the 0%
  anchor; the first window's own first frame is that anchor, so its progress is 0 by definition and only its
  other frames are shuffled and asked for. Later windows ask for all their frames.
- The shuffle is seeded by `engine.seed`, the episode id and the window id: the same labels on every rerun.
- Zero-shot only: GVL's in-context examples from other episodes are not used.
Actions are not shown (GVL judges frames only), so `labeler.action_text` does not apply.
"""

from __future__ import annotations

import hashlib
import random
from functools import cache
from string import Template

from rgvlm_ray.config import EngineConfig, LabelerConfig
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers import prompts
from rgvlm_ray.labelers.columns import error_columns, label_columns, num_actions
from rgvlm_ray.labelers.engines.base import Conversation
from rgvlm_ray.labelers.images import VIEWS, decode_frames
from rgvlm_ray.labelers.parsing import Parsed, parse_values
from rgvlm_ray.labelers.rgvlm import EpisodeLabel, Judge, WindowLabel
from rgvlm_ray.labelers.windows import make_windows, owners

NAME = "gvl"
PROMPT_DIR = prompts.PROMPT_DIR / "gvl"
SECTIONS = (
    "system",
    "view_frames",
    "view_frames_full",
    "intro",
    "anchor",
    "shuffled",
    "frame",
    "question",
    "stage2",
    "retry",
)
MAX_PROGRESS = 100


@cache
def load_prompts(version: str) -> dict[str, str]:
    path = PROMPT_DIR / f"{version}.txt"
    if not path.exists() or not version.replace("-", "").replace("_", "").replace(".", "").isalnum():
        known = ", ".join(sorted(p.stem for p in PROMPT_DIR.glob("*.txt")))
        raise UsageError(
            f"unknown labeler.prompt_version {version!r} for labeler.strategy=gvl; available: {known}"
        )
    return prompts.read_sections(path, SECTIONS)


def prompt_digest(version: str) -> str:
    load_prompts(version)
    return hashlib.sha256((PROMPT_DIR / f"{version}.txt").read_bytes()).hexdigest()


def shuffle_order(offsets: list[int], seed: int, episode_id: str, window_id: int) -> list[int]:
    key = hashlib.sha256(f"{seed}|{episode_id}|{window_id}".encode()).hexdigest()
    order = list(offsets)
    random.Random(int(key[:16], 16)).shuffle(order)
    return order


def stage1_messages(
    version: str, goal: str, anchor, shown: list, view: str, max_goal_chars: int
) -> Conversation:
    p = load_prompts(version)
    fill = lambda name, **v: Template(p[name]).substitute(**v)  # noqa: E731
    n = len(shown)
    intro = fill("intro", goal=prompts.sanitize(goal, max_goal_chars), view_text=p[f"view_{view}"])
    parts: list[dict] = [
        {"type": "text", "text": intro + "\n" + p["anchor"] + "\n"},
        {"type": "image", "image": anchor},
        {"type": "text", "text": "\n" + fill("shuffled", num_frames=n) + "\n"},
    ]
    for j, image in enumerate(shown):
        parts.append({"type": "text", "text": fill("frame", index=j + 1) + "\n"})
        parts.append({"type": "image", "image": image})
        parts.append({"type": "text", "text": "\n"})
    parts.append({"type": "text", "text": fill("question", num_frames=n)})
    return [{"role": "system", "content": p["system"]}, {"role": "user", "content": parts}]


def prepare_episode(row: dict, ecfg: EngineConfig, lcfg: LabelerConfig) -> EpisodeLabel:
    """Windows with their shuffles and stage-1 conversations, or an episode-level error (never raises)."""
    ep = EpisodeLabel(str(row.get("episode_id")), num_actions(row))
    try:
        if lcfg.view not in VIEWS:
            raise ValueError(f"labeler.view must be one of {VIEWS}, got {lcfg.view!r}")
        t = ep.num_actions
        if t == 0:
            raise ValueError("episode has no actions")
        frames = row.get(lcfg.view)
        if frames is None:
            raise ValueError(f"column {lcfg.view!r} is missing")
        if len(frames) != t + 1:
            raise ValueError(f"{lcfg.view!r} has {len(frames)} frames for {t} actions (expected {t + 1})")
        images = decode_frames(frames, lcfg.image_size)
    except ValueError as exc:
        ep.error = str(exc)
        return ep
    for w in make_windows(t, lcfg.window, lcfg.overlap):
        first = 1 if w.start == 0 else 0  # the first window's frame 0 is the anchor: 0% by definition
        order = shuffle_order(list(range(first, w.size + 1)), ecfg.seed, ep.episode_id, w.id)
        shown = [images[w.start + k] for k in order]
        conv = stage1_messages(
            lcfg.prompt_version, row.get("goal") or "", images[0], shown, lcfg.view, lcfg.max_goal_chars
        )
        ep.windows.append(WindowLabel(w, conv, order=order))
    return ep


def _stage2(lcfg: LabelerConfig, w: WindowLabel, analysis: str) -> Conversation:
    p = load_prompts(lcfg.prompt_version)
    ask = Template(p["stage2"]).substitute(num_frames=len(w.order or []))
    return [*w.stage1, {"role": "assistant", "content": analysis}, {"role": "user", "content": ask}]


def _retry(lcfg: LabelerConfig, stage2: Conversation, reply: str, error: str, n: int) -> Conversation:
    p = load_prompts(lcfg.prompt_version)
    echo = prompts.sanitize(reply, prompts.MAX_ECHO_CHARS) or "(empty)"
    ask = Template(p["retry"]).substitute(error=prompts.sanitize(error, 200), num_frames=n)
    return [*stage2, {"role": "assistant", "content": echo}, {"role": "user", "content": ask}]


def progress_schema(n: int) -> dict:
    """Exactly one integer 0..100 per shown frame."""
    return {
        "type": "object",
        "properties": {
            "progress": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": MAX_PROGRESS},
                "minItems": n,
                "maxItems": n,
            }
        },
        "required": ["progress"],
        "additionalProperties": False,
    }


def parse_progress(text: str | None, n: int) -> Parsed:
    return parse_values(text, n, "progress", "progress value", "frames", 0, MAX_PROGRESS)


JUDGE = Judge(
    prepare=prepare_episode,
    stage2=_stage2,
    answer_size=lambda w: len(w.order or []),
    schema=progress_schema,
    parse=parse_progress,
    retry=_retry,
)


def window_progress(w: WindowLabel) -> tuple[list[float] | None, list[float | None]]:
    """Progress of the window's frames 0..size in time order (unshuffled), and each one's spread over samples;
    None where the window has no usable reply."""
    if w.scores is None or w.order is None:
        return None, [None] * (w.window.size + 1)
    p: list[float] = [0.0] * (w.window.size + 1)
    std: list[float | None] = [None] * (w.window.size + 1)
    for j, k in enumerate(w.order):
        p[k] = w.scores[j]
        std[k] = w.score_std[j] if w.score_std is not None else None
    return p, std


def to_columns(ep: EpisodeLabel, lcfg: LabelerConfig, fingerprint: str) -> dict:
    if ep.error is not None:
        return error_columns(NAME, ep.num_actions, ep.error, fingerprint)
    t = ep.num_actions
    owner = owners([w.window for w in ep.windows], t)
    progress = [window_progress(w) for w in ep.windows]
    score, std, reward, status, message, pos, alt = [], [], [], [], [], [], []
    for step, wid in enumerate(owner):
        w = ep.windows[wid]
        p, spread = progress[wid]
        i = step - w.window.start
        score.append(None if p is None else p[i + 1])
        std.append(spread[i + 1])
        reward.append(None if p is None else lcfg.reward_scale * (p[i + 1] - p[i]) / 100 + lcfg.reward_shift)
        pos.append(i)
        others = [
            (abs(o.window.id - wid), progress[o.window.id][0], step + 1 - o.window.start)
            for o in ep.windows
            if o.window.id != wid and o.window.start <= step < o.window.end
        ]
        near = min(others, key=lambda x: x[0]) if others else None
        alt.append(None if near is None or near[1] is None else near[1][near[2]])
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
