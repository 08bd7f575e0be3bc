"""What one S3 call through `storage.get_fs` costs with a fresh client per call against the cached client.

    python bench/storage_client.py [--calls 40]

A moto S3 server on 127.0.0.1. Side by side in one run: `get_fs` + `exists` with fsspec's instance cache skipped
(a new s3fs client each call, as every `get_fs` did before issue 25) and with it (one client per process and
settings, as now), and `exists` alone on one client. Prints milliseconds per call and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fsspec  # noqa: E402

from rgvlm_ray import storage  # noqa: E402
from tests.conftest import start_moto  # noqa: E402

BUCKET = "rgvlm-bench"


def per_call_ms(fn: Callable[[], object], calls: int) -> float:
    fn()  # warm the import and the connection pool
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    moto, cfg = start_moto(BUCKET)
    url = f"s3://{BUCKET}/bench/a.txt"
    fs, path = storage.get_fs(url, cfg)
    fs.pipe(path, b"x")

    def fresh() -> bool:
        opts = {**storage._s3_options(cfg), "skip_instance_cache": True}
        return fsspec.filesystem("s3", **opts).exists(path)

    def cached() -> bool:
        client, p = storage.get_fs(url, cfg)
        return client.exists(p)

    rows = {
        "fresh client + exists": per_call_ms(fresh, args.calls),
        "get_fs (cached) + exists": per_call_ms(cached, args.calls),
        "exists on one client": per_call_ms(lambda: fs.exists(path), args.calls),
    }
    moto.stop()
    print(f"# {platform.node()} {os.cpu_count()} CPUs, {args.calls} calls each, moto on 127.0.0.1")
    for name, ms in rows.items():
        print(f"{name:28s} {ms:7.1f} ms/call")
    print(f"fresh / cached: {rows['fresh client + exists'] / rows['get_fs (cached) + exists']:.1f}x")


if __name__ == "__main__":
    main()
