"""Applicability: how far a source pixel lies from the pixels the model was trained on.

At fit time, every model gets a :class:`Domain`: a small Gaussian mixture fitted to the
source pixels of its training patches *at the source resolution* (the pixels
:func:`xharmonise.predict` sees: 2 m texture, noise and pure roofs included, not the
10 m blur the network trained on), in reflectance standardised per band by the training
mean and standard deviation, with covariances regularised by ``REGULARISATION`` (in
standardised units) so that a flat cluster (a road, a roof of one colour) cannot make a
singular one. A pixel's *score* is minus the log of its largest weighted component
density (the mixture's log density within log of the component count); its
**applicability** is the share of the training-domain pixels whose score is at least as
high, the empirical tail probability:

* 1: as typical as the densest training pixels; 0.5: half of the training pixels lie
  farther out; ``OUT_OF_DOMAIN`` (0.001): farther than all but 0.1 % of them.
* Between the stored quantile knots (tail probabilities 1 to at most 1e-4, as far as
  the sample supports) the log of the tail probability is interpolated linearly in the
  score; beyond the farthest knot it decays as ``exp(-(score - last knot))``, the decay
  of a Gaussian tail in its log density, so that pixels far outside still rank by
  distance.

A pixel is *out of domain* when its applicability is below ``OUT_OF_DOMAIN``; by
construction about 0.1 % of pixels like the training ones are (a few more where the
patches sampled miss a rare cover of the scene). :func:`xharmonise.predict` warns with
:class:`~xharmonise.errors.OutOfDomainWarning` when more than ``WARN_SHARE`` (1 %) of the
valid pixels are out of domain.

Why a mixture: reflectances of a scene are a few clouds of land covers, not one
ellipsoid. A single Gaussian's ellipsoid, wide enough for bright soil and forest alike,
holds water and flat bright roofs inside it. Measured on simulated 600 x 600 pairs (TOC
and TOA, a linear fit on a scene without water and bright roofs, or without any roof,
applied to another scene with them): one Gaussian fitted to the same pixels ranks those
pixels above the familiar ones with a ROC AUC of 0.949-0.983, the mixture of
``COMPONENTS`` with 1.000, flagging every one of them and 0.4-0.9 % of the familiar
pixels; on the training scene itself 0.10-0.12 % are flagged.

Cost: the score is two small matrix products on the band planes and a maximum over the
components per pixel, then one interpolation: measured (``benchmarks/applicability.py``)
at a few percent of CalibNet's cost per pixel.

This module needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xharmonise.errors import InputValueError

__all__ = [
    "COMPONENTS",
    "OUT_OF_DOMAIN",
    "REGULARISATION",
    "WARN_SHARE",
    "Domain",
    "fit_domain",
    "out_of_domain_share",
]

#: Applicability below this: the pixel is outside the training domain.
OUT_OF_DOMAIN = 1e-3
#: predict warns (:class:`~xharmonise.errors.OutOfDomainWarning`) above this share of
#: out-of-domain pixels.
WARN_SHARE = 0.01
#: Gaussian components of the mixture (fewer on a small sample: at least
#: ``_MIN_COMPONENT_PIXELS`` pixels each).
COMPONENTS = 8
#: Added to the diagonal of every covariance, in standardised units (a variance).
REGULARISATION = 1e-4

_MIN_COMPONENT_PIXELS = 200
_FIT_PIXELS = 20_000  # pixels the mixture is fitted on
_KNOT_PIXELS = 1 << 18  # pixels its score quantiles are measured on (others than those)
_EM_STEPS = 30
_EM_TOLERANCE = 1e-3  # nats per pixel
_SLAB_VALUES = 1 << 16  # float32 values of the score's largest temporary per slab
# Tail probabilities of the knots (the smallest kept while 20 sample pixels lie beyond).
_TAILS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4)
_MIN_BEYOND = 20


@dataclass(frozen=True, eq=False)
class Domain:
    """The training domain of a model: a Gaussian mixture and its score quantiles.

    Attributes
    ----------
    center, scale : numpy.ndarray
        (band,) standardisation: z = (reflectance - center) / scale.
    weights : numpy.ndarray
        (component,) mixture weights, summing to 1.
    means : numpy.ndarray
        (component, band) means, standardised.
    covariances : numpy.ndarray
        (component, band, band) covariances, standardised, regularised (positive definite).
    knots : numpy.ndarray
        Increasing scores (minus log density) at the tail probabilities ``tails``.
    tails : numpy.ndarray
        Decreasing tail probabilities, from 1.
    pixels, patches : int
        Source pixels and training patches the domain was measured on.

    Examples
    --------
    A one-band domain fitted on a standard normal sample:

    >>> rng = np.random.default_rng(0)
    >>> dom = fit_domain(rng.normal(size=(20_000, 1)), components=1)
    >>> a = dom.applicability(np.array([[[0.0, 2.0, 4.0, np.nan]]]))
    >>> # The share farther out: all at the centre, about 4.6 % beyond ±2σ, 6e-5 beyond 4σ
    >>> # (past the farthest knot, the Gaussian tail's decay).
    >>> round(float(a[0, 0]), 3), bool(0.035 < a[0, 1] < 0.055), bool(np.isnan(a[0, 3]))
    (1.0, True, True)
    >>> bool(3e-5 < a[0, 2] < OUT_OF_DOMAIN)
    True
    """

    center: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    knots: np.ndarray
    tails: np.ndarray
    pixels: int
    patches: int = 0

    def __post_init__(self) -> None:
        arrays = {
            name: np.asarray(getattr(self, name), np.float64)
            for name in ("center", "scale", "weights", "means", "covariances", "knots", "tails")
        }
        n = arrays["center"].shape[0] if arrays["center"].ndim == 1 else 0
        k = arrays["weights"].shape[0] if arrays["weights"].ndim == 1 else 0
        shapes = {
            "center": (n,),
            "scale": (n,),
            "weights": (k,),
            "means": (k, n),
            "covariances": (k, n, n),
            "knots": arrays["tails"].shape,
        }
        for name, shape in shapes.items():
            if arrays[name].shape != shape or not np.isfinite(arrays[name]).all():
                raise InputValueError(
                    f"a domain's {name} is {arrays[name].shape}, not {shape} finite values: "
                    "give one per band and component (or fit it with fit_domain)"
                )
        if n == 0 or k == 0 or arrays["tails"].size == 0:
            raise InputValueError("an empty domain: give one band and one component at least")
        if (arrays["scale"] <= 0).any() or (arrays["weights"] <= 0).any():
            raise InputValueError("a domain's scales and weights must be positive")
        if not np.isclose(arrays["weights"].sum(), 1.0, rtol=0, atol=1e-9):
            raise InputValueError("a domain's weights must sum to 1")
        if np.any(np.diff(arrays["knots"]) <= 0) or np.any(np.diff(arrays["tails"]) >= 0):
            raise InputValueError("a domain's knots must increase and its tails decrease")
        if arrays["tails"][0] != 1.0 or arrays["tails"][-1] <= 0:
            raise InputValueError("a domain's tails run from 1 down to a positive probability")
        try:
            chol = np.linalg.cholesky(arrays["covariances"])
        except np.linalg.LinAlgError:
            raise InputValueError(
                "a domain's covariances are not positive definite: fit it with fit_domain"
            ) from None
        for name, value in arrays.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "pixels", int(self.pixels))
        object.__setattr__(self, "patches", int(self.patches))
        # d²_k = |A_k (z - m_k)|² with A_k = L_k⁻¹, folded with the standardisation into
        # one affine map of the reflectance: y = x @ W + c, (pixel, component * band).
        inv = np.linalg.inv(chol)  # (k, n, n), lower triangular
        w = np.concatenate([(a / self.scale[None, :]).T for a in inv], axis=1)
        c = np.concatenate(
            [-(a @ (self.center / self.scale + m)) for a, m in zip(inv, self.means, strict=True)]
        )
        log_det = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        log_norm = np.log(self.weights) - 0.5 * log_det - 0.5 * n * np.log(2 * np.pi)
        object.__setattr__(self, "_w", w.astype(np.float32))
        object.__setattr__(self, "_c", c.astype(np.float32))
        object.__setattr__(self, "_log_norm", log_norm.astype(np.float32))
        sums = np.kron(np.eye(len(self.weights)), np.ones((n, 1)))  # (component * band, k)
        object.__setattr__(self, "_sum", sums.astype(np.float32))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Domain):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @property
    def n_bands(self) -> int:
        """Bands of the source pixels it measures."""
        return int(self.center.shape[0])

    @property
    def components(self) -> int:
        """Gaussian components of the mixture."""
        return int(self.weights.shape[0])

    def score(self, pixels: np.ndarray) -> np.ndarray:
        """The score of (pixel, band) reflectance: minus the log of the largest weighted
        component density, max_k w_k N_k(z) (standardised units): the mixture's log
        density within log(components), in one matrix product and a maximum.

        Examples
        --------
        >>> dom = fit_domain(np.random.default_rng(0).normal(size=(5000, 2)), components=1)
        >>> s = dom.score(np.array([[0.0, 0.0], [3.0, 3.0]]))
        >>> bool(s[1] - s[0] > 8.5)  # ½ (3² + 3²) = 9 higher
        True
        """
        return self._score_planes(np.asarray(pixels, np.float32).T)

    def _score_planes(self, planes: np.ndarray) -> np.ndarray:
        # (band, pixel) -> (pixel,): y = W^T x + c per component and band, squared, summed
        # per component by a 0/1 matrix (both products in BLAS), the nearest kept. In
        # slabs whose (component * band, slab) temporaries stay in cache: on a whole
        # 512² block they are 32 MB, and the passes over them cost 4x the arithmetic.
        w, c = self._w.T, self._c[:, None]  # type: ignore[attr-defined]
        sums, log_norm = self._sum.T, self._log_norm[:, None]  # type: ignore[attr-defined]
        n_pix = planes.shape[1]
        out = np.empty(n_pix, np.float32)
        step = max(256, _SLAB_VALUES // w.shape[0])
        for start in range(0, n_pix, step):
            y = w @ planes[:, start : start + step]
            y += c
            np.square(y, out=y)
            d2 = sums @ y
            d2 *= np.float32(-0.5)
            d2 += log_norm
            np.max(d2, axis=0, out=out[start : start + step])
        return np.negative(out, out=out)

    def tail(self, score: np.ndarray) -> np.ndarray:
        """The applicability of scores: the training pixels' share at or beyond them.

        Examples
        --------
        >>> dom = fit_domain(np.random.default_rng(0).normal(size=(5000, 1)), components=1)
        >>> np.allclose(dom.tail(dom.knots[[0, -1]]), [1.0, dom.tails[-1]])
        True
        """
        s = np.asarray(score, np.float64)
        log_tail = np.log(self.tails)
        out = np.interp(s, self.knots, log_tail)
        beyond = s > self.knots[-1]
        out[beyond] = log_tail[-1] - (s[beyond] - self.knots[-1])
        return np.exp(out).astype(np.float32)

    def applicability(self, block: np.ndarray, *, axis: int = 0) -> np.ndarray:
        """Applicability of a block of reflectance, bands at ``axis``: float32 of the
        block's shape without that axis, NaN where any band is not finite.

        Examples
        --------
        >>> dom = fit_domain(np.random.default_rng(0).normal(size=(5000, 2)), components=1)
        >>> dom.applicability(np.array([[0.0, 9.0], [0.0, np.nan]])).round(2).tolist()
        [1.0, nan]
        """
        values = np.moveaxis(np.asarray(block, np.float32), axis, 0)
        shape = values.shape[1:]
        planes = values.reshape(values.shape[0], -1)
        out = self.tail(self._score_planes(planes))
        # NaN or an infinity in any band makes the band sum non-finite: no-data, NaN.
        out[~np.isfinite(planes.sum(axis=0))] = np.nan
        return out.reshape(shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (:meth:`from_dict` reads them back).

        Examples
        --------
        >>> dom = fit_domain(np.random.default_rng(0).normal(size=(5000, 2)), components=1)
        >>> again = Domain.from_dict(dom.to_dict())
        >>> bool((again.score(dom.means) == dom.score(dom.means)).all())
        True
        """
        return {
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
            "knots": self.knots.tolist(),
            "tails": self.tails.tolist(),
            "pixels": self.pixels,
            "patches": self.patches,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Domain:
        """The domain :meth:`to_dict` wrote."""
        return cls(
            center=np.asarray(d["center"], np.float64),
            scale=np.asarray(d["scale"], np.float64),
            weights=np.asarray(d["weights"], np.float64),
            means=np.asarray(d["means"], np.float64),
            covariances=np.asarray(d["covariances"], np.float64),
            knots=np.asarray(d["knots"], np.float64),
            tails=np.asarray(d["tails"], np.float64),
            pixels=d["pixels"],
            patches=d.get("patches", 0),
        )


def out_of_domain_share(applicability: np.ndarray) -> tuple[float, int]:
    """The share of the finite values below ``OUT_OF_DOMAIN``, and how many were finite.

    Examples
    --------
    >>> out_of_domain_share(np.array([0.5, 1e-5, np.nan, 0.2]))
    (0.3333333333333333, 3)
    """
    a = np.asarray(applicability)
    finite = np.isfinite(a)
    n = int(finite.sum())
    return (float((a[finite] < OUT_OF_DOMAIN).sum()) / n if n else 0.0), n


def _kmeans_pp(z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeds, then a few Lloyd steps: the mixture's starting means."""
    centres = [z[rng.integers(len(z))]]
    d2 = ((z - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        pick = rng.integers(len(z)) if total <= 0 else rng.choice(len(z), p=d2 / total)
        centres.append(z[pick])
        d2 = np.minimum(d2, ((z - z[pick]) ** 2).sum(axis=1))
    c = np.array(centres)
    for _ in range(10):
        label = ((z[:, None, :] - c[None]) ** 2).sum(axis=2).argmin(axis=1)
        for j in range(k):
            members = z[label == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return c


def _em(z: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Weights, means and regularised covariances of a k-component mixture (EM, until
    the mean log-likelihood gains less than ``_EM_TOLERANCE`` a step, or ``_EM_STEPS``)."""
    n_pix, n = z.shape
    eye = np.eye(n) * REGULARISATION
    means = _kmeans_pp(z, k, rng)
    label = ((z[:, None, :] - means[None]) ** 2).sum(axis=2).argmin(axis=1)
    resp = np.zeros((n_pix, k))
    resp[np.arange(n_pix), label] = 1.0
    covs = np.empty((k, n, n))
    logp = np.empty((n_pix, k))
    previous, converged = -np.inf, False
    for step in range(_EM_STEPS + 1):
        nk = resp.sum(axis=0) + 1e-9
        weights = nk / n_pix
        means = (resp.T @ z) / nk[:, None]
        # One (pixel, band) product per component: (pixel, component, band) temporaries
        # and their einsums cost 3x as much.
        diffs = [z - m for m in means]  # the E-step below measures from the same means
        for j, d in enumerate(diffs):
            covs[j] = (d * resp[:, j, None]).T @ d / nk[j]
        covs += eye
        if step == _EM_STEPS or converged:
            break
        chol = np.linalg.cholesky(covs)
        inv = np.linalg.inv(chol)
        log_det = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        for j, d in enumerate(diffs):
            y = d @ inv[j].T
            logp[:, j] = np.einsum("pi,pi->p", y, y)
        logp *= -0.5
        logp += np.log(weights + 1e-300) - 0.5 * log_det
        top = logp.max(axis=1, keepdims=True)
        resp = np.exp(logp - top)
        total = resp.sum(axis=1, keepdims=True)
        resp /= total
        # The mean log-likelihood (without the constant): EM never lowers it.
        likelihood = float(np.mean(top + np.log(total)))
        converged = likelihood - previous < _EM_TOLERANCE
        previous = likelihood
    keep = weights > 1e-6  # components emptied by EM are dropped
    return weights[keep] / weights[keep].sum(), means[keep], covs[keep]


def fit_domain(
    pixels: np.ndarray, *, components: int = COMPONENTS, seed: int = 0, patches: int = 0
) -> Domain:
    """Fit the training domain to (pixel, band) source reflectance.

    Parameters
    ----------
    pixels : numpy.ndarray
        (pixel, band) reflectance of the pixels the model trained on, at the resolution
        ``predict`` applies it (rows with a non-finite band are left out).
    components : int
        Gaussian components at most (fewer on a small sample).
    seed : int
        Seed of the subsample the mixture is fitted on and of its initialisation.
    patches : int
        Training patches the pixels come from (recorded).

    Returns
    -------
    Domain

    Raises
    ------
    InputValueError
        Fewer finite pixels than ``2 * band + 2``, or ``components`` below 1.

    Examples
    --------
    Two clusters; a point between them is outside both:

    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(0, 0.01, (3000, 2)), rng.normal(1, 0.01, (3000, 2))])
    >>> dom = fit_domain(x, components=2)
    >>> (dom.applicability(np.array([[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]])) > 1e-3).tolist()
    [True, False, True]
    """
    if isinstance(components, bool) or not isinstance(components, int) or components < 1:
        raise InputValueError(f"components={components!r}: give a positive integer")
    x = np.asarray(pixels, np.float64)
    if x.ndim != 2:
        raise InputValueError(f"pixels of shape {x.shape}: give (pixel, band) reflectance")
    x = x[np.isfinite(x).all(axis=1)]
    n_pix, n = x.shape
    if n_pix < 2 * n + 2:
        raise InputValueError(
            f"{n_pix} finite pixels cannot measure a domain in {n} bands: give more pixels"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_pix)
    center = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-6)
    fit_on = (x[order[:_FIT_PIXELS]] - center) / scale
    # The quantiles on pixels the mixture was not fitted on, when there are enough.
    rest = order[_FIT_PIXELS:] if n_pix - _FIT_PIXELS >= _FIT_PIXELS else order
    sample = x[rest[:_KNOT_PIXELS]]
    k = int(max(1, min(components, len(fit_on) // _MIN_COMPONENT_PIXELS)))
    weights, means, covs = _em(fit_on, k, rng)
    provisional = Domain(
        center=center,
        scale=scale,
        weights=weights,
        means=means,
        covariances=covs,
        knots=np.array([0.0]),
        tails=np.array([1.0]),
        pixels=n_pix,
        patches=patches,
    )
    scores = np.sort(provisional.score(sample.astype(np.float32)).astype(np.float64))
    n_sample = len(scores)
    tails = np.array([t for t in _TAILS if t * n_sample >= _MIN_BEYOND or t == 1.0])
    # The score below which a share 1 - t of the sample lies (t = 1: the lowest score).
    at = np.minimum((np.floor((1 - tails) * n_sample)).astype(int), n_sample - 1)
    knots = scores[at]
    keep = np.concatenate([[True], np.diff(knots) > 0])  # ties (a constant sample) merge
    knots, tails = knots[keep], tails[keep]
    return Domain(
        center=center,
        scale=scale,
        weights=weights,
        means=means,
        covariances=covs,
        knots=knots,
        tails=tails,
        pixels=n_pix,
        patches=patches,
    )
