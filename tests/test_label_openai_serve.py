"""The labeling job against a real OpenAI-compatible server: `transformers serve` with the tiny Qwen2-VL on loopback.

`transformers serve` rejects `response_format`, so the run uses `engine.openai.response_format_json_schema=false`
and the parse-and-retry path (docs/openai-endpoint.md). The scripted server in test_label_openai.py stays for
fault injection; this one checks that real requests (images as data URLs, two stages) go through.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rgvlm_ray import cli
from rgvlm_ray.data import format as fmt
from tests.conftest import _free_port
from tests.label_fixtures import dataset_dir, tiny_qwen_dir

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("accelerate")  # transformers serve always passes a device_map
SERVE = Path(shutil.which("transformers") or Path(sys.executable).with_name("transformers"))


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    port, log = _free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    cmd = [
        str(SERVE),
        "serve",
        tiny_qwen_dir(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"transformers serve did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_label_job_through_transformers_serve(ray_cluster, server, tmp_path):
    labels = str(tmp_path / "labels")
    argv = ["label", "--in", dataset_dir(), "--out", labels, "--engine", "openai", "--model", tiny_qwen_dir()]
    overrides = [
        f"engine.openai.base_url={server}",
        "engine.openai.response_format_json_schema=false",
        "engine.openai.max_concurrency=2",
        "engine.max_new_tokens_analysis=8",
        "labeler.max_parse_retries=1",
        "labeler.window=40",
    ]
    rc = cli.main([*argv, *overrides])
    table = pq.read_table(fmt.list_shards(labels)[0])
    raw = fmt.read_shard(fmt.list_shards(dataset_dir())[0])
    assert table["episode_id"].to_pylist() == raw["episode_id"].to_pylist()  # every episode, in order
    statuses = Counter(s for ep in table["rgvlm_status"].to_pylist() for s in ep)
    # A random model's replies rarely parse: those steps are parse errors, never engine errors or lost steps.
    assert sum(statuses.values()) == sum(len(a) for a in raw["actions"].to_pylist())
    assert set(statuses) <= {"ok", "parse_error"} and statuses["engine_error"] == 0, statuses
    assert all(s == "ok" for s in table["rgvlm_episode_status"].to_pylist())
    analyses = [a for ep in table["rgvlm_analysis"].to_pylist() for a in ep]
    assert analyses and all(a for a in analyses)  # stage 1 came back from the server for every window
    summary = (Path(labels) / "summary.json").read_text()
    assert '"prompt_tokens": 0' not in summary  # the server counted the images and text it received
    assert rc == 0
