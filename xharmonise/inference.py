"""Applying a fitted mapping over chunks, lazily: pixelwise, or with a halo for ConvCalibNet.

Network weights enter the Dask graph once, as one delayed object that every block task
depends on, and each worker process rebuilds the network once (a cache keyed by the
weights' digest), so neither the graph nor the work grows with weights x chunks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np

from xharmonise.models.linear import apply_linear
from xharmonise.models.registry import method as method_spec

if TYPE_CHECKING:
    from xharmonise.harmoniser import Harmoniser

__all__ = ["PixelKernel", "map_pixels"]

# Pixels per tile of the CalibNet kernel, chosen by measurement (benchmarks/inference.py,
# 2-core AVX-512 VM): 1024-2048 beat 4096-16384 by 10-25 %, as a tile's two 320-wide
# hidden activations (2.6 MB each at 2048) then stay in L2/L3 between the layers.
_TILE = 2048
# On a GPU, bigger tiles amortise the host <-> device copies and kernel launches: 2^18
# pixels hold two 320-wide activations of 336 MB each per Dask thread. Not yet measured
# against 2^16 and 2^20 on a GPU: benchmarks/gpu.py records that sweep (docs/gpu.md).
_GPU_TILE = 262144

_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.RLock()  # re-entrant: the kernel builds the network


def _cached(spec: dict[str, Any], kind: str, build: Any) -> Any:
    # One object per (weights, kind) and worker process, built under the lock so that
    # concurrent tasks of one worker never build it twice.
    key = f"{kind}:{spec['digest']}"
    with _CACHE_LOCK:
        obj = _CACHE.get(key)
        if obj is None:
            obj = build(spec)
            _CACHE[key] = obj
    return obj


def _network(spec: dict[str, Any]) -> Any:
    from xharmonise.models import network_from_spec

    return _cached(spec, "net", network_from_spec)


class PixelKernel:
    """Inference-only form of a CalibNet: BatchNorm folded, heads fused, tiled.

    Parameters
    ----------
    net : CalibNet
        The network, with eval-mode BatchNorm statistics (training mode is ignored: the
        running statistics are always used, as ``net.eval()`` would).
    device : str, optional
        Where the tiles run; default ``"cuda"`` when available, else ``"cpu"``.
    tile : int, optional
        Pixels per forward pass; default ``_TILE`` (CPU) or ``_GPU_TILE`` (GPU).

    Notes
    -----
    On CUDA each calling thread (a Dask worker thread) gets a CUDA stream of its own,
    so concurrent blocks overlap their copies and matmuls, and tiles cross between the
    host and the device through page-locked (pinned) staging buffers. The weights are
    copied to the device once, when the kernel is built. No TF32: the matmuls run at
    the process's float32 matmul precision, IEEE float32 unless the caller changed it.

    Eval-mode BatchNorm is an affine map per band, ``x * s + t`` with
    ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``, so the first Linear layer
    absorbs it: ``W1' = W1 * s`` (per input column) and ``b1' = b1 + W1 @ t``. The
    prediction head (fc3) and the variance head (fc_var) read the same hidden features,
    so they run as one matmul on their concatenated weights and the result is split:
    ``x + tanh(z[:, :C])`` and ``ELU(z[:, C:]) + 1 + eps``, exactly
    :func:`xharmonise.models.variance.positive_variance`. Values equal the eager
    network's to float32 rounding (a different but equivalent order of operations).

    Examples
    --------
    >>> import torch
    >>> from xharmonise.models import build_model
    >>> net = build_model("calibnet", 4, variance=True, seed=0).eval()
    >>> x = torch.rand(100, 4)
    >>> pred, var = PixelKernel(net)(x.numpy())
    >>> bool(torch.allclose(torch.from_numpy(pred), net(x)[0], atol=1e-6))
    True
    """

    def __init__(self, net: Any, *, device: str | None = None, tile: int | None = None):
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.tile = int(tile or (_GPU_TILE if self.device.type == "cuda" else _TILE))
        self.n_bands = int(net.n_bands)
        self.variance = net.fc_var is not None
        with torch.no_grad():
            # Fold in float64 so that the folding itself adds no rounding of its own.
            norm = net.norm
            w1 = net.fc1.weight.double()
            b1 = net.fc1.bias.double()
            mean = norm.running_mean.double()
            var = norm.running_var.double()
            gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
            beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
            scale = gamma / torch.sqrt(var + norm.eps)
            shift = beta - mean * scale
            w1f = w1 * scale[None, :]
            b1f = b1 + w1 @ shift
            heads = [net.fc3] + ([net.fc_var] if self.variance else [])
            wh = torch.cat([h.weight for h in heads], dim=0)
            bh = torch.cat([h.bias for h in heads], dim=0)

            def _prep(t: torch.Tensor) -> torch.Tensor:
                return t.to(device=self.device, dtype=torch.float32).contiguous()

            # Weights stored transposed (in, out), so each layer is addmm(b, h, W^T).
            self.w1 = _prep(w1f.T)
            self.b1 = _prep(b1f)
            self.w2 = _prep(net.fc2.weight.T)
            self.b2 = _prep(net.fc2.bias)
            self.wh = _prep(wh.T)
            self.bh = _prep(bh)
        if self.device.type == "cuda":
            # The weights were made on the default stream; the per-thread streams must
            # never read them half-copied.
            torch.cuda.synchronize(self.device)
        self.slope = float(net.act.negative_slope)
        self.hidden = int(self.w2.shape[0])
        self._local = threading.local()  # per-thread CUDA stream

    def forward(self, x: Any) -> Any:
        """Apply the network to a tensor already on the kernel's device, in one pass.

        Parameters
        ----------
        x : torch.Tensor
            float32 (P, C) on ``self.device``, all finite.

        Returns
        -------
        torch.Tensor
            (P, 2C) (or (P, C) without a variance head) on ``self.device``: the prediction
            then the variance, as the columns of ``__call__``'s ``out``.

        Examples
        --------
        >>> import torch
        >>> from xharmonise.models import build_model
        >>> kernel = PixelKernel(build_model("calibnet", 4, variance=True, seed=0).eval())
        >>> kernel.forward(torch.rand(10, 4, device=kernel.device)).shape
        torch.Size([10, 8])
        """
        import torch

        p = x.shape[0]
        a1 = torch.empty((p, self.hidden), device=self.device)
        a2 = torch.empty((p, self.hidden), device=self.device)
        z = torch.empty((p, self.bh.shape[0]), device=self.device)
        with torch.inference_mode():
            self._layers(x, a1, a2, z, z)
        return z

    def _layers(self, x: Any, a1: Any, a2: Any, zz: Any, target: Any) -> None:
        # The three layers on one tile, with scratch a1, a2, zz; the prediction and the
        # variance go to ``target`` (zz itself, or the caller's output rows on the CPU).
        import torch
        from torch.nn import functional

        from xharmonise.models.variance import VARIANCE_EPS

        c = self.n_bands
        torch.addmm(self.b1, x, self.w1, out=a1)
        functional.leaky_relu_(a1, self.slope)
        torch.addmm(self.b2, a1, self.w2, out=a2)
        functional.leaky_relu_(a2, self.slope)
        torch.addmm(self.bh, a2, self.wh, out=zz)
        pred = target[:, :c]
        torch.tanh(zz[:, :c], out=pred)
        pred.add_(x)
        if self.variance:
            # positive_variance's (ELU(z) + 1) + eps, in that order.
            zv = zz[:, c:]
            functional.elu_(zv)
            v = target[:, c:]
            torch.add(zv, 1.0, out=v)
            v.add_(VARIANCE_EPS)

    def _stream(self) -> Any:
        import torch

        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = torch.cuda.Stream(device=self.device)
            self._local.stream = stream
        return stream

    def __call__(
        self, pixels: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Apply the network to finite pixels.

        Parameters
        ----------
        pixels : numpy.ndarray
            float32 (P, C), all finite.
        out : numpy.ndarray, optional
            float32 (P, 2C) (or (P, C) without a variance head) to write into.

        Returns
        -------
        prediction : numpy.ndarray
            (P, C) view of the output.
        variance : numpy.ndarray or None
            (P, C) view, σ² > 0; None without a variance head.
        """
        import torch

        c = self.n_bands
        n_head = self.bh.shape[0]
        p = pixels.shape[0]
        if out is None:
            out = np.empty((p, n_head), np.float32)
        x_all = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        out_t = torch.from_numpy(out)
        if self.device.type == "cuda":
            self._call_cuda(x_all, out_t)
            return out[:, :c], (out[:, c:] if self.variance else None)
        size = min(self.tile, max(p, 1))
        # Scratch buffers reused by every tile of the call: no allocation per tile.
        h1 = torch.empty((size, self.hidden), device=self.device)
        h2 = torch.empty((size, self.hidden), device=self.device)
        z = torch.empty((size, n_head), device=self.device)
        with torch.inference_mode():
            for start in range(0, p, self.tile):
                stop = min(start + self.tile, p)
                m = stop - start
                self._layers(x_all[start:stop], h1[:m], h2[:m], z[:m], out_t[start:stop])
        return out[:, :c], (out[:, c:] if self.variance else None)

    def _call_cuda(self, x_all: Any, out_t: Any) -> None:
        # Tile by tile on this thread's stream: host rows -> pinned buffer -> device,
        # the layers, device -> pinned buffer -> host rows. The stream is synchronised
        # once per tile, before the pinned buffers are read or refilled; other threads'
        # streams keep the GPU busy meanwhile.
        import torch

        p, c = x_all.shape
        n_head = out_t.shape[1]
        size = min(self.tile, max(p, 1))
        stream = self._stream()
        with torch.cuda.stream(stream), torch.inference_mode():
            # Pinned buffers come from PyTorch's caching host allocator: allocated once,
            # then reused by later calls.
            x_host = torch.empty((size, c), dtype=torch.float32, pin_memory=True)
            z_host = torch.empty((size, n_head), dtype=torch.float32, pin_memory=True)
            x = torch.empty((size, c), device=self.device)
            h1 = torch.empty((size, self.hidden), device=self.device)
            h2 = torch.empty((size, self.hidden), device=self.device)
            z = torch.empty((size, n_head), device=self.device)
            for start in range(0, p, self.tile):
                stop = min(start + self.tile, p)
                m = stop - start
                x_host[:m].copy_(x_all[start:stop])
                x[:m].copy_(x_host[:m], non_blocking=True)
                self._layers(x[:m], h1[:m], h2[:m], z[:m], z[:m])
                z_host[:m].copy_(z[:m], non_blocking=True)
                stream.synchronize()
                out_t[start:stop].copy_(z_host[:m])


def _kernel(spec: dict[str, Any]) -> PixelKernel:
    return _cached(spec, "kernel", lambda s: PixelKernel(_network(s)))


_THREADS_LOCK = threading.Lock()
_THREADS_USERS = 0
_THREADS_SAVED = 0


def _task_threads() -> int | None:
    """Torch threads for one block task, or None to leave torch's setting alone.

    Each Dask thread already runs one block at a time on one core, so a task's torch
    operations get ``cores // dask threads`` threads, never more than the core count in
    total (oversubscribed OpenMP pools spin and thrash caches). Inside a distributed
    worker the worker's ``nthreads`` are its cores (distributed's own convention, which
    also sets ``OMP_NUM_THREADS=1``): one thread per task. In a thread of the threaded
    scheduler the pool has ``num_workers`` threads (default: the core count). In the
    main thread (synchronous scheduler, or a NumPy input) nothing else runs: untouched.
    """
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        pass
    else:
        return 1
    if threading.current_thread() is threading.main_thread():
        return None
    cores = os.cpu_count() or 1
    workers = dask.config.get("num_workers", None) or cores
    return max(1, cores // int(workers))


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch threads while any block task runs, then restore the caller's.

    ``torch.set_num_threads`` is process-wide, so concurrent tasks share one setting: the
    first task entering saves the previous value and the last leaving restores it, which
    leaves torch as it was for other code (e.g. training) once the computation is done.
    """
    global _THREADS_USERS, _THREADS_SAVED
    import torch

    if n is None:
        yield
        return
    with _THREADS_LOCK:
        if _THREADS_USERS == 0:
            _THREADS_SAVED = torch.get_num_threads()
            if _THREADS_SAVED != n:
                torch.set_num_threads(n)
        _THREADS_USERS += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_USERS -= 1
            if _THREADS_USERS == 0 and torch.get_num_threads() != _THREADS_SAVED:
                torch.set_num_threads(_THREADS_SAVED)


def _run_pixels(block: np.ndarray, spec: dict[str, Any], n_out: int) -> np.ndarray:
    kernel = _kernel(spec)
    nb, h, w = block.shape
    # (pixel, band) rows: the layout of the matmuls; the block's planes are transposed
    # once here and back once at the end (4 floats per pixel, negligible next to the MLP).
    pixels = np.ascontiguousarray(block.reshape(nb, -1).T, dtype=np.float32)
    # The whole block first: a reduction along the 4-wide pixel rows costs 40x more, and
    # most blocks hold no no-data at all.
    all_valid = bool(np.isfinite(block).all())
    n_head = kernel.bh.shape[0]
    out = np.full((h * w, 2 * n_out), np.nan, np.float32)
    if all_valid:
        res = out if n_head == 2 * n_out else np.empty((h * w, n_head), np.float32)
        with _torch_threads(_task_threads()):
            kernel(pixels, out=res)
        if res is not out:
            out[:, :n_out] = res
    elif (valid := np.isfinite(pixels).all(axis=1)).any():
        # Only valid pixels go through the network: no-data costs nothing and stays NaN.
        idx = np.flatnonzero(valid)
        res = np.empty((idx.size, n_head), np.float32)
        with _torch_threads(_task_threads()):
            kernel(pixels[idx], out=res)
        out[idx, :n_head] = res
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
    # Invalid pixels (NaN, and the infinities a user left in) come out NaN: computed as 0.
    pred = apply_linear(coef, np.where(valid, block, 0).astype(np.float32, copy=False), axis=0)
    out = np.full((2 * n_out, *block.shape[1:]), np.nan, np.float32)
    out[:n_out] = np.where(valid, pred, np.nan)
    return out


def map_pixels(data: np.ndarray | da.Array, model: Harmoniser) -> np.ndarray | da.Array:
    """Map (band, y, x) source reflectance to (2 * band, y, x): prediction, variance.

    A Dask input stays lazy, on its own chunks with the band axis in one chunk; the
    variance planes are NaN for models without a variance head. BCNet runs without its
    filter (pixelwise CalibNet); ConvCalibNet runs on chunks with a halo of its receptive
    radius, so chunked output equals whole-array output.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import xharmonise
    >>> from xharmonise.simulate import simulate_pair
    >>> pair = simulate_pair((200, 200), seed=0)
    >>> model = xharmonise.fit(pair.src, pair.ref, method="linear", patch_size=8)
    >>> out = map_pixels(pair.src.values, model)
    >>> out.shape, bool(np.isnan(out[4:]).all())  # no variance head: NaN planes
    ((8, 200, 200), True)
    >>> lazy = map_pixels(da.from_array(pair.src.values, chunks=(4, 100, 100)), model)
    >>> lazy.chunksize, np.array_equal(lazy.compute(), out, equal_nan=True)
    ((8, 100, 100), True)
    """
    n = model.n_bands
    # Each runner takes its own kind of parameters: coefficients or a network spec.
    fn: Callable[[np.ndarray, Any, int], np.ndarray]
    param: Any
    spec = method_spec(model.method)
    if model.net is None:
        fn, param, halo = _run_linear, np.asarray(model.linear, dtype=np.float32), 0
    else:
        from xharmonise.models import network_spec

        fn = _run_conv if spec.halo else _run_pixels
        param, halo = network_spec(spec.inference_network(model.net)), spec.halo

    if not isinstance(data, da.Array):
        return fn(np.asarray(data), param, n)
    lazy: da.Array = data.rechunk({0: -1})
    shipped = dask.delayed(param, pure=True) if model.net is not None else param
    out_chunks = ((2 * n,), *lazy.chunks[1:])
    meta = np.empty((0, 0, 0), np.float32)
    if halo:
        # Chunks overlap by the receptive radius; NaN input is zeroed like the whole
        # array's zero padding, so trimmed blocks equal whole-array output: no seams.
        depth = {0: 0, 1: halo, 2: halo}
        for axis in (1, 2):
            if lazy.shape[axis] <= halo:
                # Dask cannot overlap an axis shorter than the halo; one chunk along it
                # needs no overlap (the block's zero padding is the whole array's).
                lazy, depth[axis] = lazy.rechunk({axis: -1}), 0
        padded = da.overlap.overlap(lazy, depth=depth, boundary="none")
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
    return da.map_blocks(fn, lazy, shipped, n_out=n, chunks=out_chunks, dtype=np.float32, meta=meta)
