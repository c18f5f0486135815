"""Flow objectives (SPEC §1, §5) against closed forms and hand-worked cases, incl. t near 0 and 1."""

import math

import pytest
import torch

from raypipe.data.weights import scalarize
from raypipe.flow.losses import LOG2, beta_t, dpo_loss, flow_error, noised, rwr_loss, rwr_weights, sample_t, sft_loss


def test_noised_endpoints_and_velocity():
    x0, eps = torch.randn(3, 2, 4, 5, 5), torch.randn(3, 2, 4, 5, 5)
    t = torch.tensor([0.0, 1.0, 0.25])
    xt, v = noised(x0, eps, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], eps[1])
    torch.testing.assert_close(xt[2], 0.75 * x0[2] + 0.25 * eps[2])
    torch.testing.assert_close(v, eps - x0)
    # Integrating the exact velocity from t to 0 recovers x0 (SPEC §1 sampling rule).
    torch.testing.assert_close(xt[2] - 0.25 * v[2], x0[2])


def test_flow_error_by_hand():
    v_hat = torch.zeros(2, 1, 2, 2)
    v = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[2.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(flow_error(v_hat, v), torch.tensor([1.0, 1.0]))


def test_beta_t_closed_form_incl_ends():
    t = torch.tensor([0.0, 1e-6, 0.5, 1 - 1e-6, 1.0])
    torch.testing.assert_close(beta_t(500, t, "constant"), torch.full((5,), 500.0))
    torch.testing.assert_close(beta_t(500, t, "derived"), 500 * (1 - t) ** 2)
    assert beta_t(500, torch.tensor([1.0]), "derived").item() == 0.0  # vanishes at pure noise
    with pytest.raises(ValueError, match="schedule"):
        beta_t(1, t, "linear")


def test_dpo_is_log2_when_policy_equals_reference_and_gradient_favours_the_winner():
    e_ref_w, e_ref_l = torch.rand(8) + 0.5, torch.rand(8) + 0.5
    e_w = e_ref_w.clone().requires_grad_(True)
    e_l = e_ref_l.clone().requires_grad_(True)
    for beta in (beta_t(100, torch.rand(8), "constant"), beta_t(500, torch.rand(8), "derived")):
        loss, stats = dpo_loss(e_w, e_ref_w, e_l, e_ref_l, beta)
        assert loss.item() == pytest.approx(LOG2, abs=1e-7)
        e_w.grad = e_l.grad = None
        loss.backward()
        # d/d e_w = β/4 / B > 0: a descent step lowers the winner's error; the loser's error goes up.
        torch.testing.assert_close(e_w.grad, beta / 4 / 8)
        torch.testing.assert_close(e_l.grad, -beta / 4 / 8)
        assert stats["reward_margin"] == 0.0


def test_dpo_value_against_the_formula():
    g = torch.Generator().manual_seed(0)
    e_w, e_rw, e_l, e_rl = (torch.rand(6, generator=g) for _ in range(4))
    t = torch.rand(6, generator=g)
    beta = beta_t(50, t, "derived")
    loss, stats = dpo_loss(e_w, e_rw, e_l, e_rl, beta)
    expect = 0.0
    logits = []
    for i in range(6):
        z = -(beta[i].item() / 2) * ((e_w[i] - e_rw[i]) - (e_l[i] - e_rl[i])).item()
        logits.append(z)
        expect += -math.log(1 / (1 + math.exp(-z)))
    assert loss.item() == pytest.approx(expect / 6, rel=1e-6)
    assert stats["implicit_acc"] == pytest.approx(sum(z > 0 for z in logits) / 6)


def test_rwr_weights_and_loss():
    r = torch.tensor([1.0, 2.0, 4.0])
    w = rwr_weights(r, tau=2.0)
    assert w.sum().item() == pytest.approx(1.0)
    expect = torch.exp(r / 2) / torch.exp(r / 2).sum()
    torch.testing.assert_close(w, expect)
    torch.testing.assert_close(rwr_weights(torch.full((4,), 3.0), 0.1), torch.full((4,), 0.25))  # equal rewards
    e = torch.tensor([0.5, 1.0, 2.0])
    assert rwr_loss(e, r, 2.0).item() == pytest.approx(float((expect * e).sum()))
    real = torch.tensor([1.0, 3.0])
    assert rwr_loss(e, r, 2.0, real, 0.5).item() == pytest.approx(float((expect * e).sum()) + 1.0)
    assert sft_loss(e).item() == pytest.approx(7 / 6)
    with pytest.raises(ValueError):
        rwr_weights(r, 0.0)


def test_sample_t_range_and_shift():
    g = torch.Generator().manual_seed(0)
    t = sample_t(20000, g)
    assert 0 < t.min() and t.max() < 1
    assert t.median().item() == pytest.approx(0.5, abs=0.02)  # sigmoid(N(0,1)) is symmetric about 0.5
    g = torch.Generator().manual_seed(0)
    shifted = sample_t(20000, g, shift=3.0)
    torch.testing.assert_close(shifted, 3 * t / (1 + 2 * t))  # same draws, shifted toward noise
    assert shifted.median().item() == pytest.approx(0.75, abs=0.02)


def test_scalarize():
    assert scalarize({"VQ": 1.0, "MQ": 2.0, "TA": -1.0}, {"VQ": 0.5, "TA": 2.0}) == pytest.approx(-1.5)
    with pytest.raises(KeyError, match="MQ"):
        scalarize({"VQ": 1.0}, {"MQ": 1.0})


def test_lift_v_prediction_against_a_hand_made_batch_and_the_scheduler():
    from diffusers import CogVideoXDPMScheduler

    from raypipe.flow.losses import lift_v_loss, v_prediction_noised, x0_from_v

    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    eps = torch.tensor([[0.0, 1.0], [-1.0, 2.0]])
    ab = torch.tensor([0.64, 0.36])  # sqrt: 0.8 / 0.6 and 0.6 / 0.8
    x_t, v = v_prediction_noised(x0, eps, ab)
    assert torch.allclose(x_t, torch.tensor([[0.8, -1.0], [-0.5, 1.6]]))
    assert torch.allclose(v, torch.tensor([[-0.6, 2.0], [-1.0, 1.2]]))
    assert torch.allclose(x0_from_v(x_t, v, ab), x0, atol=1e-6)  # exact v gives back x0
    v_hat = v + torch.tensor([[0.5, 0.0], [0.0, -1.0]])  # x̂0 error = -sqrt(1-ᾱ)·δ: (-0.3, 0) and (0, 0.8)
    x0_hat = x0_from_v(x_t, v_hat, ab)
    per = torch.tensor([(0.3**2) / 2 / 0.36, (0.8**2) / 2 / 0.64])  # mean sq error / (1 - ᾱ)
    w = torch.tensor([0.9, 0.05])
    assert lift_v_loss(x0_hat, x0, ab, w).item() == pytest.approx(float((w * per).mean()), rel=1e-6)
    # diffusers: add_noise is x_t, and get_velocity(v̂, x_t, t) is LiFT's x̂0 (its arguments swapped)
    sched = CogVideoXDPMScheduler(prediction_type="v_prediction")
    t = torch.tensor([100, 700])
    ab = sched.alphas_cumprod[t].float()
    x_t, v = v_prediction_noised(x0, eps, ab)
    assert torch.allclose(x_t, sched.add_noise(x0, eps, t), atol=1e-5)
    assert torch.allclose(v, sched.get_velocity(x0, eps, t), atol=1e-5)
    assert torch.allclose(x0_from_v(x_t, v_hat, ab), sched.get_velocity(v_hat, x_t, t), atol=1e-5)


def test_lift_flow_loss_weights_the_flow_error():
    from raypipe.flow.losses import lift_flow_loss

    e = torch.tensor([0.2, 0.4, 1.0])
    w = torch.tensor([0.9, 0.2, 0.05])
    assert lift_flow_loss(e, w).item() == pytest.approx((0.18 + 0.08 + 0.05) / 3)
    assert lift_flow_loss(e, torch.ones(3)).item() == pytest.approx(float(e.mean()))  # weight 1 = flow matching


def test_dpo_with_sft_term_against_the_formula_and_its_edges():
    """L = L_DPO(pairs) + λ·mean(e_w over real rows); all-real and no-real batches have no NaN."""
    from raypipe.flow.losses import dpo_sft_loss

    g = torch.Generator().manual_seed(3)
    e_w, e_rw, e_l, e_rl = (torch.rand(5, generator=g) for _ in range(4))
    beta = beta_t(100, torch.rand(5, generator=g), "derived")
    real = torch.tensor([False, True, False, True, False])
    loss, stats = dpo_sft_loss(e_w, e_rw, e_l, e_rl, beta, real, 0.5)
    pairs = [0, 2, 4]
    dpo = sum(
        math.log(1 + math.exp((beta[i].item() / 2) * ((e_w[i] - e_rw[i]) - (e_l[i] - e_rl[i])).item())) for i in pairs
    ) / len(pairs)  # -log σ(z) = log(1 + e^{-z})
    sft = (e_w[1].item() + e_w[3].item()) / 2
    assert loss.item() == pytest.approx(dpo + 0.5 * sft, rel=1e-6)
    assert stats["sft_loss"] == pytest.approx(sft) and stats["real_share"] == pytest.approx(0.4)
    everything_real, _ = dpo_sft_loss(e_w, e_rw, e_l, e_rl, beta, torch.ones(5, dtype=torch.bool), 2.0)
    assert everything_real.item() == pytest.approx(2.0 * e_w.mean().item(), rel=1e-6)
    no_real, stats = dpo_sft_loss(e_w, e_rw, e_l, e_rl, beta, torch.zeros(5, dtype=torch.bool), 2.0)
    assert no_real.item() == pytest.approx(dpo_loss(e_w, e_rw, e_l, e_rl, beta)[0].item()) and "sft_loss" not in stats
