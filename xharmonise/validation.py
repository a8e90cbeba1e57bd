"""Scoring a full-resolution prediction against a simulated pair's known truth.

A real pair only allows scores at the reference resolution, on the test patches
(``Harmoniser.metrics``). The simulator also knows, at the source resolution, the
reflectance a perfect harmonisation would give, where its unmasked clouds are, and the
detail the source carries; these scores use that knowledge to check the paper's claims:
the mapping is right on clear pixels, full-resolution detail is kept, and the variance
head flags clouds.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from xharmonise.errors import DetailLossWarning
from xharmonise.grid import centred_window
from xharmonise.harmoniser import Harmoniser
from xharmonise.metrics import high_frequency_transfer, rmse, roc_auc
from xharmonise.models.linear import apply_linear
from xharmonise.simulate import SimulatedPair

__all__ = ["score_against_truth"]

# Side of the central window where spectra are taken: large enough for a smooth
# spectrum, small enough for a quick FFT.
_SPECTRUM_WINDOW = 1024


def score_against_truth(
    model: Harmoniser, pair: SimulatedPair, prediction: xr.Dataset | None = None
) -> xr.Dataset:
    """Full-resolution scores of ``model`` on a simulated pair, against its truth.

    Parameters
    ----------
    model : Harmoniser
        A model fitted on ``pair`` (or on a pair simulated with the same physics).
    pair : SimulatedPair
        From :func:`xharmonise.simulate.simulate_pair`, float32 reflectance.
    prediction : xarray.Dataset, optional
        ``predict(pair.src, model)``, computed here when not given.

    Returns
    -------
    xarray.Dataset
        Per band: ``rmse_clear`` — RMSE against the true S2-band reflectance on pixels
        free of unmasked source clouds, for the stages initial (the untouched source),
        linear (the baseline applied at full resolution) and model (dims band, stage);
        ``detail`` — the share of the true reflectance's detail above the reference
        Nyquist frequency that each stage carries, on a central window (see
        :func:`xharmonise.metrics.high_frequency_transfer`: 1 means the full-resolution
        detail is kept at its true strength, below 1 means blur; noise does not count).
        With a variance head, the scalar ``cloud_auc``: ROC AUC of the band-mean variance
        separating cloudy from clear source pixels.

    Examples
    --------
    >>> from xharmonise import fit
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((300, 300), seed=0)
    >>> model = fit(pair.src, pair.ref, method="linear", patch_size=16)
    >>> scores = score_against_truth(model, pair)
    >>> bool((abs(scores["detail"].sel(stage="model") - 1) < 0.05).all())
    True
    """
    from xharmonise.api import predict

    if prediction is None:
        with warnings.catch_warnings():
            # Scoring ConvCalibNet at full resolution is how its detail loss is measured.
            warnings.simplefilter("ignore", DetailLossWarning)
            prediction = predict(pair.src, model)
    src = np.asarray(pair.src.values, dtype=np.float64)
    truth = np.asarray(pair.truth.reflectance.values, dtype=np.float64)
    pred = np.asarray(prediction["prediction"].values, dtype=np.float64)
    linear = apply_linear(model.linear, src, axis=0)
    clouds = np.asarray(pair.truth.src_clouds.values, dtype=bool)
    valid = np.isfinite(src).all(axis=0) & np.isfinite(truth).all(axis=0)
    clear = valid & ~clouds

    stages = {"initial": src, "linear": linear, "model": pred}
    rmse_clear = np.stack([rmse(truth[:, clear], v[:, clear]) for v in stages.values()], axis=1)

    window = (slice(None), *centred_window(src.shape, _SPECTRUM_WINDOW))
    if not all(np.isfinite(v[window]).all() for v in (truth, *stages.values())):
        raise ValueError("the central spectrum window holds no-data: simulate a larger pair")
    cutoff = 1.0 / (2 * model.factor)  # reference Nyquist, in source cycles per pixel
    detail = np.stack(
        [high_frequency_transfer(v[window], truth[window], cutoff) for v in stages.values()],
        axis=1,
    )

    bands = list(model.ref_bands)
    ds = xr.Dataset(
        {
            "rmse_clear": (("band", "stage"), rmse_clear),
            "detail": (("band", "stage"), detail),
        },
        coords={"band": bands, "stage": list(stages)},
    )
    # A head's σ² only: an empirical one (#15, no head) is a function of brightness.
    has_head = model.variance and "variance" in prediction
    if has_head and clouds[valid].any() and (~clouds[valid]).any():
        var = np.asarray(prediction["variance"].values, dtype=np.float64).mean(axis=0)
        ds["cloud_auc"] = roc_auc(var[valid], clouds[valid])
    return ds
