"""Bad raw input at read time (issue 17, part 4): every reader names the shard and the reason in one line and
exits 2, with no traceback; the label job quarantines episode ids duplicated across shards, with a reason."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labeling import exits
from rgvlm_ray.labeling import manifest as mf
from tests.helpers import generated_table, run_cli
from tests.test_pipeline_label import label, read_output, summary_of, write_dataset

JOINED = ["--in", "raw", "--labels", "labels"]
READERS = {
    "train": ["train", *JOINED, "--out", "run", "--reward", "oracle", "--steps", "2"],
    "export": ["export", *JOINED, "--out", "joined"],
    "label-report": ["label-report", *JOINED, "--out", "report"],
    "inspect": ["inspect", "raw", "--labels", "labels"],
}


@pytest.fixture(scope="module")
def bad_raw(tmp_path_factory, ray_cluster) -> Path:
    """A labeled dataset, then a text file named like a shard dropped into it."""
    root = tmp_path_factory.mktemp("bad-input")
    write_dataset(str(root / "raw"), shards=2, per_shard=2, subtasks="1-2")
    assert label(str(root / "raw"), str(root / "labels"), "--engine", "oracle") == exits.OK
    (root / "raw" / "shard-00001b.parquet").write_text("this is not Parquet\n")
    return root


@pytest.mark.parametrize("command", list(READERS))
def test_readers_name_an_unreadable_raw_shard_in_one_line(bad_raw, command):
    done = run_cli(bad_raw, *READERS[command])
    assert done.returncode == exits.USAGE, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    lines = [x for x in done.stderr.splitlines() if "shard-00001b.parquet" in x]
    assert len(lines) == 1 and "cannot read Parquet" in lines[0], done.stderr[-3000:]
    assert lines[0].startswith(f"rgvlm {command}: ")


def write(table: pa.Table, path: Path) -> None:
    fmt.write_shard(table, str(path))


def test_episode_ids_duplicated_across_shards_are_quarantined_with_a_reason(ray_cluster, tmp_path, capsys):
    src, out = tmp_path / "raw", str(tmp_path / "labels")
    table = generated_table(episodes=6, subtasks="1-2")
    write(table.slice(0, 3), src / "shard-00000.parquet")
    write(pa.concat_tables([table.slice(3, 2), table.slice(0, 1)]), src / "shard-00001.parquet")  # one twin

    assert label(str(src), out, "--engine", "oracle") == exits.FAILED
    records = mf.load_records(out, StorageConfig())
    assert records["shard-00000.parquet"].status == mf.DONE
    bad = records["shard-00001.parquet"]
    twin = table.column("episode_id")[0].as_py()
    assert bad.status == mf.QUARANTINED
    assert bad.error.startswith("duplicate episode ids: 1 also in shard-00000.parquet") and twin in bad.error
    assert "shard-00001.parquet" in capsys.readouterr().out

    # a new shard never takes an id from a labeled one, whatever its name
    write(table.slice(0, 1), src / "a-new-shard.parquet")
    assert label(str(src), out, "--engine", "oracle") == exits.FAILED
    records = mf.load_records(out, StorageConfig())
    assert records["a-new-shard.parquet"].status == mf.QUARANTINED
    kept, new = records["shard-00000.parquet"], records["a-new-shard.parquet"]
    assert kept.run_id != new.run_id  # the labeled shard is kept, not labeled again

    # fixed in the other shard: the quarantined ones are checked again, and everything is labeled once
    (src / "a-new-shard.parquet").unlink()
    write(table.slice(1, 2), src / "shard-00000.parquet")
    assert label(str(src), out, "--engine", "oracle") == exits.OK
    assert summary_of(out)["shards"]["labeled"] == 2
    ids = read_output(str(src), out).column("episode_id").to_pylist()
    assert sorted(ids) == sorted(table.column("episode_id").to_pylist()[:5])
