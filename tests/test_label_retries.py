"""The two-stage logic around the engine, with a scripted engine as a test double (no model needed)."""

from __future__ import annotations

import json
import re
from dataclasses import replace

from rgvlm_ray.config import load_config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labelers import labeler_fingerprint
from rgvlm_ray.labelers.engines import ChatRequest, Completion
from rgvlm_ray.labelers.labeler import RGVLMLabeler
from rgvlm_ray.labelers.windows import make_windows, owners
from tests.label_fixtures import episodes

COL = lambda suffix: fmt.label_column("rgvlm", suffix)  # noqa: E731


class ScriptedEngine:
    """Stage 1 -> an analysis; stage 2 -> `answer(first_step, n, call)`; raise if `answer` returns an exception."""

    model_id = "scripted"
    supports_schema = False

    def __init__(self, answer, analysis="ok"):
        self.answer, self.analysis, self.calls = answer, analysis, []

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        out = []
        for r in requests:
            self.calls.append(r)
            if r.schema is None:
                out.append(
                    self.analysis
                    if isinstance(self.analysis, Completion)
                    else Completion(self.analysis, 10, 5)
                )
                continue
            stage2 = next(
                m["content"] for m in r.messages if m["role"] == "user" and isinstance(m["content"], str)
            )
            first = int(re.search(r"steps (\d+) to", stage2).group(1))
            n = r.schema["properties"]["scores"]["minItems"]
            reply = self.answer(first, n, len(self.calls))
            if isinstance(reply, Exception):
                raise reply
            out.append(reply if isinstance(reply, Completion) else Completion(reply, 20, 5))
        return out

    def close(self):
        pass


def make(engine, **labeler):
    cfg = load_config()
    cfg.engine.model = "scripted"
    lab = replace(cfg.labeler, **labeler)
    return RGVLMLabeler(cfg.engine, lab, labeler_fingerprint(cfg.engine, lab), engine)


def scores_json(first, n):
    return '{"scores": [' + ", ".join(str((first + i) % 11) for i in range(n)) + "]}"


def test_scores_land_on_the_right_steps_across_windows():
    long, _ = episodes()
    t = len(long["actions"])
    labeler = make(ScriptedEngine(lambda first, n, _: scores_json(first, n)), window=8, overlap=3)
    cols = labeler.label_rows([long])[0]
    assert cols[COL("score")] == [float((step + 1) % 11) for step in range(t)]
    assert cols[COL("window")] == owners(make_windows(t, 8, 3), t)


def test_malformed_then_valid_reply_recovers():
    _, short = episodes()
    replies = iter(["no idea", scores_json(1, len(short["actions"]))])
    labeler = make(ScriptedEngine(lambda first, n, _: next(replies)), reward_scale=2.0, reward_shift=-1.0)
    cols = labeler.label_rows([short])[0]
    assert cols[COL("status")] == ["ok"] * len(short["actions"])
    assert cols[COL("reward")] == [2.0 * s / 10 - 1.0 for s in cols[COL("score")]]
    assert labeler.stats()["parse_failures"] == 1 and labeler.stats()["retries"] == 1


def test_always_malformed_gives_parse_error_and_never_a_score():
    _, short = episodes()
    engine = ScriptedEngine(lambda first, n, _: '{"scores": [' + ", ".join(["11"] * n) + "]}")
    labeler = make(engine, max_parse_retries=3)
    cols = labeler.label_rows([short])[0]
    t = len(short["actions"])
    assert cols[COL("status")] == ["parse_error"] * t and cols[COL("score")] == [None] * t
    assert "4 attempt(s)" in cols[COL("message")][0] and "not an integer in 0..10" in cols[COL("message")][0]
    assert sum(r.schema is not None for r in engine.calls) == 4


def test_engine_failures_become_engine_error_and_do_not_raise():
    long, short = episodes()
    labeler = make(ScriptedEngine(lambda *_: RuntimeError("CUDA out of memory")))
    out = labeler.label_rows([long, short])
    for row, cols in zip([long, short], out, strict=True):
        t = len(row["actions"])
        assert cols[COL("status")] == ["engine_error"] * t and cols[COL("score")] == [None] * t
        assert "CUDA out of memory" in cols[COL("message")][0]
        assert cols[COL("episode_status")] == "ok"


def test_stage1_failure_skips_stage2():
    _, short = episodes()
    engine = ScriptedEngine(
        lambda first, n, _: scores_json(first, n), analysis=Completion(None, error="HTTP 503")
    )
    cols = make(engine).label_rows([short])[0]
    assert cols[COL("status")] == ["engine_error"] * len(short["actions"])
    assert "stage 1: HTTP 503" in cols[COL("message")][0]
    assert cols[COL("analysis")] == [None]
    assert all(r.schema is None for r in engine.calls)


def test_self_consistency_with_one_failed_sample_keeps_the_others():
    _, short = episodes()
    n_calls = {"stage2": 0}

    def answer(first, n, _):
        n_calls["stage2"] += 1
        return "garbage" if n_calls["stage2"] % 3 == 2 else '{"scores": [' + ", ".join(["4"] * n) + "]}"

    cols = make(ScriptedEngine(answer), num_samples=3, max_parse_retries=0).label_rows([short])[0]
    t = len(short["actions"])
    assert cols[COL("score")] == [4.0] * t and cols[COL("score_std")] == [0.0] * t
    assert cols[COL("status")] == ["ok"] * t and cols[COL("message")][0].startswith("2/3 samples usable")


def test_overlapping_windows_keep_both_scores_and_each_step_its_position():
    long, _ = episodes()
    t = len(long["actions"])
    given = lambda first, i: float((first + 3 * i) % 11)  # noqa: E731  windows disagree on shared steps
    engine = ScriptedEngine(
        lambda first, n, _: json.dumps({"scores": [int(given(first, i)) for i in range(n)]})
    )
    cols = make(engine, window=8, overlap=3).label_rows([long])[0]
    ws = make_windows(t, 8, 3)
    owner = owners(ws, t)
    for step in range(t):
        own = ws[owner[step]]
        assert cols[COL("window_pos")][step] == step - own.start
        assert cols[COL("score")][step] == given(own.start + 1, step - own.start)
        other = [w for w in ws if w.id != own.id and w.start <= step < w.end]
        want = given(other[0].start + 1, step - other[0].start) if other else None
        assert cols[COL("score_alt")][step] == want
    assert sum(a is not None for a in cols[COL("score_alt")]) == 3 * (len(ws) - 1)  # every overlap step
