"""Sweep mission pools: every (pool seed, k, index) resolves on seen, randomized and novel (issue 27).

    .venv/bin/python bench/mission_pool.py --seeds 20 --indices 10 [--config study-cpu]

Prints, per split, how many missions resolved, how many randomized ones were substituted, and the seconds spent;
exits 1 if any mission could not be resolved or a randomized mission changed its text without being marked.
"""

from __future__ import annotations

import argparse
import sys
import time

from rgvlm_ray.config import load_config, resolve_config_path
from rgvlm_ray.data import env as E
from rgvlm_ray.errors import UsageError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20, help="pool seeds 0..N-1 plus 101 and 5151")
    ap.add_argument("--indices", type=int, default=10, help="indices 0..N-1 per k")
    ap.add_argument("--config", default="study-cpu")
    args = ap.parse_args()
    cfg = load_config([str(resolve_config_path(args.config))]).env
    seeds = sorted({*range(args.seeds), 101, 5151})
    counts = {"missions": 0, "substituted": 0, "unresolved": 0, "unmarked_changes": 0}
    start = time.perf_counter()
    for seed in seeds:
        for k in range(1, E.MAX_SUBTASKS + 1):
            for index in range(args.indices):
                counts["missions"] += 1
                try:
                    seen = E.find_mission(cfg, k, index, seed, "seen")
                    rand = E.find_mission(cfg, k, index, seed, "randomized")
                    E.find_mission(cfg, k, index, seed, "novel")
                except UsageError as exc:
                    counts["unresolved"] += 1
                    print(f"unresolved: {exc}")
                    continue
                counts["substituted"] += rand.substituted
                same = E.make_env(cfg, seen).mission == E.make_env(cfg, rand).mission
                counts["unmarked_changes"] += not same and not rand.substituted
    seconds = time.perf_counter() - start
    print(
        f"config {args.config}, {len(seeds)} pools x k 1..6 x {args.indices} indices: {counts}, {seconds:.0f} s"
    )
    return 1 if counts["unresolved"] or counts["unmarked_changes"] else 0


if __name__ == "__main__":
    sys.exit(main())
