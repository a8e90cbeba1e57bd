"""Harmonisation models: the linear baseline and the neural networks of the paper.

``linear`` needs only NumPy. The neural models (CalibNet, ConvCalibNet, BCNet, the
variance head) need torch, which is imported on first use of one of their names, so that
``import xharmonise``, the linear path and NumPy-only workers never pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BCNET_EXTRA_MARGIN",
    "NEURAL_METHODS",
    "VARIANCE_EPS",
    "BCNet",
    "CalibNet",
    "ConvCalibNet",
    "build_model",
    "filter_shift",
    "positive_variance",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("xharmonise.models.factory"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
