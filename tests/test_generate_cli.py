"""`rgvlm generate` and `rgvlm inspect` as a user runs them, on local disk and on a real S3 API."""

from __future__ import annotations

import json

import pytest

from rgvlm_ray.cli import main
from rgvlm_ray.data import format as fmt
from tests.conftest import S3_BUCKET


def _generate(out: str, *extra: str) -> int:
    return main(["generate", "--out", out, "--episodes", "12", "--episodes-per-shard", "4", *extra])


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{") :])


def test_generate_then_inspect_local(ray_cluster, tmp_path, capsys):
    out = str(tmp_path / "data")
    assert _generate(out, "--seed", "3") == 0
    summary = _last_json(capsys)
    assert summary["episodes"] == 12 and summary["shards"] == 3
    assert summary["episodes_by_k"] == {str(k): 2 for k in range(1, 7)}
    assert set(summary["success_rate_by_k"]) == {str(k) for k in range(1, 7)}
    assert summary["transitions"] > 12 and summary["bytes_written"] > 0
    assert len(fmt.list_shards(out)) == 3
    assert main(["inspect", out, "--json"]) == 0
    report = _last_json(capsys)
    assert report["episodes"] == 12 and report["shards"] == 3
    assert report["transitions"] == summary["transitions"]
    assert report["k_histogram"] == {str(k): 2 for k in range(1, 7)}
    assert report["validation_errors"] == [] and report["labels"] == {}


def test_generate_refuses_to_overwrite_and_rejects_bad_flags(ray_cluster, tmp_path, capsys):
    out = str(tmp_path / "d")
    assert main(["generate", "--out", out, "--episodes", "2", "--subtasks", "1"]) == 0
    assert main(["generate", "--out", out, "--episodes", "2", "--subtasks", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["generate", "--out", out, "--subtasks", "0-9"]) == 2
    assert "--subtasks" in capsys.readouterr().err
    assert main(["generate", "--episodes", "3"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["generate", "--out", out, "no_such.key=1"]) == 2


def test_unbuilt_commands_say_so(capsys):
    from rgvlm_ray.cli import COMMANDS

    unbuilt = [name for name, c in COMMANDS.items() if c.target is None]
    for name in unbuilt:
        assert main([name]) == 2
        assert "not available yet" in capsys.readouterr().err


def test_generate_and_inspect_on_s3(ray_cluster, s3_env, capsys):
    out = f"s3://{S3_BUCKET}/gen"
    assert _generate(out, "--subtasks", "1-3") == 0
    assert len(fmt.list_shards(out)) == 3
    assert main(["inspect", out]) == 0
    text = capsys.readouterr().out
    assert "episodes     12" in text and "validation   ok" in text


def test_inspect_reports_validation_errors(ray_cluster, tmp_path, capsys):
    out = tmp_path / "bad"
    out.mkdir()
    (out / "broken.parquet").write_bytes(b"PAR1 definitely not parquet")
    assert main(["inspect", str(out)]) == 2  # no reader can use it: the report, and one line naming it
    printed = capsys.readouterr()
    assert "broken.parquet: cannot read Parquet" in printed.out
    assert "broken.parquet: cannot read Parquet" in printed.err and len(printed.err.splitlines()) == 1
    assert main(["inspect", str(tmp_path / "nothing-here")]) == 2


def test_overrides_may_sit_between_flags(ray_cluster, tmp_path, capsys):
    """`key=value` before and after later flags all apply; an unknown flag is still refused."""
    out = str(tmp_path / "d")
    argv = ["generate", "generate.seed=3", "--out", out, "generate.subtasks=2", "--episodes", "2"]
    assert main([*argv, "generate.episodes_per_shard=1"]) == 0
    summary = _last_json(capsys)
    assert summary["episodes_by_k"] == {"2": 2} and summary["shards"] == 2
    with pytest.raises(SystemExit) as stop:  # argparse's own exit, as for any unknown flag
        main(["generate", "--out", out, "a.b=1", "--episodes", "2", "--bogus"])
    assert stop.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override", ["ray.parquet_reader_v2=maybe", "generate.episodes=many", "ray.num_cpus=[1]"]
)
def test_a_bad_config_value_is_one_line_naming_the_key(tmp_path, capsys, override):
    assert main(["generate", "--out", str(tmp_path / "d"), override]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("rgvlm generate: bad configuration: ") and override.split("=")[0] in err
