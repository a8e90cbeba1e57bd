"""BCNet: a learnable per-band blur-and-sample filter followed by CalibNet.

During training the reference pixel (e.g. Sentinel-2, 10 m) is compared with the
full-resolution source (e.g. Pleiades, 2 m). Instead of degrading the source with a fixed
Gaussian model of the reference's point-spread function, BCNet learns one K x K filter per
band, applied with stride ``factor``, jointly with the radiometric CalibNet. The filter can
absorb PSF-model errors and sub-pixel misregistration, which would otherwise bias the
radiometric mapping. At inference the filter is dropped: ``pixelwise()`` returns the inner
CalibNet, which :func:`xharmonise.predict` applies to every source pixel at full
resolution. (The test-split metrics at the reference resolution are those of the whole
network, learned filter included.)

Filter parametrisation: the weights hold log-kernel values and the kernel is their 2-D
softmax, so it stays positive and sums to 1 (energy preserving) whatever the optimiser
does, and starting from ``log g`` gives exactly the Gaussian ``g`` at initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xharmonise.models.calibnet import HIDDEN_UNITS, CalibNet
from xharmonise.psf import gaussian_kernel

__all__ = ["BCNet", "filter_shift"]

# Gaussian tails can underflow to 0 for tiny sigmas; log(0) = -inf would make the softmax
# gradient NaN, and exp(-80) is far below float32 resolution of a normalised kernel anyway.
_LOG_FLOOR: float = -80.0


class BCNet(nn.Module):
    """Learnable strided blur (one softmax-normalised K x K filter per band) + CalibNet.

    Parameters
    ----------
    n_bands : int
        Number of spectral bands C (>= 1).
    sigmas : sequence of float
        Per-band standard deviation, in source pixels, of the initial Gaussian filters.
    factor : int, default 5
        Resolution ratio reference / source, used as the convolution stride.
    margin : int
        Source pixels of context beyond each ``factor x factor`` block; K = factor +
        2 * margin. The caller supplies input patches padded by ``margin``.
    variance : bool, default False
        Give the inner CalibNet a variance head.
    hidden : int, default HIDDEN_UNITS
        Width of the inner CalibNet's hidden layers.

    Notes
    -----
    ``forward`` takes (N, C, factor * n + 2 * margin, factor * m + 2 * margin) and returns
    (N, C, n, m): a *valid* strided convolution whose output pixel j is centred on source
    block ``[factor * j, factor * j + factor)`` of the un-margined patch.

    Examples
    --------
    >>> import torch
    >>> net = BCNet(4, [2.5] * 4, factor=5, margin=7).eval()
    >>> net(torch.rand(2, 4, 5 * 32 + 14, 5 * 32 + 14))[0].shape
    torch.Size([2, 4, 32, 32])
    >>> net.filters().shape
    (4, 19, 19)
    """

    method: str = "bcnet"

    def __init__(
        self,
        n_bands: int,
        sigmas: Sequence[float],
        *,
        factor: int = 5,
        margin: int,
        variance: bool = False,
        hidden: int = HIDDEN_UNITS,
    ):
        super().__init__()
        if len(sigmas) != n_bands:
            raise ValueError(f"{len(sigmas)} sigmas for {n_bands} bands")
        if factor < 1 or margin < 0:
            raise ValueError(f"need factor >= 1 and margin >= 0, got {factor}, {margin}")
        self.n_bands = int(n_bands)
        self.sigmas = [float(s) for s in sigmas]
        self.factor = int(factor)
        self.margin = int(margin)
        self.variance = bool(variance)
        init = np.stack([gaussian_kernel(s, self.factor, self.margin) for s in self.sigmas])
        log_init = np.maximum(np.log(np.maximum(init, np.finfo(np.float64).tiny)), _LOG_FLOOR)
        self.log_kernels = nn.Parameter(torch.from_numpy(log_init.astype(np.float32)))
        self.calib = CalibNet(n_bands, variance=variance, hidden=hidden)

    @property
    def kernel_size(self) -> int:
        """Side K = factor + 2 * margin of the learnable filters, in source pixels."""
        return self.factor + 2 * self.margin

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``build_model(**net.config())`` rebuilds it.

        Examples
        --------
        >>> from xharmonise.models import build_model
        >>> net = BCNet(4, [2.5] * 4, factor=5, margin=2)
        >>> net.config()["margin"], type(build_model(**net.config())).__name__
        (2, 'BCNet')
        """
        return {
            "method": self.method,
            "n_bands": self.n_bands,
            "variance": self.variance,
            "hidden": self.calib.hidden,
            "factor": self.factor,
            "sigmas": list(self.sigmas),
            "margin": self.margin,
        }

    def pixelwise(self) -> CalibNet:
        """The inner CalibNet: what inference applies to every source pixel at full
        resolution, the learned filter skipped.

        Examples
        --------
        >>> type(BCNet(4, [2.5] * 4, factor=5, margin=2).pixelwise()).__name__
        'CalibNet'
        """
        return self.calib

    def _normalised_kernels(self) -> torch.Tensor:
        c, k, _ = self.log_kernels.shape
        return torch.softmax(self.log_kernels.reshape(c, k * k), dim=1).reshape(c, k, k)

    def filters(self) -> np.ndarray:
        """Current softmax-normalised filters.

        Returns
        -------
        numpy.ndarray
            float64 array (C, K, K); each band sums to 1.

        Examples
        --------
        >>> k = BCNet(4, [2.5] * 4, factor=5, margin=2).filters()
        >>> k.shape, k.sum(axis=(1, 2)).round(6).tolist()
        ((4, 9, 9), [1.0, 1.0, 1.0, 1.0])
        """
        with torch.no_grad():
            return self._normalised_kernels().detach().cpu().double().numpy()

    def degrade(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the learnable strided filters only.

        Parameters
        ----------
        x : torch.Tensor
            Margined full-resolution batch (N, C, factor * n + 2 * margin, same for x).

        Returns
        -------
        torch.Tensor
            Coarse batch (N, C, n, m).

        Examples
        --------
        >>> import torch
        >>> net = BCNet(4, [2.5] * 4, factor=5, margin=2)
        >>> net.degrade(torch.rand(1, 4, 5 * 8 + 4, 5 * 8 + 4)).shape
        torch.Size([1, 4, 8, 8])
        """
        if x.ndim != 4 or x.shape[1] != self.n_bands:
            raise ValueError(
                f"expected (N, {self.n_bands}, H, W) input, got shape {tuple(x.shape)}"
            )
        for size in x.shape[2:]:
            inner = size - 2 * self.margin
            if inner <= 0 or inner % self.factor:
                raise ValueError(
                    f"spatial size {size} must be a positive multiple of factor {self.factor} "
                    f"plus 2 * margin ({2 * self.margin})"
                )
        weight = self._normalised_kernels().to(x.dtype)
        # A strided window view + einsum equals the grouped strided conv2d, but on the CPU
        # its weight gradient is ~20x faster than conv2d's depthwise backward for these
        # large (K ~ 20), sparse (stride 5) kernels; the view itself copies nothing.
        k = self.kernel_size
        windows = x.unfold(2, k, self.factor).unfold(3, k, self.factor)
        return torch.einsum("ncijab,cab->ncij", windows, weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Filter, sample and calibrate a margined full-resolution batch.

        Parameters
        ----------
        x : torch.Tensor
            (N, C, factor * n + 2 * margin, factor * m + 2 * margin).

        Returns
        -------
        prediction : torch.Tensor
            (N, C, n, m).
        variance : torch.Tensor or None
            σ² > 0, (N, C, n, m), or None without a variance head.

        Examples
        --------
        >>> import torch
        >>> net = BCNet(4, [2.5] * 4, factor=5, margin=2, variance=True).eval()
        >>> pred, var = net(torch.rand(2, 4, 5 * 8 + 4, 5 * 8 + 4))
        >>> pred.shape, bool((var > 0).all())
        (torch.Size([2, 4, 8, 8]), True)
        """
        return self.calib(self.degrade(x))


def filter_shift(filters: np.ndarray) -> np.ndarray:
    """Centroid of each filter relative to the kernel centre, in source pixels.

    A filter centred on its block has shift (0, 0). A shift (dy, dx) means that each
    reference pixel is best explained by source pixels centred ``dy`` rows below and
    ``dx`` columns right of its block centre (positive = towards larger indices): the
    filter has absorbed that misregistration between the two images.

    Parameters
    ----------
    filters : numpy.ndarray
        (C, K, K) or (K, K) non-negative filters, e.g. ``BCNet.filters()``.

    Returns
    -------
    numpy.ndarray
        float64 (C, 2) array of (dy, dx) per band ((1, 2) for a single 2-D kernel).

    Examples
    --------
    >>> import numpy as np
    >>> k = np.zeros((1, 5, 5)); k[0, 2, 3] = 1.0
    >>> filter_shift(k)
    array([[0., 1.]])
    """
    f = np.asarray(filters, dtype=np.float64)
    if f.ndim == 2:
        f = f[None]
    if f.ndim != 3 or f.shape[1] != f.shape[2]:
        raise ValueError(f"expected (C, K, K) filters, got shape {f.shape}")
    k = f.shape[1]
    offsets = np.arange(k) - (k - 1) / 2.0
    total = f.sum(axis=(1, 2))
    dy = np.einsum("cyx,y->c", f, offsets) / total
    dx = np.einsum("cyx,x->c", f, offsets) / total
    return np.stack([dy, dx], axis=1)
