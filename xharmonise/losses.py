"""Training losses: relative error for point predictions, Student-t NLL with a variance head.

Reflectances span an order of magnitude between dark (water, vegetation in the visible)
and bright (soil, NIR) surfaces; the relative error weights them evenly instead of letting
bright pixels dominate as a squared error would. With a variance head the network is
trained by a heteroscedastic negative log-likelihood: a Student-t's with ν = 2, not the
paper's Gaussian (Nix & Weigend 1994), so that unmasked clouds raise σ² without bending
the prediction on clear surfaces that look like them (:func:`student_nll`).

Masked (cloudy) reference pixels arrive as NaN targets. The ``masked`` losses leave them
out: their terms are computed against a finite stand-in and weighted by zero, so that no
NaN reaches a gradient, and the mean is over the valid elements. Without NaN they equal
the plain losses to float rounding; the plain ones are kept for data known to be clear
(checking every batch for NaN would cost a device sync per step on a GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "STUDENT_DOF",
    "LossFn",
    "loss_function",
    "masked_mean",
    "model_loss",
    "relative_error",
    "student_nll",
]

#: Loss signature shared by both criteria: ``loss(pred, var, target) -> scalar``.
LossFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


def relative_error(
    pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3, *, masked: bool = False
) -> torch.Tensor:
    """Mean relative absolute error ``mean(|t - p| / (|t| + eps))``.

    Parameters
    ----------
    pred, target : torch.Tensor
        Predictions and reference values, same shape.
    eps : float, default 1e-3
        Keeps the ratio finite for (near-)zero reflectances.
    masked : bool, default False
        Leave out the elements whose target is NaN (masked reference pixels).

    Returns
    -------
    torch.Tensor
        Scalar.

    Examples
    --------
    >>> import torch
    >>> round(float(relative_error(torch.tensor([1.1]), torch.tensor([1.0]), eps=0.0)), 6)
    0.1
    >>> t = torch.tensor([1.0, float("nan")])
    >>> round(float(relative_error(torch.tensor([1.1, 5.0]), t, eps=0.0, masked=True)), 6)
    0.1
    """

    def terms(t: torch.Tensor) -> torch.Tensor:
        return (t - pred).abs() / (t.abs() + eps)

    return masked_mean(terms, pred, target) if masked else terms(target).mean()


def masked_mean(
    terms: Callable[[torch.Tensor], torch.Tensor], pred: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Mean of ``terms(target)`` over the elements whose target is not NaN.

    NaN targets are replaced by the (detached) prediction before ``terms`` sees them and
    their terms weighted by zero, so their gradient is exactly zero, not NaN. With no
    valid element the mean is 0.

    Parameters
    ----------
    terms : callable
        Per-element loss terms given a finite target.
    pred, target : torch.Tensor
        Predictions and targets (NaN = masked), same shape.

    Returns
    -------
    torch.Tensor
        Scalar.

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> loss = masked_mean(lambda t: (t - p).square(), p, torch.tensor([0.0, float("nan")]))
    >>> loss.backward()
    >>> float(loss.detach()), (p.grad + 0.0).tolist()  # + 0.0: -0.0 prints as 0.0
    (1.0, [2.0, 0.0])
    """
    valid = ~torch.isnan(target)
    weight = valid.to(pred.dtype)
    finite = torch.where(valid, target, pred.detach())
    return (terms(finite) * weight).sum() / weight.sum().clamp(min=1.0)


#: Degrees of freedom of the variance head's Student-t likelihood.
STUDENT_DOF: float = 2.0


def student_nll(
    pred: torch.Tensor,
    var: torch.Tensor,
    target: torch.Tensor,
    *,
    dof: float = STUDENT_DOF,
    masked: bool = False,
) -> torch.Tensor:
    """Student-t negative log-likelihood ``mean(½ ln s² + (ν+1)/2 · ln(1 + (t-p)²/(ν s²)))``.

    The variance head's loss: ``var`` is the squared scale s² of a Student-t with ``dof``
    (ν) degrees of freedom centred on ``pred``. The terms that depend on ν alone are left
    out: they change neither gradients nor comparisons.

    Why not the paper's Gaussian NLL: its optimal prediction for an input is the mean of
    the targets seen with it, so unmasked clouds whose source spectra resemble clear
    surfaces (thin cloud over vegetation, bright roofs) bend the prediction on those
    surfaces: on a simulated TOA pair with 10 % unmasked source clouds, CalibNet with the
    Gaussian head missed clear pixels of source brightness 0.23-0.3 by -0.0056 on average
    (68 % of errors within 0.0057), where the same network on the cloud-free pair missed by
    -0.0001 (0.0016). A Student-t's centre is not pulled by a minority of far targets: at
    ν = 2 the same pixels were missed by -0.0013 (0.0014), the clear-pixel RMSE at 10 m
    fell by 22-25 % (on the cloud-free TOA and TOC pairs by 6-17 %) and σ² ranked the
    clouds as well or better (``benchmarks/calibration.py``, seed 0). At 2 m the clear RMSE
    fell by 3 % only (``benchmarks/variance_clouds.py``): there the brightest 1 % of clear
    pixels, whose spectra come close to cloud tops, carry most of the error. Outliers raise
    s² instead of bending the prediction: the design's intent, which the Gaussian gives
    only for outliers whose inputs differ from the clear pixels'.

    Parameters
    ----------
    pred : torch.Tensor
        Predicted centres.
    var : torch.Tensor
        Predicted squared scales s² > 0, same shape.
    target : torch.Tensor
        Reference values, same shape.
    dof : float, default STUDENT_DOF
        Degrees of freedom ν > 0; ``math.inf`` gives the limit, the paper's Gaussian NLL
        ``mean(½ ln s² + (t-p)²/(2 s²))``, kept for comparisons.
    masked : bool, default False
        Leave out the elements whose target is NaN (masked reference pixels).

    Returns
    -------
    torch.Tensor
        Scalar.

    Examples
    --------
    A residual of 2 at unit scale and ν = 4: ½ ln 1 + 5/2 · ln(1 + 4/4) = 2.5 ln 2.

    >>> import torch
    >>> round(float(student_nll(torch.zeros(1), torch.ones(1), torch.full((1,), 2.0), dof=4.0)), 4)
    1.7329
    """

    def terms(t: torch.Tensor) -> torch.Tensor:
        if math.isinf(dof):
            return 0.5 * (torch.log(var) + (t - pred).square() / var)
        return 0.5 * torch.log(var) + 0.5 * (dof + 1.0) * torch.log1p(
            (t - pred).square() / (dof * var)
        )

    return masked_mean(terms, pred, target) if masked else terms(target).mean()


def _relative_error_loss(masked: bool) -> LossFn:
    def loss(pred: torch.Tensor, var: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        return relative_error(pred, target, masked=masked)

    return loss


def _nll_loss(masked: bool, dof: float) -> LossFn:
    def loss(pred: torch.Tensor, var: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        if var is None:
            raise ValueError(
                "the Student-t NLL needs a variance; build the model with variance=True"
            )
        return student_nll(pred, var, target, dof=dof, masked=masked)

    return loss


def loss_function(variance: bool, *, masked: bool = False, dof: float = STUDENT_DOF) -> LossFn:
    """The training criterion for a model with or without a variance head.

    Parameters
    ----------
    variance : bool
        Whether the model predicts σ².
    masked : bool, default False
        Whether targets may hold NaN (masked reference pixels) to leave out.
    dof : float, default STUDENT_DOF
        The head's Student-t degrees of freedom; ``math.inf`` trains by the paper's
        Gaussian NLL (:func:`student_nll`).

    Returns
    -------
    LossFn
        ``loss(pred, var, target)``: relative error without variance (``var`` ignored),
        Student-t NLL with it.

    Examples
    --------
    >>> import torch
    >>> loss = loss_function(False)
    >>> float(loss(torch.ones(2), None, torch.ones(2)))
    0.0
    """
    return _nll_loss(masked, dof) if variance else _relative_error_loss(masked)


def model_loss(pred: torch.Tensor, var: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
    """Loss of a model output ``(pred, var)``: Student-t NLL when ``var`` is given, else
    relative error.

    Parameters
    ----------
    pred : torch.Tensor
        Predictions.
    var : torch.Tensor or None
        Predicted variances, or None.
    target : torch.Tensor
        Reference values.

    Returns
    -------
    torch.Tensor
        Scalar.

    Examples
    --------
    >>> import torch
    >>> t = torch.tensor([0.2, 0.4])
    >>> round(float(model_loss(t * 1.1, None, t)), 2)  # relative error (eps aside)
    0.1
    >>> round(float(model_loss(t, torch.ones(2), t)), 6)  # Student-t NLL at t = p, s² = 1
    0.0
    """
    return loss_function(var is not None)(pred, var, target)
