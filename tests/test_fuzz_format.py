"""A fuzzed raw format (issue 24, item 1): shards with mutated schemas and values, through every command.

Each mutation of a good generated shard (a missing or extra column, a wrong type, an action id out of range,
a bad observation, an empty or huge list, NaN or inf rewards, text that is not UTF-8, control characters,
duplicate ids, truncated or garbage bytes) must end in a documented exit code and one line naming the shard and
the problem, or be quarantined by `rgvlm label` with that reason; never a traceback, and the good shard beside it
is still processed.

Most of the robustness is one layer (data/format.py `validate_table`, called by `Source.read` and by the label
job's check), so most examples go to it, without Ray. The commands run in-process (cli.main) on the session's
Ray cluster, a few examples each. A longer run: RGVLM_FUZZ_EXAMPLES=200 (examples per test; train gets a
tenth).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rgvlm_ray.cli import main
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labeling.plan import check_shard
from rgvlm_ray.labelstore.join import Source
from tests.helpers import generated_table

LONG = int(os.environ.get("RGVLM_FUZZ_EXAMPLES", "0"))


def examples(ci: int) -> Callable:
    return settings(
        max_examples=max(ci, LONG if ci > 1 else LONG // 10),
        deadline=None,
        derandomize=not LONG,  # CI: the same examples every run; a long run explores
        suppress_health_check=list(HealthCheck),
        database=None,
    )


def base() -> pa.Table:
    return generated_table(episodes=4, subtasks="1-2")


def good() -> pa.Table:
    return base().slice(0, 2)


def bad_base() -> pa.Table:
    return base().slice(2, 2)  # other ids than the good shard's


# --- mutations: (table, draw) -> the mutated table, or raw bytes for a file that is not Parquet -------------


def _set(table: pa.Table, name: str, values: pa.Array | list) -> pa.Table:
    array = values if isinstance(values, pa.Array) else pa.array(values)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, array)
    return table.append_column(name, array)


def _per_episode(table: pa.Table, column: str, change: Callable[[list], list]) -> pa.Table:
    rows = table.column(column).to_pylist()
    rows[0] = change(rows[0])
    return _set(table, column, pa.array(rows, table.schema.field(column).type))


def drop_column(t: pa.Table, draw) -> pa.Table:
    return t.drop_columns([draw(st.sampled_from(t.column_names))])


def extra_column(t: pa.Table, draw) -> pa.Table:
    kind = draw(st.sampled_from(["int", "text", "list"]))
    values = {"int": [7] * t.num_rows, "text": ["x\x00y"] * t.num_rows, "list": [[1.5, None]] * t.num_rows}
    return _set(t, f"x_{draw(st.text('abc', min_size=1, max_size=4))}", values[kind])


def wrong_type(t: pa.Table, draw) -> pa.Table:
    name = draw(
        st.sampled_from(["goal", "actions", "rewards", "terminated", "frames", "episode_id", "progress"])
    )
    return _set(t, name, pa.array([3.5] * t.num_rows))


def action_out_of_range(t: pa.Table, draw) -> pa.Table:
    value = draw(st.sampled_from([99, 7, -1, 2**31 - 1]))
    return _per_episode(t, "actions", lambda a: [*a[:-1], value])


def bad_observation(t: pa.Table, draw) -> pa.Table:
    what = draw(st.sampled_from(["short-grid", "long-grid", "direction", "garbage-png"]))
    if what == "direction":
        return _per_episode(t, "directions", lambda d: [*d[:-1], 9])
    if what == "garbage-png":
        return _per_episode(t, "frames", lambda f: [b"not a png", *f[1:]])
    size = 10 if what == "short-grid" else 200
    return _per_episode(t, "symbolic", lambda s: [b"\x01" * size, *s[1:]])


def empty_or_huge(t: pa.Table, draw) -> pa.Table:
    column = draw(st.sampled_from(["actions", "rewards", "frames", "progress", "action_texts"]))
    n = draw(st.sampled_from([0, 5000]))
    filler = {"actions": 1, "rewards": 0.0, "frames": b"", "progress": 0, "action_texts": "turn left"}
    return _per_episode(t, column, lambda _: [filler[column]] * n)


def bad_reward(t: pa.Table, draw) -> pa.Table:
    value = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    return _per_episode(t, "rewards", lambda r: [value, *r[1:]])


def invalid_utf8(t: pa.Table, draw) -> pa.Table:
    """A lone surrogate (\\ud800 as UTF-8 bytes): pyarrow writes and reads it; Python cannot decode it."""
    column = draw(st.sampled_from(["goal", "episode_id", "split"]))
    values = [v.encode() for v in t.column(column).to_pylist()]
    values[0] = values[0][:3] + b"\xed\xa0\x80" + values[0][3:]
    return _set(t, column, pa.array(values, pa.binary()).view(pa.string()))


def control_characters(t: pa.Table, draw) -> pa.Table:
    text = draw(st.text(st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl"]), min_size=1, max_size=8))
    return (
        _per_episode(t, "action_texts", lambda a: [text, *a[1:]])
        if draw(st.booleans())
        else _set(t, "goal", [f"go {text} there"] * t.num_rows)
    )


def duplicate_ids(t: pa.Table, draw) -> pa.Table:
    ids = t.column("episode_id").to_pylist()
    if draw(st.booleans()):
        ids = [ids[0]] * len(ids)  # within the shard
    else:
        ids[0] = good().column("episode_id")[0].as_py()  # across shards: the good shard's
    return _set(t, "episode_id", ids)


def truncated_or_garbage(t: pa.Table, draw) -> bytes:
    data = fmt.shard_bytes(t)
    cut = draw(st.integers(0, len(data) - 1))
    return data[:cut] if draw(st.booleans()) else draw(st.binary(min_size=0, max_size=64)) + b"PAR1"


MUTATIONS = [
    drop_column,
    extra_column,
    wrong_type,
    action_out_of_range,
    bad_observation,
    empty_or_huge,
    bad_reward,
    invalid_utf8,
    control_characters,
    duplicate_ids,
    truncated_or_garbage,
]


@st.composite
def mutated(draw) -> tuple[str, pa.Table | bytes, bool]:
    """(mutation, the bad shard, whether it sorts first: readers take a dataset's schema from its first shard)."""
    mutation = draw(st.sampled_from(MUTATIONS))
    return mutation.__name__, mutation(bad_base(), draw), draw(st.booleans())


def names(bad_first: bool) -> tuple[str, str]:
    """(good shard, bad shard) file names."""
    a, b = "shard-00000.parquet", "shard-00001.parquet"
    return (b, a) if bad_first else (a, b)


def write_raw(folder: Path, bad: pa.Table | bytes, bad_first: bool = False) -> Path:
    """A good shard and a mutated one (shard-00001.parquet, or shard-00000 if `bad_first`), written as given: no
    cast."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    good_name, bad_name = names(bad_first)
    fmt.write_shard(good(), str(folder / good_name))
    path = folder / bad_name
    if isinstance(bad, bytes):
        path.write_bytes(bad)
    else:
        buf = io.BytesIO()
        pq.write_table(bad, buf)
        path.write_bytes(buf.getvalue())
    return path


def one_line_naming(err: str, command: str, shard: str = "shard-00001.parquet") -> None:
    lines = [x for x in err.splitlines() if x.startswith(f"rgvlm {command}: ")]
    assert len(lines) == 1 and shard in lines[0], err[-2000:]
    assert "Traceback" not in err


# --- the validation layer, without Ray ---------------------------------------------------------------------


@examples(ci=40)
@given(case=mutated())
def test_every_mutation_is_named_or_harmless_at_the_read(tmp_path_factory, case):
    name, bad, first = case
    folder = tmp_path_factory.mktemp("fuzz") / "raw"
    path = write_raw(folder, bad, first)
    source = Source(str(folder))
    try:
        table = source.read(str(path))
    except fmt.FormatError as exc:
        text = str(exc)
        assert "\n" not in text and path.name in text, text
    else:
        table.to_pylist()  # what a reader does next: it must not raise
        assert name in (
            "extra_column",
            "control_characters",
            "duplicate_ids",
            "drop_column",
            "bad_observation",
        )
    result = check_shard(str(path), StorageConfig())  # the label job's check: never raises
    if not result["ok"]:
        assert result["error"] and "\n" not in result["error"]
    else:  # what label would take must be readable as Python, whole
        pq.read_table(path).to_pylist()


def test_the_issue_examples_are_refused_with_their_reason(tmp_path):
    """The five tracebacks of issue 24, at the validation layer."""
    t = bad_base()
    cases = {
        "out of range": _per_episode(t, "actions", lambda a: [*a[:-1], 99]),
        "missing column": t.drop_columns(["actions"]),
        "not valid UTF-8": _set(
            t, "goal", pa.array([b"go \xed\xa0\x80"] * t.num_rows, pa.binary()).view(pa.string())
        ),
        "NaN or infinite": _per_episode(t, "rewards", lambda r: [float("nan"), *r[1:]]),
    }
    for why, table in cases.items():
        issues = fmt.validate_table(table, "s.parquet")
        assert issues and why in str(issues[0]), (why, [str(i) for i in issues])
    # the range is the declared one: 99 is fine in a space of 100 actions
    space = fmt.ActionSpace("discrete", n=100)
    assert fmt.validate_table(cases["out of range"], "s.parquet", space=space) == []
    assert fmt.validate_table(t, "s.parquet") == []


# --- the commands, in-process on the session's cluster ----------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse
        rc = int(exc.code or 0)
    captured = capsys.readouterr()
    return rc, captured.err


@examples(ci=3)
@given(case=mutated())
def test_inspect_reports_every_mutation(tmp_path_factory, capsys, case):
    folder = tmp_path_factory.mktemp("fuzz") / "raw"
    bad = write_raw(folder, case[1], case[2]).name
    rc, err = run(capsys, "inspect", str(folder))
    assert rc in (0, 1, 2), err
    if rc == 2:
        one_line_naming(err, "inspect", bad)


@examples(ci=3)
@given(case=mutated())
def test_label_quarantines_a_mutated_shard_and_labels_the_good_one(
    ray_cluster, tmp_path_factory, capsys, case
):
    root = tmp_path_factory.mktemp("fuzz")
    good_name, bad_name = names(case[2])
    write_raw(root / "raw", case[1], case[2])
    out = root / "labels"
    rc, err = run(capsys, "label", "--in", str(root / "raw"), "--out", str(out), "--engine", "oracle")
    records = mf.load_records(str(out), StorageConfig())
    assert records[good_name].status == mf.DONE, err
    bad = records[bad_name]
    if bad.status == mf.QUARANTINED:
        assert rc == 1 and bad.error and "\n" not in bad.error
    else:
        assert rc == 0 and bad.status == mf.DONE, (rc, bad)
    assert not list((out / "_leases").glob("*")) if (out / "_leases").exists() else True
    assert (out / "_manifest.json").exists()
    rc, err = run(
        capsys, "label-report", "--in", str(root / "raw"), "--labels", str(out), "--out", str(root / "r")
    )
    assert rc in (0, 2), err
    if rc == 2:
        one_line_naming(err, "label-report", bad_name)


READERS = {
    "view": lambda raw, out: ["view", "--in", raw, "--out", out, "--episodes", "10"],
    "export": lambda raw, out: ["export", "--in", raw, "--out", out],
}


@pytest.mark.parametrize("command", list(READERS))
@examples(ci=3)
@given(case=mutated())
def test_readers_name_the_shard_or_read_it(ray_cluster, tmp_path_factory, capsys, command, case):
    root = tmp_path_factory.mktemp("fuzz")
    bad = write_raw(root / "raw", case[1], case[2]).name
    rc, err = run(capsys, *READERS[command](str(root / "raw"), str(root / "out")))
    assert rc in (0, 2), err
    if rc == 2:
        one_line_naming(err, command, bad)


@examples(ci=1)
@given(case=mutated().filter(lambda c: c[0] != "extra_column"))
def test_train_names_the_shard_or_trains(ray_cluster, tmp_path_factory, capsys, case):
    root = tmp_path_factory.mktemp("fuzz")
    bad = write_raw(root / "raw", case[1], case[2]).name
    args = ["--steps", "2", "--workers", "1", "iql.batch_size=8", "iql.context=2", "--reward", "sparse"]
    rc, err = run(capsys, "train", "--in", str(root / "raw"), "--out", str(root / "run"), *args)
    assert rc in (0, 2), err
    if rc == 2:
        one_line_naming(err, "train", bad)


def test_train_refuses_an_action_id_out_of_range_before_training(ray_cluster, tmp_path, capsys):
    """Issue 24: id 99 in data that declares no action space failed after 56 s inside a Train worker."""
    t = bad_base()
    meta = {k: v for k, v in (t.schema.metadata or {}).items() if k != b"rgvlm.generator"}
    write_raw(
        tmp_path / "raw", _per_episode(t, "actions", lambda a: [*a[:-1], 99]).replace_schema_metadata(meta)
    )
    rc, err = run(
        capsys, "train", "--in", str(tmp_path / "raw"), "--out", str(tmp_path / "run"), "--steps", "2"
    )
    assert rc == 2
    one_line_naming(err, "train")
    assert "action id 99 is out of range" in err
    assert pc.max(pc.list_flatten(good().column("actions"))).as_py() < 7  # the good shard alone trains


def test_the_issue_tracebacks_end_in_one_line(ray_cluster, tmp_path, capsys):
    """Issue 24's tracebacks, each through its command: a goal that is not UTF-8 (inspect, view, label), an
    action id out of range (inspect, label), a shard without `actions` (inspect), `view --out FILE`."""
    t = bad_base()
    surrogate = _set(
        t, "goal", pa.array([b"go \xed\xa0\x80 now"] * t.num_rows, pa.binary()).view(pa.string())
    )
    raw, out = tmp_path / "raw", tmp_path / "labels"
    write_raw(raw, surrogate)
    capsys.readouterr()
    assert main(["inspect", str(raw)]) == 1
    assert "shard-00001.parquet: episode seen-p0-k1-000001: column 'goal': text that is not valid UTF-8" in (
        capsys.readouterr().out
    )
    rc, err = run(capsys, "view", "--in", str(raw), "--out", str(tmp_path / "pages"), "--episodes", "10")
    assert rc == 2 and "not valid UTF-8" in err
    one_line_naming(err, "view")
    rc, err = run(capsys, "label", "--in", str(raw), "--out", str(out), "--engine", "oracle")
    assert rc == 1, err
    records = mf.load_records(str(out), StorageConfig())
    assert records["shard-00000.parquet"].status == mf.DONE
    assert records["shard-00001.parquet"].status == mf.QUARANTINED
    assert "column 'goal': text that is not valid UTF-8" in records["shard-00001.parquet"].error
    assert not list((out / "_leases").glob("**/*.json"))

    bad = write_raw(raw, _per_episode(t, "actions", lambda a: [*a[:-1], 99]))
    error = check_shard(str(bad), StorageConfig())["error"]  # what label quarantines with (shown above)
    assert "action id 99 is out of range: the action space has 7" in error

    write_raw(raw, t.drop_columns(["actions"]))
    capsys.readouterr()
    assert main(["inspect", str(raw)]) == 1
    assert "shard-00001.parquet: column 'actions': missing column" in capsys.readouterr().out

    page = tmp_path / "a-file.html"
    page.write_text("")
    rc, err = run(capsys, "view", "--in", str(raw), "--out", str(page))
    assert rc == 2 and "is a file, not a folder" in err
