"""Training budgets: the paper's recipe (CUDA) and the measured CPU schedules.

The paper trains for about 5000 Adam iterations (lr 2e-4) on batches of 100 patches of
32 x 32 reference pixels, which takes minutes on a GPU but 30-60 minutes on a laptop CPU.
The CPU schedules trade batch size for iterations (smaller batches, a higher learning rate
decayed by a cosine schedule and early stopping on a validation plateau), which reaches
almost the same validation loss in a couple of minutes; each method's schedule is declared
with the method in :mod:`xharmonise.models.registry`.

Measurement behind the CPU schedules: ``benchmarks/paper_table.py --quality`` on a
simulated 2000 x 2000 px TOA pair mis-registered by (3, -2) m (2-core VM, torch 2.13 CPU,
idle; the whole ``fit``, sampling and metrics included; calibnet's pair was lazy, so its
time also counts simulating it). The reference is the same schedule stretched to 4x the
steps and never stopped early:

============  ============  ===============  =============  ===============  ======
method        default fit   best val loss    4x fit         4x val loss      gap
============  ============  ===============  =============  ===============  ======
calibnet      75 s          0.04752          282 s          0.04741          +0.2 %
convcalibnet  108 s         0.01900          423 s          0.01838          +3.4 %
bcnet         128 s         0.01710          517 s          0.01665          +2.7 %
============  ============  ===============  =============  ===============  ======

The first budgets (3000 steps at a peak rate of 1e-3) missed 5 %: ConvCalibNet with
16-patch steps by 13.6 % (101 s), BCNet by 5.5 % (167 s on the lazy pair). At equal time,
8-patch steps at 2e-3 reach a lower loss for ConvCalibNet (4-patch steps do not); BCNet
stops early at 1.5e-3 and above, so it keeps 1e-3 and gets 600 more steps and half the
validations. Running other CPU-heavy processes at the same time slows PyTorch's threads
down by up to 10x.

This module needs neither torch nor NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CPU_SCHEDULE", "PAPER_RECIPE", "TrainingConfig"]


@dataclass(frozen=True)
class TrainingConfig:
    """A complete training budget and optimiser schedule.

    Parameters
    ----------
    iterations : int
        Maximum number of optimiser steps.
    batch_size : int
        Patches per step (ConvCalibNet, BCNet).
    pixels_per_step : int or None
        Pixelwise methods (CalibNet) only: random pixels per step, drawn from all training
        patches; None means ``batch_size * h * w`` (the paper's batch of whole patches,
        reshuffled).
    lr : float
        Peak Adam learning rate.
    final_lr_fraction : float
        The learning rate follows a cosine from ``lr`` down to ``lr * final_lr_fraction``
        at ``iterations``; 1.0 keeps it constant (paper).
    eval_every : int
        Steps between two evaluations on the whole validation set.
    patience : int
        Stop after this many evaluations without a relative improvement of at least
        ``min_rel_improvement`` over the best validation loss; 0 disables early stopping.
    min_rel_improvement : float
        Relative decrease of the best validation loss that resets the patience counter.

    Examples
    --------
    >>> from dataclasses import replace
    >>> replace(PAPER_RECIPE, iterations=10).iterations
    10
    """

    iterations: int
    batch_size: int
    pixels_per_step: int | None
    lr: float
    final_lr_fraction: float
    eval_every: int
    patience: int
    min_rel_improvement: float


#: The paper's recipe, used on CUDA: 5000 steps of Adam at 2e-4 on 100-patch batches.
PAPER_RECIPE = TrainingConfig(
    iterations=5000,
    batch_size=100,
    pixels_per_step=None,
    lr=2e-4,
    final_lr_fraction=1.0,
    eval_every=100,
    patience=20,
    min_rel_improvement=0.0,
)

#: The CPU schedule the methods' CPU budgets start from. One step costs ~7 µs per
#: reference pixel for CalibNet and ~2 µs per pixel for ConvCalibNet on a 2-core VM, so
#: 4096 pixels (CalibNet, BCNet) or 8 patches (ConvCalibNet) per step keep a step near
#: 20-30 ms, and the steps plus evaluations stay under ~2 minutes. The higher peak rate
#: with cosine decay compensates for the much smaller batches.
CPU_SCHEDULE = TrainingConfig(
    iterations=3000,
    batch_size=4,
    pixels_per_step=None,
    lr=1e-3,
    final_lr_fraction=0.02,
    eval_every=150,
    patience=5,
    min_rel_improvement=1e-3,
)
