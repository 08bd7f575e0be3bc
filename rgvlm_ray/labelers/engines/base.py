"""The one interface every LVLM engine implements: chat conversations (+ optional JSON schema) -> texts.

A conversation is a list of messages in a neutral form that each engine converts to its own:
`{"role": "system" | "user" | "assistant", "content": str | [part, ...]}` with parts
`{"type": "text", "text": str}` or `{"type": "image", "image": PIL.Image.Image}`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

Message = dict
Conversation = list[Message]


@dataclass
class ChatRequest:
    messages: Conversation
    schema: dict | None = None  # constrain the answer to this JSON schema where the engine can
    max_new_tokens: int = 256
    seed: int | None = None  # per-request sampling seed (self-consistency samples differ by seed)
    # The caller will send this conversation again, extended (stage 1 -> stage 2): an engine with a
    # cross-call prefix cache (hf) keeps its KV. Engines with automatic prefix caching ignore it.
    continued: bool = False


@dataclass
class Completion:
    text: str | None  # None when the request failed (see `error`)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None  # prompt tokens served from a prefix cache, where the engine says
    error: str | None = None  # set for a per-request failure (e.g. retries exhausted); the batch goes on


class EngineError(RuntimeError):
    """An engine call failed as a whole (load failure, timeout, crash)."""


class EngineTimeout(EngineError):
    """An engine call ran past `engine.timeout_s`."""


class Engine(Protocol):
    model_id: str
    supports_schema: bool  # False: answers are free text, parsed and checked afterwards

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        """One Completion per request, in order; a request (or batch) that fails gets `error` set.

        May raise EngineError when the call fails as a whole; callers treat that as an error for every request.
        """
        ...

    def close(self) -> None: ...


def text_of(content: str | list[dict]) -> str:
    """The text parts of a message's content, concatenated."""
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p["type"] == "text")


def images_of(messages: Conversation) -> Iterator:
    for m in messages:
        if not isinstance(m["content"], str):
            yield from (p["image"] for p in m["content"] if p["type"] == "image")


def with_image_parts(messages: Conversation, part: Callable[[Any], dict]) -> list[dict]:
    """The conversation with each image part replaced by `part(image)`, the engine's own image encoding."""
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = [part(p["image"]) if p["type"] == "image" else p for p in content]
        out.append({"role": m["role"], "content": content})
    return out


def chunks(items: list, size: int) -> Iterator[list]:
    size = max(1, int(size))
    for i in range(0, len(items), size):
        yield items[i : i + size]
