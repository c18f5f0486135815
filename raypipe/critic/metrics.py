"""How good a critic is: held-out rating accuracy per dimension (answers parsed exactly, SPEC §8), the confusion
matrix, and on SynthPref whether its TA reasons name the wrong attributes (`video.synth_ratings.reason_check`).

    report = critic_report(answers, truth, dims, synth=rows)   # answers[dim][i]: text; truth[dim][i]: rating
"""

from __future__ import annotations

from raypipe.data.ratings import RATINGS, AnswerError, parse_answer


def parse_all(answers: list[str]) -> tuple[list[str | None], list[str | None], int]:
    """(ratings, reasons, unparsable count): an unparsable answer has rating None (never a silent Good)."""
    ratings, reasons, bad = [], [], 0
    for text in answers:
        try:
            rating, reason = parse_answer(text)
        except AnswerError:
            rating, reason, bad = None, None, bad + 1
        ratings.append(rating), reasons.append(reason)
    return ratings, reasons, bad


def rating_accuracy(predicted: list[str | None], truth: list[str | None]) -> dict:
    """Accuracy over the rows that have a true rating (an unparsable answer counts as wrong), the number of such
    rows, the confusion matrix {true: {predicted | "unparsable": count}}, and `correct`: per input row 1 / 0, or
    None where the row has no true rating (aligned with the input, so a bench can bootstrap over videos)."""
    rows = [(p, t) for p, t in zip(predicted, truth) if t in RATINGS]
    confusion = {t: {p: 0 for p in (*RATINGS, "unparsable")} for t in RATINGS}
    for p, t in rows:
        confusion[t][p if p in RATINGS else "unparsable"] += 1
    correct = [int(p == t) if t in RATINGS else None for p, t in zip(predicted, truth)]
    return {
        "accuracy": sum(p == t for p, t in rows) / len(rows) if rows else float("nan"),
        "n": len(rows),
        "confusion": confusion,
        "correct": correct,
    }


def reason_quality(reasons: list[str | None], prompt_attrs: list, shown: list) -> dict:
    """On videos with at least one wrong attribute: the share whose reason names exactly the wrong attributes with
    the values shown (`reason_check`), and the looser share whose reason names at least one of them correctly and
    nothing that is not wrong; on videos with none: the share whose reason claims nothing wrong."""
    from raypipe.video.synth_ratings import reason_check, reason_claims, reason_names_some

    wrong_ok, some_ok, wrong_n, clean_ok, clean_n = 0, 0, 0, 0, 0
    for reason, p, s in zip(reasons, prompt_attrs, shown):
        if tuple(p) != tuple(s):
            wrong_n += 1
            wrong_ok += reason is not None and reason_check(reason, p, s)
            some_ok += reason is not None and reason_names_some(reason, p, s)
        else:
            clean_n += 1
            clean_ok += reason is not None and not reason_claims(reason)
    return {
        "names_wrong_attributes": wrong_ok / wrong_n if wrong_n else float("nan"),
        "names_some_wrong_attribute": some_ok / wrong_n if wrong_n else float("nan"),
        "videos_with_wrong_attributes": wrong_n,
        "no_false_claims": clean_ok / clean_n if clean_n else float("nan"),
        "videos_without": clean_n,
    }


def critic_report(answers: dict[str, list[str]], truth: dict[str, list], dims, synth: dict | None = None) -> dict:
    """Per dimension: accuracy, n, confusion, unparsable; with `synth` (SynthPref ground truth: `prompt_attrs` and
    `shown` per video, aligned with the TA answers) the TA reason quality; `mean_accuracy` over dimensions."""
    out: dict = {}
    for dim in dims:
        ratings, reasons, bad = parse_all(answers[dim])
        out[dim] = {**rating_accuracy(ratings, truth[dim]), "unparsable": bad}
        if synth is not None and dim == "TA":
            out[dim]["reasons"] = reason_quality(reasons, synth["prompt_attrs"], synth["shown"])
    accs = [out[d]["accuracy"] for d in dims if out[d]["n"]]
    out["mean_accuracy"] = sum(accs) / len(accs) if accs else float("nan")
    return out
