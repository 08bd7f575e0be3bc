"""The blip2, roboclip and gvl labelers (issue 26): tiny models loaded like real ones, what each writes, the
edge cases (short episodes, long goals, long episodes), and the label job + label-report with all three."""

from __future__ import annotations

import importlib.util
import io
import json
from dataclasses import replace

import pyarrow as pa
import pytest
from PIL import Image

from rgvlm_ray import cli
from rgvlm_ray.config import load_config
from rgvlm_ray.data import format as fmt
from rgvlm_ray.labelers import build_labeler, labeler_fingerprint
from rgvlm_ray.labelers.engines import ChatRequest, Completion
from rgvlm_ray.labelers.images import decode_frames
from rgvlm_ray.labelers.labeler import RGVLMLabeler
from rgvlm_ray.labelers.roboclip import sample_indices
from rgvlm_ray.labelstore.rewards import reward_columns
from tests.label_fixtures import dataset_dir, episodes, hf_config, tiny_blip2_dir, tiny_xclip_dir

LONG_GOAL = "go to the red ball, then open the purple door " * 40  # far past 77 (and 64) tokens


def cfg(kind: str, model: str, **labeler):
    c = load_config()
    c.engine.kind, c.engine.model = kind, model
    return c.engine, replace(c.labeler, **labeler)


def label(kind: str, model: str, rows: list[dict], **labeler) -> tuple[list[dict], object]:
    lab = build_labeler(*cfg(kind, model, **labeler))
    return lab.label_rows(rows), lab


def test_make_tiny_vlm_models_load_like_hub_checkpoints(tmp_path, capsys):
    """`rgvlm make-tiny-vlm --kind blip2|xclip` writes save_pretrained folders; the labelers load them with the very
    from_pretrained calls a hub id takes, stock processor classes included, with no torchvision installed."""
    from transformers import Blip2ForImageTextRetrieval, XCLIPModel

    if importlib.util.find_spec("torchvision") is None:  # the CPU stack: the PIL image processors must serve
        expected_images = {"blip2": "BlipImageProcessorPil", "roboclip": "VideoMAEImageProcessorPil"}
    else:
        expected_images = None
    for kind, tiny, model_cls, processor in (
        ("blip2", "blip2", Blip2ForImageTextRetrieval, "Blip2Processor"),
        ("roboclip", "xclip", XCLIPModel, "XCLIPProcessor"),
    ):
        out = tmp_path / tiny
        assert cli.main(["make-tiny-vlm", "--kind", tiny, "--out", str(out)]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kind"] == tiny
        assert (out / "config.json").exists() and (out / "model.safetensors").exists()
        lab = build_labeler(*cfg(kind, str(out)))
        assert type(lab.model) is model_cls and type(lab.processor).__name__ == processor
        if expected_images:
            assert type(lab.processor.image_processor).__name__ == expected_images[kind]
        [row] = lab.label_rows(episodes()[1:])
        assert row[f"{kind}_episode_status"] == "ok"


def test_blip2_scores_are_match_probabilities_and_rewards_their_deltas():
    rows = episodes()
    out, lab = label("blip2", tiny_blip2_dir(), rows, reward_scale=10.0, reward_shift=0.5)
    pa.Table.from_pylist(out, schema=fmt.label_schema("blip2"))
    row, cols = rows[0], out[0]
    m = lab.matches(row["goal"], decode_frames(row["frames"], 112))
    assert len(m) == len(row["actions"]) + 1 and all(0 <= x <= 1 for x in m) and len(set(m)) > 1
    assert cols["blip2_score"] == pytest.approx(m[1:], abs=1e-5)
    assert cols["blip2_reward"] == pytest.approx(
        [10 * (b - a) + 0.5 for a, b in zip(m, m[1:], strict=False)], abs=1e-4
    )
    assert lab.matches("open the purple door", decode_frames(row["frames"][:2], 112)) != m[:2]


def test_roboclip_placement_windows_and_short_episodes():
    assert sample_indices(20, 8)[0] == 0 and sample_indices(20, 8)[-1] == 19
    assert sample_indices(3, 8) == sorted(sample_indices(3, 8)) and set(sample_indices(3, 8)) == {0, 1, 2}
    assert sample_indices(2, 8) == [0, 0, 0, 0, 1, 1, 1, 1]
    long, short = episodes()
    one = dict(
        short, actions=short["actions"][:1], frames=short["frames"][:2]
    )  # 2 frames for an 8-frame model
    out, lab = label("roboclip", tiny_xclip_dir(), [long, short, one], reward_scale=2.0, reward_shift=-0.1)
    pa.Table.from_pylist(out, schema=fmt.label_schema("roboclip"))
    for row, cols in zip([long, short, one], out, strict=True):
        t = len(row["actions"])
        s = cols["roboclip_score"][0]
        assert cols["roboclip_episode_status"] == "ok" and cols["roboclip_score"] == [s] * t
        assert cols["roboclip_reward"] == pytest.approx([-0.1] * (t - 1) + [2.0 * s - 0.1])
    [win], _ = label("roboclip", tiny_xclip_dir(), [long], placement="window", window=8)
    t = len(long["actions"])
    ends = [min(t, e) - 1 for e in range(8, t + 8, 8)]
    assert win["roboclip_window"] == [i // 8 for i in range(t)]
    assert [i for i, r in enumerate(win["roboclip_reward"]) if r != 0] == ends
    for i in ends:
        assert win["roboclip_reward"][i] == pytest.approx(win["roboclip_score"][i])
    assert len({win["roboclip_score"][i] for i in ends}) > 1  # different clips, different similarities


def test_roboclip_against_a_demonstration_episode():
    """The demonstration's own episode matches it exactly (cosine 1); the fingerprint follows the demo."""
    rows = episodes()
    demo = {"demo_in": dataset_dir(), "demo_episode": rows[1]["episode_id"]}
    out, lab = label("roboclip", tiny_xclip_dir(), rows, **demo)
    assert out[1]["roboclip_score"][0] == pytest.approx(1.0, abs=1e-4)
    assert out[0]["roboclip_score"][0] < 0.9999
    text = labeler_fingerprint(*cfg("roboclip", tiny_xclip_dir()))
    assert lab.fingerprint != text and lab.fingerprint == labeler_fingerprint(
        *cfg("roboclip", tiny_xclip_dir(), **demo)
    )


@pytest.mark.parametrize(("kind", "model"), [("blip2", tiny_blip2_dir), ("roboclip", tiny_xclip_dir)])
def test_long_goals_are_truncated_and_counted(kind, model):
    _, short = episodes()
    out, lab = label(kind, model(), [short, dict(short, goal=LONG_GOAL)])
    assert lab.stats()["goals_truncated"] == 1
    assert [o[f"{kind}_episode_status"] for o in out] == ["ok", "ok"]


def png(colour: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (colour, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


class ProgressByColour:
    """A test double of the judge that knows the truth: frame k is drawn in red level 10k, its progress 100k/T.
    It answers stage 2 with the progress of the frames in the order they were shown (the anchor excluded)."""

    model_id, supports_schema = "truth", True

    def __init__(self, t: int) -> None:
        self.t = t

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        out = []
        for r in requests:
            if r.schema is None:
                out.append(Completion("frames described", 10, 3))
                continue
            parts = [p for m in r.messages if isinstance(m["content"], list) for p in m["content"]]
            shown = [p["image"] for p in parts if p["type"] == "image"][1:]  # after the anchor
            progress = [round(100 * (im.getpixel((0, 0))[0] // 10) / self.t) for im in shown]
            out.append(Completion(json.dumps({"progress": progress}), 20, 5))
        return out

    def close(self) -> None:
        pass


def test_gvl_unshuffles_frames_and_merges_windows():
    t = 20
    row = {
        "episode_id": "e",
        "goal": "reach the end",
        "actions": [0] * t,
        "frames": [png(10 * k) for k in range(t + 1)],
    }
    ecfg, lcfg = cfg("hf", "truth", strategy="gvl", window=6, overlap=2)
    lab = RGVLMLabeler(ecfg, lcfg, labeler_fingerprint(ecfg, lcfg), ProgressByColour(t))
    [cols] = lab.label_rows([row])
    truth = [round(100 * k / t) for k in range(t + 1)]
    assert lab.name == "gvl" and cols["gvl_score"] == truth[1:]
    assert cols["gvl_reward"] == pytest.approx(
        [(b - a) / 100 for a, b in zip(truth, truth[1:], strict=False)]
    )
    assert sum(cols["gvl_reward"]) == pytest.approx(1.0)
    assert len(set(cols["gvl_window"])) > 2
    alt = [(a, s) for a, s in zip(cols["gvl_score_alt"], cols["gvl_score"], strict=True) if a is not None]
    assert alt and all(a == s for a, s in alt)  # the other window saw the same frame: the same truth
    # the shuffle: seeded (same order twice), and not the time order
    ep = lab.label_episodes([row])[0]
    assert [w.order for w in ep.windows] == [w.order for w in lab.label_episodes([row])[0].windows]
    assert any(w.order != sorted(w.order) for w in ep.windows)
    assert (
        ep.windows[0].order and 0 not in ep.windows[0].order and 0 in ep.windows[1].order
    )  # frame 0 is the anchor


def test_gvl_with_the_tiny_vlm_constrained_sampled_and_prefix_reused():
    ecfg, lcfg = hf_config(strategy="gvl", window=2, overlap=1, num_samples=2)
    ecfg.temperature, ecfg.max_new_tokens_analysis = 1.0, 4
    lab = build_labeler(ecfg, lcfg)
    _, short = episodes()
    [cols] = lab.label_rows([short])
    pa.Table.from_pylist([cols], schema=fmt.label_schema("gvl"))
    assert cols["gvl_episode_status"] == "ok" and all(0 <= s <= 100 for s in cols["gvl_score"])
    assert all(sd is not None for sd in cols["gvl_score_std"])  # two samples on every scored frame
    stats = lab.stats()
    assert stats["parse_failures"] == 0 and stats["windows"] == 3 and stats["stage2_cached_tokens"] > 0


def job_summary(out: str, cfg=None) -> dict:
    import s3fs  # noqa: F401  (fs for S3 below)

    from rgvlm_ray import storage

    fs, p = storage.get_fs(storage.join(out, "summary.json"), cfg)
    return json.loads(fs.cat_file(p))


LABEL_ARGS = {
    "blip2": lambda: ["--engine", "blip2", "--model", tiny_blip2_dir()],
    "roboclip": lambda: [
        "--engine",
        "roboclip",
        "--model",
        tiny_xclip_dir(),
        "labeler.placement=window",
        "labeler.window=8",
    ],
    "gvl": lambda: [
        "--engine",
        "hf",
        "--model",
        hf_config()[0].model,
        "labeler.strategy=gvl",
        "labeler.window=8",
        "labeler.overlap=2",
        "engine.max_new_tokens_analysis=4",
    ],
}


def label_all_three(raw: str, root: str) -> dict[str, str]:
    sets = {}
    for name, args in LABEL_ARGS.items():
        sets[name] = f"{root}/labels-{name}"
        assert cli.main(["label", "--in", raw, "--out", sets[name], *args()]) == 0, name
    return sets


def report(raw: str, sets: dict[str, str], out) -> list[dict]:
    argv = ["label-report", "--in", raw, "--out", str(out)]
    for path in sets.values():
        argv += ["--labels", path]
    assert cli.main(argv) == 0
    return json.loads((out / "label_report.json").read_text())


def test_all_three_label_generated_data_and_rank_in_the_report(ray_cluster, tmp_path):
    """Generated data on local disk (one goal far too long for a text encoder), labeled by the three;
    the report ranks them side by side against ground truth; their reward modes resolve."""
    table = fmt.read_shard(fmt.list_shards(dataset_dir())[0]).slice(0, 2)  # 33 and 4 actions
    goals = table.column("goal").to_pylist()
    table = table.set_column(table.schema.get_field_index("goal"), "goal", pa.array([LONG_GOAL, *goals[1:]]))
    raw = tmp_path / "raw"
    fmt.write_shard(table, str(raw / "shard-00000.parquet"))
    sets = label_all_three(str(raw), str(tmp_path))
    truncated = {name: job_summary(path)["goals_truncated"] for name, path in sets.items()}
    assert truncated == {"blip2": 1, "roboclip": 1, "gvl": 0}
    manifest = json.loads((tmp_path / "labels-blip2" / "_manifest.json").read_text())
    assert [s["stats"]["goals_truncated"] for s in manifest["shards"].values()] == [1]
    reports = report(str(raw), sets, tmp_path / "report")
    assert [r["labeler"] for r in reports] == ["gvl", "blip2", "roboclip"]
    assert all(len(r["by_k"]) > 0 and r["without_ground_truth"]["episodes_labeled"] == 2 for r in reports)
    text = (tmp_path / "report" / "label_report.md").read_text()
    ranked = next(line for line in text.splitlines() if line.startswith("- true Spearman rho:"))
    assert all(name in ranked for name in ("gvl", "blip2", "roboclip"))
    for name in ("gvl", "blip2", "roboclip"):
        assert reward_columns(f"{name}+sparse") == (f"{name}_reward", "rewards")


def test_all_three_label_an_imported_lerobot_dataset_on_s3(ray_cluster, s3_env, tmp_path):
    import s3fs

    from tests.conftest import S3_BUCKET
    from tests.lerobot_fixture import make_dataset

    pytest.importorskip("av")
    src = make_dataset(tmp_path / "lerobot")
    fs = s3fs.S3FileSystem(endpoint_url=s3_env.endpoint_url, key="testing", secret="testing")
    fs.put(str(src), f"{S3_BUCKET}/i26-lerobot", recursive=True)
    root = f"s3://{S3_BUCKET}/i26"
    raw = f"{root}/raw"
    camera = "observation.images.top"
    assert (
        cli.main(["import", "lerobot", f"s3://{S3_BUCKET}/i26-lerobot", "--camera", camera, "--out", raw])
        == 0
    )
    sets = label_all_three(raw, root)
    for name, path in sets.items():
        rows = [r for s in fmt.list_shards(path, s3_env) for r in fmt.read_shard(s, s3_env).to_pylist()]
        assert len(rows) == 3 and all(r[f"{name}_episode_status"] == "ok" for r in rows), name
    reports = report(raw, sets, tmp_path / "report")
    assert [r["labeler"] for r in reports] == ["gvl", "blip2", "roboclip"]
    assert all(r["by_k"] == [] and r["without_ground_truth"]["episodes_labeled"] == 3 for r in reports)


def test_gvl_prompts_hold_one_more_image_and_vllm_limits_are_checked():
    from rgvlm_ray.errors import UsageError
    from rgvlm_ray.labelers.engines.vllm import llm_kwargs

    ecfg, lcfg = cfg("vllm", "m", strategy="gvl", window=16)
    assert llm_kwargs(ecfg, lcfg)["limit_mm_per_prompt"] == {"image": 18}
    ecfg.vllm.limit_mm_per_prompt = 17  # enough for RG-VLM's window + 1, not for GVL's anchor too
    assert llm_kwargs(ecfg, replace(lcfg, strategy="rgvlm"))["limit_mm_per_prompt"] == {"image": 17}
    with pytest.raises(UsageError, match="limit_mm_per_prompt=17"):
        llm_kwargs(ecfg, lcfg)
    with pytest.raises(UsageError, match="labeler.strategy"):
        build_labeler(*cfg("hf", "m", strategy="progress"))


def test_the_cluster_study_lists_every_labeler_with_the_settings_that_write_its_columns():
    from rgvlm_ray.experiments.study.arms import validate
    from rgvlm_ray.experiments.study.corpus import labeler_settings
    from rgvlm_ray.labelers import labeler_name

    c = load_config(["study-cluster"], dotlist=["study.out=s3://bucket/study"])
    assert {"oracle", "clip", "blip2", "roboclip", "rgvlm", "gvl"} <= set(c.study.labelers)
    validate(c)
    for name in c.study.labelers:
        engine, labeler = labeler_settings(c, name)
        assert labeler_name(engine.kind, labeler) == name
    assert labeler_settings(c, "blip2")[0].model == "Salesforce/blip2-itm-vit-g"
    assert labeler_settings(c, "roboclip")[0].model == "microsoft/xclip-base-patch32"
    assert labeler_settings(c, "gvl")[0].model == labeler_settings(c, "rgvlm")[0].model


def test_label_episode_shows_gvl_windows_with_their_shuffle(capsys):
    _, short = episodes()
    argv = ["label-episode", "--in", dataset_dir(), "--episode", short["episode_id"], "--json"]
    argv += ["--engine", "hf", "--model", hf_config()[0].model, "labeler.strategy=gvl", "labeler.window=2"]
    argv += ["labeler.overlap=0", "engine.max_new_tokens_analysis=4"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["labeler"] == "gvl" and len(out["scores"]) == len(short["actions"])
    orders = [w["shown_order"] for w in out["windows"]]
    assert sorted(orders[0]) == [1, 2] and sorted(orders[1]) == [2, 3, 4]  # window 0's frame 0 is the anchor


def test_label_plan_refuses_gvl_in_one_line(capsys):
    argv = [
        "label",
        "--plan",
        "--in",
        dataset_dir(),
        "--engine",
        "hf",
        "--model",
        "m",
        "labeler.strategy=gvl",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labeler.strategy=rgvlm only" in err[0]
