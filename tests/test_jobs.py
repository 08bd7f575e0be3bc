"""Jobs as a cluster user runs them: `ray job submit` to a real Ray head, and scheduled relabeling."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rgvlm_ray import storage
from rgvlm_ray.cli import main
from rgvlm_ray.data import format as fmt
from tests.conftest import _free_port
from tests.helpers import generated_table

REPO = Path(__file__).resolve().parents[1]


def _write(base: str, names: list[str], start: int) -> list[str]:
    table = generated_table(episodes=12, subtasks="1-2")
    ids = []
    for i, name in enumerate(names):
        part = table.slice((start + i) * 2, 2)
        fmt.write_shard(part, storage.join(base, name))
        ids += part.column("episode_id").to_pylist()
    return ids


def test_relabel_labels_only_new_shards_and_retrains_only_then(ray_cluster, tmp_path, capsys):
    src, out, runs = str(tmp_path / "raw"), str(tmp_path / "labeled"), tmp_path / "runs"
    args = [
        "relabel",
        "--in",
        src,
        "--out",
        out,
        "--engine",
        "oracle",
        "--then-train",
        "--train-root",
        str(runs),
    ]
    train = [
        "--reward",
        "oracle",
        "--steps",
        "2",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "iql.batch_size=16",
    ]
    _write(src, ["a.parquet", "b.parquet"], 0)
    assert main([*args, *train]) == 0
    assert "2 new or changed shard(s) labeled" in capsys.readouterr().out
    assert len(list(runs.iterdir())) == 1

    assert main([*args, *train]) == 0  # cron fires again, nothing new
    printed = capsys.readouterr().out
    assert "0 new or changed shard(s) labeled, 2 current" in printed and "no retraining" in printed
    assert len(list(runs.iterdir())) == 1

    time.sleep(1.1)  # run folders are named by the second
    new_ids = _write(src, ["c.parquet"], 2)
    assert main([*args, *train]) == 0
    assert "1 new or changed shard(s) labeled, 2 current" in capsys.readouterr().out
    summary = json.loads((tmp_path / "labeled" / "summary.json").read_text())
    assert summary["episodes"]["in"] == 2
    assert fmt.read_shard(f"{out}/c.parquet").column("episode_id").to_pylist() == new_ids
    assert len(list(runs.iterdir())) == 2


def test_relabel_then_train_needs_a_train_root(tmp_path, capsys):
    assert main(["relabel", "--in", str(tmp_path), "--out", str(tmp_path / "o"), "--then-train"]) == 2
    assert "--train-root" in capsys.readouterr().err


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """A separate Ray head started the way a user starts one, with the job server on loopback."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway loopback cluster: no token to share
    port, dash = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    log = open(tmp_path / "head.log", "wb")  # noqa: SIM115
    # As on a cluster image, the head's `python` is the one with rgvlm-ray installed.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = Path(sys.executable).parent / "ray"
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
         # Every agent and side server on its own free port: the session's Ray already holds the defaults
         # (e.g. 52365), and a head whose job agent cannot bind never accepts a job.
         *(f"--{flag}={_free_port()}" for flag in (
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")),
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    from ray.job_submission import JobSubmissionClient

    client, error = None, None
    for _ in range(120):
        try:
            client = JobSubmissionClient(address)
            break
        except Exception as exc:
            error = exc
            time.sleep(1)
    if client is None:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail(
            f"ray head did not start within 120 s: {error}\n{(tmp_path / 'head.log').read_text()[-2000:]}"
        )
    yield client
    os.killpg(proc.pid, signal.SIGTERM)
    try:  # a graceful head shutdown takes ~30 s on 2 cores; the cluster is throwaway
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    log.close()
    shutil.rmtree(temp, ignore_errors=True)


def test_submit_label_job_to_a_ray_head(ray_head, tmp_path):
    from ray.job_submission import JobStatus

    src, out = tmp_path / "raw", tmp_path / "labeled"
    ids = _write(str(src), ["a.parquet", "b.parquet"], 0)
    job = None
    for _ in range(60):  # the head's job agent starts a little after its HTTP server answers
        try:
            job = ray_head.submit_job(
                entrypoint=f"python jobs/label.py --in {src} --out {out} --engine oracle label.num_cpus_per_actor=0.25",
                runtime_env={"working_dir": str(REPO), "excludes": [".venv/", ".git/", "runs/", "*.parquet"]},
            )
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc):
                raise
            time.sleep(2)
    assert job is not None, "the Ray head's job agent never became available"
    deadline = time.time() + 300
    while (status := ray_head.get_job_status(job)) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        assert time.time() < deadline, "job did not finish in 300 s"
        time.sleep(2)
    logs = ray_head.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "balanced" in logs
    labeled = [fmt.read_shard(str(p)) for p in sorted(out.glob("*.parquet"))]
    assert sorted(i for t in labeled for i in t.column("episode_id").to_pylist()) == sorted(ids)
    assert json.loads((out / "summary.json").read_text())["episodes"]["labeled"] == len(ids)
