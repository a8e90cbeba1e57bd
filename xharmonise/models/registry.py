"""The harmonisation methods, declared once: what each trains on, reads, offers and costs.

Every other module asks this registry (``method(name)``) instead of comparing method
names, so adding a method means adding one entry here and its network in
:mod:`xharmonise.models.factory`. The registry needs neither torch nor NumPy; the
networks are built by :func:`xharmonise.models.build_model`, which takes a registry name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from xharmonise.errors import UnknownMethodError
from xharmonise.models.budget import CPU_SCHEDULE, PAPER_RECIPE, TrainingConfig
from xharmonise.psf import kernel_margin

__all__ = ["METHODS", "RING_EXTRA", "Method", "MethodName", "TrainsOn", "method"]

#: The method names ``fit`` accepts.
MethodName = Literal["linear", "calibnet", "convcalibnet", "bcnet"]
#: What a method learns from: reference-resolution pixels (pooled from patches), whole
#: reference-resolution patches, or full-resolution source patches with a margin.
TrainsOn = Literal["pixels", "patches", "full_patches"]


@dataclass(frozen=True)
class Method:
    """One harmonisation method.

    Attributes
    ----------
    name : str
        The name ``fit(method=...)`` takes.
    summary : str
        One line for help texts.
    neural : bool
        Whether a network is trained (False: the linear baseline is the model).
    trains_on : {"pixels", "patches", "full_patches"}
        What the training data is cut into (see :data:`TrainsOn`).
    halo : int
        Source pixels around each output pixel that inference reads (0: pixelwise).
    filter_extra : int or None
        Source pixels the learned input filter reaches beyond the reference MTF kernel's
        ±3σ support (room to learn a shift); None when the method has no filter.
    offers_variance : bool
        Whether ``fit(..., variance=True)`` can add a variance head.
    measures_shift : bool
        Whether every fit measures the phase-correlation shift (to set it beside the
        filter's), even without ``coregister=True``.
    cpu_budget, gpu_budget : TrainingConfig or None
        Default training budgets (None for methods that do not train a network).
    inference_warning : str or None
        Said by ``predict`` as a ``DetailLossWarning`` (what the method loses at the
        source resolution).
    """

    name: str
    summary: str
    neural: bool
    trains_on: TrainsOn
    halo: int = 0
    filter_extra: int | None = None
    offers_variance: bool = False
    measures_shift: bool = False
    cpu_budget: TrainingConfig | None = None
    gpu_budget: TrainingConfig | None = None
    inference_warning: str | None = None

    @property
    def has_filters(self) -> bool:
        """Whether the model learns input filters (and from them a shift)."""
        return self.filter_extra is not None

    def budget(self, device_type: str) -> TrainingConfig:
        """The default budget on a device type (``"cuda"`` or anything else: the CPU's).

        Examples
        --------
        >>> method("bcnet").budget("cuda").iterations, method("bcnet").budget("cpu").iterations
        (5000, 3600)
        """
        budget = self.gpu_budget if device_type == "cuda" else self.cpu_budget
        if budget is None:
            raise ValueError(f"{self.name} trains no network and has no training budget")
        return budget

    def filter_margin(self, sigmas: Sequence[float], factor: int) -> int:
        """Source pixels read around a reference pixel's footprint by the method's training:
        the reference MTF kernel's ±3σ support, plus the filter's reach (``filter_extra``)
        for a method with a filter; what full-resolution patches are cut with.

        Examples
        --------
        >>> method("bcnet").filter_margin([2.76], 5), method("calibnet").filter_margin([2.76], 5)
        (8, 6)
        """
        return kernel_margin(max(sigmas), factor, extra=self.filter_extra or 0)

    def inference_network(self, net: Any) -> Any:
        """The network inference runs: the trained one, or its pixelwise part (BCNet drops
        its filter) for methods without a halo."""
        return net if self.halo else net.pixelwise()


_CPU = CPU_SCHEDULE
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "linear",
            "per-band linear regression on all bands (the baseline every fit also reports)",
            neural=False,
            trains_on="pixels",
        ),
        Method(
            "calibnet",
            "pixelwise MLP on reference-resolution pixels",
            neural=True,
            trains_on="pixels",
            offers_variance=True,
            cpu_budget=replace(_CPU, pixels_per_step=4096),
            gpu_budget=PAPER_RECIPE,
        ),
        Method(
            "convcalibnet",
            "small residual CNN on reference-resolution patches (alters 2 m detail)",
            neural=True,
            trains_on="patches",
            # Three 3 x 3 convolutions: ConvCalibNet.receptive_radius.
            halo=3,
            offers_variance=True,
            # Small batches, many steps: a step of 8 patches costs ~17 ms, of 16 ~32 ms
            # and of 32 ~86 ms (cache effects), and at equal time more, smaller steps
            # reach a lower loss.
            cpu_budget=replace(_CPU, batch_size=8, iterations=6000, lr=2e-3, eval_every=300),
            gpu_budget=PAPER_RECIPE,
            inference_warning=(
                "ConvCalibNet learned spatial effects (MTF, mis-registration) at the "
                "reference resolution and alters the source's full-resolution detail; use "
                "method='bcnet' to keep it"
            ),
        ),
        Method(
            "bcnet",
            "CalibNet behind a learnable blur/shift filter, dropped at inference",
            neural=True,
            trains_on="full_patches",
            filter_extra=2,
            offers_variance=True,
            measures_shift=True,
            # BCNet diverges from its filters' Gaussian start at higher rates (1.5e-3 and
            # 2e-3 stopped early, 10-25 % worse); fewer validations buy it 600 more steps.
            cpu_budget=replace(_CPU, iterations=3600, eval_every=300),
            gpu_budget=PAPER_RECIPE,
        ),
    )
}

#: Ring of reference pixels around each patch that must be valid, in source pixels beyond
#: the MTF kernel: the widest filter of any method, so that every method trains and is
#: scored on the same patches of a pair.
RING_EXTRA: int = max(m.filter_extra or 0 for m in METHODS.values())


def method(name: Any) -> Method:
    """The method called ``name``, or an error listing the known ones.

    Raises
    ------
    UnknownMethodError
        ``name`` is no method's name.

    Examples
    --------
    >>> method("bcnet").trains_on, method("linear").neural
    ('full_patches', False)
    """
    if isinstance(name, str) and name in METHODS:
        return METHODS[name]
    raise UnknownMethodError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
