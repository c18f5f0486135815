"""Online training's bookkeeping, without Ray (SPEC §9): which prompts and seeds a round uses, the weighted reward
of each sample, which transitions (GRPO) or pairs (online DPO) it trains on and how they are dealt to the ranks,
and the round's statistics line (`rounds.jsonl`).

    prompts, seeds = round_prompts(all_prompts, per_round, k, seed, round_index)   # the same on every resume
    r, ok = weighted_rewards(scores, errors, dims, weights)                         # error samples: ok False
    items = grpo_items(ok, steps, fraction, generator)                              # (sample, step) transitions
    mine = deal(items, rank, world, per_rank)                                       # the same count on every rank
"""

from __future__ import annotations

import math

import numpy as np
import torch


def round_prompts(prompts: list[str], per_round: int, k: int, seed: int, round_index: int) -> tuple[list, list]:
    """Round r's prompts: the next `per_round` of the list, wrapping around (so every prompt is used as often as
    any other), and one noise seed per sample (prompt i's k-th sample), all from (seed, r) alone."""
    start = (round_index * per_round) % len(prompts)
    chosen = [prompts[(start + i) % len(prompts)] for i in range(per_round)]
    n = per_round * k
    base = (int(seed) * 1_000_003 + int(round_index)) * max(10_007, n)  # rounds never share a seed
    seeds = [base + i for i in range(n)]
    return chosen, seeds


def weighted_rewards(scores: np.ndarray, errors: list, dims: list[str], weights: dict) -> tuple[np.ndarray, np.ndarray]:
    """(r = Σ_d w_d·score_d per sample, whether the sample counts: no error and a finite r). `weights` may name
    only some of `dims`; a weighted dimension the reward model lacks is a ValueError."""
    missing = [d for d in weights if d not in dims]
    if missing:
        raise ValueError(f"weights name {missing}, which the reward model does not score ({dims})")
    scores = np.asarray(scores, dtype=np.float64)
    r = np.zeros(len(scores))
    for d, w in weights.items():
        r += float(w) * scores[:, dims.index(d)]
    ok = np.array([e is None for e in errors]) & np.isfinite(r)
    return r, ok


def grpo_items(
    ok: np.ndarray, steps: int, fraction: float, generator: torch.Generator, allowed: list[int] | None = None
) -> list[tuple[int, int]]:
    """The transitions GRPO trains on: for each sample that counts, max(1, round(fraction·steps)) of its denoising
    steps drawn without replacement (Flow-GRPO's timestep fraction). `allowed`: only these steps may be drawn (Wan2.2
    A14B with one expert trained: the steps whose time that expert handles), at most all of them."""
    per = max(1, min(steps, round(fraction * steps)))
    pool = torch.arange(steps) if allowed is None else torch.tensor(sorted(allowed), dtype=torch.long)
    items = []
    for i in np.flatnonzero(ok).tolist():
        if len(pool) == 0:
            break
        chosen = pool[torch.randperm(len(pool), generator=generator)[:per]].sort().values.tolist()
        items += [(i, j) for j in chosen]
    return items


def deal(items: list, rank: int, world: int, per_rank: int) -> list:
    """This rank's share: items rank, rank + world, ...; then cycled to exactly `per_rank` items so every rank takes
    the same number of optimizer steps (an empty share stays empty: the rank steps with a zero loss)."""
    mine = items[rank::world]
    if not mine:
        return []
    return [mine[i % len(mine)] for i in range(per_rank)]


def per_rank_items(items: int, world: int) -> int:
    return max(1, math.ceil(items / max(1, world)))


def round_record(
    round_index: int, scores: np.ndarray, errors: list, dims: list[str], r: np.ndarray, ok: np.ndarray, oracle: list
) -> dict:
    """The statistics of a round's samples: reward mean/std per dimension and of r over the samples that count,
    errors by kind, and the oracle's mean per dimension (SynthPref prompts)."""
    good = np.asarray(scores, dtype=np.float64)[ok]
    kinds: dict[str, int] = {}
    for e in errors:
        if e is not None:
            kind = str(e).split(":", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    rec = {
        "round": round_index,
        "samples": len(errors),
        "samples_ok": int(ok.sum()),
        "errors": kinds,
        "reward_mean": {d: _round(good[:, j].mean()) if len(good) else None for j, d in enumerate(dims)},
        "reward_std": {d: _round(good[:, j].std()) if len(good) else None for j, d in enumerate(dims)},
        "weighted_mean": _round(r[ok].mean()) if ok.any() else None,
        "weighted_std": _round(r[ok].std()) if ok.any() else None,
    }
    verdicts = [v for v in oracle if v]
    if verdicts:
        rec["oracle_mean"] = {
            d: _round(np.mean([v[d] for v in verdicts if d in v])) for d in dims if any(d in v for v in verdicts)
        }
    return rec


def _round(x) -> float:
    return round(float(x), 5)


def judge_value(verdicts: list, weights: dict) -> float | None:
    """The held-out judge's view of a round: Σ_d w_d · (mean over samples of the judge's d score), over the
    dimensions it scores; None when it scored nothing."""
    verdicts = [v for v in verdicts if v]
    total, seen = 0.0, False
    for d, w in weights.items():
        values = [float(v[d]) for v in verdicts if d in v and v[d] is not None and np.isfinite(float(v[d]))]
        if values:
            total += float(w) * float(np.mean(values))
            seen = True
    return total if seen else None


def hacking_detected(rewards: list, judges: list, m: int) -> bool:
    """The guard (SPEC §9's reward-hacking stop): True when over each of the last `m` round-to-round changes the
    training reward rose while the held-out judge fell. Needs m + 1 rounds with both values; m ≤ 0: never."""
    if m <= 0 or len(rewards) < m + 1 or len(judges) < m + 1:
        return False
    r, j = rewards[-(m + 1) :], judges[-(m + 1) :]
    if any(x is None for x in (*r, *j)):
        return False
    return all(r[i + 1] > r[i] and j[i + 1] < j[i] for i in range(m))


def best_round(judges: list) -> int | None:
    """The round whose samples the judge liked best (the first of equals); None when it judged none."""
    scored = [(j, -i) for i, j in enumerate(judges) if j is not None]
    return -max(scored)[1] if scored else None
