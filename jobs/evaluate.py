"""`ray job submit --runtime-env jobs/runtime_env.yaml -- python jobs/evaluate.py --checkpoint s3://... --out s3://...`.

The same code path as `rgvlm evaluate`: one Ray task per (k, chunk of missions) on the job's cluster.
"""

import sys

from rgvlm_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
