"""Tests for the training losses against their closed-form definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xharmonise.losses import gaussian_nll, loss_function, model_loss, relative_error


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


def test_gaussian_nll_matches_formula_and_torch() -> None:
    pred, var, target = _random((6, 3, 4, 4), 1)
    expected = np.mean((target - pred) ** 2 / (2 * var) + 0.5 * np.log(var))
    p, v, t = (torch.from_numpy(a) for a in (pred, var, target))
    got = gaussian_nll(p, v, t)
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # torch's own implementation (without the constant) agrees on valid variances.
    ref = torch.nn.functional.gaussian_nll_loss(p, t, v, eps=1e-12)
    assert float(got) == pytest.approx(float(ref), rel=1e-10)


def test_gaussian_nll_is_minimised_by_the_squared_residual() -> None:
    # d/dσ² [r²/(2σ²) + ½ ln σ²] = 0 at σ² = r².
    r = 0.03
    grid = torch.linspace(1e-4, 4e-3, 400, dtype=torch.float64)
    losses = torch.stack(
        [
            gaussian_nll(torch.zeros(1, dtype=torch.float64), v.view(1), torch.full((1,), r))
            for v in grid
        ]
    )
    assert float(grid[int(losses.argmin())]) == pytest.approx(r**2, rel=0.02)


def test_loss_selection() -> None:
    pred, var, target = (torch.from_numpy(a) for a in _random((50,), 2))
    plain, nll = loss_function(False), loss_function(True)
    assert float(plain(pred, var, target)) == float(relative_error(pred, target))
    assert float(plain(pred, None, target)) == float(relative_error(pred, target))
    assert float(nll(pred, var, target)) == float(gaussian_nll(pred, var, target))
    assert float(model_loss(pred, None, target)) == float(relative_error(pred, target))
    assert float(model_loss(pred, var, target)) == float(gaussian_nll(pred, var, target))
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
