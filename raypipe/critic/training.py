"""The critic's training pieces, without Ray: conversations of a batch of rated videos, the words a word-level
tokenizer lacks, batched generation over a held-out set, and the truth a report is scored against.

    dims_, answers = conversations(rows, dims, score_only=False)   # one (dimension, answer) per rated dimension
"""

from __future__ import annotations

from raypipe.data.ratings import format_answer
from raypipe.video.synth import ATTRIBUTES


def answer_of(row: dict, dim: str, score_only: bool) -> str | None:
    """The training target of one video on one dimension ("<Rating>. <reason>", or the rating alone in the
    score-only ablation); None when the video is unrated there."""
    rating = row.get(f"rating_{dim}")
    if rating is None:
        return None
    return format_answer(rating, None if score_only else row.get(f"reason_{dim}"))


def conversations(rows: list[dict], dims, score_only: bool) -> list[tuple[int, str, str]]:
    """(row index, dimension, answer) for every rated (video, dimension) of `rows` (LiFT: one conversation each)."""
    out = []
    for i, row in enumerate(rows):
        for dim in dims:
            answer = answer_of(row, dim, score_only)
            if answer is not None:
                out.append((i, dim, answer))
    return out


def answer_texts(rows: list[dict], dims, score_only: bool) -> list[str]:
    return [a for _, _, a in conversations(rows, dims, score_only)]


def generate_answers(critic, frames: list, prompts: list[str], dims, batch: int = 16) -> dict[str, list[str]]:
    """The critic's answer to every dimension's question for every video, `batch` videos per generate call."""
    out: dict[str, list[str]] = {d: [] for d in dims}
    for start in range(0, len(frames), batch):
        chunk = slice(start, start + batch)
        for dim in dims:
            out[dim] += critic.answer(frames[chunk], prompts[chunk], [dim] * len(frames[chunk]))
    return out


def truth_of(rows: list[dict], dims) -> dict[str, list]:
    """The ratings a report scores against: SynthPref's noise-free `gt_rating_<DIM>` where present, else the
    given ratings."""
    return {d: [r.get(f"gt_rating_{d}", r.get(f"rating_{d}")) for r in rows] for d in dims}


def synth_truth(rows: list[dict]) -> dict | None:
    """SynthPref's prompt attributes and the attributes shown, when every row has them (else None)."""
    if not rows or not all(all(r.get(f"gt_{a}") is not None for a in ATTRIBUTES) for r in rows):
        return None
    words = [r["prompt"].split() for r in rows]  # "a {color} {shape} moving {direction}"
    return {
        "prompt_attrs": [(w[1], w[2], w[4]) if len(w) == 5 else ("", "", "") for w in words],
        "shown": [tuple(r[f"gt_{a}"] for a in ATTRIBUTES) for r in rows],
    }
