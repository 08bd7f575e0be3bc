"""Windowing: every step is scored by exactly one window, and windows respect the size and overlap."""

from __future__ import annotations

import pytest

from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers.windows import make_windows, owners


def test_300_step_episode_every_step_covered_exactly_once():
    ws = make_windows(300, 16, 4)
    owned = [t for w in ws for t in range(w.own_start, w.own_end)]
    assert sorted(owned) == list(range(300))  # exactly once: no gaps, no duplicates
    assert ws[0].start == 0 and ws[-1].end == 300
    assert all(w.size <= 16 for w in ws)
    assert all(b.start == a.end - 4 for a, b in zip(ws, ws[1:], strict=False))
    assert owners(ws, 300) == [next(w.id for w in ws if w.own_start <= t < w.own_end) for t in range(300)]


@pytest.mark.parametrize("steps", [1, 2, 15, 16, 17, 31, 97, 300])
@pytest.mark.parametrize(("window", "overlap"), [(1, 0), (4, 3), (8, 0), (16, 4), (16, 15), (64, 8)])
def test_windows_partition_and_contain_their_steps(steps, window, overlap):
    ws = make_windows(steps, window, overlap)
    assert [w.id for w in ws] == list(range(len(ws)))
    assert owners(ws, steps).count(-1) == 0
    for w in ws:
        assert w.start <= w.own_start < w.own_end <= w.end  # a window only scores steps it has seen
        assert 1 <= w.size <= window
    for a, b in zip(ws, ws[1:], strict=False):
        assert a.own_end == b.own_start
        assert b.start - a.start == window - overlap  # stride
        assert a.size == window and a.end - b.start == overlap  # only the last window may be short


def test_overlap_is_split_at_its_middle():
    a, b = make_windows(28, 16, 4)
    assert (a.start, a.end, b.start, b.end) == (0, 16, 12, 28)
    assert (a.own_end, b.own_start) == (14, 14)  # steps 12, 13 from the first window; 14, 15 from the second


def test_empty_episode_has_no_windows():
    assert make_windows(0, 16, 4) == []


@pytest.mark.parametrize(("window", "overlap"), [(0, 0), (4, 4), (4, -1)])
def test_bad_window_settings_are_usage_errors(window, overlap):
    with pytest.raises(UsageError, match="labeler"):
        make_windows(10, window, overlap)
