"""Training loop for the neural harmonisation models, with CPU-friendly default budgets.

The paper trains for about 5000 Adam iterations (lr 2e-4) on batches of 100 patches of
32 x 32 reference pixels, which takes minutes on a GPU but 30-60 minutes on a laptop CPU.
``default_budget`` therefore keeps that recipe on CUDA and, on the CPU, trades batch size
for iterations (smaller batches, a higher learning rate decayed by a cosine schedule and
early stopping on a validation plateau), which reaches almost the same validation loss in
a couple of minutes. Every default is a field of ``TrainingConfig``; every field can be
overridden by the matching ``train`` argument.

The budgets and the measurement behind the CPU ones are in
:mod:`xharmonise.models.budget`; each method declares its own in the registry.

On CUDA the training and validation patches are copied to the device once, batches are
drawn there by a CUDA generator seeded with ``seed`` (reproducible on one device and
PyTorch version; a different order from the CPU's), and the running loss is summed there:
a step neither copies from the host nor waits for the GPU, and only an evaluation reads a
number back. Float32 matrix products and convolutions run in full IEEE float32 unless the caller
allows TF32 with :func:`allow_tf32` (its effect on the metrics has to be measured on the
GPU first: ``benchmarks/gpu.py``). The CPU path is unchanged, bit for bit.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from xharmonise.losses import loss_function
from xharmonise.models.budget import PAPER_RECIPE, TrainingConfig
from xharmonise.models.registry import METHODS
from xharmonise.models.registry import method as method_spec

__all__ = [
    "CPU_BUDGETS",
    "PAPER_RECIPE",
    "PatchSet",
    "TrainResult",
    "TrainingConfig",
    "allow_tf32",
    "default_budget",
    "resolve_device",
    "train",
]

# Validation is run in chunks of about this many reference pixels: large enough to be
# efficient, small enough to bound memory for BCNet's full-resolution patches.
_EVAL_PIXELS: int = 65536

# Whether CUDA training may use TF32 (see allow_tf32): off unless a caller opts in.
_TF32: ContextVar[bool] = ContextVar("xharmonise_training_tf32", default=False)


@dataclass(frozen=True)
class PatchSet:
    """Aligned source / reference training patches.

    Parameters
    ----------
    src : numpy.ndarray
        float32 (N, C, hs, ws) source patches: the source degraded to the reference grid
        (hs = ws = h) for CalibNet and ConvCalibNet, or full resolution with a margin
        (hs = factor * h + 2 * margin) for BCNet.
    ref : numpy.ndarray
        float32 (N, C, h, w) reference patches; NaN marks masked (cloudy) pixels, which
        the losses leave out.

    Examples
    --------
    >>> import numpy as np
    >>> p = PatchSet(np.zeros((8, 4, 32, 32), np.float32), np.zeros((8, 4, 32, 32), np.float32))
    >>> len(p), p.n_bands
    (8, 4)
    """

    src: np.ndarray
    ref: np.ndarray

    def __post_init__(self) -> None:
        if self.src.ndim != 4 or self.ref.ndim != 4:
            raise ValueError(
                f"src and ref must be (N, C, H, W), got {self.src.shape} and {self.ref.shape}"
            )
        if self.src.shape[:2] != self.ref.shape[:2]:
            raise ValueError(
                f"src {self.src.shape} and ref {self.ref.shape} differ in patches or bands"
            )

    def __len__(self) -> int:
        return int(self.src.shape[0])

    @property
    def n_bands(self) -> int:
        """Number of bands C."""
        return int(self.src.shape[1])

    @property
    def masked(self) -> bool:
        """Whether some reference pixels are masked (NaN)."""
        # A float64 sum is NaN iff some value is (reflectances cannot overflow it), without
        # a boolean mask as large as the (possibly GB-sized) array.
        return bool(np.isnan(np.sum(self.ref, dtype=np.float64)))


#: CPU budgets per neural method, as the registry declares them.
CPU_BUDGETS: dict[str, TrainingConfig] = {
    m.name: m.cpu_budget for m in METHODS.values() if m.cpu_budget is not None
}


def default_budget(device: str | torch.device, method: str) -> TrainingConfig:
    """Default training budget for a device and a method.

    Parameters
    ----------
    device : str or torch.device
        Device the model trains on ("auto" is resolved first).
    method : str
        Model method ("calibnet", "convcalibnet", "bcnet").

    Returns
    -------
    TrainingConfig
        The method's GPU budget on CUDA (the paper's recipe), its CPU budget otherwise.

    Examples
    --------
    >>> default_budget("cpu", "calibnet").pixels_per_step
    4096
    """
    # Only "auto" needs resolving: asking for the CUDA budget must work without a GPU.
    dev = resolve_device(device) if device == "auto" else torch.device(device)
    return method_spec(method).budget(dev.type)


@contextmanager
def allow_tf32(enabled: bool = True) -> Iterator[None]:
    """Let :func:`train` use TF32 for CUDA float32 matrix products and convolutions.

    By default ``train`` runs its CUDA float32 work in full IEEE float32 (PyTorch's own
    default lets cuDNN convolutions use TF32). TF32 keeps float32's range with a 10-bit
    mantissa and is several times faster on the tensor cores; whether the fitted
    models' metrics stay within tolerance of float32 is a measurement
    (``benchmarks/gpu.py``), so it is opt-in. The CPU ignores it.

    Parameters
    ----------
    enabled : bool, default True
        Allow TF32 inside the block (False forces full float32 again).

    Examples
    --------
    >>> with allow_tf32():
    ...     pass  # train(net, data, val, device="cuda") here may use TF32
    """
    token = _TF32.set(enabled)
    try:
        yield
    finally:
        _TF32.reset(token)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda[:i]" or a torch.device into a usable torch.device.

    Parameters
    ----------
    device : str or torch.device, default "auto"
        "auto" picks CUDA when available, else the CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    RuntimeError
        CUDA requested but not available.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return dev


@dataclass
class TrainResult:
    """Outcome of ``train``.

    Attributes
    ----------
    history : dict
        Equal-length lists, one entry per evaluation: "iteration", "train_loss" (mean
        training loss since the previous evaluation), "val_loss", "lr"; plus the scalar
        "reference_loss" (the ``reference_loss`` argument, e.g. a linear baseline's
        validation loss, or None).
    best_iteration : int
        Iteration whose parameters were kept (minimum validation loss).
    best_val_loss : float
        Validation loss of the kept parameters.
    device : str
        Device used.
    seconds : float
        Wall-clock training time.
    iterations_run : int
        Optimiser steps actually taken.
    stopped_early : bool
        Whether the validation plateau stopped training before the budget.
    config : TrainingConfig
        The effective budget (defaults merged with the arguments).
    """

    history: dict[str, Any]
    best_iteration: int
    best_val_loss: float
    device: str
    seconds: float
    iterations_run: int
    stopped_early: bool = False
    config: TrainingConfig | None = field(default=None)


def train(
    net: nn.Module,
    train: PatchSet,
    val: PatchSet,
    *,
    iterations: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    patience: int | None = None,
    reference_loss: float | None = None,
    pixels_per_step: int | None = None,
    eval_every: int | None = None,
    budget: TrainingConfig | None = None,
    max_seconds: float | None = None,
) -> TrainResult:
    """Fit a harmonisation network with Adam and keep its best-validation parameters.

    The loss is the relative error, or the Student-t NLL for a model with a variance
    head. CalibNet is trained on random pixels drawn from all training patches; the other
    models on random batches of whole patches. The whole validation set is evaluated
    (in eval mode) every ``eval_every`` steps and at the last step.

    Parameters
    ----------
    net : torch.nn.Module
        Model from ``xharmonise.models.build_model``; trained in place.
    train, val : PatchSet
        Training and validation patches (see ``PatchSet`` for shapes). Not modified.
    iterations, batch_size, lr, patience, pixels_per_step, eval_every : optional
        Override the matching ``TrainingConfig`` field of the budget. For CalibNet an
        explicit ``batch_size`` without ``pixels_per_step`` means ``batch_size * h * w``
        pixels per step (paper semantics).
    seed : int, default 0
        Seeds the batch order (NumPy generator local to this call); together with the
        initial weights it makes CPU training bit-for-bit reproducible.
    device : str or torch.device, default "auto"
        "auto" uses CUDA when available, else the CPU.
    progress : bool, default True
        Show a tqdm progress bar; False prints nothing.
    reference_loss : float, optional
        Baseline validation loss stored as ``history["reference_loss"]``.
    budget : TrainingConfig, optional
        Base budget; default ``default_budget(device, net.method)``.
    max_seconds : float, optional
        Wall-clock limit (stops like early stopping; makes results timing-dependent).

    Returns
    -------
    TrainResult
        ``net`` itself holds the best parameters, on ``device``, in eval mode.

    Examples
    --------
    >>> import numpy as np
    >>> from xharmonise.models import build_model
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(0.05, 0.5, (20, 3, 8, 8)).astype(np.float32)
    >>> data = PatchSet(x, 1.1 * x)
    >>> net = build_model("calibnet", 3, hidden=16, seed=0)
    >>> res = train(net, data, data, iterations=20, eval_every=10, progress=False)
    >>> res.history["iteration"], res.device
    ([10, 20], 'cpu')
    """
    dev = resolve_device(device)
    method = str(getattr(net, "method", ""))
    cfg = _effective_config(
        budget or default_budget(dev, method),
        iterations=iterations,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        pixels_per_step=pixels_per_step,
        eval_every=eval_every,
        explicit_batch=batch_size is not None,
        patch_pixels=int(np.prod(train.ref.shape[2:])),
    )
    _check_data(net, train, "train")
    _check_data(net, val, "val")

    start = time.perf_counter()
    net.to(dev)
    masked = train.masked or val.masked
    loss_fn = loss_function(bool(getattr(net, "variance", False)), masked=masked)
    optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: _cosine_factor(step, cfg.iterations, cfg.final_lr_fraction)
    )
    batches = _batches(net, train, cfg, seed, dev, masked=train.masked)
    val_src, val_ref = _on_device(val.src, dev), _on_device(val.ref, dev)

    history: dict[str, Any] = {"iteration": [], "train_loss": [], "val_loss": [], "lr": []}
    best_loss, best_iteration, best_state = math.inf, 0, None
    plateau_ref, stale = math.inf, 0
    running, step, stopped_early = _RunningLoss(dev), 0, False

    restore_precision = _set_cuda_float32(dev, tf32=_TF32.get())
    bar = tqdm(total=cfg.iterations, desc=f"train {method}", unit="it", disable=not progress)
    try:
        net.train()
        for step in range(1, cfg.iterations + 1):
            x, y = next(batches)
            pred, var = net(x)
            loss = loss_fn(pred, var, y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            running.add(loss)
            bar.update(1)

            out_of_time = max_seconds is not None and time.perf_counter() - start > max_seconds
            if step % cfg.eval_every and step != cfg.iterations and not out_of_time:
                continue
            val_loss = _evaluate(net, val_src, val_ref, loss_fn, dev, masked=masked)
            net.train()
            history["iteration"].append(step)
            history["train_loss"].append(running.take_mean())
            history["val_loss"].append(val_loss)
            history["lr"].append(optimiser.param_groups[0]["lr"])
            bar.set_postfix(train=history["train_loss"][-1], val=val_loss)
            if val_loss < best_loss:
                best_loss, best_iteration = val_loss, step
                best_state = copy.deepcopy(net.state_dict())
            if _improves(val_loss, plateau_ref, cfg.min_rel_improvement):
                plateau_ref, stale = val_loss, 0
            else:
                stale += 1
            if cfg.patience > 0 and stale >= cfg.patience and step < cfg.iterations:
                stopped_early = True
                break
            if out_of_time:
                stopped_early = step < cfg.iterations
                break
    finally:
        bar.close()
        restore_precision()

    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    history["reference_loss"] = reference_loss
    return TrainResult(
        history=history,
        best_iteration=best_iteration,
        best_val_loss=best_loss,
        device=str(dev),
        seconds=time.perf_counter() - start,
        iterations_run=step,
        stopped_early=stopped_early,
        config=cfg,
    )


def _effective_config(
    base: TrainingConfig,
    *,
    iterations: int | None,
    batch_size: int | None,
    lr: float | None,
    patience: int | None,
    pixels_per_step: int | None,
    eval_every: int | None,
    explicit_batch: bool,
    patch_pixels: int,
) -> TrainingConfig:
    overrides: dict[str, Any] = {
        "iterations": iterations,
        "batch_size": batch_size,
        "lr": lr,
        "patience": patience,
        "eval_every": eval_every,
    }
    cfg = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if pixels_per_step is not None:
        cfg = replace(cfg, pixels_per_step=pixels_per_step)
    elif explicit_batch or cfg.pixels_per_step is None:
        # An explicit patch batch keeps the paper's meaning for CalibNet: whole patches'
        # worth of pixels, reshuffled.
        cfg = replace(cfg, pixels_per_step=cfg.batch_size * patch_pixels)
    if cfg.iterations < 1 or cfg.batch_size < 1 or cfg.eval_every < 1 or cfg.lr <= 0:
        raise ValueError(f"invalid training configuration {cfg}")
    if cfg.patience < 0 or (cfg.pixels_per_step is not None and cfg.pixels_per_step < 1):
        raise ValueError(f"invalid training configuration {cfg}")
    return cfg


def _improves(loss: float, reference: float, min_rel: float) -> bool:
    """Whether ``loss`` is below ``reference`` by at least ``min_rel`` of its magnitude.

    A variance head's NLL is negative once σ is small: ``reference * (1 -
    min_rel)`` would then lie above ``reference``, count a slightly worse loss as an
    improvement and move the plateau's reference up, so early stopping never saw a
    plateau.

    Examples
    --------
    >>> _improves(-5.0, -5.0, 1e-3), _improves(-5.01, -5.0, 1e-3), _improves(0.9, 1.0, 1e-3)
    (False, True, True)
    """
    if not math.isfinite(reference):
        return loss < reference
    return loss < reference - min_rel * abs(reference)


def _cosine_factor(step: int, total: int, final_fraction: float) -> float:
    progress = min(step / total, 1.0)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _trains_on(net: nn.Module) -> str:
    # A network of the registry trains on what its method declares; any other module
    # (a user's own) on whole reference-resolution patches, as before the registry.
    name = getattr(net, "method", None)
    return METHODS[name].trains_on if name in METHODS else "patches"


def _check_data(net: nn.Module, data: PatchSet, name: str) -> None:
    n_bands = getattr(net, "n_bands", data.n_bands)
    if data.n_bands != n_bands:
        raise ValueError(f"{name} patches have {data.n_bands} bands, the model {n_bands}")
    if len(data) == 0:
        raise ValueError(f"{name} set is empty")
    h, w = data.ref.shape[2:]
    if _trains_on(net) == "full_patches":
        factor, margin = net.factor, net.margin
        # BCNet keeps both as int; torch types module attributes as tensors or modules.
        assert isinstance(factor, int) and isinstance(margin, int)
        expected = (factor * h + 2 * margin, factor * w + 2 * margin)
    else:
        expected = (h, w)
    if tuple(data.src.shape[2:]) != expected:
        raise ValueError(
            f"{name} src patches are {tuple(data.src.shape[2:])}, expected {expected} "
            f"for {getattr(net, 'method', 'this model')} with {(h, w)} reference patches"
        )
    # A float64 sum is NaN/inf iff some value is (reflectances cannot overflow it),
    # without allocating a boolean mask as large as the (possibly GB-sized) array.
    if not np.isfinite(np.sum(data.src, dtype=np.float64)):
        raise ValueError(f"{name} src contains NaN or infinite values")
    if not np.isfinite(np.nansum(data.ref, dtype=np.float64)):
        raise ValueError(f"{name} ref contains infinite values (NaN marks masked pixels)")
    if data.masked and np.isnan(data.ref).all():
        raise ValueError(f"{name} ref is masked (NaN) everywhere: nothing to learn from")


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    # Shares memory with the caller's array when possible; the loop never writes to it.
    # Read-only arrays are copied since torch warns about (and may not) share them.
    a = np.ascontiguousarray(arr, dtype=np.float32)
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a)


def _on_device(arr: np.ndarray, dev: torch.device) -> torch.Tensor:
    """The array as a float32 tensor on ``dev``: shared with the caller on the CPU, copied
    once per fit on CUDA (never per step)."""
    t = _as_tensor(arr)
    # A plain copy: pinning a host buffer only pays for transfers that repeat (it costs a
    # page-locked allocation and a host copy as large as the data itself), and training
    # has no repeated transfer left.
    return t.to(dev) if dev.type == "cuda" else t


def _set_cuda_float32(dev: torch.device, *, tf32: bool) -> Any:
    """Set CUDA's float32 matmul and cuDNN convolution precision for a fit; returns the
    function that restores the caller's settings. No-op off CUDA.

    These settings are process-wide (PyTorch has no per-thread form), so a fit running
    beside other CUDA work in the same process changes that work's precision too.
    """
    if dev.type != "cuda":
        return lambda: None
    want = "tf32" if tf32 else "ieee"
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None:
        # PyTorch >= 2.9: the per-backend API; mixing it with allow_tf32 raises.
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision, conv.fp32_precision = want, want

        def restore() -> None:
            matmul.fp32_precision, conv.fp32_precision = saved

        return restore
    saved_legacy = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32

    def restore_legacy() -> None:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_legacy

    return restore_legacy


class _RunningLoss:
    """Sum of the step losses since the last evaluation, as a float64 sum.

    On the CPU a step's loss is read as a Python float (as it always was); on CUDA it is
    added to a float64 tensor on the device, so no step waits for the GPU, and the one
    read-back happens at the evaluation. Both add the same float32 values in float64.
    """

    def __init__(self, dev: torch.device) -> None:
        self._device = dev if dev.type == "cuda" else None
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self._host = 0.0
        self._dev = (
            torch.zeros((), dtype=torch.float64, device=self._device)
            if self._device is not None
            else None
        )

    def add(self, loss: torch.Tensor) -> None:
        if self._dev is not None:
            self._dev.add_(loss.detach())
        else:
            self._host += float(loss.detach())
        self.count += 1

    def take_mean(self) -> float:
        """The mean since the last call (NaN when no step ran), and start again."""
        total = float(self._dev) if self._dev is not None else self._host
        mean = total / self.count if self.count else math.nan
        self._reset()
        return mean


def _shuffled_epochs(
    n: int, batch: int, permutation: Callable[[int], Any], concat: Callable[[list], Any]
) -> Iterator[Any]:
    # Shuffled epochs: every sample is seen once per epoch; a batch straddling two
    # epochs takes the tail of one permutation and the head of the next.
    batch = min(batch, n)
    perm, pos = permutation(n), 0
    while True:
        if pos + batch <= n:
            yield perm[pos : pos + batch]
            pos += batch
        else:
            head = perm[pos:]
            perm, pos = permutation(n), batch - len(head)
            yield concat([head, perm[:pos]])


def _epoch_indices(n: int, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    return _shuffled_epochs(n, batch, rng.permutation, np.concatenate)


def _device_epoch_indices(
    n: int, batch: int, generator: torch.Generator, dev: torch.device
) -> Iterator[torch.Tensor]:
    # The same epochs drawn on the device: no index crosses from the host. The order
    # differs from the CPU's (another generator), not the sampling.
    return _shuffled_epochs(
        n, batch, lambda k: torch.randperm(k, generator=generator, device=dev), torch.cat
    )


def _batches(
    net: nn.Module,
    data: PatchSet,
    cfg: TrainingConfig,
    seed: int,
    dev: torch.device,
    *,
    masked: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    src, ref = _on_device(data.src, dev), _on_device(data.ref, dev)
    if _trains_on(net) == "pixels":
        c = data.n_bands
        # Pixelwise models (CalibNet): pool every pixel of every patch and reshuffle them.
        src = src.permute(0, 2, 3, 1).reshape(-1, c)
        ref = ref.permute(0, 2, 3, 1).reshape(-1, c)
        if masked:
            # Masked pixels carry no label: leave them out of the pool rather than spend
            # steps on them.
            keep = ~torch.isnan(ref).any(dim=1)
            src, ref = src[keep], ref[keep]
        size = int(cfg.pixels_per_step or 1)
    else:
        size = cfg.batch_size
    if dev.type == "cuda":
        generator = torch.Generator(device=dev)
        generator.manual_seed(seed)
        for index in _device_epoch_indices(src.shape[0], size, generator, dev):
            yield src[index], ref[index]
        return
    for idx in _epoch_indices(src.shape[0], size, np.random.default_rng(seed)):
        index = torch.from_numpy(idx)
        yield src[index], ref[index]


def _evaluate(
    net: nn.Module,
    src: torch.Tensor,
    ref: torch.Tensor,
    loss_fn: Any,
    dev: torch.device,
    *,
    masked: bool = False,
) -> float:
    # src and ref are already on dev (_on_device). The weighted chunk losses are summed in
    # float64 where they are computed, and read back once: one sync per evaluation on CUDA,
    # and on the CPU the same arithmetic as summing Python floats.
    net.eval()
    chunk = max(1, _EVAL_PIXELS // int(np.prod(ref.shape[2:])))
    total = torch.zeros((), dtype=torch.float64, device=dev)
    count = torch.zeros((), dtype=torch.float64, device=dev)
    with torch.no_grad():
        for i in range(0, src.shape[0], chunk):
            x, y = src[i : i + chunk], ref[i : i + chunk]
            pred, var = net(x)
            # Both losses are means over valid elements: weight chunk means by their count.
            n = (~torch.isnan(y)).sum().double() if masked else float(y.numel())
            total += loss_fn(pred, var, y).double() * n
            count += n
    return float(total / count)
