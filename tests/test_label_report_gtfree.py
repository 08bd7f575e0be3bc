"""`rgvlm label-report` without ground truth: the figures, and their validation against the true rho on generated
data. The report on imported Minari and LeRobot datasets runs inside their round trips (tests/test_minari.py,
tests/test_lerobot.py), which already import and label with CLIP: tests/label_report_checks.py."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rgvlm_ray import cli
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.label_quality import gtfree as gt
from rgvlm_ray.label_quality import gtfree_markdown as gtmd
from rgvlm_ray.label_quality import report as lq
from rgvlm_ray.labelers.noisy_oracle import noisy_label
from rgvlm_ray.labelers.oracle import oracle_label
from tests.helpers import generated_table

NOISE = {"noisy10": 0.1, "noisy30": 0.3, "noisy60": 0.6}


def test_auroc_counts_pairs_and_its_ci_narrows_with_more_episodes():
    rng = np.random.default_rng(0)
    pos, neg = list(rng.normal(1, 1, 30)), list(rng.normal(0, 1, 40))
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    got = gt.auroc(pos, neg)
    assert got["auroc"] == pytest.approx(np.mean(pairs), abs=1e-4)
    assert got["ci"][0] < got["auroc"] < got["ci"][1]
    more = gt.auroc(pos * 4, neg * 4)  # the same separation seen in four times the episodes
    assert more["auroc"] == got["auroc"] and more["ci"][1] - more["ci"][0] < got["ci"][1] - got["ci"][0]
    assert gt.auroc([1, 1], [1, 1])["auroc"] == 0.5  # ties count half
    small = gt.auroc([2, 3], [0, 1])  # too few for a CI (issue 24): the value, no interval, and why
    assert small | {"ci_why": ""} == {"auroc": 1.0, "ci": None, "positive": 2, "negative": 2, "ci_why": ""}
    assert gt.auroc([1.0], [])["auroc"] is None  # one class only: undefined, not invented


def test_success_signal_follows_the_kind_of_reward():
    sparse = [np.array([0, 0, 1.0]), np.array([0, 0.0])]
    assert gt.success_signal(sparse, [True, False], "auto") == ("reward", [2, None])
    none = [np.zeros(3), np.zeros(2)]
    assert gt.success_signal(none, [True, False], "auto") == ("terminated", [2, None])
    dense = [np.array([-1.0, -0.5, -0.1]), np.array([-2.0, -1.0])]
    assert gt.success_signal(dense, [True, False], "auto") == ("none", None)  # `terminated` may mean a fall
    assert gt.success_signal(dense, [True, False], "terminated") == ("terminated", [2, None])
    assert [gt.reward_kind(r) for r in (sparse, none, dense)] == ["sparse", "none", "dense"]


def test_success_step_rank_and_voc():
    assert gt.step_rank(np.array([0, 0, 1.0, 0]), 2) == 1.0
    assert gt.step_rank(np.array([1, 1, 0.0, 1]), 2) == 0.0
    assert gt.step_rank(np.array([0.5, 0.5]), 1) == 0.5
    assert gt.voc(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert gt.voc(np.array([-1.0, -1.0])) == pytest.approx(-1.0)
    assert gt.voc(np.zeros(4)) is None  # a constant value orders nothing


def oracle_family(copies: int = 8) -> pa.Table:
    """Generated episodes (several copies under new ids, so each copy draws its own noise) labeled by the oracle
    and the noisy oracle at 0.1, 0.3 and 0.6, all in one table."""
    keep = ["episode_id", "goal", "actions", "rewards", "terminated", "truncated", "num_subtasks", "progress"]
    base = generated_table(episodes=6).select(keep)  # no frames: the report does not read them
    table = pa.concat_tables(
        base.set_column(0, "episode_id", pc.binary_join_element_wise(base["episode_id"], f"-c{c}", ""))
        for c in range(copies)
    )
    rows = table.to_pylist()
    labels = {"oracle": [oracle_label(r) for r in rows]}
    labels |= {name: [noisy_label(r, p, 0) for r in rows] for name, p in NOISE.items()}
    for name, cols in labels.items():
        for f in fmt.label_schema(name):
            table = table.append_column(f, pa.array([c[f.name] for c in cols], type=f.type))
    return table


def test_figures_without_ground_truth_order_the_noise_levels_as_the_true_rho(tmp_path):
    path = str(tmp_path / "labeled")
    fmt.write_shard(oracle_family(), f"{path}/s.parquet")
    reports, _, names = lq.build(path, [], StorageConfig())
    assert names == ["oracle", *NOISE]
    orders = gtmd.orders(reports)
    truth = orders["true Spearman rho"]
    assert [n for n, _ in truth] == names  # the true rho falls as the noise rises
    for figure in ("success-step rank", "agreement with other label sets"):
        assert gtmd.same_order(orders[figure], truth), (figure, orders[figure], truth)
    # The noisy oracle keeps each episode's rewards and only moves them in time, so the return cannot tell the
    # levels apart: ties, never a claimed order.
    assert not gtmd.same_order(orders.get("success AUROC of return", truth[:1]), truth)
    text = lq.markdown(reports)
    assert "success-step rank: oracle > noisy10 > noisy30 > noisy60 (the true rho's order)" in text
    assert "### Without ground truth" in text and "| k |" in text  # both reports, side by side


def test_report_without_ground_truth_columns(tmp_path, capsys):
    table = oracle_family(copies=1).drop_columns(["progress", "num_subtasks"])
    path = str(tmp_path / "raw")
    fmt.write_shard(table, f"{path}/s.parquet")
    out = tmp_path / "rep"
    assert cli.main(["label-report", "--in", path, "--out", str(out), "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["labeler"] for r in reports] == ["oracle", *NOISE] and all(r["by_k"] == [] for r in reports)
    free = reports[0]["without_ground_truth"]
    assert free["dataset"]["success_signal"] == "reward" and free["success_step_rank"]["n"] > 0
    assert set(free["agreement"]) == set(NOISE)
    text = (out / "label_report.md").read_text()
    assert "### Without ground truth" in text and "Against ground truth" not in text
    assert cli.main(["label-report", "--in", path, "--out", str(out), "--success", "sometimes"]) == 2
    assert "--success must be one of auto | reward | terminated | none" in capsys.readouterr().err
