"""SynthPref ratings with reasons (LiFT-style, SPEC §2.2 / §8), derived from each video's ground truth.

    table = pointwise_ratings(manifest, rating_noise=0.1, seed=1)    # both sides of every pair, one row per video
    reason_check("The square is green, not red.", ("red", "square", "left"), ("green", "square", "left"))  # True

Ratings per dimension: VQ and MQ from the level (Good >= 2/3 > Normal >= 1/3 > Bad), TA from the number of wrong
attributes (0 Good, 1 Normal, 2-3 Bad). Reasons say what is wrong, in the words a critic must learn to write:
"Bad. The video is very blurry and noisy." / "Normal. The motion jitters a little." / "Bad. The square is green,
not red, and the square moves up, not left." With `rating_noise` p a rating is replaced by one of the other two
with probability p (its reason kept: an annotator who wrote the right reason and clicked the wrong button).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from raypipe.video.synth import ATTRIBUTES, COLORS, DIMENSIONS, DIRECTIONS, SHAPES

RATINGS = ("Good", "Normal", "Bad")
VQ_REASONS = {
    "Good": "The video is sharp and clean.",
    "Normal": "The video is a little blurry and noisy.",
    "Bad": "The video is very blurry and noisy.",
}
MQ_REASONS = {
    "Good": "The motion is smooth.",
    "Normal": "The motion jitters a little.",
    "Bad": "The motion jitters and stutters.",
}
_KIND_OF = {**{c: "color" for c in COLORS}, **{s: "shape" for s in SHAPES}, **{d: "direction" for d in DIRECTIONS}}


def level_rating(level: float) -> str:
    """VQ / MQ level in [0, 1] -> Good (>= 2/3), Normal (>= 1/3) or Bad."""
    return "Good" if level >= 2 / 3 else "Normal" if level >= 1 / 3 else "Bad"


def ta_rating(wrong: int) -> str:
    """Number of attributes that contradict the prompt -> Good (0), Normal (1) or Bad (2 or 3)."""
    return "Good" if wrong == 0 else "Normal" if wrong == 1 else "Bad"


def ta_reason(prompt_attrs, shown) -> str:
    """What the video shows against what the prompt asked, naming each wrong attribute."""
    (pc, ps, pd), (c, s, d) = prompt_attrs, shown
    if (c, s, d) == (pc, ps, pd):
        return f"It is a {c} {s} moving {d}, as the prompt says."
    clauses = []
    if s != ps:
        clauses.append(f"it is a {s}, not a {ps}")
    if c != pc:
        clauses.append(f"the {s} is {c}, not {pc}")
    if d != pd:
        clauses.append(f"the {s} moves {d}, not {pd}")
    text = ", and ".join(clauses) + "."
    return text[0].upper() + text[1:]


def video_ratings(vq: float, mq: float, prompt_attrs, shown) -> dict[str, tuple[str, str]]:
    """{dimension: (rating, reason)} of one video from its ground truth."""
    wrong = sum(a != b for a, b in zip(prompt_attrs, shown))
    return {
        "VQ": (level_rating(vq), VQ_REASONS[level_rating(vq)]),
        "MQ": (level_rating(mq), MQ_REASONS[level_rating(mq)]),
        "TA": (ta_rating(wrong), ta_reason(prompt_attrs, shown)),
    }


def _prompt_attrs(prompt: str) -> tuple[str, str, str]:
    words = prompt.split()  # "a {color} {shape} moving {direction}"
    return words[1], words[2], words[4]


def pointwise_ratings(manifest: pa.Table, rating_noise: float = 0.0, seed: int = 0) -> pa.Table:
    """SPEC §2.2 pointwise rows for both videos of every pair of a SynthPref manifest: `path`, `prompt`, one rating
    column per dimension, `reason_<DIM>`, and the ground truth (`gt_vq`, `gt_mq`, `gt_ta`, `gt_color`, `gt_shape`,
    `gt_direction`, `gt_rating_<DIM>` before noise). Pair i's noise draws from `default_rng([seed, i, 3])`."""
    if not 0.0 <= rating_noise <= 1.0:
        raise ValueError(f"rating_noise must lie in [0, 1], got {rating_noise}")
    cols: dict[str, list] = {}
    data = manifest.to_pydict()
    for i in range(manifest.num_rows):
        rng = np.random.default_rng([seed, i, 3])
        flips, picks = rng.random((2, len(DIMENSIONS))), rng.integers(2, size=(2, len(DIMENSIONS)))
        prompt = data["prompt"][i]
        attrs = _prompt_attrs(prompt)
        for k, side in enumerate("AB"):
            shown = tuple(data[f"gt_{a}_{side}"][i] for a in ATTRIBUTES)
            truth = video_ratings(data[f"gt_vq_{side}"][i], data[f"gt_mq_{side}"][i], attrs, shown)
            row = {"path": data[f"path_{side}"][i], "prompt": prompt}
            for d, dim in enumerate(DIMENSIONS):
                rating, reason = truth[dim]
                if flips[k, d] < rating_noise:
                    rating = [r for r in RATINGS if r != rating][picks[k, d]]
                row[dim], row[f"reason_{dim}"], row[f"gt_rating_{dim}"] = rating, reason, truth[dim][0]
            row.update({f"gt_{g}": data[f"gt_{g}_{side}"][i] for g in ("vq", "mq", "ta", *ATTRIBUTES)})
            for key, value in row.items():
                cols.setdefault(key, []).append(value)
    return pa.table(cols)


def reason_claims(reason: str) -> dict[str, tuple[str, str]]:
    """What a reason says is wrong: {attribute kind: (shown value, the prompt's value)} from each "X, not Y"."""
    words = re.findall(r"[a-z]+", str(reason).lower())
    claims = {}
    for i, w in enumerate(words):
        if w != "not" or i == 0 or i + 1 >= len(words):
            continue
        after = words[i + 2] if words[i + 1] == "a" and i + 2 < len(words) else words[i + 1]
        before = words[i - 1]
        kind = _KIND_OF.get(before)
        if kind is not None and _KIND_OF.get(after) == kind:
            claims[kind] = (before, after)
    return claims


def reason_check(reason: str, prompt_attrs, shown) -> bool:
    """True when the reason names exactly the wrong attributes, each with the value the video really shows."""
    truth = {k: (s, p) for k, p, s in zip(ATTRIBUTES, prompt_attrs, shown) if p != s}
    return reason_claims(reason) == truth


def reason_names_some(reason: str, prompt_attrs, shown) -> bool:
    """True when the reason names at least one wrong attribute with the value shown and every claim it makes is
    true; unlike `reason_check` it may leave other wrong attributes out (the looser reading of "names the wrong
    attribute")."""
    truth = {k: (s, p) for k, p, s in zip(ATTRIBUTES, prompt_attrs, shown) if p != s}
    claims = reason_claims(reason)
    return bool(claims) and all(truth.get(k) == v for k, v in claims.items())
