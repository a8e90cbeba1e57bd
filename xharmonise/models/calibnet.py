"""CalibNet: a per-pixel residual MLP mapping source reflectances to the reference's.

Each pixel's C-band spectrum goes through BatchNorm → FC 320 → LeakyReLU → FC 320 →
LeakyReLU → FC C → tanh, and the result is added to the input: the network learns a
bounded correction of the source spectrum rather than the spectrum itself, so an
untrained or saturated network stays close to the identity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xharmonise.models.variance import clone_layer, positive_variance

__all__ = ["HIDDEN_UNITS", "CalibNet"]

#: Width of CalibNet's two hidden layers (paper value).
HIDDEN_UNITS: int = 320


class CalibNet(nn.Module):
    """Per-pixel residual MLP, optionally with a variance head.

    Parameters
    ----------
    n_bands : int
        Number of spectral bands C (>= 1), same for input and output.
    variance : bool, default False
        Add a parallel output layer predicting a per-band variance σ² > 0.
    hidden : int, default HIDDEN_UNITS
        Width of the hidden layers.

    Notes
    -----
    ``forward`` accepts a pixel matrix (P, C) or an image batch (N, C, H, W); images are
    processed pixel by pixel (channels-last view), so both paths give identical values
    and BatchNorm statistics are per band over all pixels in either case.

    Examples
    --------
    >>> import torch
    >>> net = CalibNet(4).eval()
    >>> pred, var = net(torch.rand(10, 4))
    >>> pred.shape, var
    (torch.Size([10, 4]), None)
    >>> net(torch.rand(2, 4, 8, 8))[0].shape
    torch.Size([2, 4, 8, 8])
    """

    method: str = "calibnet"

    def __init__(self, n_bands: int, *, variance: bool = False, hidden: int = HIDDEN_UNITS):
        super().__init__()
        if n_bands < 1:
            raise ValueError(f"n_bands must be >= 1, got {n_bands}")
        self.n_bands = int(n_bands)
        self.variance = bool(variance)
        self.hidden = int(hidden)
        self.norm = nn.BatchNorm1d(n_bands)
        self.fc1 = nn.Linear(n_bands, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, n_bands)
        self.act = nn.LeakyReLU()
        self.fc_var = clone_layer(self.fc3) if variance else None

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``build_model(**net.config())`` rebuilds it.

        Examples
        --------
        >>> CalibNet(4, variance=True).config()
        {'method': 'calibnet', 'n_bands': 4, 'variance': True, 'hidden': 320}
        """
        return {
            "method": self.method,
            "n_bands": self.n_bands,
            "variance": self.variance,
            "hidden": self.hidden,
        }

    def pixelwise(self) -> CalibNet:
        """The network to apply pixel by pixel at inference: CalibNet itself.

        Examples
        --------
        >>> net = CalibNet(4)
        >>> net.pixelwise() is net
        True
        """
        return self

    def _forward_pixels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.act(self.fc1(self.norm(x)))
        h = self.act(self.fc2(h))
        pred = x + torch.tanh(self.fc3(h))
        var = positive_variance(self.fc_var(h)) if self.fc_var is not None else None
        return pred, var

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predict reference reflectances (and variances) for pixels or images.

        Parameters
        ----------
        x : torch.Tensor
            Pixel matrix (P, C) or image batch (N, C, H, W).

        Returns
        -------
        prediction : torch.Tensor
            Same shape as ``x``.
        variance : torch.Tensor or None
            σ² > 0, same shape as ``x``, or None without a variance head.

        Examples
        --------
        >>> import torch
        >>> net = CalibNet(4, variance=True).eval()
        >>> pred, var = net(torch.rand(10, 4))
        >>> pred.shape, bool((var > 0).all())
        (torch.Size([10, 4]), True)
        """
        if x.ndim == 2:
            return self._forward_pixels(x)
        if x.ndim != 4:
            raise ValueError(f"expected (P, C) or (N, C, H, W) input, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(-1, c)
        pred, var = self._forward_pixels(pixels)

        def _to_image(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, h, w, c).permute(0, 3, 1, 2)

        return _to_image(pred), (_to_image(var) if var is not None else None)
