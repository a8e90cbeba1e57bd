"""Tests for the training losses against their closed-form definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xharmonise.losses import (
    STUDENT_DOF,
    loss_function,
    model_loss,
    relative_error,
    student_nll,
)


def _random(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pred = rng.normal(0.2, 0.1, shape)
    target = rng.normal(0.2, 0.1, shape)
    var = rng.uniform(1e-4, 0.1, shape)
    return pred, var, target


@pytest.mark.parametrize("eps", [1e-3, 0.05])
def test_relative_error_matches_formula(eps: float) -> None:
    pred, _, target = _random((7, 4, 5), 0)
    expected = np.mean(np.abs(target - pred) / (np.abs(target) + eps))
    got = relative_error(torch.from_numpy(pred), torch.from_numpy(target), eps=eps)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_relative_error_default_eps_and_zero_for_perfect_prediction() -> None:
    t = torch.tensor([0.0, 0.5])
    p = torch.tensor([0.001, 0.5])
    assert float(relative_error(p, t)) == pytest.approx(0.5 * 0.001 / 0.001, rel=1e-5)
    assert float(relative_error(t, t)) == 0.0


@pytest.mark.parametrize("dof", [1.0, 2.0, 5.0])
def test_student_nll_is_torchs_student_t_log_likelihood_up_to_a_constant(dof: float) -> None:
    pred, var, target = _random((6, 3, 4, 4), 1)
    p, v, t = (torch.from_numpy(a) for a in (pred, var, target))
    got = student_nll(p, v, t, dof=dof)
    log_prob = torch.distributions.StudentT(dof, p, v.sqrt()).log_prob(t).mean()
    # What is left out depends on ν alone: ln Γ((ν+1)/2) - ln Γ(ν/2) - ½ ln(νπ).
    constant = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    assert float(got) == pytest.approx(-float(log_prob) + constant, rel=1e-10)


def test_infinite_dof_is_the_papers_gaussian_nll_and_the_student_ts_limit() -> None:
    pred, var, target = _random((6, 3, 4, 4), 2)
    p, v, t = (torch.from_numpy(a) for a in (pred, var, target))
    got = float(student_nll(p, v, t, dof=math.inf))
    log_prob = float(torch.distributions.Normal(p, v.sqrt()).log_prob(t).mean())
    assert got == pytest.approx(-log_prob - 0.5 * math.log(2 * math.pi), rel=1e-10)
    assert float(student_nll(p, v, t, dof=1e7)) == pytest.approx(got, rel=1e-5)
    paper = loss_function(True, dof=math.inf)
    assert float(paper(p, v, t)) == got


def test_student_nll_is_minimised_by_the_squared_residual() -> None:
    # d/ds² [½ ln s² + (ν+1)/2 ln(1 + r²/(ν s²))] = 0 at s² = r², whatever ν.
    r = 0.03
    grid = torch.linspace(1e-4, 4e-3, 400, dtype=torch.float64)
    losses = torch.stack(
        [
            student_nll(torch.zeros(1, dtype=torch.float64), v.view(1), torch.full((1,), r))
            for v in grid
        ]
    )
    assert float(grid[int(losses.argmin())]) == pytest.approx(r**2, rel=0.02)


def test_far_targets_raise_the_scale_without_pulling_the_centre() -> None:
    # 80 % of the targets near 0.2 (clear ground), 20 % at 0.9 (clouds the mask missed):
    # one centre and one scale fitted by the variance head's loss stay with the majority,
    # where a Gaussian likelihood's centre is the mean, 0.34.
    rng = np.random.default_rng(0)
    target = torch.from_numpy(np.concatenate([rng.normal(0.2, 0.01, 800), np.full(200, 0.9)]))
    centre = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    log_var = torch.full((1,), -4.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([centre, log_var], lr=0.01)
    for _ in range(3000):
        opt.zero_grad()
        loss = loss_function(True)(centre.expand(1000), log_var.exp().expand(1000), target)
        loss.backward()
        opt.step()
    assert float(centre.detach()) == pytest.approx(0.2, abs=0.005)
    assert float(target.mean()) == pytest.approx(0.34, abs=0.005)
    assert 0.005 < float(log_var.detach().exp().sqrt()) < 0.05


def test_loss_selection() -> None:
    pred, var, target = (torch.from_numpy(a) for a in _random((50,), 2))
    plain, nll = loss_function(False), loss_function(True)
    assert float(plain(pred, var, target)) == float(relative_error(pred, target))
    assert float(plain(pred, None, target)) == float(relative_error(pred, target))
    assert float(nll(pred, var, target)) == float(student_nll(pred, var, target, dof=STUDENT_DOF))
    assert float(model_loss(pred, None, target)) == float(relative_error(pred, target))
    assert float(model_loss(pred, var, target)) == float(student_nll(pred, var, target))
    with pytest.raises(ValueError, match="variance"):
        nll(pred, None, target)


@pytest.mark.parametrize("variance", [False, True])
def test_masked_losses_ignore_nan_targets_and_give_them_no_gradient(variance: bool) -> None:
    pred, var, target = (torch.from_numpy(a) for a in _random((6, 4, 8, 8), 3))
    masked_target = target.clone()
    hidden = torch.rand(masked_target.shape, generator=torch.Generator().manual_seed(0)) < 0.4
    masked_target[hidden] = float("nan")
    p = pred.clone().requires_grad_(True)
    loss = loss_function(variance, masked=True)(p, var if variance else None, masked_target)
    loss.backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()
    assert (p.grad[hidden] == 0).all() and (p.grad[~hidden] != 0).all()
    # The value is the plain loss on the valid elements alone.
    keep = ~hidden
    plain = loss_function(variance)(pred[keep], var[keep] if variance else None, target[keep])
    assert float(loss.detach()) == pytest.approx(float(plain), rel=1e-12)


@pytest.mark.parametrize("variance", [False, True])
def test_masked_losses_equal_the_plain_ones_without_nan(variance: bool) -> None:
    pred, var, target = (torch.from_numpy(a) for a in _random((5, 3, 4, 4), 4))
    v = var if variance else None
    masked = loss_function(variance, masked=True)(pred, v, target)
    assert float(masked) == pytest.approx(float(loss_function(variance)(pred, v, target)))
