"""ConvCalibNet: a small residual CNN mapping source reflectances to the reference's.

BatchNorm2d → conv3x3 64 → LeakyReLU → conv3x3 64 → LeakyReLU → conv3x3 C → tanh, added
to the input. Unlike CalibNet it sees a 7 x 7 neighbourhood, so it can correct local
texture effects, at the price of needing a halo at inference.

Padding choice: the convolutions use zero 'same' padding, so an (N, C, H, W) input gives an
(N, C, H, W) output and training consumes the same (N, C, 32, 32) degraded patches as
CalibNet. Padding zeros come after BatchNorm, i.e. they stand for the band mean. Outputs
within ``receptive_radius`` pixels of a border see that padding; tiled inference should
read tiles with a halo of ``receptive_radius`` pixels and crop it, so that every kept
pixel sees only real data.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xharmonise.models.variance import clone_layer, positive_variance

__all__ = ["HIDDEN_CHANNELS", "ConvCalibNet"]

#: Feature maps of ConvCalibNet's two hidden convolutions (paper value).
HIDDEN_CHANNELS: int = 64

_KERNEL: int = 3
_N_CONVS: int = 3


class ConvCalibNet(nn.Module):
    """Residual 3-layer CNN with 'same' padding, optionally with a variance head.

    Parameters
    ----------
    n_bands : int
        Number of spectral bands C (>= 1).
    variance : bool, default False
        Add a parallel last convolution predicting a per-band variance σ² > 0.
    hidden : int, default HIDDEN_CHANNELS
        Channels of the hidden convolutions.

    Attributes
    ----------
    receptive_radius : int
        Pixels of context on each side an output pixel depends on (3 for three 3x3
        convolutions): the halo to read around a tile at inference.

    Examples
    --------
    >>> import torch
    >>> net = ConvCalibNet(3, variance=True).eval()
    >>> pred, var = net(torch.rand(2, 3, 16, 16))
    >>> pred.shape == var.shape == (2, 3, 16, 16), net.receptive_radius
    (True, 3)
    """

    method: str = "convcalibnet"
    receptive_radius: int = _N_CONVS * (_KERNEL // 2)

    def __init__(self, n_bands: int, *, variance: bool = False, hidden: int = HIDDEN_CHANNELS):
        super().__init__()
        if n_bands < 1:
            raise ValueError(f"n_bands must be >= 1, got {n_bands}")
        self.n_bands = int(n_bands)
        self.variance = bool(variance)
        self.hidden = int(hidden)
        pad = _KERNEL // 2
        self.norm = nn.BatchNorm2d(n_bands)
        self.conv1 = nn.Conv2d(n_bands, hidden, _KERNEL, padding=pad)
        self.conv2 = nn.Conv2d(hidden, hidden, _KERNEL, padding=pad)
        self.conv3 = nn.Conv2d(hidden, n_bands, _KERNEL, padding=pad)
        self.act = nn.LeakyReLU()
        self.conv_var = clone_layer(self.conv3) if variance else None

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``build_model(**net.config())`` rebuilds it.

        Examples
        --------
        >>> ConvCalibNet(4).config()
        {'method': 'convcalibnet', 'n_bands': 4, 'variance': False, 'hidden': 64}
        """
        return {
            "method": self.method,
            "n_bands": self.n_bands,
            "variance": self.variance,
            "hidden": self.hidden,
        }

    def pixelwise(self) -> None:
        """ConvCalibNet is not pixel-wise: always raises.

        Raises
        ------
        NotImplementedError
            Always; apply the network itself on tiles with a ``receptive_radius`` halo.

        Examples
        --------
        >>> ConvCalibNet(4).pixelwise()
        Traceback (most recent call last):
            ...
        NotImplementedError: convcalibnet uses a 7x7 neighbourhood; ...
        """
        raise NotImplementedError(
            "convcalibnet uses a 7x7 neighbourhood; apply it on image tiles with a halo of "
            f"{self.receptive_radius} pixels instead of pixel by pixel"
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predict reference reflectances (and variances) for an image batch.

        Parameters
        ----------
        x : torch.Tensor
            Image batch (N, C, H, W).

        Returns
        -------
        prediction : torch.Tensor
            (N, C, H, W).
        variance : torch.Tensor or None
            σ² > 0, (N, C, H, W), or None without a variance head.

        Examples
        --------
        >>> import torch
        >>> pred, var = ConvCalibNet(4).eval()(torch.rand(1, 4, 16, 16))
        >>> pred.shape, var
        (torch.Size([1, 4, 16, 16]), None)
        """
        if x.ndim != 4:
            raise ValueError(f"expected (N, C, H, W) input, got shape {tuple(x.shape)}")
        h = self.act(self.conv1(self.norm(x)))
        h = self.act(self.conv2(h))
        pred = x + torch.tanh(self.conv3(h))
        var = positive_variance(self.conv_var(h)) if self.conv_var is not None else None
        return pred, var
