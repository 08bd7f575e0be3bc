"""The shard format: round trips (local and a real S3 API) and a clear error for each bad input."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rgvlm_ray import storage
from rgvlm_ray.config import StorageConfig, load_config, to_yaml
from rgvlm_ray.data import format as fmt
from tests.conftest import S3_BUCKET
from tests.helpers import generated_table, rows, table_from_rows


def test_local_round_trip(tmp_path):
    table = generated_table()
    path = str(tmp_path / "ds" / "shard-00000.parquet")
    fmt.write_shard(table, path)
    back = fmt.read_shard(path)
    assert back.to_pylist() == table.to_pylist()
    assert back.schema.metadata[fmt.SCHEMA_VERSION_KEY] == fmt.SCHEMA_VERSION.encode()
    assert fmt.list_shards(str(tmp_path / "ds")) == [path]
    assert fmt.validate(str(tmp_path / "ds"), decode=True) == []
    assert not [p for p in (tmp_path / "ds").iterdir() if p.name.endswith(".tmp")]


def test_s3_round_trip_explicit_config(s3_server: StorageConfig):
    table = generated_table()
    base = f"s3://{S3_BUCKET}/roundtrip"
    fmt.write_shard(table, storage.join(base, "a.parquet"), s3_server)
    fmt.write_shard(table.slice(0, 2), storage.join(base, "b.parquet"), s3_server)
    shards = fmt.list_shards(base, s3_server)
    assert shards == [f"{base}/a.parquet", f"{base}/b.parquet"]
    assert fmt.read_shard(shards[0], s3_server).to_pylist() == table.to_pylist()
    # b repeats a's first two episodes: validation across shards must see it
    issues = fmt.validate(base, s3_server)
    assert len(issues) == 2 and all("duplicate id" in str(i) for i in issues)


def test_s3_round_trip_through_aws_environment(s3_env: StorageConfig):
    table = generated_table().slice(0, 1)
    path = f"s3://{S3_BUCKET}/env/one.parquet"
    fmt.write_shard(table, path)  # no config: endpoint and credentials from AWS_* variables
    assert fmt.read_shard(path).column("episode_id").to_pylist() == table.column("episode_id").to_pylist()


def test_credentials_never_dumped():
    cfg = load_config(dotlist=["storage.secret_access_key=hunter2", "storage.access_key_id=AKIAXYZ"])
    dumped = to_yaml(cfg)
    assert "hunter2" not in dumped and "AKIAXYZ" not in dumped
    assert "secret_access_key: '***'" in dumped


def _issues(table: pa.Table, decode: bool = False) -> list[str]:
    return [str(i) for i in fmt.validate_table(table, "s.parquet", decode=decode)]


def test_missing_column_named():
    issues = _issues(generated_table().drop_columns(["rewards"]))
    assert issues == ["s.parquet: column 'rewards': missing column"]


def test_length_mismatch_names_episode_and_column():
    bad = rows(generated_table())
    bad[1]["frames"] = bad[1]["frames"][:-1]
    issues = _issues(table_from_rows(bad))
    assert len(issues) == 1
    assert bad[1]["episode_id"] in issues[0] and "'frames'" in issues[0] and "expected" in issues[0]


def test_undecodable_png_only_on_request():
    bad = rows(generated_table())
    bad[0]["frames"][3] = b"\x89PNG\r\n\x1a\nnot really"
    table = table_from_rows(bad)
    assert _issues(table) == []
    issues = _issues(table, decode=True)
    assert (
        len(issues) == 1
        and "frame 3 is not a decodable PNG" in issues[0]
        and bad[0]["episode_id"] in issues[0]
    )


def test_empty_episode():
    bad = rows(generated_table())
    for col in ("actions", "action_texts", "rewards", "progress"):
        bad[2][col] = []
    bad[2]["frames"] = bad[2]["frames"][:1]
    issues = _issues(table_from_rows(bad))
    assert any("empty episode" in i and bad[2]["episode_id"] in i for i in issues)


def test_duplicate_ids_within_a_shard():
    bad = rows(generated_table())
    bad[3]["episode_id"] = bad[0]["episode_id"]
    issues = [str(i) for i in fmt.duplicate_ids({"s.parquet": [r["episode_id"] for r in bad]})]
    assert issues == [
        f"s.parquet: episode {bad[0]['episode_id']}: column 'episode_id': duplicate id (also in s.parquet)"
    ]


def test_truncated_parquet_is_reported_not_raised(tmp_path):
    fmt.write_shard(generated_table(), str(tmp_path / "good.parquet"))
    data = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(fmt.FormatError, match="cut.parquet: cannot read Parquet"):
        fmt.read_shard(str(tmp_path / "cut.parquet"))
    issues = [str(i) for i in fmt.validate(str(tmp_path))]
    assert len(issues) == 1 and issues[0].startswith("cut.parquet: cannot read Parquet")


def test_wrong_type_and_bad_split():
    table = generated_table()
    bad = table.set_column(table.column_names.index("goal"), "goal", pa.array([1] * table.num_rows))
    assert _issues(bad) == ["s.parquet: column 'goal': type int64, expected string"]
    r = rows(table)
    r[0]["split"] = "train"
    assert "is not one of" in _issues(table_from_rows(r))[0]


def test_frames_are_pngs_of_the_configured_size():
    table = generated_table()
    png = table.column("frames")[0][0].as_py()
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size == (56, 56)


def test_foreign_parquet_without_version_is_read(tmp_path):
    table = generated_table().replace_schema_metadata(None)
    pq.write_table(table, tmp_path / "x.parquet")
    assert fmt.read_shard(str(tmp_path / "x.parquet")).num_rows == table.num_rows
    newer = table.replace_schema_metadata({fmt.SCHEMA_VERSION_KEY: b"99"})
    pq.write_table(newer, tmp_path / "y.parquet")
    with pytest.raises(fmt.FormatError, match="schema version 99 is not supported"):
        fmt.read_shard(str(tmp_path / "y.parquet"))
