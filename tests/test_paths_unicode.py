"""Every path argument of every command with non-ASCII letters and spaces, relative from another working
directory (issue 24, item 2), as the label job already handles them (tests/test_label_paths.py).

`rgvlm train --out "rün B"` failed in Ray Train's metrics callback (Ray encodes metric tags, among them the run's
name, as ASCII). Everything runs in-process on the session's cluster (Ray's own processes, the Train controller
among them, still see the paths), except one real CLI process for what a user types in a shell.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from rgvlm_ray.cli import main
from rgvlm_ray.data import format as fmt
from tests.helpers import run_cli
from tests.test_pipeline_label import write_dataset

TINY_TRAIN = ["--steps", "2", "--workers", "1", "train.log_every=1", "iql.batch_size=8", "iql.context=2"]
HOME = "rün B"  # every path below lies under ROOT/rün B, and is given relative to ROOT/élsewhere


def rel(name: str) -> str:
    return f"../{HOME}/{name}"


@pytest.fixture(scope="module")
def root(tmp_path_factory, ray_cluster) -> Iterator[Path]:
    """ROOT/rün B/raw data, labeled (relative paths from ROOT/élsewhere) into ROOT/rün B/läbels x."""
    root = tmp_path_factory.mktemp("unicode-paths")
    write_dataset(str(root / HOME / "raw data"), shards=2, per_shard=2, subtasks="1-2")
    (root / "élsewhere").mkdir()
    with pytest.MonkeyPatch.context() as here:
        here.chdir(root / "élsewhere")
        assert main(["label", "--in", rel("raw data"), "--out", rel("läbels x/"), "--engine", "oracle"]) == 0
    yield root


def test_every_command_takes_non_ascii_paths_with_spaces(root, monkeypatch, capsys):
    monkeypatch.chdir(root / "élsewhere")
    home = root / HOME
    raw, labels = rel("raw data"), rel("läbels x/")
    assert main(["export", "--in", raw, "--labels", labels, "--out", rel("expört ü/")]) == 0
    assert sorted(p.name for p in (home / "expört ü").glob("*.parquet")) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
    ]
    assert (
        fmt.read_shard(str(home / "expört ü" / "shard-00000.parquet")).column("oracle_reward").null_count == 0
    )

    report = ["label-report", "--in", raw, "--labels", labels, "--out", rel("rëport")]
    assert main(report) == 0
    assert json.loads((home / "rëport" / "label_report.json").read_text())[0]["labeler"] == "oracle"
    assert (
        main(["view", "--in", raw, "--labels", labels, "--out", rel("vïew pages/"), "--episodes", "2"]) == 0
    )
    assert len(list((home / "vïew pages").glob("*.html"))) == 3  # two episodes and the index

    run = [
        "train",
        "--in",
        raw,
        "--labels",
        labels,
        "--out",
        rel("rün run"),
        "--reward",
        "oracle",
        *TINY_TRAIN,
    ]
    assert main(run) == 0, capsys.readouterr().err[-3000:]
    assert (home / "rün run" / "checkpoint_00000002" / "run.json").exists()
    evaluate = ["evaluate", "--checkpoint", rel("rün run"), "--out", rel("ëval ö"), "--episodes-per-k", "1"]
    assert main([*evaluate, "--max-steps", "10"]) == 0
    assert json.loads((home / "ëval ö" / "eval.json").read_text())["reward"] == "oracle"
    assert not [p for p in root.iterdir() if p.name not in (HOME, "élsewhere")]  # nothing beside them
    assert not list((root / "élsewhere").iterdir())


def test_study_takes_non_ascii_paths_with_spaces(root, monkeypatch, capsys):
    """The smallest study there is: the sparse arm alone, one seed, on the raw data above. Its learning curve has
    one point, at a constant lr: a checkpoint inside the run (tests/test_study.py has the cosine case, where each
    point is a run of its own)."""
    monkeypatch.chdir(root / "élsewhere")
    args = [
        "study", "--in", rel("raw data"), "--out", rel("stüdy ä/"), "--seeds", "1", "--steps", "2",
        "--episodes-per-k", "1", "study.labelers=[]", "study.splits=[seen]", "study.contexts=[]",
        "study.baselines=[]", "study.expert_ceiling=false", "study.curve_arms=[sparse]", "study.curve_points=2",
        "iql.actor_cosine=false", "eval.max_steps=10", "eval.agreement_episodes_per_k=1",
        "iql.batch_size=8", "iql.context=2", "train.workers=1",
    ]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    study = json.loads((root / HOME / "stüdy ä" / "study.json").read_text())
    assert [a["name"] for a in study["arms"]] == ["sparse"]
    (point,) = study["runs"][0]["curve"]
    run = root / HOME / "stüdy ä" / "runs" / "sparse" / "seed0"
    assert point["source"] == "checkpoints" and point["checkpoint"] == str(run / "checkpoint_00000001")
    assert study["timing"]["curve_trainings_run"] == 0 and not list(run.glob("budget-*"))
    assert not list((root / "élsewhere").iterdir())


def test_a_real_process_with_a_relative_non_ascii_out(root):
    """What a user types in a shell: one `rgvlm label-report` process, its paths relative and non-ASCII."""
    done = run_cli(root / "élsewhere", "label-report", "--in", rel("raw data"), "--labels", rel("läbels x"),
                   "--out", "rëport hier")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert (root / "élsewhere" / "rëport hier" / "label_report.md").exists()
