"""The Ray Data actor that labels batches of episodes and writes their labels as part files (writers.py)."""

from __future__ import annotations

import concurrent.futures
import os

import pyarrow as pa
import pyarrow.compute as pc

from rgvlm_ray import storage
from rgvlm_ray.config import EngineConfig, LabelConfig, LabelerConfig, StorageConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import ActionSpace
from rgvlm_ray.labelers.action_text import SPACE_KEY
from rgvlm_ray.labelers.columns import label_columns, num_actions
from rgvlm_ray.labelers.labeler import build_labeler
from rgvlm_ray.labeling import chaos
from rgvlm_ray.labeling.writers import write_part

# Token counts an actor reports per batch, summed per shard into its record and per run into summary.json; the
# per-stage ones let a run be checked against `rgvlm label --plan`, stage by stage.
TOKEN_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "stage1_prompt_tokens",
    "stage1_completion_tokens",
    "stage2_prompt_tokens",
    "stage2_cached_tokens",
    "stage2_completion_tokens",
)
PATH_COL = "path"  # added by read_parquet(include_paths=True)
# Labeler counters (Labeler.stats()) carried per batch to the shard's record and the run's summary.
COUNTED = (*TOKEN_KEYS, "goals_truncated")
# What an actor call returns: one small row per input shard in its batch, never episodes.
RESULT_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("part", pa.string()),
        pa.field("episodes", pa.int64()),
        *(pa.field(k, pa.int64()) for k in COUNTED),
    ]
)


class LabelActor:
    """Holds one engine for its lifetime; labels a batch of episodes per call."""

    def __init__(
        self,
        engine_cfg: EngineConfig,
        labeler_cfg: LabelerConfig,
        label_cfg: LabelConfig,
        names: dict[str, str],
        spaces: dict[str, str],
        run_id: str,
        storage_cfg: StorageConfig,
    ) -> None:
        chaos.install(label_cfg.chaos)
        self.labeler = chaos.wrap(build_labeler(engine_cfg, labeler_cfg), label_cfg.chaos)
        self.timeout_s = label_cfg.batch_timeout_s
        self.out, self.names, self.run_id, self.storage = label_cfg.out_path, names, run_id, storage_cfg
        self.spaces = {path: ActionSpace.from_json(s) if s else None for path, s in spaces.items()}
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.hung = False
        self.storage_down: BaseException | None = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.hung:
            # The previous call never returned and still holds the engine: exit so Ray restarts this actor
            # with a fresh engine and retries this batch on it.
            os._exit(1)
        if self.storage_down is not None:
            # S3 failed a write after all its retries: fail the batches queued here at once, rather than label
            # each and wait out the same retries again (the run is ending with exit 4).
            raise self.storage_down
        rows = batch.drop_columns([PATH_COL]).to_pylist()
        for row, path in zip(rows, batch.column(PATH_COL).to_pylist(), strict=True):
            row[SPACE_KEY] = self.spaces.get(path)  # rendered into the prompt (labelers/action_text.py)
        before = self.labeler.stats()
        try:
            labels = self.pool.submit(self.labeler.label_rows, rows).result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            self.hung = True
            labels = self._failed(
                rows, f"engine call timed out after label.batch_timeout_s={self.timeout_s}s"
            )
        except Exception as exc:  # an engine crash must not drop episodes: record it on each of them
            labels = self._failed(rows, f"{type(exc).__name__}: {exc}")
        after = self.labeler.stats()
        tokens = [(after.get(k) or 0) - (before.get(k) or 0) for k in COUNTED]  # cached: None if not told
        table = label_table(batch.column("episode_id").combine_chunks(), labels, self.labeler.name)
        results = []
        for path in pc.unique(batch.column(PATH_COL)).to_pylist():
            part = table.filter(pc.equal(batch.column(PATH_COL), path))
            try:
                written = write_part(part, self.out, self.names[path], self.run_id, self.storage)
            except Exception as exc:
                fault = storage.fault(exc, self.out, self.storage)
                if fault is not None and fault.storage_down:
                    self.storage_down = exc
                raise
            results.append([path, written, part.num_rows, *tokens])
            tokens = [0] * len(COUNTED)  # a batch's counts go once, to its first shard
        return pa.Table.from_pylist(
            [dict(zip(RESULT_SCHEMA.names, r, strict=True)) for r in results], RESULT_SCHEMA
        )

    def _failed(self, rows: list[dict], message: str) -> list[dict]:
        """Transient engine failure: episode_status `error`, so the shard is labeled again next run."""
        name, fp = self.labeler.name, self.labeler.fingerprint
        return [
            label_columns(
                name,
                score=[None] * num_actions(r),
                reward=[None] * num_actions(r),
                window=[None] * num_actions(r),
                status=["engine_error"] * num_actions(r),
                message=[message] * num_actions(r),
                analysis=[],
                fingerprint=fp,
                episode_status="error",
                episode_error=message,
            )
            for r in rows
        ]


def label_table(episode_ids: pa.Array, labels: list[dict], name: str) -> pa.Table:
    """Episode ids and this labeler's columns, typed as format.LABEL_FIELDS says."""
    schema = fmt.label_schema(name)
    columns = [pa.array([row[f.name] for row in labels], type=f.type) for f in schema]
    return pa.Table.from_arrays(
        [episode_ids, *columns], schema=pa.schema([("episode_id", pa.string()), *schema])
    )


def stripped(path: str, cfg: StorageConfig) -> str:
    """The path as read_parquet(include_paths=True) reports it (no scheme)."""
    return storage.get_fs(path, cfg)[1]
