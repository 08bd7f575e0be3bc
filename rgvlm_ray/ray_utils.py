"""Starting or joining Ray the same way from the CLI, jobs and tests."""

from __future__ import annotations

import logging
import os

import ray

from rgvlm_ray.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig | None = None) -> None:
    """Join the cluster (`ray.address`, RAY_ADDRESS, or the job's cluster) or start a local one. Idempotent."""
    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"log_to_driver": True, "include_dashboard": False} if not address else {}
    if not address and cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    ray.init(address=address, **kwargs)
    log.info("ray: %s", ray.cluster_resources())


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1))
