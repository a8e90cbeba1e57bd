"""Heteroscedastic variance head shared by every model.

The paper's uncertainty-aware variant forks the last layer of a network into a second,
parallel output layer fed with the same hidden features, and turns its output into a
strictly positive per-pixel, per-band σ²: the squared scale of the Student-t whose
negative log-likelihood trains it (:func:`xharmonise.losses.student_nll`; the paper's is
Gaussian, Nix & Weigend 1994), which the calibration maps to the σ² ``predict`` returns.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

__all__ = ["VARIANCE_EPS", "clone_layer", "positive_variance"]

#: Floor added to ELU(z) + 1 so that σ² never reaches 0, even when ELU saturates at -1.
VARIANCE_EPS: float = 1e-6


def positive_variance(z: torch.Tensor, eps: float = VARIANCE_EPS) -> torch.Tensor:
    """Map an unconstrained activation to a strictly positive variance.

    ``ELU(z) + 1`` is smooth, equals ``z + 1`` for positive ``z`` (so it does not
    explode like ``exp``) and tends to 0 for very negative ``z``; ``eps`` keeps the
    result away from 0 so that ``log σ²`` and ``1 / σ²`` stay finite.

    Parameters
    ----------
    z : torch.Tensor
        Raw output of the variance layer.
    eps : float, default VARIANCE_EPS
        Strictly positive floor.

    Returns
    -------
    torch.Tensor
        ``ELU(z) + 1 + eps``, same shape and dtype as ``z``, > 0 everywhere.

    Examples
    --------
    >>> import torch
    >>> bool((positive_variance(torch.tensor([-1e30, 0.0, 5.0])) > 0).all())
    True
    """
    # Adding 1 before eps matters: ELU(-inf) + 1 is exactly 0 in float32, then eps > 0.
    return (functional.elu(z) + 1.0) + eps


def clone_layer(layer: nn.Module) -> nn.Module:
    """Fresh, independently initialised layer with the same hyper-parameters.

    Used to fork a model's last layer into the variance branch: the branch consumes
    the same hidden features but has its own weights.

    Parameters
    ----------
    layer : torch.nn.Linear or torch.nn.Conv2d
        Layer to mirror.

    Returns
    -------
    torch.nn.Module
        New layer of the same type and shape.

    Examples
    --------
    >>> from torch import nn
    >>> layer = nn.Linear(320, 4)
    >>> twin = clone_layer(layer)
    >>> twin, twin.weight is layer.weight
    (Linear(in_features=320, out_features=4, bias=True), False)
    """
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    if isinstance(layer, nn.Conv2d):
        # torch types a Conv2d's sizes as tuple[int, ...]: they are the pairs it was built with.
        return nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,  # type: ignore[arg-type]
            stride=layer.stride,  # type: ignore[arg-type]
            padding=layer.padding,  # type: ignore[arg-type]
            padding_mode=layer.padding_mode,
            bias=layer.bias is not None,
        )
    raise TypeError(f"cannot fork a {type(layer).__name__} into a variance head")
