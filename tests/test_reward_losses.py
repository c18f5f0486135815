"""Reward losses (SPEC §3.2) against closed forms computed independently with the math module."""

from __future__ import annotations

import math

import pytest
import torch

from raypipe.reward.losses import bt_loss, btt_loss, btt_probabilities, regression_loss, reward_loss

LN2 = math.log(2.0)


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _t(*values, dtype=torch.float64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def _labels(*values):
    return torch.tensor(values, dtype=torch.int64)


def _all(n):
    return torch.ones(n, dtype=torch.bool)


# ---------- Bradley–Terry ----------


def test_bt_zero_margin_is_ln2():
    loss, stats = bt_loss(_t(0.3), _t(0.3), _labels(1), _all(1))
    assert loss.item() == pytest.approx(LN2, abs=1e-12)
    assert stats["n_labelled"] == 1 and stats["accuracy"] == 0.0  # Δ = 0 counts wrong


def test_bt_closed_form_and_ties_dropped():
    r_a, r_b = _t(2.0, -1.0, 0.5, 7.0), _t(0.5, 1.0, 0.5, -3.0)
    y = _labels(1, -1, 0, -1)
    loss, stats = bt_loss(r_a, r_b, y, _all(4))
    # pair 0: Δ=1.5; pair 1 swapped: Δ=2.0; pair 2 tie: dropped; pair 3 swapped: Δ=-10.
    want = (-math.log(_sig(1.5)) - math.log(_sig(2.0)) - math.log(_sig(-10.0))) / 3
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert stats["n_labelled"] == 3 and stats["n_ties"] == 1
    assert stats["accuracy"] == pytest.approx(2 / 3)


def test_bt_stable_for_huge_margins():
    loss, _ = bt_loss(_t(0.0, 0.0, dtype=torch.float32), _t(200.0, -200.0, dtype=torch.float32), _labels(1, 1), _all(2))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(100.0, rel=1e-5)  # (200 + ~0) / 2


# ---------- Rao–Kupper ----------


@pytest.mark.parametrize("theta", [1.001, 1.5, 2.0, 5.0, 50.0])
def test_btt_probabilities_sum_to_one_and_tie_identity(theta):
    delta = torch.linspace(-12, 12, 97, dtype=torch.float64)
    p_a, p_b, p_tie = btt_probabilities(delta, theta)
    assert torch.allclose(p_a + p_b + p_tie, torch.ones_like(delta), atol=1e-12)
    lt = math.log(theta)
    for d, pa, pb, pt in zip(delta.tolist(), p_a.tolist(), p_b.tolist(), p_tie.tolist()):
        assert pa == pytest.approx(_sig(d - lt), rel=1e-12)
        assert pb == pytest.approx(_sig(-d - lt), rel=1e-12)
        # independent route: 1 - P(A) - P(B) from the math module
        assert pt == pytest.approx(1.0 - _sig(d - lt) - _sig(-d - lt), abs=1e-12)
        assert pt > 0


def test_btt_win_at_delta_ln_theta_is_ln2():
    theta = 5.0
    loss, _ = btt_loss(_t(math.log(theta)), _t(0.0), _labels(1), _all(1), theta=theta)
    assert loss.item() == pytest.approx(LN2, abs=1e-12)


def test_btt_tie_at_zero_closed_form():
    theta = 5.0
    loss, stats = btt_loss(_t(1.25), _t(1.25), _labels(0), _all(1), theta=theta)
    want = -2 * math.log(_sig(-math.log(theta))) - math.log(theta**2 - 1)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert stats["n_ties"] == 1 and stats["n_labelled"] == 1 and math.isnan(stats["accuracy"])


@pytest.mark.parametrize("theta", [1.2, 5.0, 20.0])
def test_btt_losses_are_negative_log_probabilities(theta):
    deltas = [-6.0, -1.0, 0.0, 0.3, 2.0, 9.0]
    for d in deltas:
        p_a, p_b, p_tie = (p.item() for p in btt_probabilities(torch.tensor(d, dtype=torch.float64), theta))
        win, _ = btt_loss(_t(d), _t(0.0), _labels(1), _all(1), theta=theta)
        lose, _ = btt_loss(_t(d), _t(0.0), _labels(-1), _all(1), theta=theta)
        tie, _ = btt_loss(_t(d), _t(0.0), _labels(0), _all(1), theta=theta)
        assert win.item() == pytest.approx(-math.log(p_a), rel=1e-10)
        assert lose.item() == pytest.approx(-math.log(p_b), rel=1e-10)
        assert tie.item() == pytest.approx(-math.log(p_tie), rel=1e-10)


@pytest.mark.parametrize("theta", [1.0, 0.5, 0.0, -2.0, float("nan"), float("inf")])
def test_btt_theta_must_exceed_one(theta):
    with pytest.raises(ValueError, match="theta"):
        btt_loss(_t(0.0), _t(0.0), _labels(0), _all(1), theta=theta)
    with pytest.raises(ValueError, match="theta"):
        btt_probabilities(torch.zeros(1), theta)


# ---------- shared behaviour ----------


@pytest.mark.parametrize("kind", ["bt", "btt"])
def test_swap_symmetry(kind):
    g = torch.Generator().manual_seed(0)
    r_a, r_b = (
        torch.randn(16, 3, generator=g, dtype=torch.float64),
        torch.randn(16, 3, generator=g, dtype=torch.float64),
    )
    y = torch.ones(16, 3, dtype=torch.int64)
    mask = torch.rand(16, 3, generator=g) > 0.2
    swapped, _ = reward_loss(kind, r_a, r_b, -y, mask)
    direct, _ = reward_loss(kind, r_b, r_a, y, mask)
    assert swapped.item() == pytest.approx(direct.item(), rel=1e-12)


@pytest.mark.parametrize("kind", ["bt", "btt"])
def test_masked_entries_change_nothing(kind):
    r_a = _t(1.0, -0.5, 3.0, 0.2, grad=True)
    r_b = _t(0.0, 0.5, -1.0, 0.1, grad=True)
    y, mask = _labels(1, -1, 0, 1), torch.tensor([True, True, True, False])
    loss, stats = reward_loss(kind, r_a, r_b, y, mask)
    loss.backward()
    # the same batch with the masked entry replaced by garbage (even NaN, and an invalid label)
    r_a2 = _t(1.0, -0.5, 3.0, float("nan"), grad=True)
    r_b2 = _t(0.0, 0.5, -1.0, 1e30, grad=True)
    loss2, _ = reward_loss(kind, r_a2, r_b2, _labels(1, -1, 0, 7), mask)
    loss2.backward()
    # and the labelled entries alone
    r_a3, r_b3 = _t(1.0, -0.5, 3.0, grad=True), _t(0.0, 0.5, -1.0, grad=True)
    loss3, _ = reward_loss(kind, r_a3, r_b3, _labels(1, -1, 0), _all(3))
    loss3.backward()
    assert loss.item() == pytest.approx(loss2.item(), rel=1e-12)
    assert loss.item() == pytest.approx(loss3.item(), rel=1e-12)
    assert r_a.grad[3].item() == 0.0 and r_b.grad[3].item() == 0.0
    assert r_a2.grad[3].item() == 0.0 and r_b2.grad[3].item() == 0.0
    assert torch.equal(r_a.grad[:3], r_a2.grad[:3]) and torch.allclose(r_a.grad[:3], r_a3.grad)
    assert torch.allclose(r_b.grad[:3], r_b3.grad)


@pytest.mark.parametrize("kind", ["bt", "btt"])
def test_nothing_labelled_gives_differentiable_zero(kind):
    r_a, r_b = _t(1.0, 2.0, grad=True), _t(0.0, float("nan"), grad=True)
    loss, stats = reward_loss(kind, r_a, r_b, _labels(1, 0), torch.zeros(2, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(r_a.grad, torch.zeros(2, dtype=torch.float64)) and torch.equal(
        r_b.grad, torch.zeros(2, dtype=torch.float64)
    )
    assert stats["n_labelled"] == 0 and math.isnan(stats["accuracy"])


def test_bt_only_ties_gives_differentiable_zero():
    r_a = _t(1.0, 2.0, grad=True)
    loss, stats = bt_loss(r_a, _t(0.0, 0.0), _labels(0, 0), _all(2))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(r_a.grad, torch.zeros(2, dtype=torch.float64))
    assert stats["n_labelled"] == 0 and stats["n_ties"] == 2


@pytest.mark.parametrize("kind", ["bt", "btt"])
def test_batch_by_dimension_equals_flattened(kind):
    g = torch.Generator().manual_seed(1)
    r_a, r_b = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    y = torch.randint(-1, 2, (8, 3), generator=g)
    mask = torch.rand(8, 3, generator=g) > 0.3
    loss_2d, stats_2d = reward_loss(kind, r_a, r_b, y, mask, theta=3.0)
    loss_1d, stats_1d = reward_loss(kind, r_a.flatten(), r_b.flatten(), y.flatten(), mask.flatten(), theta=3.0)
    assert loss_2d.item() == pytest.approx(loss_1d.item(), rel=1e-6)
    assert stats_2d == stats_1d
    # masked mean over ENTRIES, not a mean of per-dimension means
    per_entry = []
    for i in range(8):
        for j in range(3):
            if not mask[i, j] or (kind == "bt" and y[i, j] == 0):
                continue
            d = float(r_a[i, j] - r_b[i, j]) * (-1 if y[i, j] == -1 else 1)
            lt = math.log(3.0)
            if kind == "bt":
                per_entry.append(-math.log(_sig(d)))
            elif y[i, j] == 0:
                per_entry.append(-math.log(_sig(d - lt)) - math.log(_sig(-d - lt)) - math.log(8.0))
            else:
                per_entry.append(-math.log(_sig(d - lt)))
    assert loss_2d.item() == pytest.approx(sum(per_entry) / len(per_entry), rel=1e-5)


@pytest.mark.parametrize("kind", ["bt", "btt"])
@pytest.mark.parametrize("y_val", [1, -1])
def test_gradient_pushes_winner_up(kind, y_val):
    r_a, r_b = _t(0.4, grad=True), _t(0.1, grad=True)
    loss, _ = reward_loss(kind, r_a, r_b, _labels(y_val), _all(1))
    loss.backward()
    winner, loser = (r_a, r_b) if y_val == 1 else (r_b, r_a)
    assert winner.grad.item() < 0 < loser.grad.item()  # descent raises the winner, lowers the loser
    # BT: dL/dΔ = -(1 - σ(Δ)) with Δ = winner - loser
    if kind == "bt":
        d = float((winner - loser).detach())
        assert winner.grad.item() == pytest.approx(-(1 - _sig(d)), rel=1e-12)


def test_btt_tie_gradient_pulls_margin_to_zero():
    r_a, r_b = _t(0.8, grad=True), _t(0.0, grad=True)
    loss, _ = btt_loss(r_a, r_b, _labels(0), _all(1))
    loss.backward()
    assert r_a.grad.item() > 0 > r_b.grad.item()  # descent shrinks |Δ|


def test_accuracy_stat_and_detached():
    r_a = _t(1.0, 0.0, 0.0, 2.0, grad=True)
    _, stats = btt_loss(r_a, _t(0.0, 1.0, 0.0, 0.0), _labels(1, -1, 1, 0), _all(4))
    # decisive: pair0 correct, pair1 correct (B wins, Δ<0), pair2 Δ=0 wrong
    assert stats["accuracy"] == pytest.approx(2 / 3)
    assert all(isinstance(v, (int, float)) for v in stats.values())


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        bt_loss(torch.zeros(4), torch.zeros(4, 1), torch.zeros(4, dtype=torch.int64), _all(4))
    with pytest.raises(ValueError, match="labels"):
        bt_loss(torch.zeros(2), torch.zeros(2), _labels(1, 2), _all(2))
    with pytest.raises(ValueError, match="unknown"):
        reward_loss("hinge", torch.zeros(1), torch.zeros(1), _labels(1), _all(1))


def test_bf16_inputs_computed_in_float32():
    loss, _ = bt_loss(
        torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.bfloat16), _labels(1, -1), _all(2)
    )
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(LN2, rel=1e-6)


# ---------- regression ----------


def test_regression_closed_form_and_mask():
    r = _t(0.5, -1.0, 2.0, 9.0, grad=True)
    mos = _t(4.0, 1.5, 3.0, float("nan"))  # unlabelled MOS may be NaN
    loss, stats = regression_loss(r, mos, torch.tensor([True, True, True, False]))
    want = ((0.5 - 1.0) ** 2 + (-1.0 + 1.5) ** 2 + (2.0 - 0.0) ** 2) / 3
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert stats["n_labelled"] == 3 and stats["mae"] == pytest.approx((0.5 + 0.5 + 2.0) / 3)
    loss.backward()
    # dL/dr_i = 2 (r_i - (MOS_i - 3)) / n
    assert r.grad.tolist() == pytest.approx([2 * -0.5 / 3, 2 * 0.5 / 3, 2 * 2.0 / 3, 0.0])


def test_regression_nothing_labelled():
    r = _t(1.0, grad=True)
    loss, stats = regression_loss(r, _t(float("nan")), torch.zeros(1, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and r.grad.item() == 0.0 and stats["n_labelled"] == 0


@pytest.mark.parametrize("kind", ["bt", "btt"])
def test_dimension_weights_by_hand(kind):
    """weights [D]: Σ w_d·L / Σ w_d over the labelled entries, per-entry L from the closed forms (math module)."""
    theta = 5.0
    r_a = torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.5, -0.2]], dtype=torch.float64)
    r_b = torch.tensor([[0.1, 0.4, 0.0], [1.0, 0.5, 0.3]], dtype=torch.float64)
    y = torch.tensor([[1, -1, 0], [-1, 1, 1]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    w = [1.0, 2.0, 3.0]
    num = den = 0.0
    for i in range(2):
        for d in range(3):
            if not mask[i, d] or (kind == "bt" and y[i, d] == 0):
                continue
            delta = float(r_a[i, d] - r_b[i, d]) * (1 if y[i, d] >= 0 else -1)
            if kind == "bt":
                loss = -math.log(_sig(delta))
            elif y[i, d] == 0:
                loss = -math.log((theta**2 - 1) * _sig(delta - math.log(theta)) * _sig(-delta - math.log(theta)))
            else:
                loss = -math.log(_sig(delta - math.log(theta)))
            num, den = num + w[d] * loss, den + w[d]
    got, _ = reward_loss(kind, r_a, r_b, y, mask, theta, weights=torch.tensor(w))
    assert float(got) == pytest.approx(num / den, rel=1e-12)
    plain, _ = reward_loss(kind, r_a, r_b, y, mask, theta)
    for same in ([1.0, 1.0, 1.0], [2.5, 2.5, 2.5]):  # equal weights are the plain masked mean
        assert float(reward_loss(kind, r_a, r_b, y, mask, theta, weights=torch.tensor(same))[0]) == pytest.approx(
            float(plain), rel=1e-12
        )
    dropped = mask.clone()  # weight 0 on a column = that column unlabelled
    dropped[:, 1] = False
    assert float(
        reward_loss(kind, r_a, r_b, y, mask, theta, weights=torch.tensor([1.0, 0.0, 1.0]))[0]
    ) == pytest.approx(float(reward_loss(kind, r_a, r_b, y, dropped, theta)[0]), rel=1e-12)
    nothing = torch.zeros_like(mask)
    zero, _ = reward_loss(kind, r_a.requires_grad_(), r_b, y, nothing, theta, weights=torch.tensor(w))
    zero.backward()
    assert float(zero.detach()) == 0.0 and torch.all(r_a.grad == 0)


def test_regression_dimension_weights():
    r = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    mos = torch.tensor([[4.0, 1.0], [3.0, float("nan")]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    got, _ = regression_loss(r, mos, mask, weights=torch.tensor([1.0, 4.0]))
    # entries: (0.5-1)² w1, (-1+2)² w4, (2-0)² w1
    assert float(got) == pytest.approx((0.25 + 4 * 1.0 + 4.0) / 6.0, rel=1e-12)
