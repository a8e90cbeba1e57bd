"""Harmonisation models: the linear baseline and the neural networks of the paper.

:mod:`~xharmonise.models.registry` declares every method (what it trains on, its halo,
filter margin, budgets and what it offers); ask it rather than comparing method names.
``linear`` needs only NumPy. The neural models (CalibNet, ConvCalibNet, BCNet, the
variance head) need torch, which is imported on first use of one of their names, so that
``import xharmonise``, the linear path and NumPy-only workers never pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any

from xharmonise.models.budget import PAPER_RECIPE, TrainingConfig
from xharmonise.models.registry import METHODS, RING_EXTRA, Method, MethodName, method

# Built lazily from the factory (torch) on first use.
_NETWORK_NAMES = [
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
__all__ = [
    "METHODS",
    "PAPER_RECIPE",
    "RING_EXTRA",
    "Method",
    "MethodName",
    "TrainingConfig",
    "method",
    *_NETWORK_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _NETWORK_NAMES:
        return getattr(importlib.import_module("xharmonise.models.factory"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
