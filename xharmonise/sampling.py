"""Training patches: lazy validity, seeded split, and gathering of the chosen patches only.

Patches are non-overlapping ``patch_size x patch_size`` squares of the reference grid.
A patch is kept when every reference pixel is finite, at least :data:`MIN_CLEAR` of its
reference pixels are clear of the cloud mask (dilated by ``cloud_margin``), and every
source pixel that the learnable BCNet filter can reach (the patch plus ``ring`` reference
pixels around it) is finite. Clouds are masked per pixel: the masked reference pixels of a
kept patch are NaN in the gathered patches, and the losses, the linear fit and the metrics
leave them out. The same patches serve every method so that their metrics compare like
with like.

Only reductions at reference resolution are ever computed whole (they are ``factor**2``
times smaller than the source); full-resolution source data is read patch by patch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr

from xharmonise import psf
from xharmonise.errors import InputValueError, NoOverlapError, NoValidPatchesError
from xharmonise.masks import dilate_mask

__all__ = [
    "MIN_CLEAR",
    "Coarse",
    "PatchIndex",
    "Patches",
    "gather",
    "patch_validity",
    "reduce_to_reference",
    "shuffled_patches",
    "split_patches",
    "windows",
]


# Beyond this magnitude a value is no reflectance but an undeclared no-data fill.
_MAX_ABS = 1e6

#: The fraction of a patch's reference pixels that must be clear of the (dilated) cloud
#: mask for the patch to be used. Below it a patch costs a full patch of computation
#: (BCNet reads its whole source window) for a few labelled pixels.
MIN_CLEAR = 0.25


@dataclass
class PatchIndex:
    """Which patches exist, which are usable, and why the others are not.

    Attributes
    ----------
    valid : numpy.ndarray
        Boolean (rows, cols) over the patch grid.
    nodata, cloudy : numpy.ndarray
        Boolean (rows, cols): patches rejected for no-data, for too much cloud (less than
        :data:`MIN_CLEAR` of their pixels clear; both can hold).
    patch_size, ring : int
        Patch side and margin, in reference pixels.
    clear : numpy.ndarray or None
        Boolean (Y, X) over the reference grid: the pixels clear of the dilated cloud
        mask, which alone the fit learns from and is scored on; None without a mask.

    Examples
    --------
    >>> import numpy as np
    >>> clear = np.zeros((2, 3), bool)
    >>> cloudy = clear.copy()
    >>> cloudy[0, 1] = True
    >>> index = PatchIndex(~cloudy, clear, cloudy, patch_size=32, ring=2)
    >>> index.counts
    {'total': 6, 'valid': 5, 'nodata': 0, 'cloudy': 1, 'partial': 0}
    """

    valid: np.ndarray
    nodata: np.ndarray
    cloudy: np.ndarray
    patch_size: int
    ring: int
    clear: np.ndarray | None = None

    @property
    def counts(self) -> dict[str, int]:
        """Total, valid, no-data and cloudy patch counts, and the valid patches that are
        partly masked (``partial``)."""
        return {
            "total": int(self.valid.size),
            "valid": int(self.valid.sum()),
            "nodata": int(self.nodata.sum()),
            "cloudy": int(self.cloudy.sum()),
            "partial": int((self.valid & self.partial).sum()),
        }

    @property
    def partial(self) -> np.ndarray:
        """Boolean (rows, cols): patches holding at least one masked pixel."""
        if self.clear is None:
            return np.zeros_like(self.valid)
        return _patch_any(~self.clear, self.patch_size, self.ring, 0)

    def origin(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference-pixel row/col of the upper-left corner of patches.

        Examples
        --------
        >>> import numpy as np
        >>> ok = np.ones((2, 3), bool)
        >>> index = PatchIndex(ok, ~ok, ~ok, patch_size=32, ring=2)
        >>> index.origin(np.array([0, 1]), np.array([0, 2]))
        (array([ 2, 34]), array([ 2, 66]))
        """
        return self.ring + rows * self.patch_size, self.ring + cols * self.patch_size


def _block_all_finite(src: xr.DataArray, factor: int):
    """Per reference pixel: are all its factor x factor source pixels finite in every band."""
    data = src.data
    nb, ny, nx = data.shape
    data = data[:, : ny // factor * factor, : nx // factor * factor]
    if isinstance(data, da.Array):
        chunks = tuple(max(factor, c // factor * factor) for c in (data.chunksize[1:]))
        finite = da.isfinite(data.rechunk((nb, *chunks)))
        return da.coarsen(np.all, finite, {1: factor, 2: factor}, trim_excess=True).all(axis=0)
    blocks = np.isfinite(data).reshape(nb, ny // factor, factor, nx // factor, factor)
    return blocks.all(axis=(0, 2, 4))


def _patch_any(bad: np.ndarray, size: int, ring: int, grow: int) -> np.ndarray:
    """Whether any True lies in each patch grown by ``grow`` pixels on every side."""
    return _patch_count(bad, size, ring, grow) > 0


def _patch_count(bad: np.ndarray, size: int, ring: int, grow: int) -> np.ndarray:
    """How many True lie in each patch grown by ``grow`` pixels on every side."""
    ny, nx = bad.shape
    rows, cols = (ny - 2 * ring) // size, (nx - 2 * ring) // size
    # An integral image answers every (possibly overlapping) window sum in O(1).
    integral = np.zeros((ny + 1, nx + 1), np.int64)
    integral[1:, 1:] = bad.astype(np.int64).cumsum(0).cumsum(1)
    r0 = np.clip(ring + np.arange(rows) * size - grow, 0, ny)
    r1 = np.clip(ring + (np.arange(rows) + 1) * size + grow, 0, ny)
    c0 = np.clip(ring + np.arange(cols) * size - grow, 0, nx)
    c1 = np.clip(ring + (np.arange(cols) + 1) * size + grow, 0, nx)
    return integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0]


@dataclass
class Coarse:
    """Everything sampling needs at reference resolution, in memory.

    Attributes
    ----------
    src_ok : numpy.ndarray
        (Y, X) True where all source pixels of the reference pixel are finite.
    ref_ok : numpy.ndarray
        (Y, X) True where the reference is finite in every band.
    cloud : numpy.ndarray or None
        (Y, X) True where the mask flags cloud.
    src : numpy.ndarray
        (band, Y, X) source degraded with the reference MTF.
    ref : numpy.ndarray
        (band, Y, X) reference.

    Examples
    --------
    >>> import numpy as np
    >>> ok = np.ones((40, 40), bool)
    >>> coarse = Coarse(ok, ok, None, np.zeros((4, 40, 40)), np.zeros((4, 40, 40)))
    >>> patch_validity(coarse, patch_size=8).counts
    {'total': 16, 'valid': 16, 'nodata': 0, 'cloudy': 0, 'partial': 0}
    """

    src_ok: np.ndarray
    ref_ok: np.ndarray
    cloud: np.ndarray | None
    src: np.ndarray
    ref: np.ndarray


def reduce_to_reference(
    src: xr.DataArray,
    ref: xr.DataArray,
    mask: xr.DataArray | None,
    *,
    factor: int,
    sigmas: list[float],
) -> Coarse:
    """Compute, in one pass over the source, the reference-resolution arrays sampling needs.

    Parameters
    ----------
    src : xarray.DataArray
        Source reflectance on the phase-aligned grid (band, factor*Y, factor*X).
    ref : xarray.DataArray
        Reference reflectance (band, Y, X), same footprint.
    mask : xarray.DataArray, optional
        Cloud mask (Y, X) on the reference grid, True (or 1) = cloud.
    factor : int
        Source pixels per reference pixel along each axis.
    sigmas : list of float
        Per-band MTF Gaussian sigma in source pixels, for the degraded source.

    Returns
    -------
    Coarse
        Only arrays ``factor**2`` times smaller than the source are held in memory; a
        Dask source is streamed chunk by chunk.

    Examples
    --------
    >>> from xharmonise import grid
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0, ref_clouds=0.1)
    >>> g = grid.pair_grid(pair.src, pair.ref)
    >>> src = grid.align_source(pair.src, g)
    >>> ref = pair.ref.isel(y=g.ref_rows, x=g.ref_cols)
    >>> mask = pair.mask.isel(y=g.ref_rows, x=g.ref_cols)
    >>> coarse = reduce_to_reference(src, ref, mask, factor=g.factor, sigmas=[2.5] * 4)
    >>> tuple(src.shape), coarse.src.shape, coarse.ref.shape, coarse.cloud.shape
    ((4, 200, 200), (4, 40, 40), (4, 40, 40), (40, 40))
    """
    src_ok = _block_all_finite(src, factor)
    # A Dask source degrades as per-chunk contributions, which assemble sums once computed.
    coarse: np.ndarray | da.Array
    assemble: Callable[[np.ndarray], np.ndarray]
    if isinstance(src.data, da.Array):
        coarse, assemble = psf.degrade_contributions(src.data, sigmas, factor)
    else:
        coarse, assemble = psf.degrade_array(src.data, sigmas, factor), np.asarray
    ref_data = ref.data
    ref_ok = (
        da.isfinite(ref_data) if isinstance(ref_data, da.Array) else np.isfinite(ref_data)
    ).all(axis=0)
    cloud = None
    if mask is not None:
        m = mask.data
        cloud = (m != 0) if m.dtype != bool else m
    xp = da if isinstance(src.data, da.Array) else np
    xr_ = da if isinstance(ref_data, da.Array) else np
    src_inf, ref_inf = xp.isinf(src.data).sum(), xr_.isinf(ref_data).sum()
    # Finite values this far from reflectance are undeclared no-data fills (-3.4e38...).
    src_huge = ((xp.abs(src.data) > _MAX_ABS) & xp.isfinite(src.data)).sum()
    ref_huge = ((xr_.abs(ref_data) > _MAX_ABS) & xr_.isfinite(ref_data)).sum()
    # One compute call so that each source chunk is produced once for all the reductions.
    src_ok, coarse_parts, ref_ok, cloud, ref_data, src_inf, ref_inf, src_huge, ref_huge = (
        dask.compute(src_ok, coarse, ref_ok, cloud, ref_data, src_inf, ref_inf, src_huge, ref_huge)
    )
    for name, count in (("source", src_inf), ("reference", ref_inf)):
        if count:
            raise InputValueError(
                f"the {name} holds {int(count)} infinite values: mark invalid pixels as NaN "
                "(e.g. da.where(np.isfinite(da))) or set its nodata value so they are masked"
            )
    for name, count in (("source", src_huge), ("reference", ref_huge)):
        if count:
            raise InputValueError(
                f"the {name} holds {int(count)} values beyond +-{_MAX_ABS:g}, no reflectances "
                "(an undeclared no-data fill?): set its nodata value (da.rio.write_nodata(...)) "
                "or mark them NaN"
            )
    coarse = assemble(coarse_parts)
    ny, nx = ref_ok.shape
    return Coarse(
        src_ok=np.asarray(src_ok)[:ny, :nx],
        ref_ok=np.asarray(ref_ok),
        cloud=None if cloud is None else np.asarray(cloud),
        src=np.asarray(coarse, dtype=np.float32)[:, :ny, :nx],
        ref=np.asarray(ref_data, dtype=np.float32),
    )


def patch_validity(
    coarse: Coarse,
    *,
    patch_size: int = 32,
    ring: int = 2,
    cloud_margin: int = 0,
    min_clear: float = MIN_CLEAR,
) -> PatchIndex:
    """Classify every patch of the reference grid as valid, no-data or cloudy, and every
    reference pixel as clear or masked.

    Parameters
    ----------
    coarse : Coarse
        From :func:`reduce_to_reference`.
    patch_size : int
        Patch side in reference pixels.
    ring : int
        Reference pixels around each patch whose source data must be valid too (room
        for the BCNet filter); the patch grid starts ``ring`` pixels in.
    cloud_margin : int
        Reference pixels the cloud mask is grown by (a disk): the reference's own blur
        spreads a cloud's brightness over its neighbours, which the mask does not flag.
    min_clear : float
        The fraction of a patch's pixels that must be clear for the patch to be used.

    Returns
    -------
    PatchIndex

    Raises
    ------
    NoOverlapError
        When the overlap is smaller than one patch.
    NoValidPatchesError
        With the counts, when no patch is usable.

    Examples
    --------
    >>> import numpy as np
    >>> ok = np.ones((70, 70), bool)
    >>> c = Coarse(ok, ok, None, np.zeros((1, 70, 70)), np.zeros((1, 70, 70)))
    >>> patch_validity(c, patch_size=32, ring=2).counts["valid"]
    4
    """
    ny, nx = coarse.ref_ok.shape
    rows, cols = (ny - 2 * ring) // patch_size, (nx - 2 * ring) // patch_size
    if rows < 1 or cols < 1:
        raise NoOverlapError(
            f"the overlap ({ny} x {nx} reference pixels) is smaller than one patch "
            f"({patch_size} + 2 x {ring}): use a smaller patch_size or a larger overlap",
        )
    nodata = _patch_any(~coarse.src_ok, patch_size, ring, ring) | _patch_any(
        ~coarse.ref_ok, patch_size, ring, 0
    )
    clear = None
    cloudy = np.zeros_like(nodata)
    if coarse.cloud is not None:
        masked = np.asarray(coarse.cloud, dtype=bool)
        if cloud_margin > 0:
            masked = dilate_mask(masked, cloud_margin)
        clear = ~masked
        cloudy = _patch_count(masked, patch_size, ring, 0) > (1.0 - min_clear) * patch_size**2
    index = PatchIndex(~(nodata | cloudy), nodata, cloudy, patch_size, ring, clear)
    counts = index.counts
    if counts["valid"] == 0:
        raise NoValidPatchesError(
            f"none of the {counts['total']} patches is usable ({counts['nodata']} hold "
            f"no-data, {counts['cloudy']} are less than {min_clear:.0%} clear of cloud): "
            "give a clearer pair, a smaller patch_size or a mask that covers less",
            total=counts["total"],
            nodata=counts["nodata"],
            cloudy=counts["cloudy"],
        )
    return index


def shuffled_patches(
    index: PatchIndex, *, seed: int = 0, max_patches: int | None = None
) -> np.ndarray:
    """The valid patches in the order ``seed`` shuffles them, at most ``max_patches``:
    the patches :func:`split_patches` splits, and those an evaluation of every valid
    patch scores.

    Examples
    --------
    >>> import numpy as np
    >>> idx = PatchIndex(np.ones((4, 5), bool), np.zeros((4, 5), bool),
    ...                  np.zeros((4, 5), bool), 32, 0)
    >>> shuffled_patches(idx, seed=1, max_patches=3).shape
    (3, 2)
    """
    cells = np.argwhere(index.valid)
    cells = cells[np.random.default_rng(seed).permutation(len(cells))]
    return cells if max_patches is None else cells[:max_patches]


def split_patches(
    index: PatchIndex, *, test_fraction: float = 0.1, seed: int = 0, max_patches: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle the valid patches with ``seed`` and split them into train and test.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        (n, 2) arrays of patch (row, col) for training and testing. With two or more
        valid patches, each side gets at least one.

    Examples
    --------
    >>> import numpy as np
    >>> idx = PatchIndex(np.ones((4, 5), bool), np.zeros((4, 5), bool),
    ...                  np.zeros((4, 5), bool), 32, 0)
    >>> train, test = split_patches(idx, seed=1)
    >>> len(train), len(test)
    (18, 2)
    """
    cells = shuffled_patches(index, seed=seed, max_patches=max_patches)
    n_test = round(len(cells) * test_fraction)
    if len(cells) >= 2:
        n_test = min(max(n_test, 1), len(cells) - 1)
    return cells[n_test:], cells[:n_test]


# Full-resolution windows read per batch in gather: enough to share each source chunk's
# decoding among neighbouring patches, few enough to bound the memory of a batch.
_GATHER_BATCH = 128


@dataclass
class Patches:
    """Gathered patches: reference, degraded source and (optionally) full-resolution source.

    ``src`` and ``ref`` are (n, band, p, p); ``src_full`` is (n, band, factor*p + 2*margin,
    same) or None. ``ref`` is NaN at masked (cloudy) pixels. :func:`gather` builds them.

    Examples
    --------
    >>> import numpy as np
    >>> patches = Patches(src=np.zeros((3, 4, 8, 8)), ref=np.zeros((3, 4, 8, 8)))
    >>> patches.src_full is None
    True
    """

    src: np.ndarray
    ref: np.ndarray
    src_full: np.ndarray | None = None


def windows(index: PatchIndex, cells: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The windows of a reference-grid array (..., Y, X) under the patches ``cells``, as
    (n, ..., p, p).

    Examples
    --------
    >>> import numpy as np
    >>> ok = np.ones((2, 2), bool)
    >>> index = PatchIndex(ok, ~ok, ~ok, patch_size=2, ring=1)
    >>> values = np.arange(36).reshape(6, 6)
    >>> windows(index, np.array([[1, 0]]), values).tolist()
    [[[19, 20], [25, 26]]]
    """
    p = index.patch_size
    r0, c0 = index.origin(cells[:, 0], cells[:, 1])
    out = np.empty((len(cells), *values.shape[:-2], p, p), values.dtype)
    for i, (r, c) in enumerate(zip(r0, c0, strict=True)):
        out[i] = values[..., r : r + p, c : c + p]
    return out


def gather(
    index: PatchIndex,
    cells: np.ndarray,
    *,
    coarse: Coarse,
    src: xr.DataArray | None = None,
    factor: int = 5,
    margin: int = 0,
) -> Patches:
    """Cut the patches ``cells`` out of in-memory coarse arrays and, if asked, the source.

    Parameters
    ----------
    index : PatchIndex
        Patch geometry.
    cells : numpy.ndarray
        (n, 2) patch (row, col).
    coarse : Coarse
        In-memory reference-resolution arrays.
    src : xarray.DataArray, optional
        Full-resolution aligned source; when given, ``src_full`` patches with ``margin``
        source pixels around them are read from it (lazily: only those windows).
    factor, margin : int
        Resolution factor and margin for ``src_full``.

    Returns
    -------
    Patches

    Examples
    --------
    >>> from xharmonise import grid
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> g = grid.pair_grid(pair.src, pair.ref)
    >>> src = grid.align_source(pair.src, g)
    >>> ref = pair.ref.isel(y=g.ref_rows, x=g.ref_cols)
    >>> coarse = reduce_to_reference(src, ref, None, factor=g.factor, sigmas=[2.5] * 4)
    >>> index = patch_validity(coarse, patch_size=8, ring=2)
    >>> train, test = split_patches(index, seed=0)
    >>> p = gather(index, train, coarse=coarse, src=src, factor=g.factor, margin=4)
    >>> p.src.shape, p.ref.shape, p.src_full.shape  # src_full: 5 x 8 + 2 x 4 pixels
    ((14, 4, 8, 8), (14, 4, 8, 8), (14, 4, 48, 48))
    """
    p = index.patch_size
    r0, c0 = index.origin(cells[:, 0], cells[:, 1])

    def cut(arr: np.ndarray) -> np.ndarray:
        return windows(index, cells, arr).astype(np.float32, copy=False)

    full = None
    if src is not None:
        if margin > index.ring * factor:
            raise ValueError(f"margin {margin} exceeds the validated ring of {index.ring}")
        size = p * factor + 2 * margin
        full = np.empty((len(cells), src.sizes["band"], size, size), np.float32)
        # Windows are read in batches of neighbouring patches straight into one array:
        # computing all of them at once held the computed list, its stack and its cast
        # (three times the largest array a fit keeps, 2.2-2.5 GB at 8000 x 8000), and
        # neighbours share the source chunks each batch decodes.
        order = np.lexsort((c0, r0))
        for start in range(0, len(order), _GATHER_BATCH):
            batch = order[start : start + _GATHER_BATCH]
            reads = [
                src.data[
                    :,
                    r0[i] * factor - margin : r0[i] * factor - margin + size,
                    c0[i] * factor - margin : c0[i] * factor - margin + size,
                ]
                for i in batch
            ]
            for i, window in zip(batch, dask.compute(*reads), strict=True):
                full[i] = window
    ref = coarse.ref
    if index.clear is not None:
        ref = np.where(index.clear, ref, np.float32(np.nan))
    return Patches(src=cut(coarse.src), ref=cut(ref), src_full=full)
