"""The clip and oracle reference labelers write the same columns as rgvlm."""

from __future__ import annotations

import pyarrow as pa
import pytest

from rgvlm_ray.config import load_config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labelers import build_labeler, labeler_fingerprint
from rgvlm_ray.labelers.images import decode_frames
from tests.label_fixtures import episodes, tiny_clip_dir


def clip_cfg(**labeler):
    c = load_config()
    c.engine.kind, c.engine.model = "clip", tiny_clip_dir()
    for k, v in labeler.items():
        setattr(c.labeler, k, v)
    return c


def test_clip_columns_and_reward_definition():
    c = clip_cfg(reward_scale=10.0, reward_shift=0.5)
    labeler = build_labeler(c.engine, c.labeler)
    rows = episodes()
    out = labeler.label_rows(rows)
    assert labeler.name == "clip" and labeler.fingerprint == labeler_fingerprint(c.engine, c.labeler)
    pa.Table.from_pylist(out, schema=fmt.label_schema("clip"))
    row, cols = rows[1], out[1]
    t = len(row["actions"])
    sims = labeler.similarities(row["goal"], decode_frames(row["frames"], 112))
    assert len(sims) == t + 1 and all(-1 <= s <= 1 for s in sims)
    assert cols["clip_score"] == pytest.approx(sims[1:], abs=1e-5)
    assert cols["clip_reward"] == pytest.approx(
        [10 * (b - a) + 0.5 for a, b in zip(sims, sims[1:], strict=False)], abs=1e-4
    )
    assert cols["clip_status"] == ["ok"] * t and cols["clip_episode_status"] == "ok"
    assert len(set(sims)) > 1  # different frames, different similarities


def test_clip_goal_matters_and_long_goals_are_fine():
    c = clip_cfg()
    labeler = build_labeler(c.engine, c.labeler)
    _, short = episodes()
    a = labeler.label_rows([short])[0]["clip_score"]
    b = labeler.label_rows([dict(short, goal="open the purple door " * 200)])[0]["clip_score"]
    assert a != b


def test_clip_bad_episode_is_an_error_row():
    c = clip_cfg(view="frames_full")
    labeler = build_labeler(c.engine, c.labeler)
    _, short = episodes()
    out = labeler.label_rows([dict(short, frames_full=None), short])
    assert out[0]["clip_episode_status"] == "bad_input" and out[0]["clip_score"] == [None] * len(
        short["actions"]
    )
    assert out[1]["clip_episode_status"] == "ok"


def test_oracle_columns_and_missing_progress():
    c = load_config()
    c.engine.kind = "oracle"
    labeler = build_labeler(c.engine, c.labeler)
    rows = episodes()
    out = labeler.label_rows([*rows, dict(rows[1], progress=None)])
    pa.Table.from_pylist(out, schema=fmt.label_schema("oracle"))
    for row, cols in zip(rows, out, strict=False):
        assert sum(cols["oracle_reward"]) == row["progress"][-1]  # one reward per completed sub-task
    assert out[2]["oracle_episode_status"] == "bad_input" and "progress" in out[2]["oracle_episode_error"]


@pytest.mark.parametrize("kind", ["oracle", "clip"])
def test_all_labelers_share_the_column_suffixes(kind):
    c = clip_cfg() if kind == "clip" else load_config()
    c.engine.kind = kind
    cols = build_labeler(c.engine, c.labeler).label_rows(episodes()[:1])[0]
    assert set(cols) == {fmt.label_column(kind, s) for s in fmt.LABEL_FIELDS}
