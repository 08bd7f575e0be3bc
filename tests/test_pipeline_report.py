"""`rgvlm label-report`: label quality against ground-truth progress."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from rgvlm_ray.cli import main
from rgvlm_ray.data import format as fmt
from rgvlm_ray.label_quality.report import episode_metrics
from rgvlm_ray.labelers.oracle import oracle_label
from tests.helpers import generated_table


def test_rewards_on_completing_steps_rank_perfectly():
    m = episode_metrics([0, 0, 1, 0, 1], [0, 0, 1, 1, 2], np.random.default_rng(0))
    assert m["spearman"] == pytest.approx(1.0)
    assert m["completing"] == [1.0, 1.0] and m["other"] == [0.0, 0.0, 0.0]


def test_misplaced_rewards_rank_worse_and_nulls_count_as_zero():
    early = episode_metrics([1, 0, 0, 0, 0], [0, 0, 1, 1, 2], np.random.default_rng(0))
    assert early["spearman"] < 0.7
    assert early["completing"] == [0.0, 0.0]
    none = episode_metrics([None, None, None], [0, 1, 1], np.random.default_rng(0))
    assert none["spearman"] is None  # constant cumulative reward: undefined, not invented


def _labeled(tmp_path) -> str:
    table = generated_table(episodes=6)
    labels = [oracle_label(r) for r in table.to_pylist()]
    for f in fmt.label_schema("oracle"):
        table = table.append_column(f, pa.array([lab[f.name] for lab in labels], type=f.type))
    path = str(tmp_path / "labeled")
    fmt.write_shard(table, f"{path}/s.parquet")
    return path


def test_cli_report_for_oracle_labels(tmp_path, capsys):
    path = _labeled(tmp_path)
    out = tmp_path / "report"
    assert main(["label-report", "--in", path, "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["labeler"] for r in report] == ["oracle"]
    rows = report[0]["by_k"]
    assert [r["k"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert r["spearman_mean"] == pytest.approx(1.0)
        assert r["reward_completing_mean"] == 1.0 and r["reward_other_mean"] == 0.0
    assert (out / "scores_hist.png").stat().st_size > 1000
    assert "| k |" in (out / "label_report.md").read_text()


def test_cli_report_errors_name_the_fix(tmp_path, capsys):
    raw = str(tmp_path / "raw")
    fmt.write_shard(generated_table(episodes=2), f"{raw}/s.parquet")
    assert main(["label-report", "--in", raw, "--out", str(tmp_path / "r")]) == 2
    assert "rgvlm label" in capsys.readouterr().err
    assert (
        main(["label-report", "--in", _labeled(tmp_path), "--labeler", "clip", "--out", str(tmp_path / "r")])
        == 2
    )
    assert "no clip labels" in capsys.readouterr().err
