"""`ray job submit ... -- python jobs/relabel.py --in s3://... --out s3://... [--then-train --train-root ...]`.

The scheduled job (cron, RayCronJob): labels only new or changed shards; the same code as `rgvlm relabel`.
"""

import sys

from rgvlm_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["relabel", *sys.argv[1:]]))
