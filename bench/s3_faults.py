"""How long `rgvlm label` takes to give up when S3 fails under it, at the default `storage.*` timeouts.

    python bench/s3_faults.py [--modes 503,hang] [--repeats 1] [key=value ...]

A moto S3 server on 127.0.0.1 behind the project's fault proxy (tests/s3_proxy.py). The oracle labels 6 shards of
2 episodes, one episode per batch, each actor call slowed by 1 s (`label.chaos=slow:3`) so the run is midway when,
once the first label shard and its record have landed, the proxy starts answering every request 503 SlowDown
(`503`) or holding every request unanswered (`hang`). Measured: the seconds from that switch to the process's
exit, its exit code, and the leases left behind (the job cannot free those while S3 fails; they expire after
`label.lease_ttl_s`). Extra `key=value` arguments go to every run (e.g. `storage.max_attempts=8` to compare).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402

from rgvlm_ray import storage  # noqa: E402
from rgvlm_ray.data import format as fmt  # noqa: E402
from tests.conftest import start_moto  # noqa: E402
from tests.helpers import generated_table  # noqa: E402
from tests.s3_proxy import FaultProxy, fault_run  # noqa: E402

BUCKET = "rgvlm-bench"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="503,hang")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--trace", default="", help="write each run's failed requests and stderr here")
    parser.add_argument("--limit", type=float, default=600, help="kill a run this long after the fault")
    args, extra = parser.parse_known_args()
    moto, direct = start_moto(BUCKET)
    proxy = FaultProxy(direct.endpoint_url or "", lifetime_s=3600, hang_s=3600).start()
    src = f"s3://{BUCKET}/raw"
    table = generated_table(episodes=12, subtasks="1-2")
    for i in range(6):
        fmt.write_shard(table.slice(2 * i, 2), storage.join(src, f"shard-{i:05d}.parquet"), direct)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="rgvlm-bench-"))
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
    }
    fs, _ = storage.get_fs(src, direct)
    print(f"# {platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; extra: {extra}")
    print("| mode | run | exit | seconds from fault to exit | leases left | requests failed | last line |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        for r in range(args.repeats):
            out = f"s3://{BUCKET}/labels-{mode}-{r}"
            record = f"/labels-{mode}-{r}/_manifest/"  # a label shard and its record have landed
            cmd = [
                *(["-v"] if "-v" in extra else []),
                "label",
                "--in",
                src,
                "--out",
                out,
                "--engine",
                "oracle",
                "--actors",
                "1",
            ]
            cmd += ["label.episodes_per_batch=1", "label.chaos=slow:3", *(x for x in extra if x != "-v")]
            before, first = proxy.counts[mode], len(proxy.requests)
            done, seconds = fault_run(
                cmd, env, proxy, mode, functools.partial(proxy.answered, "PUT", record), args.limit
            )
            fs.invalidate_cache()
            leases = fs.find(f"{BUCKET}/labels-{mode}-{r}/_leases")
            line = ([x for x in done.stderr.splitlines() if x.startswith("rgvlm label:")] or ["(none)"])[-1]
            failed = proxy.counts[mode] - before
            print(
                f"| {mode} | {r} | {done.returncode} | {seconds:.1f} | {len(leases)} | {failed} | {line[:160]} |"
            )
            sys.stdout.flush()
            if args.trace:
                failures = [x for x in proxy.requests[first:] if x[1] != "pass"]
                t0 = failures[0][0] if failures else 0.0
                with open(f"{args.trace}-{mode}-{r}.txt", "w") as f:
                    f.writelines(f"{t - t0:7.2f} {m} {meth} {path}\n" for t, m, meth, path in failures)
                    f.write(done.stderr)
    proxy.stop()
    moto.stop()


if __name__ == "__main__":
    main()
