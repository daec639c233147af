"""Linear interpolation between two trained networks: loss and error along the path (its barrier: ``barriers``).

Definitions (Frankle et al. 2020, "Linear Mode Connectivity and the LTH", Sec. 2; as summarized in
``reported_claims.yaml: lmc-def-instability``, the primary text could not be retrieved here):
the network at ``alpha`` is ``(1 - alpha) W_a + alpha W_b`` (alpha = 0 is endpoint a), evaluated at
``points`` evenly spaced values of alpha in [0, 1], endpoints included (30 in LMC: ``lmc-def-alpha``);
the **barrier** of a metric is its maximum along the path minus the mean of its two endpoint values.
LMC's instability is the barrier of the classification *error* (train or test); the loss barrier is
reported beside it. A pair is "stable" when the error barrier is below 2 % (``lmc-def-stable``).

Choices that the papers leave implicit are explicit options here:

- ``mask``: ``"none"`` interpolates the weights as stored (pruned weights are exact zeros, so the path
  lives on the union of the two supports; for two copies of one subnetwork the masks are equal and
  this is the subnetwork's own subspace). ``"common"`` first zeroes, in both endpoints, every weight
  outside the intersection of the two masks; for nested IMP masks (level L+1 inside level L) that is
  the sparser mask, so the path stays in the sparser subnetwork's subspace (and endpoint a is then the
  level-L solution *projected* onto it, not the trained network itself).
- ``bn``: ``"as_is"`` (default) interpolates BN running statistics along with the weights and evaluates
  the interpolated network in eval mode as it is: the network LMC evaluates according to issue 4
  (not verifiable in the stored sources). ``"recompute"`` re-estimates the running statistics of each
  interpolated network on the un-augmented training images first (``recompute_batchnorm``; the "BN
  reset" of Izmailov et al. 2018's SWA, also used by Jordan et al. 2023's REPAIR), which removes the variance collapse of interpolated BN networks
  and so measures a smaller barrier. Endpoints are then re-estimated too and differ from the trained
  networks' own metrics.

Successive-level interpolation (IMP level L vs. L+1 solutions):
- Paul et al. 2023 ("Unmasking the LTH", ICLR) report that, at higher sparsities, "pairs of pruned
  networks at successive pruning iterations are connected by a linear path with zero error barrier if
  and only if they are matching" (abstract). Their Fig. 1 (seen only through a third-party review)
  names the level-L solution, its *projection* onto the level-(L+1) mask, and the level-(L+1)
  solution, which suggests the ``"common"`` (sparser-mask) path; which pair their Sec. 3 measures could
  not be verified here.
- Saleem et al. 2024's interpolation protocol is unknown (``sal-missing-interp``).
Both variants are therefore computed (``successive`` in ``commands.py`` writes ``mask = common`` and
``mask = none`` rows).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor, nn

from ..data import Split, stream_seed
from ..masks import Mask
from ..train import evaluate

MASK_MODES = ("none", "common")
BN_MODES = ("as_is", "recompute")
_TRAIN_EVAL_SUBSET = 51  # stream id for the seeded training-evaluation subset


def alphas(points: int) -> list[float]:
    """``points`` evenly spaced values in [0, 1], both endpoints exactly included."""
    if points < 2:
        raise ValueError("points: the path needs at least its two endpoints")
    return [i / (points - 1) for i in range(points)]


def interpolate_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) a + alpha b`` for every floating-point entry (weights and BN statistics).

    ``torch.lerp`` returns ``a`` exactly at alpha = 0 and ``b`` exactly at alpha = 1, so the endpoints
    of a path are the stored networks bit for bit. Integer entries (BN's ``num_batches_tracked``) are
    counters, not coordinates: they are taken from ``a``."""
    if a.keys() != b.keys():
        raise ValueError(f"the two states hold different entries: {sorted(set(a) ^ set(b))[:3]}")
    out = {}
    for k, va in a.items():
        vb = b[k]
        if va.shape != vb.shape:
            raise ValueError(f"{k}: shapes {tuple(va.shape)} and {tuple(vb.shape)} differ; not the same architecture")
        out[k] = torch.lerp(va, vb.to(va.device), alpha) if va.is_floating_point() else va.clone()
    return out


def common_mask(a: Mask, b: Mask) -> Mask:
    """The coordinates kept by both masks (for nested IMP masks: the sparser one)."""
    if a.keys() != b.keys():
        raise ValueError("the two masks cover different layers")
    return {k: a[k] & b[k].to(a[k].device) for k in a}


def apply_mask(state: Mapping[str, Tensor], mask: Mask) -> dict[str, Tensor]:
    return {k: v * mask[k].to(v.device, v.dtype) if k in mask else v for k, v in state.items()}


def endpoints(a: Mapping[str, Tensor], b: Mapping[str, Tensor], mask_a: Mask, mask_b: Mask,
              mode: str) -> tuple[Mapping[str, Tensor], Mapping[str, Tensor]]:
    """The two endpoints of the path under a mask mode (see the module docstring)."""
    if mode == "none":
        return a, b
    if mode == "common":
        m = common_mask(mask_a, mask_b)
        return apply_mask(a, m), apply_mask(b, m)
    raise ValueError(f"mask: {mode!r}; choose one of {', '.join(MASK_MODES)}")


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, split: Split, batch_size: int = 1000) -> None:
    """Re-estimate every BN layer's running statistics on ``split``, as SWA's ``bn_update`` (Izmailov
    et al. 2018): forward passes in train mode over fixed chunks, with the momentum of each chunk set
    to its share of the examples seen so far, so that the running mean is the size-weighted average of
    the chunk means (for the first BN layer: exactly the data mean of its input) and the running
    variance the size-weighted average of the chunk variances (it omits the spread of the chunk means,
    O(1/batch_size) of the variance). Leaves the model in eval mode with its momenta restored."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
    model.train()
    seen = 0
    for i in range(0, len(split), batch_size):
        x = split.x[i:i + batch_size]
        for m in bns:
            m.momentum = len(x) / (seen + len(x))
        model(x)
        seen += len(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def seeded_subset(split: Split, examples: int, seed: int = 0) -> Split:
    """``examples`` training examples chosen by a seeded permutation (all of them if 0 or more than held)."""
    if not examples or examples >= len(split):
        return split
    g = torch.Generator().manual_seed(stream_seed(_TRAIN_EVAL_SUBSET, seed))
    idx = torch.randperm(len(split), generator=g)[:examples].sort().values.to(split.x.device)
    return Split(split.x[idx], split.y[idx])


def path(model: nn.Module, a: Mapping[str, Tensor], b: Mapping[str, Tensor], train: Split, test: Split,
         points: int = 30, bn: str = "as_is", bn_data: Split | None = None, batch_size: int = 1000) -> pd.DataFrame:
    """Loss and error on ``train`` and ``test`` at each point of the path from state ``a`` to ``b``.

    ``model`` is any network of the right architecture (its weights are overwritten). Returns one row
    per point: point, alpha, train_loss, train_error, test_loss, test_error."""
    if bn not in BN_MODES:
        raise ValueError(f"bn: {bn!r}; choose one of {', '.join(BN_MODES)}")
    if bn == "recompute" and bn_data is None:
        raise ValueError("bn='recompute' needs bn_data (training images)")
    rows = []
    for i, alpha in enumerate(alphas(points)):
        model.load_state_dict(interpolate_state(a, b, alpha))
        if bn == "recompute":
            recompute_batchnorm(model, bn_data, batch_size)
        train_loss, train_acc = evaluate(model, train, batch_size)
        test_loss, test_acc = evaluate(model, test, batch_size)
        rows.append({"point": i, "alpha": alpha, "train_loss": train_loss, "train_error": 1.0 - train_acc,
                     "test_loss": test_loss, "test_error": 1.0 - test_acc})
    return pd.DataFrame(rows)


