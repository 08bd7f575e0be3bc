"""Issue 24, item 5: the smaller points, each as a user meets it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rgvlm_ray.cli import main
from rgvlm_ray.config import LabelerConfig
from rgvlm_ray.label_quality import gtfree as gt
from rgvlm_ray.label_quality.gtfree_markdown import _ci
from rgvlm_ray.label_quality.view import goal_html
from tests.helpers import REPO
from tests.lerobot_fixture import CAMERAS, make_dataset
from tests.test_pipeline_label import write_dataset

WRIST = "observation.images.wrist"


def test_labels_that_do_not_exist_have_their_own_message(tmp_path, capsys):
    raw = str(tmp_path / "raw")
    write_dataset(raw, shards=1, per_shard=2, subtasks="1-2")
    for argv in (
        ["export", "--in", raw, "--labels", str(tmp_path / "no-such-labels"), "--out", str(tmp_path / "x")],
        [
            "label-report",
            "--in",
            raw,
            "--labels",
            str(tmp_path / "no-such-labels"),
            "--out",
            str(tmp_path / "r"),
        ],
    ):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no-such-labels: no label set there (no such folder or prefix)" in err
        assert "_manifest.json" not in err and len(err.strip().splitlines()) == 1


def test_label_after_a_raw_shard_was_deleted_gives_the_prune_advice(ray_cluster, tmp_path, capsys):
    raw, out = tmp_path / "raw", str(tmp_path / "labels")
    write_dataset(str(raw), shards=2, per_shard=2, subtasks="1-2")
    assert main(["label", "--in", str(raw), "--out", out, "--engine", "oracle"]) == 0
    printed = capsys.readouterr().out
    assert "left behind" not in printed  # nothing to say after a normal run
    (raw / "shard-00001.parquet").unlink()
    assert main(["relabel", "--in", str(raw), "--out", out, "--engine", "oracle"]) == 0
    printed = capsys.readouterr().out
    assert "left behind by raw shards that no longer exist" in printed and "1 label shards" in printed
    assert f"--out {out} --prune` removes them" in printed
    assert json.loads(Path(out, "summary.json").read_text())["left_behind"] == {
        "label_shards": 1,
        "records": 1,
    }


def test_auroc_has_no_zero_width_interval():
    """3 vs 2 episodes gave `0.000 [0.000, 0.000]`: below 5 of each kind there is no CI, and it says why."""
    tiny = gt.auroc([0.0, 0.0, 0.0], [1.0, 1.0])
    assert tiny["auroc"] == 0.0 and tiny["ci"] is None and "below 5" in tiny["ci_why"]
    perfect = gt.auroc([1.0] * 6, [0.0] * 5)  # separated, enough of each: an interval that has a width
    assert perfect["auroc"] == 1.0 and perfect["ci"][0] < 1.0 and perfect["ci"][1] == 1.0
    assert _ci(tiny, "auroc") == "0.000"  # the markdown shows the value, then the reason (ci_why)


def test_a_long_goal_is_folded_and_says_what_the_judge_saw():
    long = "pick up the red ball, then " * 2000  # 54,000 characters
    page = goal_html(long, LabelerConfig().max_goal_chars)
    assert page.count("pick up the red ball") < 2100  # shown once in full (folded), plus a short start
    start, rest = page.split("<details>", 1)
    assert len(start) < 1000 and "the judge saw only its first" in start
    assert f"the whole goal ({len(long):,} characters)" in rest
    short = goal_html("go to the door", LabelerConfig().max_goal_chars)
    assert short == "go to the door"


def test_a_video_gap_is_named_as_such(ray_cluster, tmp_path):
    assert WRIST in CAMERAS
    src = make_dataset(tmp_path / "src", gap_video=WRIST)
    out = tmp_path / "raw"
    assert main(["import", "lerobot", str(src), "--camera", WRIST, "--out", str(out)]) == 0
    skipped = json.loads((out / "_import.json").read_text())["skipped_episodes"]
    reasons = {e["episode"].split(" (")[0]: e["reason"] for e in skipped}
    assert reasons["episode 0"].startswith("video has a gap: no frame at 0.200 s (data frame 2)"), reasons


def test_a_local_ray_head_ends_with_its_driver():
    """`kill -9` of a driver that started a local Ray head: none of the head's processes stay (Ray 2.60's
    kernel fate-sharing, PR_SET_PDEATHSIG, which init_ray checks is available)."""
    script = (
        "import os, sys, time\n"
        "from rgvlm_ray.ray_utils import init_ray\n"
        "from rgvlm_ray.config import RayConfig\n"
        "init_ray(RayConfig(num_cpus=1))\n"
        "import ray\n"
        "print(ray.get_runtime_context().gcs_address, flush=True)\n"
        "time.sleep(300)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # not the session cluster
    env["PYTHONPATH"] = str(REPO)
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        address = driver.stdout.readline().strip()
        assert address, "the driver did not start Ray"
        children = head_processes(driver.pid)
        assert any("raylet" in c for c in children.values()), (address, children)
        assert any("gcs_server" in c for c in children.values())
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.time() + 30
    while time.time() < deadline and alive(children):
        time.sleep(0.5)
    assert not alive(children), alive(children)


def head_processes(parent: int) -> dict[int, str]:
    """The children of `parent`, with their command lines (from /proc: `ps` cuts long ones)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(") ", 1)[1].split()[1])
            if ppid == parent:
                found[int(stat.parent.name)] = (
                    (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (OSError, IndexError, ValueError):
            continue
    return found


def alive(processes: dict[int, str]) -> dict[int, str]:
    left = {}
    for pid, args in processes.items():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        except (FileNotFoundError, IndexError):
            continue
        if state != "Z":  # a zombie has exited; only its parent's wait is missing
            left[pid] = args
    return left


def test_parquet_is_read_without_footer_reader_actors_unless_asked(ray_cluster, tmp_path):
    """Ray Data's V2 Parquet reader starts footer-reader actors, a process each, on every read; our reads
    (`ray_utils.read_parquet`) take the V1 reader (its footers read in tasks) unless `ray.parquet_reader_v2`."""
    import ray.data

    from rgvlm_ray.config import RayConfig
    from rgvlm_ray.ray_utils import read_parquet

    write_dataset(str(tmp_path / "raw"), shards=2, per_shard=1, subtasks="1")
    context = ray.data.DataContext.get_current()
    before = context.use_datasource_v2
    try:
        plans = {}
        for v2 in (False, True):
            ds = read_parquet(str(tmp_path / "raw"), RayConfig(parquet_reader_v2=v2), columns=["episode_id"])
            assert ds.count() == 2
            plans[v2] = ds.materialize().stats()
        assert "ReadParquet" in plans[False] and "ParquetV2" not in plans[False], plans[False]
        assert "ParquetV2" in plans[True], plans[True]
    finally:
        context.use_datasource_v2 = before
