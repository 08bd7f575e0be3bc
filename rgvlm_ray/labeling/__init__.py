"""The labeling job (`rgvlm label`): plan and lease shards (plan.py, leases.py, manifest.py), label them in Ray
actor pools (actors.py), write label shards from the workers (writers.py), and report (job.py, status.py).
What scores a window lives in rgvlm_ray/labelers; where labels are stored, in rgvlm_ray/labelstore."""
