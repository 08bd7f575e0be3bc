"""Starting or joining Ray the same way from the CLI, jobs and tests."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from rgvlm_ray.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig | None = None) -> None:
    """Join the cluster (`ray.address`, RAY_ADDRESS, or the job's cluster) or start a local one. Idempotent.

    A local head started here ends with this process, even on `kill -9`: Ray 2.60 starts its processes with
    prctl(PR_SET_PDEATHSIG) on Linux (its reaper process elsewhere); tests/test_small_points.py checks it."""
    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": True, "include_dashboard": False} if not address else {}
    if not address:
        kwargs["runtime_env"] = {"worker_process_setup_hook": "rgvlm_ray.ray_utils.quiet_workers"}
    if not address and cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    ray.init(address=address, **kwargs)
    log.info("ray: %s", ray.cluster_resources())


def read_parquet(paths: str | list[str], cfg: RayConfig, **kwargs: Any):  # -> ray.data.Dataset
    """`ray.data.read_parquet` with our choice of Ray Data's Parquet reader (`ray.parquet_reader_v2`). The choice
    lives in the process's DataContext and is read when the dataset is made, so it is set here, at the read, and
    not at start-up: commands that never read Parquet through Ray Data do not import ray.data for it."""
    import ray.data

    ray.data.DataContext.get_current().use_datasource_v2 = cfg.parquet_reader_v2
    return ray.data.read_parquet(paths, **kwargs)


def quiet_workers() -> None:
    """Runs in every worker of a local cluster we start: a log a user can read. Without the dashboard (not started locally, to save a
    core's worth of start-up) Ray Train's placement-group cleaner cannot reach the state API and warns about it
    every few seconds for the whole run (376 lines in one demo); it keeps monitoring regardless."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(
        logging.ERROR
    )


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1))
