"""`ray job submit --runtime-env jobs/runtime_env.yaml -- python jobs/train.py --in s3://... --out s3://... --reward rgvlm`.

The same code path as `rgvlm train`; inside a Ray job, `init_ray` joins the job's cluster. `--out` must be
storage every node reaches (s3://, or a shared filesystem): Ray Train's workers write checkpoints there.
"""

import sys

from rgvlm_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
