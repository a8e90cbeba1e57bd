"""The factory of the neural harmonisation models: CalibNet, ConvCalibNet and BCNet.

Every model maps C source bands to C reference-consistent bands, returns
``(prediction, variance)`` from ``forward`` (``variance`` is None unless built with
``variance=True``), carries ``method``, ``n_bands`` and ``variance`` attributes, and can be
rebuilt from the JSON-able ``net.config()`` with ``build_model(**config)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xharmonise.models.bcnet import BCNet, filter_shift
from xharmonise.models.calibnet import HIDDEN_UNITS, CalibNet
from xharmonise.models.convcalibnet import HIDDEN_CHANNELS, ConvCalibNet
from xharmonise.models.registry import METHODS
from xharmonise.models.registry import method as method_spec
from xharmonise.models.variance import VARIANCE_EPS, positive_variance

__all__ = [
    "BCNET_EXTRA_MARGIN",
    "NEURAL_METHODS",
    "VARIANCE_EPS",
    "BCNet",
    "CalibNet",
    "ConvCalibNet",
    "build_model",
    "filter_shift",
    "network_from_spec",
    "network_spec",
    "positive_variance",
]

#: Methods ``build_model`` knows: the registry's neural ones.
NEURAL_METHODS: tuple[str, ...] = tuple(m.name for m in METHODS.values() if m.neural)

#: Source pixels added to BCNet's ±3σ kernel support so that its filter can move.
BCNET_EXTRA_MARGIN: int = method_spec("bcnet").filter_extra or 0


def build_model(
    method: str,
    n_bands: int,
    *,
    variance: bool = False,
    factor: int = 5,
    sigmas: Sequence[float] | None = None,
    margin: int | None = None,
    hidden: int | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Build an untrained harmonisation network.

    Parameters
    ----------
    method : {"calibnet", "convcalibnet", "bcnet"}
        Architecture.
    n_bands : int
        Number of bands C (>= 1).
    variance : bool, default False
        Add a variance head (forward then returns σ² > 0 as second output).
    factor : int, default 5
        Resolution ratio (BCNet only: stride of its filters).
    sigmas : sequence of float, optional
        Per-band Gaussian PSF standard deviations in source pixels (required for BCNet).
    margin : int, optional
        BCNet filter margin; default ``kernel_margin(max(sigmas), factor,
        extra=BCNET_EXTRA_MARGIN)``.
    hidden : int, optional
        Hidden width (units for CalibNet and BCNet, channels for ConvCalibNet); default
        is the paper's (320 / 64).
    seed : int, optional
        Seed for the weight initialisation, drawn from a forked RNG so the global torch
        random state is left untouched. Default: the global torch RNG.

    Returns
    -------
    torch.nn.Module
        The model, in training mode.

    Raises
    ------
    ValueError
        Unknown ``method``, or BCNet without ``sigmas``.

    Examples
    --------
    >>> net = build_model("bcnet", 3, sigmas=[2.4, 2.5, 2.6])
    >>> net.margin, net.factor
    (8, 5)
    >>> build_model(**net.config()).config() == net.config()
    True
    """
    if seed is None:
        return _build(method, n_bands, variance, factor, sigmas, margin, hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(method, n_bands, variance, factor, sigmas, margin, hidden)


def _build(
    method: str,
    n_bands: int,
    variance: bool,
    factor: int,
    sigmas: Sequence[float] | None,
    margin: int | None,
    hidden: int | None,
) -> nn.Module:
    if method == "calibnet":
        return CalibNet(n_bands, variance=variance, hidden=hidden or HIDDEN_UNITS)
    if method == "convcalibnet":
        return ConvCalibNet(n_bands, variance=variance, hidden=hidden or HIDDEN_CHANNELS)
    if method == "bcnet":
        if sigmas is None:
            raise ValueError("bcnet needs the per-band PSF sigmas")
        if margin is None:
            margin = method_spec("bcnet").filter_margin(sigmas, factor)
        return BCNet(
            n_bands,
            sigmas,
            factor=factor,
            margin=margin,
            variance=variance,
            hidden=hidden or HIDDEN_UNITS,
        )
    raise ValueError(f"unknown method {method!r}; known: {', '.join(NEURAL_METHODS)}")


def network_spec(net: Any) -> dict[str, Any]:
    """JSON-able config + NumPy weights of a network: what is needed to rebuild it.

    The ``digest`` (SHA-256 of the weights) keys the inference workers' caches of rebuilt
    networks.

    Examples
    --------
    >>> spec = network_spec(build_model("calibnet", 4, seed=0))
    >>> sorted(spec), spec["config"]["method"]
    (['config', 'digest', 'state'], 'calibnet')
    >>> network_spec(build_model("calibnet", 4, seed=0))["digest"] == spec["digest"]
    True
    """
    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    digest = hashlib.sha256()
    for k in sorted(state):
        digest.update(k.encode())
        digest.update(np.ascontiguousarray(state[k]).tobytes())
    return {"config": net.config(), "state": state, "digest": digest.hexdigest()}


def network_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a network, in eval mode, from :func:`network_spec`'s config and weights.

    Examples
    --------
    >>> net = build_model("calibnet", 4, seed=0)
    >>> again = network_from_spec(network_spec(net))
    >>> network_spec(again)["digest"] == network_spec(net)["digest"]
    True
    """
    net = build_model(**spec["config"])
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in spec["state"].items()})
    return net.eval()
