"""Exit codes and `--status` describe the whole label set, not one run (issue 17, part 3; docs/labeling-job.md)."""

from __future__ import annotations

import os
from pathlib import Path

from rgvlm_ray.labeling import exits
from tests.test_pipeline_label import label, summary_of, write_dataset


def test_quarantined_shards_keep_the_exit_code_non_zero_on_every_rerun(ray_cluster, tmp_path, capsys):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    write_dataset(src, shards=2, per_shard=2, subtasks="1-2")
    Path(src, "shard-bad.parquet").write_text("not parquet at all\n")
    Path(src, "a-bad-first.parquet").write_bytes(b"PAR1 cut short")  # listed first: quarantined, not refused
    assert label(src, out, "--engine", "oracle") == exits.FAILED
    assert "pass --allow-quarantine" in capsys.readouterr().out
    # the rerun labels nothing new, but the label set still holds a quarantined shard
    assert label(src, out, "--engine", "oracle") == exits.FAILED
    printed = capsys.readouterr().out
    assert "shard-bad.parquet" in printed and "pass --allow-quarantine" in printed
    assert summary_of(out)["shards"]["skipped_current"] == 4
    assert label(src, out, "--engine", "oracle", "--allow-quarantine") == exits.OK
    capsys.readouterr()

    assert label(src, out, "--status") == exits.FAILED
    printed = capsys.readouterr().out
    assert "4 of 4 input shards done" in printed
    line = next(x for x in printed.splitlines() if "shard-bad.parquet" in x)
    assert "quarantined (" in line and "cannot read Parquet" in line
    assert label(src, out, "--status", "--allow-quarantine") == exits.OK


def test_status_checks_every_label_shard_as_a_reader_would(ray_cluster, tmp_path, capsys):
    src, out = str(tmp_path / "raw"), str(tmp_path / "labels")
    write_dataset(src, shards=4, per_shard=2, subtasks="1-2")
    assert label(src, out, "--engine", "oracle") == exits.OK
    assert label(src, out, "--status") == exits.OK
    capsys.readouterr()

    cut = Path(out, "shard-00000.parquet")
    cut.write_bytes(cut.read_bytes()[:-100])  # an interrupted copy
    Path(out, "shard-00001.parquet").unlink()
    garbled = Path(out, "shard-00002.parquet")  # same size, bytes overwritten: only a read finds it
    data = bytearray(garbled.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    garbled.write_bytes(bytes(data))

    assert label(src, out, "--status") == exits.FAILED
    printed = capsys.readouterr().out
    assert "1 of 4 input shards done" in printed
    assert "shard-00000.parquet: truncated" in printed
    assert "shard-00001.parquet: label_missing" in printed
    assert "shard-00002.parquet: damaged" in printed
    assert "Traceback" not in printed

    # a rerun relabels exactly those three, and the set is whole again
    assert label(src, out, "--engine", "oracle") == exits.OK
    s = summary_of(out)
    assert s["shards"]["labeled"] == 3 and s["shards"]["skipped_current"] == 1
    assert label(src, out, "--status") == exits.OK
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
