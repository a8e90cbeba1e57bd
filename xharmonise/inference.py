"""Applying a fitted mapping over chunks, lazily: pixelwise, or with a halo for ConvCalibNet.

Network weights enter the Dask graph once, as one delayed object that every block task
depends on, and each worker process rebuilds the network once (a cache keyed by the
weights' digest), so neither the graph nor the work grows with weights x chunks.
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np

from xharmonise.models.linear import apply_linear

if TYPE_CHECKING:
    from xharmonise.harmoniser import Harmoniser

__all__ = ["map_pixels", "network_spec"]

# Pixels per forward pass: large enough for efficient matmuls, small enough that the
# 320-wide hidden activations stay in cache-friendly sizes.
_TILE = 8192

_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()


def network_spec(net: Any) -> dict[str, Any]:
    """JSON-able config + NumPy weights of a network: what a worker needs to rebuild it."""
    state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    digest = hashlib.sha256()
    for k in sorted(state):
        digest.update(k.encode())
        digest.update(np.ascontiguousarray(state[k]).tobytes())
    return {"config": net.config(), "state": state, "digest": digest.hexdigest()}


def _network(spec: dict[str, Any]) -> Any:
    with _CACHE_LOCK:
        net = _CACHE.get(spec["digest"])
        if net is None:
            import torch

            from xharmonise.models import build_model

            net = build_model(**spec["config"])
            net.load_state_dict({k: torch.from_numpy(v) for k, v in spec["state"].items()})
            net.eval()
            _CACHE[spec["digest"]] = net
    return net


def _run_pixels(block: np.ndarray, spec: dict[str, Any], n_out: int) -> np.ndarray:
    import torch

    net = _network(spec)
    nb, h, w = block.shape
    pixels = np.ascontiguousarray(block.reshape(nb, -1).T, dtype=np.float32)
    valid = np.isfinite(pixels).all(axis=1)
    out = np.full((h * w, 2 * n_out), np.nan, np.float32)
    idx = np.flatnonzero(valid)
    with torch.inference_mode():
        for start in range(0, idx.size, _TILE):
            sel = idx[start : start + _TILE]
            pred, var = net(torch.from_numpy(pixels[sel]))
            out[sel, :n_out] = pred.numpy()
            if var is not None:
                out[sel, n_out:] = var.numpy()
    return out.T.reshape(2 * n_out, h, w)


def _run_conv(block: np.ndarray, spec: dict[str, Any], n_out: int) -> np.ndarray:
    import torch

    net = _network(spec)
    valid = np.isfinite(block).all(axis=0)
    x = torch.from_numpy(np.nan_to_num(block.astype(np.float32))[None])
    out = np.full((2 * n_out, *block.shape[1:]), np.nan, np.float32)
    with torch.inference_mode():
        pred, var = net(x)
    out[:n_out] = np.where(valid, pred[0].numpy(), np.nan)
    if var is not None:
        out[n_out:] = np.where(valid, var[0].numpy(), np.nan)
    return out


def _run_linear(block: np.ndarray, coef: np.ndarray, n_out: int) -> np.ndarray:
    valid = np.isfinite(block).all(axis=0)
    pred = apply_linear(coef, block.astype(np.float32, copy=False), axis=0)
    out = np.full((2 * n_out, *block.shape[1:]), np.nan, np.float32)
    out[:n_out] = np.where(valid, pred, np.nan)
    return out


def map_pixels(data: np.ndarray | da.Array, model: Harmoniser) -> np.ndarray | da.Array:
    """Map (band, y, x) source reflectance to (2 * band, y, x): prediction, variance.

    A Dask input stays lazy, on its own chunks with the band axis in one chunk; the
    variance planes are NaN for models without a variance head. BCNet runs without its
    filter (pixelwise CalibNet); ConvCalibNet runs on chunks with a halo of its receptive
    radius, so chunked output equals whole-array output.
    """
    n = model.n_bands
    if model.net is None:
        fn, param, halo = _run_linear, np.asarray(model.linear, dtype=np.float32), 0
    elif model.method == "convcalibnet":
        fn, param, halo = _run_conv, network_spec(model.net), int(model.net.receptive_radius)
    else:
        fn, param, halo = _run_pixels, network_spec(model.net.pixelwise()), 0

    if not isinstance(data, da.Array):
        return fn(np.asarray(data), param, n)
    data = data.rechunk({0: -1})
    shipped = dask.delayed(param, pure=True) if model.net is not None else param
    out_chunks = ((2 * n,), *data.chunks[1:])
    meta = np.empty((0, 0, 0), np.float32)
    if halo:
        # Chunks overlap by the receptive radius; NaN input is zeroed like the whole
        # array's zero padding, so trimmed blocks equal whole-array output: no seams.
        depth = {0: 0, 1: halo, 2: halo}
        padded = da.overlap.overlap(data, depth=depth, boundary="none")
        out = da.map_blocks(
            fn,
            padded,
            shipped,
            n_out=n,
            chunks=((2 * n,), *padded.chunks[1:]),
            dtype=np.float32,
            meta=meta,
        )
        return da.overlap.trim_internal(out, depth, boundary="none")
    return da.map_blocks(fn, data, shipped, n_out=n, chunks=out_chunks, dtype=np.float32, meta=meta)
