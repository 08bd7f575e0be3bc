"""One canonical shard name whatever the spelling of --in/--out (issue 17, part 1).

Each spelling runs `rgvlm label` from another working directory, against the shared test cluster: the README's
relative spelling as a real CLI process, the others in-process after a chdir (the Ray workers keep the cluster's own
working directory either way, so an unresolved relative path breaks both; a process costs seconds). Every file it creates must lie under --out, every spelling must give the same label-set layout
(LABELS/<shard>.parquet, the raw shard's own relative name), and --status, train and export must read it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rgvlm_ray import storage
from rgvlm_ray.cli import main
from rgvlm_ray.config import StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labeling import manifest as mf
from rgvlm_ray.labelstore import layout
from tests.conftest import S3_BUCKET
from tests.helpers import run_cli as cli
from tests.test_pipeline_label import write_dataset

RAW_NAMES = ["part-a/shard-00000.parquet", "part-a/shard-00001.parquet", "shard-00002.parquet"]
# (working directory under the root, --in, --out); ROOT stands for the temp root, NAME for the spelling
SPELLINGS = {
    "absolute": ("data", "ROOT/data/raw", "ROOT/data/labels-NAME"),
    "relative": ("", "data/raw", "data/labels-NAME"),  # the README's spelling
    "dot": ("data", "./raw", "./labels-NAME"),
    "trailing-slash": ("", "data/raw/", "data/labels-NAME/"),
    "dotdot": ("elsewhere/deeper", "../../data/raw", "../../data/labels-NAME"),
    "symlink": ("elsewhere", "ROOT/linked/raw", "ROOT/linked/labels-NAME"),  # linked -> data
}
IN_A_PROCESS = ("relative",)
TINY_TRAIN = ["--steps", "2", "--workers", "1", "train.log_every=1", "iql.batch_size=8", "iql.context=2"]


def tree(root: Path) -> set[str]:
    """Every file and folder under `root` (symlinks not followed), as paths relative to it."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


def top_level() -> set[str]:
    """Entries of the filesystem root and of this process's working directory (the Ray workers' too): the bug
    this guards against created /<cwd's last part>/<in>/ in one and <out>/<garbled path>/ in the other."""
    return {f"/{n}" for n in os.listdir("/")} | {f"./{n}" for n in os.listdir(".")}


def layout_of(out: str, cfg: StorageConfig | None = None) -> dict:
    """What a label set holds, independent of where it is: files by relative name, and what the records say."""
    fs, base = storage.get_fs(out, cfg)
    files = sorted(f[len(base) + 1 :] for f in fs.find(base))
    records = mf.load_records(out, cfg or StorageConfig())
    metas = {
        layout.relative_name(out, p): layout.label_meta(fmt.read_schema(p, cfg)).raw_shard
        for p in fmt.list_shards(out, cfg)
    }
    return {
        "files": files,
        "records": {
            n: (r.status, r.rows_out, layout.relative_name(out, r.output)) for n, r in records.items()
        },
        "label_shards": metas,
    }


EXPECTED_FILES = sorted(
    [
        *RAW_NAMES,
        *(f"_manifest/{n.replace('/', '__')}.json" for n in RAW_NAMES),
        "_manifest.json",
        "summary.json",
    ]
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """ROOT/data/raw with shards in a sub-folder too; ROOT/linked -> ROOT/data; ROOT/elsewhere/deeper."""
    root = tmp_path_factory.mktemp("paths")
    raw = root / "data" / "raw"
    write_dataset(str(raw / "part-a"), shards=2, per_shard=2, subtasks="1-2")
    fmt.write_shard(
        fmt.read_shard(str(raw / "part-a" / "shard-00000.parquet")).slice(0, 0),
        str(raw / "shard-00002.parquet"),
    )
    (root / "linked").symlink_to(root / "data", target_is_directory=True)
    (root / "elsewhere" / "deeper").mkdir(parents=True)
    return root


def spelled(text: str, root: Path, name: str) -> str:
    return text.replace("ROOT", str(root)).replace("NAME", name)


@pytest.mark.parametrize("name", list(SPELLINGS))
def test_every_spelling_of_in_and_out_gives_the_same_label_set(ray_cluster, root, name, monkeypatch, capsys):
    where, in_, out_ = SPELLINGS[name]
    cwd, in_path, out_path = root / where, spelled(in_, root, name), spelled(out_, root, name)
    out = root / "data" / f"labels-{name}"
    before, before_top = tree(root), top_level()

    if name in IN_A_PROCESS:
        done = cli(cwd, "label", "--in", in_path, "--out", out_path, "--engine", "oracle")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
    else:
        with monkeypatch.context() as here:
            here.chdir(cwd)
            assert main(["label", "--in", in_path, "--out", out_path, "--engine", "oracle"]) == 0
    new = tree(root) - before
    assert new and all(Path(p).parts[:2] == ("data", out.name) for p in new), sorted(new)
    assert top_level() == before_top
    assert layout_of(str(out)) == {
        "files": EXPECTED_FILES,
        "records": {n: ("done", 0 if n == "shard-00002.parquet" else 2, n) for n in RAW_NAMES},
        "label_shards": {n: n for n in RAW_NAMES},
    }

    # The rest in-process, from the same directory (a CLI process costs seconds to start; Ray workers still run
    # in another working directory, so relative paths must still be resolved before they reach them).
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    assert main(["label", "--in", in_path, "--out", out_path, "--status"]) == 0
    assert "3 of 3 input shards done" in capsys.readouterr().out
    # a rerun with the same spelling finds everything current: the names match the records
    assert main(["label", "--in", in_path, "--out", out_path, "--engine", "oracle"]) == 0
    assert json.loads((out / "summary.json").read_text())["shards"]["skipped_current"] == 3

    exported = spelled(out_.replace("labels-", "export-"), root, name)
    assert main(["export", "--in", in_path, "--labels", out_path, "--out", exported]) == 0
    joined = root / "data" / f"export-{name}"
    assert sorted(tree(joined)) == sorted(tree(root / "data" / "raw"))
    assert fmt.read_shard(str(joined / RAW_NAMES[0])).column("oracle_reward").null_count == 0
    if name in ("relative", "symlink"):  # train is the slow one (about 25 s): two spellings that broke before
        run = spelled(out_.replace("labels-", "run-"), root, name)
        args = ["train", "--in", in_path, "--labels", out_path, "--out", run, "--reward", "oracle"]
        assert main([*args, *TINY_TRAIN]) == 0
        assert list((root / "data" / f"run-{name}").glob("checkpoint_*"))


def test_relabel_under_another_spelling_reuses_the_records(ray_cluster, root, monkeypatch):
    """A label set written with one spelling is current under another: the names are the same."""
    out = str(root / "data" / "labels-mixed")
    assert main(["label", "--in", str(root / "data" / "raw"), "--out", out, "--engine", "oracle"]) == 0
    monkeypatch.chdir(root / "linked")
    assert main(["label", "--in", "./raw/", "--out", "../data/labels-mixed", "--engine", "oracle"]) == 0
    assert json.loads((Path(out) / "summary.json").read_text())["shards"]["skipped_current"] == 3


def test_out_inside_in_is_refused(root, capsys):
    raw = str(root / "data" / "raw")
    assert main(["label", "--in", raw, "--out", f"{raw}/labels", "--engine", "oracle"]) == 2
    assert "nested" in capsys.readouterr().err
    assert main(["label", "--in", raw, "--out", f"{raw}/../raw/", "--engine", "oracle"]) == 2
    assert "--out must differ from --in" in capsys.readouterr().err


def test_relative_name_never_leaves_the_root():
    assert layout.relative_name("data/raw/", os.path.abspath("data/raw/a/b.parquet")) == "a/b.parquet"
    assert layout.relative_name("./data/x/../raw", os.path.abspath("data/raw/b.parquet")) == "b.parquet"
    assert layout.relative_name("s3://b/raw/", "s3://b/raw/s/x.parquet") == "s/x.parquet"
    with pytest.raises(ValueError, match="does not lie under"):
        layout.relative_name("data/raw", "/elsewhere/raw/b.parquet")
    with pytest.raises(ValueError, match="bad shard name"):
        layout.shard_path("/labels", "../outside.parquet")
    assert storage.canonical("s3://b//raw/") == "s3://b/raw"


def test_s3_spellings_give_the_same_label_set(ray_cluster, root, s3_env, capsys):
    src = f"s3://{S3_BUCKET}/paths-raw"
    for n in RAW_NAMES[:2]:
        fmt.write_shard(fmt.read_shard(str(root / "data" / "raw" / n)), f"{src}/{n}", s3_env)
    layouts = []
    for i, (in_path, out_path) in enumerate(
        [(src, f"s3://{S3_BUCKET}/paths-l0"), (f"{src}/", f"s3://{S3_BUCKET}//paths-l1/")]
    ):
        before, before_top = tree(root), top_level()
        # in-process: no working directory comes into an s3:// spelling
        assert main(["label", "--in", in_path, "--out", out_path, "--engine", "oracle"]) == 0
        assert tree(root) == before and top_level() == before_top  # nothing local
        layouts.append(layout_of(f"s3://{S3_BUCKET}/paths-l{i}", s3_env))
        capsys.readouterr()
        assert main(["label", "--in", in_path, "--out", out_path, "--status"]) == 0
        assert "2 of 2 input shards done" in capsys.readouterr().out
        joined = f"s3://{S3_BUCKET}/paths-joined{i}"
        assert main(["export", "--in", in_path, "--labels", out_path, "--out", f"{joined}/"]) == 0
        assert [layout.relative_name(joined, p) for p in fmt.list_shards(joined, s3_env)] == RAW_NAMES[:2]
    assert layouts[0] == layouts[1]
    assert layouts[0]["label_shards"] == {n: n for n in RAW_NAMES[:2]}
