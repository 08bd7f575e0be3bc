"""The exit codes of `rgvlm label` and `rgvlm label --status` (docs/labeling-job.md#exit-codes).

They describe the whole label set, not one run: a quarantined shard left by an earlier run still exits 1.
"""

OK = 0  # every input shard is labeled (or quarantined, with --allow-quarantine)
FAILED = 1  # a shard failed or is quarantined, a label shard is damaged, or the counts do not balance
USAGE = 2  # bad settings or input paths (rgvlm_ray.errors.UsageError)
INCOMPLETE = (
    3  # work left that a rerun does: shards leased by a live run, engine errors, new or changed input
)
STORAGE = 4  # the storage failed (disk full, permission, S3 unreachable or throttling): fix it, then rerun
