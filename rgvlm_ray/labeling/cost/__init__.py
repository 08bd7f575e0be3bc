"""What a labeling run will cost, before it starts (`rgvlm label --plan`; docs/labeling.md, "Before a large run").

Counts, exact and without loading weights: every input shard is read (the columns the judge sees) and each
episode is cut into the very windows and stage-1 conversations the job builds (`rgvlm.prepare_episode`); their
prompt tokens are counted by the model's own processor. Stage 2's prompt is stage 1's, then the analysis, then
the scoring request: it is counted exactly with an empty analysis, and the analysis adds `analysis_tokens` per
window (measured by --calibrate, else the analysis budget, an upper bound).

Time, a model with one measured rate per actor:
- work = prompt tokens computed + completion tokens, where a prefix cache serves `prefix_cache` of stage 2's
  shared prefix (the whole stage-1 prompt) instead of computing it again; seconds = work / tokens_per_s
  (or windows / windows_per_s);
- the job's batches (label.episodes_per_batch episodes, split as job.build_dataset splits them) go to the next
  free actor in input order; wall time = startup_s + the last actor's finish; GPU-hours = wall time x actors x
  label.num_gpus_per_actor (an actor holds its GPU for the whole run).
The rate comes from `plan.tokens_per_s` / `plan.windows_per_s` (bench/label_engine.py measures both), or from
--calibrate N: a real labeling run here on N windows of the data, timed after a warm-up, with the model load
timed as startup_s.

Split by stage: count (token counting), calibrate (the short real run), estimate (time, GPU-hours, `plan_run`),
render (the text table). The names below are re-exported so `from rgvlm_ray.labeling.cost import X` works.
"""

from rgvlm_ray.labeling.cost.calibrate import (
    Calibration,
    StageMeter,
    actor_threads,
    calibrate,
    computed_tokens,
    sample_rows,
    torch_threads,
    truncated,
)
from rgvlm_ray.labeling.cost.count import (
    JUDGE_COLUMNS,
    Counts,
    EpisodeCount,
    TokenCounter,
    count,
    count_episode,
    load_counting_processor,
    shard_rows,
    shards_to_plan,
)
from rgvlm_ray.labeling.cost.estimate import (
    CACHING_ENGINES,
    CALIBRATION_BATCHES,
    Assumptions,
    actor_counts,
    assumptions,
    batch_costs,
    calibration_warnings,
    cpu_share,
    estimates,
    makespan,
    plan_run,
    seconds_of,
    stages,
    work,
)
from rgvlm_ray.labeling.cost.render import duration, render

__all__ = [
    "cpu_share",
    "CALIBRATION_BATCHES",
    "actor_threads",
    "calibration_warnings",
    "torch_threads",
    "CACHING_ENGINES",
    "JUDGE_COLUMNS",
    "Assumptions",
    "Calibration",
    "Counts",
    "EpisodeCount",
    "StageMeter",
    "TokenCounter",
    "actor_counts",
    "assumptions",
    "batch_costs",
    "calibrate",
    "computed_tokens",
    "count",
    "count_episode",
    "duration",
    "estimates",
    "load_counting_processor",
    "makespan",
    "plan_run",
    "render",
    "sample_rows",
    "seconds_of",
    "shard_rows",
    "shards_to_plan",
    "stages",
    "truncated",
    "work",
]
