"""`ray job submit ... -- python jobs/label.py --in s3://... --out s3://... [flags] [key=value ...]`.

The same code path as `rgvlm label`; inside a Ray job, `init_ray` joins the job's cluster.
"""

import sys

from rgvlm_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["label", *sys.argv[1:]]))
