"""Long episodes are judged in windows of at most `window` actions that overlap by `overlap` actions.

Merge rule (every step is scored exactly once in the output): a step inside the overlap of two windows
takes its score from the window in which it sits further from the edge, i.e. the overlap is split at its
middle; the first half belongs to the earlier window, the second half to the later one. So every step keeps
at least overlap/2 steps of context on each side whenever the episode allows it. A step is never averaged
across windows: the windows see different context, and their scores need not share a scale. The labeler keeps
the other window's score of an overlap step in `score_alt`, for label-report's consistency figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from rgvlm_ray.errors import UsageError


@dataclass(frozen=True)
class Window:
    id: int
    start: int  # first action index (0-based, inclusive)
    end: int  # last action index + 1
    own_start: int  # the steps [own_start, own_end) take their score from this window
    own_end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def check(window: int, overlap: int) -> None:
    if window < 1:
        raise UsageError(f"labeler.window must be at least 1, got {window}")
    if not 0 <= overlap < window:
        raise UsageError(f"labeler.overlap must be in 0..window-1 (window={window}), got {overlap}")


def make_windows(num_actions: int, window: int, overlap: int) -> list[Window]:
    """Windows covering actions 0..num_actions-1; the last one ends at the episode's end."""
    check(window, overlap)
    if num_actions <= 0:
        return []
    stride = window - overlap
    spans = []
    start = 0
    while True:
        end = min(start + window, num_actions)
        spans.append((start, end))
        if end == num_actions:
            break
        start += stride
    out = []
    for i, (start, end) in enumerate(spans):
        own_start = 0 if i == 0 else (spans[i - 1][1] + start + 1) // 2
        own_end = num_actions if i == len(spans) - 1 else (end + spans[i + 1][0] + 1) // 2
        out.append(Window(i, start, end, own_start, own_end))
    return out


def owners(windows: list[Window], num_actions: int) -> list[int]:
    """For each step, the id of the window whose score it keeps."""
    owner = [-1] * num_actions
    for w in windows:
        for t in range(w.own_start, w.own_end):
            owner[t] = w.id
    return owner
