"""`rgvlm label --plan`: exact counts against a real labeling run, the time estimate within a stated tolerance,
every path spelling (s3:// on a real S3 API), and the plain arithmetic of the estimate."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
import s3fs

from rgvlm_ray.cli import main as cli_main
from rgvlm_ray.config import Config, load_config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers import build_labeler
from rgvlm_ray.labeling import cost
from tests.conftest import S3_BUCKET
from tests.label_fixtures import episodes, tiny_qwen_dir

# The estimate's time is checked against a real run within this tolerance. On this shared 2-core machine (load
# 10+ from other jobs) wall time measures the scheduler more than the labeling, so both sides are timed in this
# process's CPU time, with one torch thread: the same clock for the calibration and for the run it predicts.
TIME_TOLERANCE = 0.5  # |estimate / measured - 1| <= 50%; seen: 0.87, 0.93, 1.08 (docs/labeling.md)
CLOCK = time.process_time
LABELER = ["labeler.window=4", "labeler.overlap=1"]
ENGINE = ["engine.max_new_tokens_analysis=8", "engine.batch_size=2"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> str:
    """Two real episodes cut to 10 and 4 actions: 3 + 1 windows of 4 actions, 2 full engine batches a stage."""
    rows = episodes()
    rows = [cost.truncated(rows[0], 10), rows[1]]
    out = tmp_path_factory.mktemp("plan-data")
    fmt.write_shard(pa.Table.from_pylist(rows, schema=fmt.EPISODE_SCHEMA), str(out / "shard-00000.parquet"))
    return str(out)


def config(in_path: str, *extra: str) -> Config:
    return load_config(
        overrides={
            "label.in_path": in_path,
            "label.plan": True,
            "engine.kind": "hf",
            "engine.model": tiny_qwen_dir(),
        },
        dotlist=[*LABELER, *ENGINE, *extra],
    )


def test_counts_are_exact_and_the_time_holds_against_a_real_run(sample, one_thread):
    plan = cost.plan_run(config(sample, "plan.calibrate=2"), clock=CLOCK)
    assert plan["calibration"]["windows"] == 2
    assert plan["calibration"]["threads"] == 1  # an actor's 0.5 CPU: one torch thread, as Ray gives it
    estimate = plan["estimates"][0]
    assert estimate["actors"] == 1
    # An actor loads the model, warms up, then labels. The run below is in this process, where torch is warm
    # already, so the labeling alone is compared.
    estimated = estimate["wall_s"] - plan["assumptions"]["startup_s"]

    # The real run: the same episodes, the same labeler, timed after the load as an actor's batches are.
    cfg = config(sample)
    rows = cost.shard_rows(str(Path(sample) / "shard-00000.parquet"), cfg)
    labeler = build_labeler(cfg.engine, cfg.labeler)
    try:
        start = CLOCK()
        labeler.label_rows(rows)
        measured = CLOCK() - start
    finally:
        labeler.close()
    real = labeler.stats()

    s1, s2 = plan["stage1"], plan["stage2"]
    assert s1["windows"] == real["windows"] == 4
    assert s1["images"] == 4 * 5
    assert s1["prompt_tokens"] == real["stage1_prompt_tokens"]  # counted by the processor, exactly
    assert s2["shared_prefix_tokens"] == real["stage1_prompt_tokens"]
    # Stage 2 holds each window's analysis, measured on the calibration's windows: close, not exact.
    assert s2["prompt_tokens"] == pytest.approx(real["stage2_prompt_tokens"], rel=0.05)
    assert s2["prompt_tokens_without_analysis"] < real["stage2_prompt_tokens"]
    expected_completion = s1["completion_expected"] + s2["completion_expected"]
    assert expected_completion == pytest.approx(real["completion_tokens"], rel=0.25)
    assert real["completion_tokens"] <= s1["completion_budget"] + s2["completion_budget"]
    ratio = estimated / measured
    print(f"estimated {estimated:.2f} s, measured {measured:.2f} s, ratio {ratio:.2f}", plan["calibration"])
    assert abs(ratio - 1) <= TIME_TOLERANCE, (estimated, measured)


def test_json_is_the_same_for_every_spelling_of_the_path(sample, s3_env, tmp_path, monkeypatch, capsys):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_env.endpoint_url})
    fs.put(str(Path(sample) / "shard-00000.parquet"), f"{S3_BUCKET}/plan/raw/shard-00000.parquet")
    monkeypatch.chdir(Path(sample).parent)
    rel = Path(sample).name
    args = ["--engine", "hf", "--model", tiny_qwen_dir(), "--json", *LABELER, *ENGINE]
    plans = []
    for spelling in (f"s3://{S3_BUCKET}/plan/raw/", rel, f"./{rel}/", sample):
        assert cli_main(["label", "--plan", "--in", spelling, *args]) == 0
        plans.append(json.loads(capsys.readouterr().out))
    keys = ("stage1", "stage2", "episodes", "actions", "shards", "estimates")
    assert all({k: p[k] for k in keys} == {k: plans[0][k] for k in keys} for p in plans)
    assert plans[0]["in"].startswith("s3://") and plans[1]["in"] == str(Path(sample).resolve())
    assert plans[0]["estimates"] == []  # no throughput given: counts only


def test_text_table_with_a_given_throughput(sample, capsys):
    code = cli_main(
        [
            "label",
            "--plan",
            "--in",
            sample,
            "--engine",
            "hf",
            "--model",
            tiny_qwen_dir(),
            "--actors",
            "4",
            "--tokens-per-s",
            "1000",
            "label.num_gpus_per_actor=1",
            "plan.prefix_cache=1",
            *LABELER,
            *ENGINE,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "stage 1" in out and "stage 2" in out and "GPU-hours" in out
    assert [line.split()[0] for line in out.splitlines() if line.strip()[:1].isdigit()][-3:] == [
        "1",
        "2",
        "4",
    ]


def test_refusals_are_one_line(sample, capsys):
    assert cli_main(["label", "--plan", "--in", sample, "--engine", "oracle"]) == 2
    assert "prompts no model" in capsys.readouterr().err
    code = cli_main(
        ["label", "--plan", "--in", sample, "--engine", "hf", "--model", "no-such-org/no-such-vlm"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no local copy" in err and "Traceback" not in err
    assert (
        cli_main(
            [
                "label",
                "--plan",
                "--in",
                str(Path(sample) / "missing"),
                "--engine",
                "hf",
                "--model",
                tiny_qwen_dir(),
            ]
        )
        == 2
    )


def test_the_arithmetic_of_the_estimate():
    cfg = load_config(
        dotlist=["label.episodes_per_batch=1", "label.num_gpus_per_actor=2", "labeler.num_samples=2"]
    )
    e = cost.EpisodeCount(windows=2, images=10, stage1_prompt=1000, stage2_base=1100, stage2_budget=60)
    counts = cost.Counts(episodes=8, by_shard={"a": [e] * 8})
    a = cost.Assumptions(50, 40, 20, 0.0, 1000.0, None, 0.0, {})
    w = cost.work(e, cfg, a, 0.0)
    # stage 1 prompt + analyses + 2 samples x (stage-2 prompt with the analysis + scores)
    assert w["computed"] == 1000 + 2 * 40 + 2 * (1100 + 2 * 50) + 2 * 2 * 20
    cached = cost.work(e, cfg, a, 1.0)
    assert w["computed"] - cached["computed"] == 2 * 1000  # each sample's stage-1 prefix comes from the cache
    rows = cost.estimates(counts, replace(cfg, label=replace(cfg.label, max_actors=8)), a)
    walls = {r["actors"]: r["wall_s"] for r in rows}
    assert walls[1] == pytest.approx(8 * w["computed"] / 1000)
    assert walls[2] == pytest.approx(walls[1] / 2) and walls[8] == pytest.approx(walls[1] / 8)
    assert rows[-1]["gpu_hours"] == pytest.approx(walls[8] * 8 * 2 / 3600, abs=1e-4)
    assert cost.makespan([5, 1, 1, 1], 2) == 5  # one long batch bounds the wall time


def test_with_out_the_shards_already_labeled_are_left_out(sample, tmp_path):
    """As the job does: a shard whose record matches its content and this labeler's fingerprint costs nothing."""
    from rgvlm_ray import storage
    from rgvlm_ray.labelers.labeler import labeler_fingerprint
    from rgvlm_ray.labeling import manifest as mf

    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(2):
        (raw / f"shard-{i:05d}.parquet").write_bytes((Path(sample) / "shard-00000.parquet").read_bytes())
    # same bytes, so same ids twice: fine here, the plan counts and does not validate across shards
    out = str(tmp_path / "labels")
    cfg = config(str(raw), f"label.out_path={out}")
    whole = cost.plan_run(cfg)
    first = str(raw / "shard-00000.parquet")
    fp = labeler_fingerprint(cfg.engine, cfg.labeler)
    record = mf.ShardRecord(
        "shard-00000.parquet", first, storage.content_identity(first), fp, "rgvlm", mf.DONE
    )
    mf.write_record(out, record, cfg.storage)
    rest = cost.plan_run(cfg)
    assert whole["shards"] == {"total": 2, "to_label": 2, "already_labeled": 0}
    assert rest["shards"] == {"total": 2, "to_label": 1, "already_labeled": 1}
    assert rest["stage1"]["prompt_tokens"] * 2 == whole["stage1"]["prompt_tokens"]
    # another labeler's record (another fingerprint) does not count as done
    mf.write_record(out, replace(record, fingerprint="0" * 16), cfg.storage)
    assert cost.plan_run(cfg)["shards"]["to_label"] == 2


def test_a_measured_share_a_hair_above_1_is_clamped_and_said_and_a_small_calibration_warned():
    """Issue 24 item 4: `--calibrate 16` measured a prefix-cache share of 1.0005 and the plan refused it."""
    cfg = load_config(dotlist=["engine.kind=hf", "engine.batch_size=8"])
    cal = cost.Calibration(
        windows=16,
        seconds=1.0,
        load_s=0.1,
        warmup_s=0.0,
        tokens_per_s=1000.0,
        windows_per_s=16.0,
        analysis_tokens=10.0,
        stage1_completion=10.0,
        stage2_completion=5.0,
        prefix_cache=1.0005,
        failed_windows=0,
    )
    a = cost.assumptions(cfg, cal)
    assert a.prefix_cache == 1.0
    assert "clamped to 1" in a.sources["prefix_cache"] and "1.0005" in a.sources["prefix_cache"]
    # a share set by hand above 1 is still a usage error
    with pytest.raises(UsageError, match="0..1"):
        cost.assumptions(load_config(dotlist=["engine.kind=hf", "plan.prefix_cache=1.2"]), cal)
    # 16 windows are 2 engine batches of 8: under 4, warned; 32 are enough
    warned = cost.calibration_warnings(cfg, cal)
    assert len(warned) == 1 and "--calibrate 32" in warned[0]
    assert cost.calibration_warnings(cfg, replace(cal, windows=32)) == []
    assert cost.calibration_warnings(cfg, None) == []
    assert [cost.actor_threads(n) for n in (0.25, 0.5, 1, 2.0, 3.5)] == [1, 1, 1, 2, 3]


def test_cpu_actors_share_the_cpus_left_after_the_driver():
    """bench/label_plan.py: two single-threaded actors on 2 CPUs ran 1.28-1.48x faster than one, not 2x."""
    two = load_config(dotlist=["ray.num_cpus=2", "label.num_cpus_per_actor=0.5"])
    assert cost.cpu_share(two, 1) == 1.0
    assert cost.cpu_share(two, 2) == pytest.approx(0.75)  # (2 - 0.5 for the driver) / 2 actor threads
    assert cost.cpu_share(two, 4) == pytest.approx(1.5 / 4)
    big = load_config(dotlist=["plan.cluster_cpus=16", "label.num_cpus_per_actor=2"])
    assert cost.cpu_share(big, 4) == 1.0 and cost.cpu_share(big, 8) == pytest.approx(15.5 / 16)
    gpu = load_config(dotlist=["ray.num_cpus=2", "label.num_gpus_per_actor=1"])
    assert cost.cpu_share(gpu, 8) == 1.0
