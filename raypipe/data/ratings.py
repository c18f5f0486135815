"""LiFT-style ratings (SPEC §8): Good / Normal / Bad per dimension with a free-text reason.

    parse_answer("Bad. The square is green, not red.")      # ("Bad", "The square is green, not red.")
    lift_weight({"VQ": "Good", "MQ": "Bad", "TA": "Normal"})  # (0.9 + 0.05 + 0.2) / 3
    table = ratings_table(read_pointwise_ratings("ratings.parquet", dims))   # one row per (video, dimension)

One table shape for every source of ratings (`RATING_SCHEMA`): `path`, `prompt`, `dimension`, `rating`, `reason`.
The LiFT-HRA training JSON (`raypipe.data.hra`) and a SPEC §2.2 pointwise manifest with `reason_<DIM>` columns both
read into it; `by_video` turns it into one row per video with `rating_<DIM>` / `reason_<DIM>` (what the critic
trains on and what critic relabelling writes).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import pyarrow as pa

RATINGS = ("Good", "Normal", "Bad")
DEFAULT_WEIGHT_MAP = {"Good": 0.9, "Normal": 0.2, "Bad": 0.05}
RATING_SCORES = {"Good": 3, "Normal": 2, "Bad": 1}  # SPEC §2.2: Good/Normal/Bad <-> 3/2/1
RATING_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("prompt", pa.string()),
        ("dimension", pa.string()),
        ("rating", pa.string()),
        ("reason", pa.string()),
    ]
)
_BY_WORD = {r.lower(): r for r in RATINGS}
_FIRST_WORD = re.compile(r"\s*(\S+)")
_TRAILING_PUNCTUATION = ".,;:!?)]}\"'"


class AnswerError(ValueError):
    """A critic answer whose first word is not a rating (an error row, never a silent Good)."""

    kind = "unparsable_answer"


def parse_rating(answer) -> str:
    """The rating of a critic answer: its FIRST whitespace-separated word, case-insensitive, trailing punctuation
    stripped, equal to Good, Normal or Bad (SPEC §8). "Goodness." or "Not bad" are errors, not Good / Bad."""
    if not isinstance(answer, str):
        raise AnswerError(f"answer must be text, got {type(answer).__name__}")
    m = _FIRST_WORD.match(answer)
    word = m.group(1).rstrip(_TRAILING_PUNCTUATION).lower() if m else ""
    if word not in _BY_WORD:
        shown = answer if len(answer) <= 80 else answer[:77] + "..."
        raise AnswerError(f"the answer does not start with Good, Normal or Bad: {shown!r}")
    return _BY_WORD[word]


def parse_answer(answer) -> tuple[str, str]:
    """(rating, reason): the reason is the text after the rating word and its punctuation, stripped."""
    rating = parse_rating(answer)
    m = _FIRST_WORD.match(answer)
    rest = answer[m.end() :]
    return rating, rest.lstrip(_TRAILING_PUNCTUATION + " \t\n").strip()


def format_answer(rating: str, reason: str | None) -> str:
    """The critic's training target: "<Rating>. <reason>" (just "<Rating>." without a reason)."""
    if rating not in RATINGS:
        raise ValueError(f"rating must be one of {RATINGS}, got {rating!r}")
    reason = (reason or "").strip()
    return f"{rating}. {reason}" if reason else f"{rating}."


def rating_of(value) -> str | None:
    """A manifest cell as a rating: Good/Normal/Bad (any case, trailing punctuation allowed) or 3/2/1; anything
    else (other numbers, text, null) -> None (unrated for that dimension)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and (math.isnan(value) or value != int(value)):
            return None
        return {v: k for k, v in RATING_SCORES.items()}.get(int(value))
    text = str(value).strip()
    try:
        return parse_rating(text) if len(text.split()) == 1 else None
    except AnswerError:
        try:
            return rating_of(float(text))
        except ValueError:
            return None


def check_weight_map(weight_map: Mapping) -> dict[str, float]:
    """The rating -> weight map, complete and finite (ValueError otherwise)."""
    missing = [r for r in RATINGS if r not in weight_map]
    extra = [k for k in weight_map if k not in RATINGS]
    bad = [k for k, v in weight_map.items() if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0]
    if missing or extra or bad:
        raise ValueError(f"weight map must give Good, Normal and Bad a finite weight >= 0; got {dict(weight_map)}")
    return {r: float(weight_map[r]) for r in RATINGS}


def lift_weight(ratings: Mapping[str, str | None], weight_map: Mapping | None = None) -> float | None:
    """A video's LiFT weight: the mean over its dimensions of the rating's weight (default Good 0.9, Normal 0.2,
    Bad 0.05). None when any dimension is unrated: a missing rating is never scored as a default."""
    wm = check_weight_map(weight_map or DEFAULT_WEIGHT_MAP)
    values = list(ratings.values())
    if not values or any(v not in wm for v in values):
        return None
    return sum(wm[v] for v in values) / len(values)


def read_pointwise_ratings(table: pa.Table, dimensions, source: str = "manifest") -> pa.Table:
    """A SPEC §2.2 pointwise table (`path`, `prompt`, one rating column per dimension, optional `reason_<DIM>`)
    -> the ratings table, one row per (video, rated dimension), in manifest order then dimension order."""
    from raypipe.data.manifest import ManifestError

    names = set(table.column_names)
    for column in ("path", "prompt"):
        if column not in names:
            raise ManifestError(source, f"required column is missing (have {sorted(names)})", column)
    dims = [d for d in dimensions if d in names]
    if not dims:
        raise ManifestError(source, f"no rating column for any configured dimension {list(dimensions)}")
    rows: dict[str, list] = {k: [] for k in RATING_SCHEMA.names}
    paths, prompts = table.column("path").to_pylist(), table.column("prompt").to_pylist()
    cols = {d: table.column(d).to_pylist() for d in dims}
    reasons = {d: table.column(f"reason_{d}").to_pylist() if f"reason_{d}" in names else None for d in dims}
    for i, (path, prompt) in enumerate(zip(paths, prompts)):
        for d in dims:
            rating = rating_of(cols[d][i])
            if rating is None:
                continue
            reason = reasons[d][i] if reasons[d] is not None else None
            for k, v in zip(RATING_SCHEMA.names, (path, prompt or "", d, rating, (reason or "").strip())):
                rows[k].append(v)
    if not rows["path"]:
        raise ManifestError(source, "no row has a rating this reader understands (Good/Normal/Bad or 3/2/1)")
    return pa.table(rows, schema=RATING_SCHEMA)


def by_video(ratings: pa.Table, dimensions) -> pa.Table:
    """One row per (path, prompt) in first-seen order: `path`, `prompt`, `rating_<DIM>`, `reason_<DIM>` (null
    where a dimension is unrated). A video rated twice on one dimension is an error (which rating is meant?)."""
    index: dict[tuple[str, str], int] = {}
    out: dict[str, list] = {"path": [], "prompt": []}
    for d in dimensions:
        out[f"rating_{d}"], out[f"reason_{d}"] = [], []
    for path, prompt, dim, rating, reason in zip(*(ratings.column(k).to_pylist() for k in RATING_SCHEMA.names)):
        if dim not in dimensions:
            continue
        key = (path, prompt)
        if key not in index:
            index[key] = len(out["path"])
            out["path"].append(path), out["prompt"].append(prompt)
            for d in dimensions:
                out[f"rating_{d}"].append(None), out[f"reason_{d}"].append(None)
        i = index[key]
        if out[f"rating_{dim}"][i] is not None:
            raise ValueError(f"video {path!r} (prompt {prompt!r}) is rated twice on {dim}")
        out[f"rating_{dim}"][i], out[f"reason_{dim}"][i] = rating, reason
    return pa.table({k: pa.array(v, pa.string()) for k, v in out.items()})


def load_ratings(source: str, dimensions, questions: Mapping[str, str], video_root: str | None = None) -> pa.Table:
    """Ratings from a LiFT-HRA JSON (`.json`) or a pointwise manifest (.parquet / .csv), as `by_video` rows (one per
    video: `path`, `prompt`, `rating_<DIM>`, `reason_<DIM>`) plus the resolved `uri`, and `row_id`. Extra columns of a
    manifest with one row per video (e.g. SynthPref's gt_*) are kept.
    ManifestError before any cluster work if unusable."""
    from raypipe.data.hra import read_hra_json
    from raypipe.data.manifest import ManifestError, default_root, read_table
    from raypipe.video.source import join_uri

    source = str(source)
    if source.lower().endswith(".json"):
        long = read_hra_json(source, dict(questions))
        extra = None
    else:
        table = read_table(source)
        long = read_pointwise_ratings(table, dimensions, source)
        extra = table
    try:
        wide = by_video(long, list(dimensions))
    except ValueError as e:
        raise ManifestError(source, str(e)) from None
    if extra is not None and extra.num_rows == wide.num_rows:  # one row per video already: keep its other columns
        keep = [c for c in extra.column_names if c not in wide.column_names and c not in dimensions]
        keep = [c for c in keep if not c.startswith("reason_")]
        for c in keep:
            wide = wide.append_column(c, extra.column(c))
    root = video_root or default_root(source)
    wide = wide.append_column("uri", pa.array([join_uri(root, p) for p in wide.column("path").to_pylist()]))
    return wide.append_column("row_id", pa.array(range(wide.num_rows), pa.int64()))
