"""Datasets that are not ours: only the core columns, continuous actions, and the commands that need more."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from rgvlm_ray import cli
from rgvlm_ray.config import LabelerConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import ActionSpace, action_space, with_action_space
from rgvlm_ray.labelers.action_text import action_texts, render, with_space
from rgvlm_ray.labelers.rgvlm import prepare_episode
from tests.helpers import generated_table
from tests.label_fixtures import tiny_qwen_dir

ARM = ActionSpace("continuous", names=["x", "y", "grip"], n=3)


def core_only(episodes: int = 3) -> pa.Table:
    """Generated episodes with only the columns every dataset must have."""
    return generated_table(episodes, "1-2").select(fmt.CORE_COLUMNS)


def continuous(episodes: int = 3) -> pa.Table:
    """Core columns with 3-d float actions and no action_texts, as an imported robot dataset has."""
    table = core_only(episodes)
    vectors = [
        [[0.1234 * i, -0.5, float(i % 2)] for i in range(len(a))] for a in table["actions"].to_pylist()
    ]
    table = table.set_column(
        table.column_names.index("actions"), "actions", pa.array(vectors, fmt.CONTINUOUS_ACTIONS)
    )
    return with_action_space(table, ARM)


def write(table: pa.Table, folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    fmt.write_shard(table, str(folder / "shard-00000.parquet"))
    return str(folder)


def test_core_columns_alone_are_a_valid_dataset(tmp_path):
    path = write(core_only(), tmp_path / "raw")
    assert fmt.validate(path) == []
    assert cli.main(["inspect", path]) == 0


def test_continuous_actions_validate_and_keep_their_space_through_a_shard(tmp_path, capsys):
    path = write(continuous(), tmp_path / "raw")
    assert fmt.validate(path) == []
    assert cli.main(["inspect", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["actions"]["names"] == ["x", "y", "grip"]
    shard = fmt.list_shards(path)[0]
    assert action_space(fmt.read_schema(shard)) == ARM
    actions = fmt.read_shard(shard)["actions"].to_pylist()[0]
    assert actions[1] == pytest.approx([0.1234, -0.5, 1.0])


def test_continuous_vectors_of_different_sizes_are_an_issue():
    table = continuous(1)
    rows = table.to_pylist()
    rows[0]["actions"][1] = [0.0]
    issues = fmt.validate_table(pa.Table.from_pylist(rows, schema=table.schema), "s")
    assert any(i.column == "actions" and "different sizes" in i.message for i in issues)


def test_generator_only_columns_are_checked_when_present():
    rows = generated_table(2, "1-2").to_pylist()
    rows[0]["split"] = "train"
    issues = fmt.validate_table(pa.Table.from_pylist(rows, schema=generated_table(2, "1-2").schema), "s")
    assert [i.column for i in issues] == ["split"]


def test_continuous_actions_render_with_names_and_rounding():
    assert render([[0.1234, -0.5, 1.0]], ARM, 2) == ["x=0.12, y=-0.50, grip=1.00"]
    assert render([[0.1234, -0.5]], ActionSpace("continuous"), 1) == ["a0=0.1, a1=-0.5"]
    # names that do not fit the vectors fall back to positions rather than mislabel a dimension
    assert render([[1.0, 2.0]], ARM, 0) == ["a0=1, a1=2"]


def test_discrete_actions_keep_their_names():
    space = ActionSpace("discrete", names=["left", "right"], n=2)
    assert render([0, 1, 5], space, 2) == ["left", "right", "action 5"]
    row = {"actions": [0, 1], "action_texts": ["turn left", "turn right"], "__action_space__": space}
    assert action_texts(row, LabelerConfig()) == ["turn left", "turn right"]
    assert action_texts(row, LabelerConfig(action_text="render")) == ["left", "right"]


def test_the_judge_sees_continuous_actions_as_named_values():
    row = with_space(continuous(1).to_pylist(), ARM)[0]
    ep = prepare_episode(row, LabelerConfig(window=4, overlap=0))
    assert ep.error is None
    texts = [p["text"] for p in ep.windows[0].stage1[1]["content"] if p["type"] == "text"]
    assert any("x=0.12, y=-0.50, grip=1.00" in t for t in texts)


def test_label_episode_renders_a_continuous_dataset_through_the_cli(tmp_path, capsys):
    path = write(continuous(1), tmp_path / "raw")
    argv = ["label-episode", "--in", path, "--engine", "hf", "--model", tiny_qwen_dir(), "--json"]
    rc = cli.main([*argv, "engine.max_new_tokens_analysis=4", "labeler.action_decimals=1"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert "x=0.1, y=-0.5, grip=1.0" in out["prompts"][0]["stage1"]


def test_train_refuses_continuous_actions_and_names_export(tmp_path, capsys):
    path = write(continuous(), tmp_path / "raw")
    assert cli.main(["train", "--in", path, "--out", str(tmp_path / "run"), "iql.obs_mode=image"]) == 2
    err = capsys.readouterr().err
    assert "continuous actions" in err and "rgvlm export" in err


def test_oracle_labeling_without_progress_is_refused_up_front(tmp_path, capsys):
    path = write(core_only(), tmp_path / "raw")
    rc = cli.main(["label", "--in", path, "--out", str(tmp_path / "labels"), "--engine", "oracle"])
    assert rc == 2
    assert "progress" in capsys.readouterr().err
    assert not (tmp_path / "labels").exists()  # nothing half-written


def test_label_report_needs_labels_not_ground_truth(tmp_path, capsys):
    path = write(core_only(), tmp_path / "raw")
    assert cli.main(["label-report", "--in", path, "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    # No ground truth is needed any more (tests/test_label_report_gtfree.py runs it with labels): only labels are.
    assert "carries no labels" in err and "progress" not in err


def test_import_and_export_name_their_formats(tmp_path, capsys):
    assert cli.main(["import", "hdf5", "x", "--out", str(tmp_path / "o")]) == 2
    assert "minari | lerobot" in capsys.readouterr().err
    assert cli.main(["export", "csv", "--in", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "parquet | minari | lerobot" in capsys.readouterr().err
    assert cli.main(["import", "minari", "--out", str(tmp_path / "o")]) == 2
    assert "SOURCE" in capsys.readouterr().err
