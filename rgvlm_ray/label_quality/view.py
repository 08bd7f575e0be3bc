"""`rgvlm view`: a sample of labeled episodes as self-contained HTML pages, to judge the labels by eye.

One page per episode: the goal and outcome; the frames as a strip, one column per observation, each action under
the observation it was taken from; per labeler (label set), each step's score as a bar, null steps marked with
their status; and each window's stage-1 analysis spanning the steps that window scored (its `_window` steps).
Pages need no server and no network: frames are inline `data:` PNGs, styles inline, no script at all, and a
Content-Security-Policy forbids scripts and every outside load even if some text slipped through. Every dataset
or model text (goal, actions, analyses, ids, messages) is escaped, with control and invisible characters shown
as `\\uXXXX`, so a goal holding `<script>` or a bidi override shows as those characters.
"""

from __future__ import annotations

import hashlib
import html
import io
import random
import re
import unicodedata
from dataclasses import dataclass

from PIL import Image

from rgvlm_ray import storage
from rgvlm_ray.config import Config, LabelerConfig
from rgvlm_ray.data import format as fmt
from rgvlm_ray.data.actions import action_space
from rgvlm_ray.errors import UsageError
from rgvlm_ray.labelers import prompts
from rgvlm_ray.labelers.action_text import action_texts, with_space
from rgvlm_ray.labelers.images import data_url, downscale
from rgvlm_ray.labelstore.join import Source

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
HIDDEN = (
    "Cc",
    "Cf",
    "Cs",
    "Co",
    "Cn",
    "Zl",
    "Zp",
)  # control, format (bidi, zero-width), surrogate, private, ...
CELL_PX = 120
SCORE_RANGES = {"rgvlm": (0.0, 10.0)}  # fixed scales; other labelers' bars span the episode's own range

STYLE = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }}
h1 {{ font-size: 18px; margin: 0 0 8px; }}
dl {{ display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0 0 12px; }}
dt {{ font-weight: 600; }} dd {{ margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }}
.scroll {{ overflow-x: auto; border: 1px solid #ccc; padding: 4px; }}
.grid {{ display: grid; grid-auto-columns: {CELL_PX}px; gap: 2px; align-items: end; }}
.cell {{ font-size: 12px; overflow: hidden; overflow-wrap: anywhere; }}
.head {{ color: #666; font-size: 11px; }}
.frame {{ width: {CELL_PX - 8}px; image-rendering: pixelated; border: 1px solid #999; display: block; }}
.bad {{ height: {CELL_PX - 8}px; background: #fdd; display: flex; align-items: center; justify-content: center; }}
.barbox {{ height: 60px; position: relative; background: #f3f3f3; }}
.bar {{ position: absolute; bottom: 0; left: 20%; width: 60%; background: #3a7bd5; }}
.val {{ position: absolute; top: 0; width: 100%; text-align: center; font-size: 11px; }}
.null {{ height: 60px; background: repeating-linear-gradient(45deg, #fbb, #fbb 6px, #fee 6px, #fee 12px);
  display: flex; align-items: center; justify-content: center; font-size: 11px; color: #900; }}
.label {{ font-weight: 600; font-size: 12px; align-self: center; }}
.analysis {{ background: #fff8dc; border: 1px solid #e0c870; padding: 4px; font-size: 12px; white-space: pre-wrap;
  overflow-wrap: anywhere; max-height: 220px; overflow-y: auto; align-self: stretch; }}
.missing {{ color: #900; font-style: italic; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
"""


def text(value: object, keep_newlines: bool = False) -> str:
    """Any text as HTML character data: markup escaped, control and invisible characters shown as \\uXXXX."""
    return html.escape(visible(value, keep_newlines), quote=True)


def visible(value: object, keep_newlines: bool = False) -> str:
    """Control and invisible characters as \\uXXXX, so they show (on a page or a terminal) instead of acting."""
    out = []
    for ch in "" if value is None else str(value):
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in HIDDEN:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "".join(out)


def page_name(episode_id: str) -> str:
    """A file name any id maps to, one per id (the hash keeps ids that differ only in odd characters apart)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", episode_id)[:60].lstrip(".") or "episode"
    return f"{stem}-{hashlib.sha256(episode_id.encode()).hexdigest()[:8]}.html"


def frame_html(png: bytes | None, index: int, size: int) -> str:
    try:
        with Image.open(io.BytesIO(png or b"")) as im:
            im.load()
            url = data_url(downscale(im.convert("RGB"), size))
    except Exception:  # PIL raises many types for corrupt input
        return f'<div class="frame bad" title="observation {index}">frame {index} does not decode</div>'
    return f'<img class="frame" alt="observation {index}" title="observation {index}" src="{url}">'


@dataclass
class LabelerRows:
    name: str
    score: list
    reward: list
    status: list
    message: list
    window: list
    analysis: list
    episode_status: str
    episode_error: str


def labeler_rows(row: dict, name: str, t: int) -> LabelerRows:
    def col(suffix: str, default):
        value = row.get(fmt.label_column(name, suffix))
        return default if value is None else value

    return LabelerRows(
        name,
        score=list(col("score", [None] * t)),
        reward=list(col("reward", [None] * t)),
        status=list(col("status", [""] * t)),
        message=list(col("message", [""] * t)),
        window=list(col("window", [None] * t)),
        analysis=list(col("analysis", [])),
        episode_status=str(col("episode_status", "")),
        episode_error=str(col("episode_error", "")),
    )


def score_range(lab: LabelerRows) -> tuple[float, float]:
    if lab.name in SCORE_RANGES:
        return SCORE_RANGES[lab.name]
    values = [float(s) for s in lab.score if s is not None]
    lo, hi = min([0.0, *values]), max([0.0, *values])
    return lo, hi if hi > lo else lo + 1.0


def bars_html(lab: LabelerRows, row_index: int) -> list[str]:
    lo, hi = score_range(lab)
    cells = []
    for i, s in enumerate(lab.score):
        place = f'style="grid-row: {row_index}; grid-column: {i + 1}"'
        if s is None:
            why = f"step {i + 1}: {lab.status[i] or 'unscored'}" + (
                f": {lab.message[i]}" if lab.message[i] else ""
            )
            cells.append(
                f'<div class="cell null" {place} title="{text(why)}">null {text(lab.status[i])}</div>'
            )
            continue
        height = max(0.0, min(100.0, 100.0 * (float(s) - lo) / (hi - lo)))
        reward = lab.reward[i]
        tip = f"step {i + 1}: score {float(s):g}" + ("" if reward is None else f", reward {float(reward):g}")
        cells.append(
            f'<div class="cell barbox" {place} title="{text(tip)}"><div class="bar" style="height: {height:.1f}%">'
            f'</div><div class="val">{float(s):.3g}</div></div>'
        )
    return cells


def analysis_html(lab: LabelerRows, row_index: int) -> list[str]:
    """Each window's analysis across the steps it scored (contiguous in `_window`); none for a labeler that
    writes no analyses (clip, oracle)."""
    if not lab.analysis:
        return []
    spans: dict[int, list[int]] = {}
    for step, w in enumerate(lab.window):
        if w is not None:
            spans.setdefault(int(w), []).append(step)
    cells = []
    for w, steps in sorted(spans.items()):
        first, last = min(steps), max(steps)
        analysis = lab.analysis[w] if 0 <= w < len(lab.analysis) else None
        body = (
            text(analysis, keep_newlines=True)
            if analysis is not None
            else '<span class="missing">no analysis: stage 1 failed</span>'
        )
        cells.append(
            f'<div class="analysis" style="grid-row: {row_index}; grid-column: {first + 1} / {last + 2}">'
            f"<b>window {w}, steps {first + 1}–{last + 1}</b>\n{body}</div>"
        )
    return cells


def outcome(row: dict) -> str:
    rewards = [float(r) for r in row.get("rewards") or [] if r is not None]
    end = "terminated" if row.get("terminated") else "truncated" if row.get("truncated") else "not ended"
    parts = [end, f"return {sum(rewards):.3g}"]
    progress, k = row.get("progress"), row.get("num_subtasks")
    if progress and k is not None:
        parts.append(f"{progress[-1]} of {k} sub-tasks done")
    if row.get("terminated") and sum(rewards) > 0:
        parts.insert(0, "success")
    return ", ".join(parts)


GOAL_FOLD_CHARS = 400  # a longer goal shows its start; the whole text is behind a <details>


def goal_html(goal: str | None, max_goal_chars: int) -> str:
    """The goal, folded when long, and how much of it the judge read (prompts.sanitize cuts it)."""
    whole = "" if goal is None else str(goal)
    cleaned = len(prompts.sanitize(whole, len(whole) + 1))
    seen = ""
    if cleaned > max_goal_chars:
        seen = (
            f'<br><span class="head">the judge saw only its first {max_goal_chars - 1:,} characters (of '
            f"{cleaned:,} after cleaning up: labeler.max_goal_chars={max_goal_chars})</span>"
        )
    if len(whole) <= GOAL_FOLD_CHARS and whole.count("\n") < 4:
        return text(whole) + seen
    start = "\n".join(whole[:GOAL_FOLD_CHARS].split("\n")[:3])
    return (
        f"{text(start)}…{seen}<details><summary>the whole goal ({len(whole):,} characters)</summary>"
        f"{text(whole)}</details>"
    )


def episode_page(row: dict, shard: str, labelers: list[str], lcfg: LabelerConfig, frame_size: int) -> str:
    t = len(row.get("actions") or [])
    try:
        actions = action_texts(row, lcfg)  # as the judge read them
    except ValueError as exc:
        actions = [f"(actions cannot be shown: {exc})"] + [""] * t
    frames = row.get(lcfg.view) or row.get("frames") or []
    labs = [labeler_rows(row, name, t) for name in labelers]
    eid = text(row.get("episode_id"))
    cells = [
        f'<div class="cell head" style="grid-row: 1; grid-column: {i + 1}">obs {i}</div>'
        for i in range(len(frames))
    ]
    cells += [
        f'<div class="cell" style="grid-row: 2; grid-column: {i + 1}">{frame_html(png, i, frame_size)}</div>'
        for i, png in enumerate(frames)
    ]
    cells += [
        f'<div class="cell" style="grid-row: 3; grid-column: {i + 1}" title="step {i + 1}">'
        f"<b>{i + 1}</b> → {text(a)}</div>"
        for i, a in enumerate(actions[:t])
    ]
    row_index = 4
    legend = []
    for lab in labs:
        lo, hi = score_range(lab)
        nulls = sum(s is None for s in lab.score)
        legend.append(
            f"<tr><td>{text(lab.name)}</td><td>{text(lab.episode_status)}"
            + (f": {text(lab.episode_error)}" if lab.episode_error else "")
            + f"</td><td>{lo:g}–{hi:g}</td><td>{nulls}</td><td>{len(lab.analysis)}</td></tr>"
        )
        cells.append(
            f'<div class="label" style="grid-row: {row_index}; grid-column: 1 / -1">{text(lab.name)} score</div>'
        )
        cells += bars_html(lab, row_index + 1)
        cells += analysis_html(lab, row_index + 2)
        row_index += 3
    goal = goal_html(row.get("goal"), lcfg.max_goal_chars)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>episode {eid}</title><style>{STYLE}</style></head>
<body>
<h1>episode {eid}</h1>
<dl>
<dt>goal</dt><dd class="goal">{goal}</dd>
<dt>outcome</dt><dd>{text(outcome(row))}</dd>
<dt>actions</dt><dd>{t}</dd>
<dt>shard</dt><dd>{text(shard)}</dd>
</dl>
<table><tr><th>labeler</th><th>episode status</th><th>bar scale</th><th>null steps</th><th>analyses</th></tr>
{"".join(legend) or '<tr><td colspan="5">no labels joined: pass --labels</td></tr>'}</table>
<p class="head">Each column is one observation; the action below it is the one taken from it. A window's analysis
spans the steps whose score that window gave.</p>
<div class="scroll"><div class="grid" style="grid-template-columns: repeat({max(1, len(frames), t)}, {CELL_PX}px)">
{chr(10).join(cells)}
</div></div>
</body></html>
"""


def index_page(entries: list[dict]) -> str:
    rows = "".join(
        f'<tr><td><a href="{text(e["page"])}">{text(e["episode_id"])}</a></td><td>{text(short(e["goal"]))}</td>'
        f"<td>{e['actions']}</td><td>{text(e['outcome'])}</td><td>{text(', '.join(e['labelers']))}</td></tr>"
        for e in entries
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>labeled episodes</title><style>{STYLE}</style></head>
<body><h1>{len(entries)} labeled episodes</h1>
<table><tr><th>episode</th><th>goal</th><th>actions</th><th>outcome</th><th>labelers</th></tr>{rows}</table>
</body></html>
"""


def short(goal: str) -> str:
    return goal if len(goal) <= GOAL_FOLD_CHARS else goal[:GOAL_FOLD_CHARS] + f"… ({len(goal):,} characters)"


def pick(source: Source, episodes: int, wanted: list[str], seed: int) -> dict[str, list[str]]:
    """Per raw shard, the episode ids to show: `wanted`, or a seeded sample of `episodes`, in input order."""
    ids = {
        shard: source.read(shard, ["episode_id"]).column("episode_id").to_pylist()  # validated: UTF-8 ids
        for shard in source.shards()
    }
    everything = [(shard, eid) for shard, eps in ids.items() for eid in eps]
    if wanted:
        chosen = [(s, e) for s, e in everything if e in set(wanted)]
        missing = set(wanted) - {e for _, e in chosen}
        if missing:
            examples = ", ".join(e for _, e in everything[:3])
            raise UsageError(
                f"episode(s) {', '.join(sorted(missing))} not in {source.raw}; ids look like: {examples}"
            )
    else:
        if episodes < 1:
            raise UsageError(f"--episodes must be at least 1, got {episodes}")
        picked = set(random.Random(seed).sample(range(len(everything)), min(episodes, len(everything))))
        chosen = [p for i, p in enumerate(everything) if i in picked]
    out: dict[str, list[str]] = {}
    for shard, eid in chosen:
        out.setdefault(shard, []).append(eid)
    return out


def write_pages(cfg: Config) -> dict:
    vc = cfg.view
    source = Source(vc.in_path, list(vc.labels), cfg.storage)
    out = vc.out.rstrip("/") if storage.is_remote(vc.out) else vc.out
    entries = []
    for shard, ids in pick(source, vc.episodes, list(vc.episode), vc.seed).items():
        table = source.read(shard)
        labelers = fmt.labelers_in_columns(table.column_names)
        wanted = set(ids)
        for row in with_space(table.to_pylist(), action_space(fmt.read_schema(shard, cfg.storage))):
            if row["episode_id"] not in wanted:
                continue
            name = page_name(row["episode_id"])
            page = episode_page(row, source.name(shard), labelers, cfg.labeler, vc.frame_size)
            with storage.atomic_open(storage.join(out, name), cfg.storage) as f:
                f.write(page.encode("utf-8"))
            entries.append(
                {
                    "episode_id": row["episode_id"],
                    "page": name,
                    "goal": row.get("goal") or "",
                    "actions": len(row.get("actions") or []),
                    "frames": len(row.get(cfg.labeler.view) or row.get("frames") or []),
                    "outcome": outcome(row),
                    "labelers": labelers,
                }
            )
    with storage.atomic_open(storage.join(out, "index.html"), cfg.storage) as f:
        f.write(index_page(entries).encode("utf-8"))
    return {"out": out, "index": storage.join(out, "index.html"), "episodes": entries}
