"""The noisy oracle: the oracle's labels with a known fraction of steps shuffled, its naming and its columns."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from rgvlm_ray.config import EngineConfig, LabelerConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers.labeler import build_labeler, check_config, labeler_fingerprint, labeler_name
from rgvlm_ray.labelers.noisy_oracle import noise_of, noisy_label, noisy_name
from rgvlm_ray.labelers.oracle import oracle_label
from rgvlm_ray.labelstore.rewards import episode_rewards
from tests.helpers import generated_table
from tests.test_pipeline_label import label, read_output, summary_of, write_dataset


def oracle_cols(row: dict) -> tuple[list, list]:
    cols = oracle_label(row)
    return cols["oracle_score"], cols["oracle_reward"]


def noisy_cols(row: dict, p: float, seed: int = 0) -> tuple[list, list, list]:
    name = noisy_name(p)
    cols = noisy_label(row, p, seed)
    return cols[f"{name}_score"], cols[f"{name}_reward"], cols[f"{name}_message"]


def synthetic_rows(episodes: int, steps: int, rng: np.random.Generator) -> list[dict]:
    """Episodes with progress that rises at random steps (no frames needed: the oracle reads `progress`)."""
    rows = []
    for i in range(episodes):
        gains = (rng.random(steps) < 0.1).astype(int)
        rows.append({"episode_id": f"syn-{i}", "actions": [0] * steps, "progress": np.cumsum(gains).tolist()})
    return rows


def test_names_round_trip_and_levels_are_validated() -> None:
    assert noisy_name(0.3) == "noisy30" and noisy_name(0.1) == "noisy10" and noisy_name(1.0) == "noisy100"
    assert noisy_name(0.0) == "noisy00" and noisy_name(0.05) == "noisy05"
    assert noise_of("noisy30") == 0.3 and noise_of("noisy100") == 1.0 and noise_of("noisy05") == 0.05
    for other in ("oracle", "rgvlm", "noisy5", "noisy030", "noisy101", "noisy", "noisy30x"):
        assert noise_of(other) is None, other
    for p in (0.1, 0.3, 0.6, 0.07, 1.0):
        assert noise_of(noisy_name(p)) == pytest.approx(p)
    for bad in (-0.1, 1.01, math.nan):
        with pytest.raises(UsageError, match="oracle_noise"):
            noisy_name(bad)
    with pytest.raises(UsageError, match="oracle_noise"):
        check_config(EngineConfig(kind="noisy_oracle"), LabelerConfig(oracle_noise=1.5))


def test_zero_noise_is_the_oracle() -> None:
    for row in generated_table(episodes=9, subtasks="1-3").to_pylist():
        score, reward, message = noisy_cols(row, 0.0)
        assert (score, reward) == oracle_cols(row)
        assert message == [""] * len(reward)


def test_full_noise_shuffles_each_episode_and_keeps_score_with_reward() -> None:
    moved = 0
    for row in generated_table(episodes=9, subtasks="1-3").to_pylist():
        o_score, o_reward = oracle_cols(row)
        score, reward, message = noisy_cols(row, 1.0)
        assert sorted(reward) == sorted(o_reward) and sorted(score) == sorted(o_score)
        assert all(m.startswith("label of step ") for m in message)
        # A step's score and reward come from the same donor step.
        assert all(r == (1.0 if s > 0 else 0.0) for s, r in zip(score, reward, strict=True))
        if row["num_subtasks"] >= 2:
            assert reward != o_reward, row["episode_id"]  # 1 / C(T, k) odds of keeping the timing
            moved += 1
    assert moved >= 3


def test_replaced_fraction_matches_the_level_and_messages_name_the_donor() -> None:
    rows = synthetic_rows(200, 50, np.random.default_rng(7))
    replaced = changed = steps = 0
    for row in rows:
        o_score, o_reward = oracle_cols(row)
        score, reward, message = noisy_cols(row, 0.3)
        assert sorted(reward) == sorted(o_reward)  # the episode total is kept exactly
        for i, m in enumerate(message):
            j = int(m.removeprefix("label of step ")) - 1 if m else i
            assert (score[i], reward[i]) == (o_score[j], o_reward[j])
        replaced += sum(bool(m) for m in message)
        changed += sum(a != b for a, b in zip(reward, o_reward, strict=True))
        steps += len(reward)
    # 10,000 steps: the standard error of the fraction is 0.0046, so 0.03 is 6.5 of them.
    assert abs(replaced / steps - 0.3) < 0.03
    assert changed > 0.02 * steps  # the timing did move (about 0.3 * 2 * 0.1 * 0.9 of steps)


def test_labels_are_deterministic_per_episode_level_and_seed() -> None:
    rows = synthetic_rows(20, 40, np.random.default_rng(3))
    first = [noisy_label(r, 0.3, 0) for r in rows]
    assert first == [noisy_label(dict(r), 0.3, 0) for r in rows]
    other_seed = [noisy_label(r, 0.3, 1) for r in rows]
    assert [c["noisy30_message"] for c in first] != [c["noisy30_message"] for c in other_seed]
    assert first[0]["noisy30_fingerprint"] != other_seed[0]["noisy30_fingerprint"]
    # Same progress, another episode id: another draw.
    twin = {**rows[0], "episode_id": "another"}
    assert noisy_label(twin, 0.3, 0)["noisy30_message"] != first[0]["noisy30_message"]


def test_labeler_is_named_by_level_and_fingerprints_level_and_seed() -> None:
    ecfg = EngineConfig(kind="noisy_oracle")
    lcfg = LabelerConfig(oracle_noise=0.6)
    assert labeler_name("noisy_oracle", lcfg) == "noisy60"
    labeler = build_labeler(ecfg, lcfg)
    assert labeler.name == "noisy60"
    fps = {
        labeler_fingerprint(ecfg, LabelerConfig(oracle_noise=p, oracle_noise_seed=s))
        for p, s in ((0.3, 0), (0.6, 0), (0.6, 1))
    }
    assert len(fps) == 3 and labeler.fingerprint in fps
    assert labeler.fingerprint != labeler_fingerprint(EngineConfig(kind="oracle"), lcfg)
    row = generated_table(episodes=9, subtasks="1-3").to_pylist()[0]
    no_progress = {**row, "progress": None}
    good, bad = labeler.label_rows([row, no_progress])
    pa.Table.from_pylist([good, bad], schema=fmt.label_schema("noisy60"))  # the declared types hold
    assert good["noisy60_episode_status"] == "ok" and good["noisy60_fingerprint"] == labeler.fingerprint
    assert bad["noisy60_episode_status"] == "bad_input" and "progress" in bad["noisy60_episode_error"]
    assert labeler.stats()["errors"] == 1


def test_format_accepts_noisy_prefixes_in_a_stable_order() -> None:
    assert fmt.label_column("noisy30", "reward") == "noisy30_reward"
    with pytest.raises(ValueError, match="unknown labeler"):
        fmt.label_column("noisy5", "reward")
    names = [
        "episode_id",
        "noisy60_reward",
        "oracle_reward",
        "noisy100_reward",
        "noisy10_reward",
        "clip_reward",
    ]
    names += ["noisy30_score", "noisy5_reward"]  # no reward column / not a canonical name: not labelers
    schema = pa.schema([pa.field(n, pa.list_(pa.float32())) for n in names])
    assert fmt.labelers_present(schema) == ["clip", "oracle", "noisy10", "noisy60", "noisy100"]
    table = pa.table({"noisy30_reward": pa.array([[1.0, 0.0]], type=pa.list_(pa.float64()))})
    assert fmt.conform(table).schema.field("noisy30_reward").type == pa.list_(pa.float32())


def test_label_job_writes_noisy_columns_that_train_reward_modes_read(ray_cluster, tmp_path) -> None:
    src, out = str(tmp_path / "raw"), str(tmp_path / "labeled")
    write_dataset(src)  # 3 shards of 3, the table test_pipeline_label caches
    assert label(src, out, "--engine", "noisy_oracle", "labeler.oracle_noise=0.3", "--actors", "1") == 0
    table = read_output(src, out)
    assert fmt.labelers_present(table.schema) == ["noisy30"]
    assert summary_of(out)["labeler"] == "noisy30" and summary_of(out)["episodes"]["labeled"] == 9
    for row in table.to_pylist():
        # Another process wrote these: the same labels as here, so the seeding is stable across processes.
        assert row["noisy30_reward"] == noisy_label(row, 0.3, 0)["noisy30_reward"]
        assert sorted(row["noisy30_reward"]) == sorted(oracle_cols(row)[1])
        r, keep, nulls = episode_rewards(
            {"noisy30_reward": row["noisy30_reward"], "rewards": row["rewards"]}, "noisy30+sparse", {}, "zero"
        )
        expected = np.add(row["noisy30_reward"], row["rewards"])
        assert r.tolist() == pytest.approx(expected.tolist()) and keep.all() and nulls == 0
