"""Flow-GRPO's pieces against closed forms: the SDE keeps the ODE's marginals (a 1-D Gaussian data set whose exact
velocity is known), a = 0 is the Euler step, log-probabilities and the KL against torch.distributions, advantages
and the clipped loss by hand, online Flow-DPO's best-vs-worst pairs."""

import math

import pytest
import torch

from raypipe.flow.grpo import (
    best_worst,
    gaussian_kl,
    group_advantages,
    grpo_loss,
    sample_sde,
    sde_mean_std,
    sde_step,
    step_log_prob,
)
from raypipe.flow.sampler import sample


def exact_velocity(s: float):
    """Data x0 ~ N(0, s²): x_t = (1−t)x0 + t·ε ~ N(0, (1−t)²s² + t²) and v(x, t) = E[ε − x0 | x_t] =
    x·(t − (1−t)s²) / ((1−t)²s² + t²)."""

    def v(x, t, text):
        tt = t.reshape(-1, *([1] * (x.dim() - 1)))
        return x * (tt - (1 - tt) * s**2) / ((1 - tt) ** 2 * s**2 + tt**2)

    return v


@pytest.mark.parametrize("a", [0.0, 0.5, 0.9])
def test_the_sde_keeps_the_odes_marginals(a):
    s = 0.5
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20000, 1, generator=g)
    out = sample_sde(exact_velocity(s), torch.zeros(20000, 1), None, noise, steps=100, a=a, generator=g)
    assert out.states.shape == (20000, 101, 1) and out.log_probs.shape == (20000, 100)
    assert torch.equal(out.states[:, 0], noise) and torch.equal(out.states[:, -1], out.latents)
    assert abs(float(out.latents.std()) - s) < 0.03 * s  # the data's std, whatever the noise level
    mid = out.states[:, 50]  # t = 0.5: std sqrt(0.25 s² + 0.25)
    assert abs(float(mid.std()) - math.sqrt(0.25 * s**2 + 0.25)) < 0.02


def test_a_zero_is_the_euler_step_and_the_ode_sampler():
    v = exact_velocity(0.7)
    x = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(1))
    vt = v(x, torch.full((4,), 0.6), None)
    x_next, mean, std = sde_step(x, vt, 0.6, 0.5, a=0.0, noise=torch.randn_like(x))
    assert torch.allclose(x_next, x - 0.1 * vt, atol=1e-6) and torch.all(std == 0)
    noise = torch.randn(3, 2, generator=torch.Generator().manual_seed(2))
    ode = sample(v, torch.zeros(3, 1), None, noise.shape, steps=12, shift=3.0, noise=noise)
    sde = sample_sde(v, torch.zeros(3, 1), None, noise, steps=12, a=0.0, shift=3.0).latents
    assert torch.allclose(ode, sde, atol=1e-5)


def test_transition_mean_std_log_prob_and_kl_by_closed_form():
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    t, t_next, a = 0.8, 0.7, 0.6
    mean, std = sde_mean_std(x, v, t, t_next, a, t_cap=0.99)
    sigma = a * math.sqrt(t / (1 - t))
    want = x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * (t_next - t)
    assert torch.allclose(mean, want, atol=1e-6)
    assert torch.allclose(std, torch.tensor(sigma * math.sqrt(t - t_next)), atol=1e-6)
    x_next = mean + std * torch.randn(2, 5, generator=g)
    normal = torch.distributions.Normal(mean, std.expand_as(mean))
    assert torch.allclose(step_log_prob(x_next, mean, std), normal.log_prob(x_next).mean(dim=1), atol=1e-5)
    mean_ref = mean + 0.1 * torch.randn(2, 5, generator=g)
    ref = torch.distributions.Normal(mean_ref, std.expand_as(mean))
    kl = torch.distributions.kl_divergence(normal, ref).mean(dim=1)
    assert torch.allclose(gaussian_kl(mean, mean_ref, std), kl, atol=1e-5)
    assert torch.all(gaussian_kl(mean, mean, std) == 0)
    # at t = 1 σ is taken at the cap (the grid's next time), so the step is finite
    m1, s1 = sde_mean_std(x, v, 1.0, 0.9, a, t_cap=0.9)
    assert torch.isfinite(m1).all() and torch.allclose(s1, torch.tensor(a * math.sqrt(0.9 / 0.1) * math.sqrt(0.1)))


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 0.0, 4.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    adv = group_advantages(r, groups, delta=0.0)
    sd = math.sqrt(2 / 3)
    want = [-1 / sd, 0.0, 1 / sd, 0.0, 0.0, -1.0, 1.0]
    assert adv.tolist() == pytest.approx(want, abs=1e-6)  # an all-equal group: 0, not 0/0
    assert group_advantages(torch.tensor([5.0, 5.0]), torch.tensor([0, 0])).tolist() == [0.0, 0.0]


def test_grpo_loss_ratio_clipping_and_kl():
    adv = torch.tensor([1.0, -2.0, 0.5])
    log_old = torch.tensor([-1.0, -1.0, -1.0])
    log_p = log_old.clone().requires_grad_(True)
    loss, stats = grpo_loss(log_p, log_old, adv, clip=0.2)
    assert float(loss.detach()) == pytest.approx(-float(adv.mean()))  # ρ = 1: −mean A
    loss.backward()
    assert log_p.grad.tolist() == pytest.approx((-adv / 3).tolist())
    # ρ = e^0.5 > 1.2 with A > 0: the clipped term is the min, so no gradient; with A < 0 the unclipped one is
    log_p = (log_old + 0.5).requires_grad_(True)
    loss, stats = grpo_loss(log_p, log_old, adv, clip=0.2)
    rho = math.exp(0.5)
    want = -(min(rho * 1.0, 1.2 * 1.0) + min(rho * -2.0, 1.2 * -2.0) + min(rho * 0.5, 1.2 * 0.5)) / 3
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6) and stats["clip_fraction"] == 1.0
    loss.backward()
    assert log_p.grad.tolist() == pytest.approx([0.0, 2.0 * rho / 3, 0.0], rel=1e-6)
    kl = torch.tensor([0.3, 0.1, 0.2])
    with_kl, stats = grpo_loss(log_old, log_old, adv, clip=0.2, kl=kl, beta=0.5)
    assert float(with_kl) == pytest.approx(-float(adv.mean()) + 0.5 * 0.2) and stats["kl"] == pytest.approx(0.2)
    clipped, _ = grpo_loss(log_old, log_old, torch.tensor([10.0, -10.0, 1.0]), clip=0.2, adv_clip=5.0)
    assert float(clipped) == pytest.approx(-1 / 3)


def test_best_worst_pairs_per_prompt():
    r = [0.1, 0.9, 0.5, 0.3, 0.3, 0.7, float("nan"), 0.2, 0.4]
    groups = [7, 7, 7, 3, 3, 5, 5, 9, 9]
    assert best_worst(r, groups) == [(1, 0), (8, 7)]  # group 3 all equal, group 5 has a NaN: no pair
    assert best_worst([1.0], [0]) == []


def test_round_bookkeeping_by_hand():
    import numpy as np

    from raypipe.flow.online import deal, grpo_items, round_prompts, round_record, weighted_rewards

    prompts = ["a", "b", "c"]
    p0, s0 = round_prompts(prompts, 2, 3, seed=5, round_index=0)
    p1, s1 = round_prompts(prompts, 2, 3, seed=5, round_index=1)
    assert p0 == ["a", "b"] and p1 == ["c", "a"]  # the next ones, wrapping around
    assert len(s0) == 6 == len(set(s0) | set(s1)) - 6  # one seed per sample, new ones each round
    assert round_prompts(prompts, 2, 3, seed=5, round_index=1) == (p1, s1)  # the same on a resume

    scores = np.array([[1.0, 2.0], [3.0, np.nan], [0.5, 0.5], [2.0, 1.0]])
    errors = [None, None, "corrupt: cut", None]
    r, ok = weighted_rewards(scores, errors, ["VQ", "MQ"], {"VQ": 1.0, "MQ": 0.5})
    assert r[[0, 3]].tolist() == [2.0, 2.5] and ok.tolist() == [True, False, False, True]  # NaN and error: out
    with pytest.raises(ValueError, match="TA"):
        weighted_rewards(scores, errors, ["VQ", "MQ"], {"TA": 1.0})

    items = grpo_items(ok, steps=4, fraction=0.5, generator=torch.Generator().manual_seed(0))
    assert [i for i, _ in items] == [0, 0, 3, 3] and all(0 <= j < 4 for _, j in items)
    assert len({j for i, j in items if i == 0}) == 2  # two distinct steps per sample
    shares = [deal(list(range(5)), rank, 2, 3) for rank in range(2)]
    assert shares == [[0, 2, 4], [1, 3, 1]] and deal([], 0, 2, 3) == []

    rec = round_record(0, scores, errors, ["VQ", "MQ"], r, ok, [{"VQ": 1.0, "MQ": 0.0}, {}, None, {"VQ": 0.0}])
    assert rec["samples"] == 4 and rec["samples_ok"] == 2 and rec["errors"] == {"corrupt": 1}
    assert rec["reward_mean"] == {"VQ": 1.5, "MQ": 1.5} and rec["weighted_mean"] == 2.25
    assert rec["oracle_mean"] == {"VQ": 0.5, "MQ": 0.0}


def test_the_reward_hacking_guard_by_hand():
    from raypipe.flow.online import best_round, hacking_detected, judge_value

    verdicts = [{"VQ": 1.0, "MQ": 0.5}, {"VQ": 0.0, "MQ": 0.5}, None]
    assert judge_value(verdicts, {"VQ": 1.0, "MQ": 2.0}) == pytest.approx(0.5 + 1.0)
    assert judge_value([None, {}], {"VQ": 1.0}) is None
    rewards = [0.1, 0.2, 0.3, 0.4]
    judges = [0.9, 0.8, 0.85, 0.7]
    assert not hacking_detected(rewards, judges, 2)  # the judge rose once in the last two changes
    assert hacking_detected(rewards, judges, 1)  # the last change: reward up, judge down
    assert hacking_detected([0.1, 0.2, 0.3], [0.9, 0.8, 0.7], 2)
    assert not hacking_detected([0.1, 0.2, 0.2], [0.9, 0.8, 0.7], 2)  # the reward did not rise
    assert not hacking_detected([0.1, 0.2], [0.9, 0.8], 2) and not hacking_detected(rewards, judges, 0)
    assert best_round([0.3, None, 0.9, 0.9, 0.1]) == 2 and best_round([None]) is None
