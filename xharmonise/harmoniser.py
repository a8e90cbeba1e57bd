"""The fitted model and its provenance."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xharmonise.checks import type_name
from xharmonise.coregister import ShiftEstimate
from xharmonise.errors import InputTypeError, ModelFileError

__all__ = ["Harmoniser", "load"]

_FORMAT = "xharmonise-model/1"


@dataclass
class Harmoniser:
    """A mapping from source reflectance to reference-consistent reflectance.

    Built by :func:`xharmonise.fit`; apply it with :func:`xharmonise.predict`.

    Attributes
    ----------
    method : str
        ``"linear"``, ``"calibnet"``, ``"convcalibnet"`` or ``"bcnet"``.
    src_bands, ref_bands : list of str
        Paired band names: source band ``src_bands[i]`` maps to ``ref_bands[i]``.
    factor : int
        Source pixels per reference pixel along each axis, on the training grid.
    sigmas : list of float
        Reference MTF Gaussian sigma per band, in source-grid pixels.
    src_scale, src_offset : float
        Source reflectance = DN * scale + offset as used in training.
    src_dtype : str
        The training source's dtype (integer DN or float reflectance).
    linear : numpy.ndarray
        (band, band + 1) linear baseline ``[A | b]``, always fitted as the reference.
    metrics : xarray.DataArray
        Test-split metrics (band, metric, stage) for stages initial, linear and model.
    history : dict
        Training curves (empty for ``linear``).
    grid : dict
        The training grid (CRS, transform, factor).
    patches : dict
        Patch counts: total, valid, no-data, cloudy, train, test.
    variance : bool
        Whether the model predicts a per-pixel variance.
    net : torch.nn.Module or None
        The trained network (None for ``linear``).
    samples : dict of numpy.ndarray
        A random subset of the test-split pixels at the reference resolution, (pixel,
        band) float32 per stage: ``target`` (the reference), ``initial``, ``linear``,
        ``model`` and, with a variance head, ``variance``. Kept so that reports can show
        the scatter plots without the images.
    coregistration : dict or None
        The phase-correlation shift measured at fit time
        (:meth:`xharmonise.ShiftEstimate.to_dict`) plus ``applied``: whether the
        source was corrected by it before sampling (``fit(..., coregister=True)``), in
        which case :func:`xharmonise.predict` moves its output by it. None when no shift
        was measured.

    Examples
    --------
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
    >>> model.metrics.dims, model.n_bands
    (('band', 'metric', 'stage'), 4)
    """

    method: str
    src_bands: list[str]
    ref_bands: list[str]
    factor: int
    sigmas: list[float]
    src_scale: float
    src_offset: float
    linear: np.ndarray
    metrics: xr.DataArray
    src_dtype: str = "float32"
    history: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    patches: dict[str, int] = field(default_factory=dict)
    variance: bool = False
    net: Any = None
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    coregistration: dict[str, Any] | None = None

    @property
    def n_bands(self) -> int:
        """Number of paired bands."""
        return len(self.ref_bands)

    @property
    def src_pixel_size(self) -> float:
        """Pixel size of the training grid (reference pixel / factor), CRS units."""
        return abs(float(self.grid["ref_transform"][0])) / self.factor

    @property
    def filters(self) -> xr.DataArray:
        """BCNet's learned filters (band, ky, kx) at source-grid resolution.

        Raises
        ------
        AttributeError
            For methods other than ``bcnet``.
        """
        if self.method != "bcnet":
            raise AttributeError(f"{self.method} models have no learned filters (bcnet only)")
        k = np.asarray(self.net.filters())
        half = (k.shape[-1] - 1) / 2
        offsets = (np.arange(k.shape[-1]) - half) * self.src_pixel_size
        return xr.DataArray(
            k,
            dims=("band", "ky", "kx"),
            coords={"band": list(self.ref_bands), "ky": -offsets, "kx": offsets},
            name="filters",
            attrs={"long_name": "BCNet learned filters", "units": "1"},
        )

    @property
    def shift_estimate(self) -> ShiftEstimate | None:
        """The phase-correlation :class:`~xharmonise.coregister.ShiftEstimate` of the fit,
        or None when none was made."""
        if self.coregistration is None:
            return None
        return ShiftEstimate.from_dict(self.coregistration)

    @property
    def shift(self) -> xr.DataArray:
        """Shift of the source relative to the reference: (band, axis, estimate).

        ``axis`` is east/north; ``estimate`` holds ``"filter"`` (BCNet models: the learned
        filter centroids) and ``"phase_correlation"`` (when the fit measured one: any
        method with ``coregister=True``, and every BCNet fit), side by side as a
        cross-check. Both are the displacement of the source content relative to the
        reference, as given to :func:`xharmonise.fit`, in CRS units (metres), east and north
        positive. The filter learns to fetch the source where the reference sees the
        content, so its centroid points along that shift; when the source was corrected
        before training, the filter only sees what remains, and the applied shift is added
        back so that both rows measure the same thing.

        Raises
        ------
        AttributeError
            When there is neither a filter (bcnet only) nor a phase-correlation estimate.
        """
        estimates, names = [], []
        reg = self.coregistration
        if self.method == "bcnet":
            from xharmonise.models import filter_shift

            dy_dx = np.asarray(filter_shift(self.net.filters()))
            east = dy_dx[:, 1] * self.src_pixel_size
            north = -dy_dx[:, 0] * self.src_pixel_size  # rows grow southwards
            if reg is not None and reg.get("applied"):
                east, north = east + reg["east"], north + reg["north"]
            estimates.append(np.stack([east, north], axis=1))
            names.append("filter")
        if reg is not None:
            per_band = reg.get("bands", {})
            estimates.append(
                np.array(
                    [per_band.get(b, (reg["east"], reg["north"])) for b in self.ref_bands],
                    dtype=np.float64,
                )
            )
            names.append("phase_correlation")
        if not estimates:
            raise AttributeError(
                f"{self.method} models have no shift estimate: the filter shift is bcnet "
                "only; fit with coregister=True to measure one by phase correlation"
            )
        return xr.DataArray(
            np.stack(estimates, axis=-1),
            dims=("band", "axis", "estimate"),
            coords={"band": list(self.ref_bands), "axis": ["east", "north"], "estimate": names},
            name="shift",
            attrs={
                "units": "m",
                "long_name": "displacement of the source content relative to the reference",
                "applied": bool(reg is not None and reg.get("applied")),
            },
        )

    def report(self, path: str | os.PathLike, **kwargs: Any) -> Path:
        """Write the model's HTML report: forwards to :func:`xharmonise.plot.report`.

        Examples
        --------
        >>> import tempfile, pathlib, xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((200, 200), seed=0)
        >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
        >>> out = model.report(pathlib.Path(tempfile.mkdtemp()) / "report.html")
        >>> out.name
        'report.html'
        """
        from xharmonise.plot import report

        return report(self, path, **kwargs)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to one safetensors file: weights as tensors, the rest as JSON.

        Nothing is pickled, so loading a file cannot run code. The file is written next to
        its destination and renamed into place, so a crash never leaves half a model.

        Parameters
        ----------
        path : str or path-like
            Destination, conventionally ``*.safetensors``.

        Returns
        -------
        pathlib.Path

        Raises
        ------
        ModelFileError
            The path is a folder, or its folder does not exist.
        InputTypeError
            The path is not a string or path-like.

        Examples
        --------
        >>> import tempfile, pathlib, xharmonise
        >>> from xharmonise.simulate import simulate_pair
        >>> pair = simulate_pair((200, 200), seed=0)
        >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
        >>> model.save(pathlib.Path(tempfile.mkdtemp()) / "model.safetensors").suffix
        '.safetensors'
        """
        from safetensors.numpy import save_file

        path = _model_path(path)
        if path.is_dir():
            raise ModelFileError(
                f"{path} is a folder: give a file path, e.g. {path / 'model.safetensors'}"
            )
        folder = path.parent
        if not folder.is_dir():
            raise ModelFileError(
                f"cannot write {path}: the folder {folder} "
                f"{'is a file' if folder.exists() else 'does not exist'}: create the folder "
                "first or choose another path"
            )
        tensors = {"linear": np.ascontiguousarray(self.linear, dtype=np.float64)}
        for name, values in self.samples.items():
            tensors[f"samples.{name}"] = np.ascontiguousarray(values, dtype=np.float32)
        net_config = None
        if self.net is not None:
            from xharmonise.models import network_spec

            spec = network_spec(self.net.cpu())
            net_config = spec["config"]
            tensors.update({f"net.{k}": np.ascontiguousarray(v) for k, v in spec["state"].items()})
        meta = {
            "format": _FORMAT,
            "method": self.method,
            "src_bands": list(self.src_bands),
            "ref_bands": list(self.ref_bands),
            "factor": self.factor,
            "sigmas": list(map(float, self.sigmas)),
            "src_scale": self.src_scale,
            "src_offset": self.src_offset,
            "src_dtype": self.src_dtype,
            "metrics": self.metrics.to_dict(),
            "history": _jsonable(self.history),
            "grid": _jsonable(self.grid),
            "patches": _jsonable(self.patches),
            "variance": self.variance,
            "net_config": net_config,
            "coregistration": _jsonable(self.coregistration),
            "versions": _versions(),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"xharmonise": json.dumps(meta)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def __repr__(self) -> str:
        rmse = self.metrics.sel(metric="rmse").mean("band")
        stages = ", ".join(f"{s}={float(rmse.sel(stage=s)):.4f}" for s in rmse["stage"].values)
        return (
            f"<Harmoniser {self.method}{' +variance' if self.variance else ''}: "
            f"{self.src_bands} -> {self.ref_bands}, x{self.factor}, "
            f"{self.patches.get('train', 0)} train / {self.patches.get('test', 0)} test "
            f"patches, mean test RMSE {stages}>"
        )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("xharmonise", "torch", "numpy", "xarray"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # a missing optional package is just not recorded
            continue
    return out


def _model_path(path: Any) -> Path:
    """A local model path, or an error naming the fix."""
    if not isinstance(path, str | os.PathLike) or isinstance(os.fspath(path), bytes):
        raise InputTypeError(
            f"path={path!r} is a {type_name(path)}: give the model file's path as a str or "
            "pathlib.Path, e.g. 'model.safetensors'"
        )
    text = os.fspath(path)
    if not text.strip() or "\x00" in text:
        raise ModelFileError(
            f"path={path!r} is {'empty' if not text.strip() else 'not a path (NUL character)'}: "
            "give a file path, e.g. 'model.safetensors'"
        )
    if "://" in text:
        raise ModelFileError(
            f"{text} is a URL: models are local files; give a local path (and copy the file "
            "with fsspec if it must live in an object store)"
        )
    return Path(text)


# What Harmoniser needs from a model file's metadata: key -> (type, description).
_META: dict[str, tuple[type | tuple[type, ...], str]] = {
    "method": (str, "a method name"),
    "src_bands": (list, "a list of band names"),
    "ref_bands": (list, "a list of band names"),
    "factor": (int, "an integer"),
    "sigmas": (list, "a list of numbers"),
    "src_scale": ((int, float), "a number"),
    "src_offset": ((int, float), "a number"),
    "metrics": (dict, "a table"),
    "history": (dict, "a dict"),
    "grid": (dict, "a dict"),
    "patches": (dict, "a dict"),
    "variance": (bool, "true or false"),
    "net_config": ((dict, type(None)), "a dict or null"),
}


def _meta_problem(meta: dict[str, Any], tensors: dict[str, np.ndarray]) -> str | None:
    """What is wrong with a model file's metadata and tensors, or None."""
    for key, (kind, what) in _META.items():
        if key not in meta:
            return f"no {key!r} entry"
        value = meta[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{key!r} is {value!r}, not {what}"
    src, ref = meta["src_bands"], meta["ref_bands"]
    if not ref or len(src) != len(ref) or not all(isinstance(b, str) for b in src + ref):
        return f"band lists {src!r} and {ref!r} do not pair up"
    n = len(ref)
    if meta["factor"] < 1 or len(meta["sigmas"]) != n:
        return f"factor {meta['factor']!r} or sigmas {meta['sigmas']!r} do not fit {n} bands"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in meta["sigmas"]):
        return f"sigmas {meta['sigmas']!r} are not numbers"
    if not isinstance(meta.get("src_dtype", "float32"), str):
        return f"'src_dtype' is {meta['src_dtype']!r}, not a dtype name"
    if not isinstance(meta.get("coregistration"), dict | type(None)):
        return f"'coregistration' is {meta['coregistration']!r}, not a dict or null"
    linear = tensors.get("linear")
    if linear is None or linear.shape != (n, n + 1):
        return f"the linear tensor is {None if linear is None else linear.shape}, not {(n, n + 1)}"
    cfg = meta["net_config"]
    if cfg is None:
        return None if meta["method"] == "linear" else f"a {meta['method']} model without a network"
    fits = (cfg.get("method"), cfg.get("n_bands"), bool(cfg.get("variance", False)))
    if fits != (meta["method"], n, meta["variance"]) or isinstance(cfg.get("n_bands"), bool):
        return f"its network {cfg!r} is not a {meta['method']} of {n} bands"
    return None


def load(path: str | os.PathLike) -> Harmoniser:
    """Read a model written by :meth:`Harmoniser.save`.

    Only the safetensors format is read: a pickle, a truncated or a corrupted file is
    refused before anything in it is interpreted as code.

    Parameters
    ----------
    path : str or path-like
        A ``.safetensors`` model file.

    Returns
    -------
    Harmoniser

    Raises
    ------
    ModelFileError
        Missing, truncated, corrupted, foreign or unsafe file.
    InputTypeError
        The path is not a string or path-like.

    Examples
    --------
    >>> import tempfile, pathlib, xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
    >>> path = model.save(pathlib.Path(tempfile.mkdtemp()) / "model.safetensors")
    >>> bool((load(path).linear == model.linear).all())
    True
    """
    from safetensors import SafetensorError, safe_open

    path = _model_path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}: check the path")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta_text = (f.metadata() or {}).get("xharmonise")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(
            f"{path} is not a readable safetensors model ({err}); it may be truncated, "
            "corrupted or in another format (pickles are refused): save it again with "
            "Harmoniser.save"
        ) from None
    try:
        meta = json.loads(meta_text) if meta_text else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ModelFileError(
            f"{path} is a safetensors file but not an xharmonise model "
            f"(expected format {_FORMAT!r}): save models with Harmoniser.save"
        )
    problem = _meta_problem(meta, tensors)
    if problem:
        raise ModelFileError(
            f"{path} is a damaged xharmonise model ({problem}): save the model again with "
            "Harmoniser.save"
        )
    try:
        metrics = xr.DataArray.from_dict(meta["metrics"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(
            f"{path} is a damaged xharmonise model (unreadable metrics: {err}): save the model "
            "again with Harmoniser.save"
        ) from None
    net = None
    if meta["net_config"] is not None:
        import torch

        from xharmonise.models import build_model

        try:
            net = build_model(**meta["net_config"])
        except (TypeError, ValueError, RuntimeError) as err:
            raise ModelFileError(
                f"{path} is a damaged xharmonise model (its network cannot be built: {err}): "
                "save the model again with Harmoniser.save"
            ) from None
        state = {k[4:]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith("net.")}
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ModelFileError(f"{path}: weights do not fit the model ({err})") from None
        net.eval()
    return Harmoniser(
        method=meta["method"],
        src_bands=meta["src_bands"],
        ref_bands=meta["ref_bands"],
        factor=int(meta["factor"]),
        sigmas=meta["sigmas"],
        src_scale=float(meta["src_scale"]),
        src_offset=float(meta["src_offset"]),
        src_dtype=str(meta.get("src_dtype", "float32")),
        linear=tensors["linear"],
        metrics=metrics,
        history=meta["history"],
        grid=meta["grid"],
        patches=meta["patches"],
        variance=bool(meta["variance"]),
        net=net,
        samples={k[8:]: v for k, v in tensors.items() if k.startswith("samples.")},
        coregistration=meta.get("coregistration"),
    )
