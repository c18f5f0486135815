"""The LiFT-HRA training JSON (LLaVA-style conversations), read into and written from the ratings table.

    table = read_hra_json("LiFT-HRA-data.json", questions)        # RATING_SCHEMA rows, one per conversation
    write_hra_json(table, questions, "out.json")                  # the same layout LiFT's critic trains on

Layout: a JSON list of `{"video": PATH, "conversations": [{"from": "human", "value": "<video>\\n {caption}
{question}"}, {"from": "gpt", "value": "<Rating>. <reason>"}]}`, one entry per (video, dimension). The dimension of
an entry is found by its question: `questions` maps each dimension to the exact question text the JSON uses (they
are configuration: for LiFT's own data, copy them from your LiFT checkout); the caption is the text before it.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa

from raypipe.data.manifest import ManifestError
from raypipe.data.ratings import RATING_SCHEMA, AnswerError, format_answer, parse_answer

VIDEO_TAG = "<video>"


def _human_text(value: str) -> str:
    text = value.strip()
    if text.startswith(VIDEO_TAG):
        text = text[len(VIDEO_TAG) :]
    return text.strip()


def split_question(text: str, questions: dict[str, str]) -> tuple[str, str] | None:
    """(dimension, caption) of a human turn ending with one of the questions (the longest that fits), or None."""
    hits = [(len(q), d) for d, q in questions.items() if q.strip() and text.endswith(q.strip())]
    if not hits:
        return None
    length, dim = max(hits)
    return dim, text[: len(text) - length].strip()


def _entry_rows(entry, i: int, source: str, questions: dict[str, str]) -> list[tuple]:
    if not isinstance(entry, dict) or not isinstance(entry.get("video"), str) or not entry["video"].strip():
        raise ManifestError(source, "entry needs a non-empty 'video' string", "video", i)
    turns = entry.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
        raise ManifestError(source, "'conversations' must be a list of human/gpt turn pairs", "conversations", i)
    rows = []
    for k in range(0, len(turns), 2):
        human, gpt = turns[k], turns[k + 1]
        roles = (human.get("from"), gpt.get("from")) if isinstance(human, dict) and isinstance(gpt, dict) else None
        if roles != ("human", "gpt") or not all(isinstance(t.get("value"), str) for t in (human, gpt)):
            raise ManifestError(source, f"turn {k}: expected a human then a gpt turn with text", "conversations", i)
        found = split_question(_human_text(human["value"]), questions)
        if found is None:
            raise ManifestError(
                source,
                f"turn {k}: the human turn ends with none of the configured questions ({sorted(questions)}); "
                "give the exact question text per dimension (questions.<DIM>)",
                "conversations",
                i,
            )
        try:
            rating, reason = parse_answer(gpt["value"])
        except AnswerError as e:
            raise ManifestError(source, f"turn {k + 1}: {e}", "conversations", i) from None
        rows.append((entry["video"], found[1], found[0], rating, reason))
    return rows


def read_hra_json(source: str | os.PathLike, questions: dict[str, str]) -> pa.Table:
    """The ratings table (RATING_SCHEMA) of a LiFT-HRA-style JSON; ManifestError naming the entry if malformed."""
    source = os.fspath(source)
    if not os.path.exists(source):
        raise ManifestError(source, "file not found")
    try:
        with open(source, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(source, f"unreadable JSON: {e}") from None
    if not isinstance(data, list) or not data:
        raise ManifestError(source, "must be a non-empty JSON list of conversation entries")
    rows = [row for i, entry in enumerate(data) for row in _entry_rows(entry, i, source, questions)]
    return pa.table(list(zip(*rows)), schema=RATING_SCHEMA)


def write_hra_json(ratings: pa.Table, questions: dict[str, str], path: str | os.PathLike) -> int:
    """Write the ratings table as LiFT-HRA conversations (one entry per row); returns the number of entries."""
    entries = []
    for video, prompt, dim, rating, reason in zip(*(ratings.column(k).to_pylist() for k in RATING_SCHEMA.names)):
        if dim not in questions:
            raise ValueError(f"no question configured for dimension {dim!r}")
        human = f"{VIDEO_TAG}\n {prompt} {questions[dim].strip()}"
        entries.append(
            {
                "video": video,
                "conversations": [
                    {"from": "human", "value": human},
                    {"from": "gpt", "value": format_answer(rating, reason)},
                ],
            }
        )
    with open(path, "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=1, ensure_ascii=False)
    return len(entries)
