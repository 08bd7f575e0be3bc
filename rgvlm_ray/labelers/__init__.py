"""Reward labeling: RG-VLM (two-stage LVLM judge) and the clip / oracle reference labelers.

Public API for the distributed job: `build_labeler`, `labeler_fingerprint`, `Labeler` (see labeler.py).
"""

from rgvlm_ray.labelers.labeler import Labeler, build_labeler, labeler_fingerprint, labeler_name

__all__ = ["Labeler", "build_labeler", "labeler_fingerprint", "labeler_name"]
