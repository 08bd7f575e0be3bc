"""The two-stage RG-VLM conversation, from versioned templates in rgvlm_ray/labelers/prompts/<version>.txt.

Stage 1: system + user(goal, interleaved observations and actions, analysis question) -> analysis.
Stage 2: the stage-1 conversation verbatim + the analysis as the assistant turn + a scoring request
         -> {"scores": [...]}. Because stage 2 extends stage 1 verbatim, a prefix cache serves all of stage 1.
Everything taken from a dataset (goal, action texts) passes through `sanitize` first: it can change what is
asked, never the shape of the conversation or of the answer.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import cache
from pathlib import Path
from string import Template

from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers.engines.base import Conversation

PROMPT_DIR = Path(__file__).parent / "prompts"
SECTIONS = (
    "system",
    "view_frames",
    "view_frames_full",
    "stage1_intro",
    "frame",
    "action",
    "stage1_question",
    "stage2",
    "retry",
)
MAX_ACTION_CHARS = 100
MAX_ECHO_CHARS = 400  # how much of an unusable reply is shown back to the model on a retry
_SECTION = re.compile(r"^### (\w+)\s*$", re.MULTILINE)
_CHAT_MARKUP = re.compile(r"<\|?|\|?>")  # chat-template tokens (<|im_start|>) and our <goal> delimiters


def available_versions() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))


@cache
def load_prompts(version: str) -> dict[str, str]:
    path = PROMPT_DIR / f"{version}.txt"
    if not re.fullmatch(r"[\w.-]+", version) or not path.exists():
        raise UsageError(
            f"unknown labeler.prompt_version {version!r}; available: {', '.join(available_versions())}"
        )
    return read_sections(path, SECTIONS)


def read_sections(path: Path, required: tuple[str, ...]) -> dict[str, str]:
    """A template file's `### name` sections; ValueError if one of `required` is missing."""
    parts = _SECTION.split(path.read_text(encoding="utf-8"))
    sections = {name: body.strip("\n") for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    missing = [s for s in required if s not in sections]
    if missing:
        raise ValueError(f"{path}: missing sections {missing}")
    return sections


def prompt_digest(version: str) -> str:
    """Changes whenever the template file changes, so editing a prompt changes the labeler fingerprint."""
    load_prompts(version)
    return hashlib.sha256((PROMPT_DIR / f"{version}.txt").read_bytes()).hexdigest()


def sanitize(text: str, max_chars: int) -> str:
    """Dataset text made safe to embed: one line, printable, no chat markup, at most `max_chars`."""
    text = unicodedata.normalize("NFC", str(text))
    text = "".join(
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
        for c in text
        if unicodedata.category(c)
        not in ("Cf", "Cs", "Co", "Cn")  # invisible, surrogate, private, unassigned
    )
    text = _CHAT_MARKUP.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > max_chars:
        text = text[: max(0, max_chars - 1)].rstrip() + "…"
    return text


def _fill(template: str, **values) -> str:
    return Template(template).substitute(**values)


def stage1_messages(
    version: str,
    goal: str,
    action_texts: list[str],
    images: list,
    first_step: int,
    total_steps: int,
    view: str,
    max_goal_chars: int,
) -> Conversation:
    """Actions `first_step..first_step+n-1` (1-based) with the n+1 observations around them."""
    p = load_prompts(version)
    n = len(action_texts)
    if len(images) != n + 1:
        raise ValueError(f"{n} actions need {n + 1} observations, got {len(images)}")
    last = first_step + n - 1
    intro = _fill(
        p["stage1_intro"],
        goal=sanitize(goal, max_goal_chars),
        view_text=p[f"view_{view}"],
        first_step=first_step,
        last_step=last,
        total_steps=total_steps,
    )
    parts: list[dict] = [{"type": "text", "text": intro + "\n"}]
    for i, image in enumerate(images):
        parts.append({"type": "text", "text": _fill(p["frame"], index=first_step - 1 + i) + "\n"})
        parts.append({"type": "image", "image": image})
        if i < n:
            action = sanitize(action_texts[i], MAX_ACTION_CHARS)
            parts.append(
                {"type": "text", "text": "\n" + _fill(p["action"], step=first_step + i, action=action) + "\n"}
            )
    parts.append({"type": "text", "text": "\n" + p["stage1_question"]})
    return [{"role": "system", "content": p["system"]}, {"role": "user", "content": parts}]


def stage2_messages(
    version: str, stage1: Conversation, analysis: str, num_actions: int, first_step: int
) -> Conversation:
    """Stage 1 verbatim, then the analysis and the scoring request: a pure extension of the stage-1 prompt."""
    p = load_prompts(version)
    ask = _fill(
        p["stage2"], num_actions=num_actions, first_step=first_step, last_step=first_step + num_actions - 1
    )
    return [*stage1, {"role": "assistant", "content": analysis}, {"role": "user", "content": ask}]


def retry_messages(
    version: str, stage2: Conversation, reply: str, error: str, num_actions: int
) -> Conversation:
    """Stage 2 plus the unusable reply and a short correction (still an extension of the same prefix)."""
    p = load_prompts(version)
    echo = sanitize(reply, MAX_ECHO_CHARS) or "(empty)"
    ask = _fill(p["retry"], error=sanitize(error, 200), num_actions=num_actions)
    return [*stage2, {"role": "assistant", "content": echo}, {"role": "user", "content": ask}]


def scores_schema(num_actions: int) -> dict:
    """Exactly one integer 0..10 per action: constrained decoding cannot produce any other shape."""
    return {
        "type": "object",
        "properties": {
            "scores": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 10},
                "minItems": num_actions,
                "maxItems": num_actions,
            }
        },
        "required": ["scores"],
        "additionalProperties": False,
    }


def render(messages: Conversation) -> str:
    """The conversation as text with images summarised, for people (`rgvlm label-episode`)."""
    lines = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            body = content
        else:
            body = "".join(
                p["text"] if p["type"] == "text" else f"<image {p['image'].width}x{p['image'].height}>"
                for p in content
            )
        lines.append(f"[{m['role']}]\n{body}")
    return "\n\n".join(lines)
