"""`ray job submit --runtime-env jobs/runtime_env.yaml -- python jobs/study.py --config study-cluster --out s3://...`.

The same code path as `rgvlm study`; inside a Ray job, `init_ray` joins the job's cluster, and the driver's threads
start each training as its own Ray Train run on the cluster's GPU workers. `--out` must be storage every node
reaches (s3://, or a shared filesystem): labeling actors, train workers and evaluation tasks all write there.
"""

import sys

from rgvlm_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
