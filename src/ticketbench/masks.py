"""Masks over named prunable tensors, and the pruning strategies of the papers.

A mask is a dict from parameter name to a boolean tensor (True = kept). The pruning functions are
pure: they take weights and the current mask and return a new mask. Exact counts matter for
reproducibility, so a pruning step removes exactly ``round(rate * remaining)`` weights (rounding half up)
per layer (layer-wise) or overall (global), breaking magnitude ties by position (stable sort), instead of
thresholding (``sort[k]`` with a strict ``>`` prunes an extra weight on ties; open_lth has that bug).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .config import PruneConfig

Mask = dict[str, torch.Tensor]


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def dense_mask(model: nn.Module, kinds: Mapping[str, str], config: PruneConfig) -> Mask:
    """All-ones mask over the weights whose kind the config prunes."""
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool, device="cpu") for n, k in kinds.items() if k in config.rates}


def groups(mask: Mask, kinds: Mapping[str, str], config: PruneConfig) -> list[tuple[list[str], float]]:
    """The sets of tensors pruned together and their rate: one per tensor (layer-wise) or one (global)."""
    names = sorted(mask)
    if config.strategy == "global":
        return [(names, next(iter(config.rates.values())))]
    return [([n], config.rates[kinds[n]]) for n in names]


def prune_counts(mask: Mask, kinds: Mapping[str, str], config: PruneConfig, levels: int = 1) -> list[int]:
    """Number of weights to keep in each group after ``levels`` further IMP steps from ``mask``.

    One-shot pruning uses this to reach exactly the per-group counts that IMP reaches after the same
    number of levels, so that IMP and one-shot are compared at identical sparsity."""
    out = []
    for names, rate in groups(mask, kinds, config):
        remaining = sum(int(mask[n].sum()) for n in names)
        for _ in range(levels):
            remaining -= round_half_up(rate * remaining)
        out.append(remaining)
    return out


def magnitude_prune(weights: Mapping[str, torch.Tensor], mask: Mask, kinds: Mapping[str, str],
                    config: PruneConfig, levels: int = 1) -> Mask:
    """Keep the largest-magnitude surviving weights: one IMP step (levels=1), or one-shot to the
    sparsity that ``levels`` IMP steps would reach."""
    keep = prune_counts(mask, kinds, config, levels)
    new = {n: m.clone() for n, m in mask.items()}
    for (names, _), n_keep in zip(groups(mask, kinds, config), keep):
        scores = torch.cat([_scores(weights[n], mask[n]) for n in names])
        _keep_top(new, names, scores, n_keep)
    return new


def random_prune(mask: Mask, generator: torch.Generator) -> Mask:
    """A random mask with exactly the same number of kept weights in every layer as ``mask``
    (the LTH's random-pruning baseline keeps the layer-wise sparsity of the winning ticket)."""
    new = {}
    for n in sorted(mask):
        m = mask[n]
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=generator)[: int(m.sum())]] = True
        new[n] = flat.view_as(m)
    return new


def _scores(w: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # Already-pruned weights score -inf so that they are always among the pruned.
    s = w.detach().abs().flatten().double().cpu()
    return torch.where(m.flatten(), s, torch.full_like(s, -math.inf))


def _keep_top(mask: Mask, names: list[str], scores: torch.Tensor, n_keep: int) -> None:
    order = torch.argsort(scores, descending=True, stable=True)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[order[:n_keep]] = True
    offset = 0
    for n in names:
        size = mask[n].numel()
        mask[n] = keep[offset:offset + size].view_as(mask[n])
        offset += size


# --------------------------------------------------------------------------------------------------
# Applying a mask to a model during training
# --------------------------------------------------------------------------------------------------


class MaskedParameters:
    """Keeps pruned weights at exactly zero during training.

    The mask is multiplied into the gradients after ``backward`` (so momentum, Adam moments and weight
    decay never see pruned coordinates) and into the weights after every optimizer step (so nothing
    an optimizer does, e.g. Adam's epsilon, can move them). Both use fused foreach kernels.
    """

    def __init__(self, model: nn.Module, mask: Mask):
        params = dict(model.named_parameters())
        unknown = sorted(set(mask) - set(params))
        if unknown:
            raise ValueError(f"mask names {unknown[0]!r}, which the model does not have")
        self.params = [params[n] for n in sorted(mask)]
        self.masks = [mask[n].to(device=params[n].device, dtype=params[n].dtype)
                      .contiguous(memory_format=_format_of(params[n])) for n in sorted(mask)]

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        if self.params:
            torch._foreach_mul_(self.params, self.masks)

    @torch.no_grad()
    def apply_to_gradients(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, [m for p, m in zip(self.params, self.masks) if p.grad is not None])


def _format_of(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def density(mask: Mask) -> float:
    """Fraction of the *prunable* weights remaining: the tables' ``density``, the rate arithmetic's own
    quantity (0.8**L under global 20 % pruning)."""
    total = sum(m.numel() for m in mask.values())
    return sum(int(m.sum()) for m in mask.values()) / total if total else 1.0


def density_total(mask: Mask, weight_shapes: Mapping[str, Sequence[int]]) -> float:
    """Fraction of *all* the network's weights remaining, pruned kinds or not: the LTH's P_m.

    The LTH quotes P_m over every weight of the network, the ones it never prunes included: for its
    ResNet (shortcut and output weights unpruned, Sec. 4) 41.7 / 27.1 / 21.9 / 11.8 % at levels 4, 6, 7, 10
    are (0.8**L x 267,696 + 3,200) / 270,896, where ``density`` gives 41.0 / 26.2 / 21.0 / 10.7 %.
    ``weight_shapes`` are the conv and linear weights (``models.layer_kinds``); biases and BN parameters
    are not counted, because the paper does not count them: 270,896 is exactly 267,696 conv + 2,560
    shortcut + 640 output weights (App. I.3), while with its biases and BN the network has 272,474
    parameters."""
    unknown = sorted(set(mask) - set(weight_shapes))
    if unknown:
        raise ValueError(f"mask names {unknown[0]!r}, which is not among the network's weights")
    wrong = [n for n in sorted(mask) if tuple(mask[n].shape) != tuple(weight_shapes[n])]
    if wrong:
        n = wrong[0]
        raise ValueError(f"mask of {n!r} has shape {tuple(mask[n].shape)}, its weight {tuple(weight_shapes[n])}")
    total = sum(math.prod(shape) for shape in weight_shapes.values())
    pruned = sum(m.numel() - int(m.sum()) for m in mask.values())
    return (total - pruned) / total if total else 1.0


def layer_table(mask: Mask, kinds: Mapping[str, str]) -> list[dict]:
    """One row per prunable layer: kept and total weights. Saved with every level."""
    return [{"layer": n, "kind": kinds[n], "kept": int(mask[n].sum()), "total": mask[n].numel(),
             "density": int(mask[n].sum()) / mask[n].numel()} for n in sorted(mask)]
