"""The stages of :func:`xharmonise.evaluate`: a fitted model scored on a pair, as ``fit``
scores it.

``model_reflectance`` (both inputs as reflectance, their bands paired as the model pairs
them) -> ``run``: the fit's own stages (:mod:`xharmonise.stages`) put the pair on one
grid (a reference time series reduced to the dates that serve the source, the source
corrected by the model's shift), reduce it to the reference resolution and index its
patches as ``fit`` does; the patches chosen (every valid one, or the fit's test split)
are gathered once, the model predicts them as ``fit`` predicts its test patches (the
network on the reference-resolution patches, or the full-resolution ones for BCNet), and
the metric table and σ² coverage are computed by the functions ``fit`` uses. Nothing is
trained or refitted: the ``linear`` stage is the model's own baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import xarray as xr

from xharmonise import checks, dates, sampling, stages
from xharmonise.calibration import coverage_table
from xharmonise.errors import BandMismatchError, GridError, InputValueError
from xharmonise.harmoniser import Harmoniser
from xharmonise.models.linear import apply_linear
from xharmonise.models.registry import method as method_spec
from xharmonise.records import ShiftEstimate
from xharmonise.scaling import as_band_array, band_names, scaling_like_training

__all__ = [
    "FIT_DEFAULTS",
    "SPLITS",
    "Split",
    "model_reflectance",
    "run",
    "sampling_options",
    "sampling_source",
]

#: The patches an evaluation scores: every valid patch of the pair, or the test split
#: ``fit`` holds out with the same ``patch_size``, ``test_fraction``, ``max_patches`` and
#: ``seed``.
SPLITS = ("all", "test")
Split = Literal["all", "test"]

#: ``fit``'s default sampling options: what ``evaluate`` assumes for a model saved before
#: fit recorded its own (``tests/test_evaluate.py`` holds them to ``fit``'s signature).
FIT_DEFAULTS: dict[str, Any] = {
    "patch_size": 32,
    "test_fraction": 0.1,
    "max_patches": None,
    "seed": 0,
}


def sampling_options(model: Harmoniser, given: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling options an evaluation runs with: each one ``given``, or where None, the
    model's own (:attr:`Harmoniser.sampling`), or for a model that records none,
    :data:`FIT_DEFAULTS`.

    ``given`` maps option names (those of :data:`FIT_DEFAULTS`) to values, which are
    passed through unchecked (:func:`xharmonise.checks.sampling` checks them).

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8, seed=3)
    >>> sampling_options(model, {"patch_size": None, "max_patches": 5})
    {'patch_size': 8, 'test_fraction': 0.1, 'max_patches': 5, 'seed': 3}
    """
    own = model.sampling if model.sampling is not None else FIT_DEFAULTS
    return {k: own[k] if given.get(k) is None else given[k] for k in FIT_DEFAULTS}


def sampling_source(model: Harmoniser, given: Mapping[str, Any]) -> str:
    """Where :func:`sampling_options` takes the options from, in words: ``"given"``,
    ``"model"`` (the model's record), ``"fit defaults"`` (a model that records none), or
    ``"given, else model"`` / ``"given, else fit defaults"`` when only some are given."""
    left = [k for k in FIT_DEFAULTS if given.get(k) is None]
    if not left:
        return "given"
    own = "model" if model.sampling is not None else "fit defaults"
    return own if len(left) == len(FIT_DEFAULTS) else f"given, else {own}"


def _named(names: Sequence[str]) -> bool:
    # Files without band descriptions have numbered bands, which name nothing.
    return all(not n.isdigit() for n in names)


def _input_names(obj: Any, name: str, *, series: bool) -> list[str]:
    if isinstance(obj, xr.Dataset) and series and len(obj.data_vars) > 1:
        return [str(v) for v in obj.data_vars]  # odc-stac: one variable per band
    return band_names(as_band_array(obj, name, series=series))


def _model_pairing(
    src: xr.DataArray | xr.Dataset, ref: xr.DataArray | xr.Dataset, model: Harmoniser
) -> dict[str, str] | None:
    """The model's ``{src_band: ref_band}`` when both inputs have those bands, else None
    (the bands then pair in order, as ``fit`` pairs them)."""
    src_names = _input_names(src, "the source", series=False)
    ref_names = _input_names(ref, "the reference", series=True)
    if set(model.src_bands) <= set(src_names) and set(model.ref_bands) <= set(ref_names):
        return dict(zip(model.src_bands, model.ref_bands, strict=True))
    return None


def _check_pairing(paired: stages.PairedReflectance, model: Harmoniser) -> None:
    trained = dict(zip(model.src_bands, model.ref_bands, strict=True))
    found = dict(zip(paired.src_bands, paired.ref_bands, strict=True))
    differ = len(found) != len(trained) or any(
        _named(a) and _named(b) and a != b
        for a, b in ((paired.src_bands, model.src_bands), (paired.ref_bands, model.ref_bands))
    )
    if differ:
        raise BandMismatchError(
            f"the model maps source to reference bands {trained}, this pair gives {found}: "
            f"select the model's bands, e.g. src.sel(band={list(model.src_bands)}) and "
            f"ref.sel(band={list(model.ref_bands)}), or pair them with bands={trained}"
        )


def model_reflectance(
    src: xr.DataArray | xr.Dataset,
    ref: xr.DataArray | xr.Dataset,
    model: Harmoniser,
    *,
    scale: float | tuple[float | None, float | None] | None = None,
    offset: float | tuple[float | None, float | None] | None = None,
    bands: Mapping[str, str] | Sequence[str] | None = None,
    src_time: Any = None,
) -> stages.PairedReflectance:
    """Both inputs as reflectance, their bands paired as the model pairs them.

    An integer source without scaling attributes is scaled as the model's training
    source was (as :func:`xharmonise.predict` does); ``bands`` pairs as for
    :func:`xharmonise.fit`, by default the model's own pairing when the inputs carry its
    band names, else in order.

    Raises
    ------
    BandMismatchError
        The paired bands are not the model's (another count, or other names).

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
    >>> reordered = pair.ref.isel(band=[3, 2, 1, 0])
    >>> model_reflectance(pair.src, reordered, model).ref_bands
    ('B2', 'B3', 'B4', 'B8')
    """
    src_scale, ref_scale = checks.per_input(scale, "scale", positive=True, example="1e-4")
    src_offset, ref_offset = checks.per_input(offset, "offset", positive=False, example="-0.1")
    trained = (model.src_dtype, model.src_scale, model.src_offset)
    src_scale, src_offset = scaling_like_training(
        as_band_array(src, "the source"), trained, scale=src_scale, offset=src_offset
    )
    if bands is None:
        bands = _model_pairing(src, ref, model)
    paired = stages.reflectance_pair(
        src,
        ref,
        scale=(src_scale, ref_scale),
        offset=(src_offset, ref_offset),
        bands=bands,
        src_time=src_time,
    )
    _check_pairing(paired, model)
    return paired


def _correction(model: Harmoniser, coregister: bool | ShiftEstimate | None) -> bool | ShiftEstimate:
    """``prepare_pair``'s ``coregister``: by default (None) the shift the model's source
    was corrected by, if any."""
    if coregister is not None:
        return coregister
    if model.applied_shift is None:
        return False
    if model.shift_estimate is None:
        raise InputValueError(
            "the model records an applied shift but not its estimate: pass coregister=True "
            "to measure this pair's shift, or coregister=False to leave the source as it is"
        )
    return model.shift_estimate


def _cells(
    index: sampling.PatchIndex,
    split: Split,
    *,
    test_fraction: float,
    max_patches: int | None,
    seed: int,
) -> np.ndarray:
    if split == "all":
        return sampling.shuffled_patches(index, seed=seed, max_patches=max_patches)
    train, test = sampling.split_patches(
        index, test_fraction=test_fraction, seed=seed, max_patches=max_patches
    )
    # As fit scores them: a single valid patch can only be scored on itself.
    return test if len(test) else train


def _variance(
    model: Harmoniser, patches: sampling.Patches, prediction: np.ndarray, raw: np.ndarray | None
) -> np.ndarray | None:
    """The σ² ``predict`` gives on the patches, or None for a model that has none."""
    if model.calibration is not None:
        return stages.calibrated_variance(model.calibration, patches, prediction, raw)
    return raw  # a head saved before calibration: its own σ²; else none


def run(
    paired: stages.PairedReflectance,
    model: Harmoniser,
    *,
    mask: xr.DataArray | None,
    coregister: bool | ShiftEstimate | None,
    split: Split,
    patch_size: int,
    test_fraction: float,
    max_patches: int | None,
    seed: int,
    dates_policy: str | Sequence[Any] = "auto",
    max_days: float = dates.DEFAULT_MAX_DAYS,
    sampling_from: str = "given",
) -> xr.Dataset:
    """Every stage after :func:`model_reflectance`, as :func:`xharmonise.evaluate` runs
    them (with the sampling options resolved by :func:`sampling_options`; where they came
    from, ``sampling_from``, is kept as an attribute); the result is what it returns."""
    spec = method_spec(model.method)
    paired, mask, dated = stages.single_reference(
        paired, mask, policy=dates_policy, max_days=max_days, patch_size=patch_size
    )
    pair = stages.prepare_pair(
        paired, mask=mask, coregister=_correction(model, coregister), measure=False, seed=seed
    )
    if pair.grid.factor != model.factor:
        size = model.src_pixel_size
        raise GridError(
            f"the source is {pair.grid.factor}x finer than the reference, the model was "
            f"fitted at {model.factor}x ({size:g} CRS units per source pixel): resample the "
            f"source to {size:g} (e.g. src.rio.reproject(src.rio.crs, resolution={size:g}))"
        )
    # The model's MTF, whatever the reference bands are called here.
    pair = replace(pair, sigmas=tuple(model.sigmas))
    coarse, index = stages.index_patches(pair, patch_size=patch_size)
    cells = _cells(index, split, test_fraction=test_fraction, max_patches=max_patches, seed=seed)
    patches = stages.gather_patches(pair, spec, coarse, index, cells)
    linear = apply_linear(model.linear, patches.src, axis=1)
    predictions = {"initial": patches.src, "linear": linear, "model": linear}
    raw = None
    if model.net is not None:
        predictions["model"], raw = stages.network_prediction(model.net, patches, spec)
    which: np.ndarray | None = None
    labels: tuple[str, ...] = ()
    if dated is not None:
        which = sampling.windows(index, cells, stages.date_index(dated, pair))
        labels = tuple(str(d) for d in dated.dates)
    table, by_date = stages.score(
        patches.ref, predictions, model.ref_bands, which=which, date_labels=labels
    )
    out = xr.Dataset({"metrics": table})
    variance = _variance(model, patches, predictions["model"], raw)
    if variance is not None:
        out["calibration"] = coverage_table(
            patches.ref, predictions["model"], variance, model.ref_bands
        )
    if by_date is not None:
        out["date_metrics"] = by_date
    calibration = model.calibration
    applied = calibration is not None and calibration.applied
    labelled = np.isfinite(patches.ref).all(axis=1)
    out.attrs.update(
        method=model.method,
        split=split,
        patches=len(cells),
        valid_patches=index.counts["valid"],
        pixels=int(labelled.sum()),
        patch_size=int(patch_size),
        test_fraction=float(test_fraction),
        # Strings, not None or bools: netCDF attributes cannot hold them.
        max_patches="none" if max_patches is None else int(max_patches),
        seed=int(seed),
        sampling_from=sampling_from,
        variance_kind=str(model.variance_kind),
        calibration="validation patches" if applied else "none",
    )
    if pair.applied_shift is not None:
        out.attrs["coregistration_shift"] = list(pair.applied_shift)
    return out
