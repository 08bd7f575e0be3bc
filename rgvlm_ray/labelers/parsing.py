"""Scores from a model's reply, checked strictly: a score is never guessed, padded or clipped into range.

Constrained engines always produce `{"scores": [...]}`; free-text endpoints may wrap it in prose or code
fences, so the first JSON object with a `scores` key anywhere in the reply is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MIN_SCORE, MAX_SCORE = 0, 10


@dataclass(frozen=True)
class Parsed:
    scores: list[int] | None
    error: str | None = None


def _objects(text: str):
    """Every JSON object that starts at some `{` in the text, in order."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            obj, _ = decoder.raw_decode(text, i)
        except (json.JSONDecodeError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            yield obj
        i = text.find("{", i + 1)


def _as_score(value) -> int | None:
    if isinstance(value, bool):  # json true/false are ints in Python
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse_scores(text: str | None, num_actions: int) -> Parsed:
    """RG-VLM's reply: {"scores": [...]}, one integer 0..10 per action."""
    return parse_values(text, num_actions, "scores", "score", "actions", MIN_SCORE, MAX_SCORE)


def parse_values(text: str | None, n: int, key: str, item: str, per: str, low: int, high: int) -> Parsed:
    """{key: [...]} with exactly n integers in low..high (`item` and `per` name a value and what it is for)."""
    if not text or not text.strip():
        return Parsed(None, "empty reply")
    found = next((o for o in _objects(text) if key in o), None)
    if found is None:
        return Parsed(None, f'no JSON object with a "{key}" key')
    raw = found[key]
    if not isinstance(raw, list):
        return Parsed(None, f'"{key}" is not a list')
    if len(raw) != n:
        return Parsed(None, f"{len(raw)} {key} for {n} {per}")
    values = [_as_score(v) for v in raw]
    bad = [i for i, s in enumerate(values) if s is None or not low <= s <= high]
    if bad:
        return Parsed(None, f"{item} {bad[0] + 1} ({raw[bad[0]]!r}) is not an integer in {low}..{high}")
    return Parsed(values)  # type: ignore[arg-type]
