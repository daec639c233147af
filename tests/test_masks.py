"""Pruning removes exactly the weights the papers say, and pruned weights stay exactly zero."""

from __future__ import annotations

import math

import pytest
import torch

from ticketbench.config import ModelConfig, PruneConfig, TrainConfig
from ticketbench.masks import (MaskedParameters, dense_mask, density, density_total, magnitude_prune, prune_counts,
                               random_prune, round_half_up)
from ticketbench.models import build, layer_kinds
from ticketbench.train import make_optimizer

LTH_LENET = PruneConfig("layerwise", {"fc": 0.2, "output": 0.1})
LTH_RESNET = PruneConfig("global", {"conv": 0.2})


def lenet():
    return build(ModelConfig("lenet_300_100", init="glorot_normal"), (1, 28, 28), 10, 0)


def weights(model):
    return {n: p.detach() for n, p in model.named_parameters()}


def test_layerwise_step_removes_round_p_times_remaining_per_layer_smallest_first():
    net = lenet()
    kinds = layer_kinds(net)
    m0 = dense_mask(net, kinds, LTH_LENET)
    m1 = magnitude_prune(weights(net), m0, kinds, LTH_LENET)
    m2 = magnitude_prune(weights(net), m1, kinds, LTH_LENET)
    for name, rate in (("fcs.0.weight", 0.2), ("fcs.1.weight", 0.2), ("fc_out.weight", 0.1)):
        n0 = m0[name].numel()
        n1 = n0 - round_half_up(rate * n0)
        assert int(m1[name].sum()) == n1
        assert int(m2[name].sum()) == n1 - round_half_up(rate * n1)
        w = weights(net)[name].abs()
        assert w[~m1[name]].max() <= w[m1[name]].min()  # the pruned are the smallest in magnitude
        assert not (m2[name] & ~m1[name]).any()  # a pruned weight never comes back


def test_global_step_pools_only_the_configured_kinds():
    """LTH Sec. 4: ResNet is pruned globally over conv weights; shortcuts and the output layer are kept."""
    net = build(ModelConfig("resnet20", width=4), (3, 32, 32), 10, 0)
    kinds = layer_kinds(net)
    m0 = dense_mask(net, kinds, LTH_RESNET)
    assert set(kinds[n] for n in m0) == {"conv"}
    m1 = magnitude_prune(weights(net), m0, kinds, LTH_RESNET)
    total = sum(m.numel() for m in m0.values())
    assert sum(int(m.sum()) for m in m1.values()) == total - round_half_up(0.2 * total)
    kept = torch.cat([weights(net)[n].abs()[m1[n]] for n in m1])
    pruned = torch.cat([weights(net)[n].abs()[~m1[n]] for n in m1])
    assert pruned.max() <= kept.min()
    per_layer = [m1[n].float().mean().item() for n in m1]
    assert max(per_layer) - min(per_layer) > 0.05  # global: layers end up at different sparsities


def test_ties_are_broken_without_pruning_an_extra_weight():
    """All weights equal: a threshold with a strict '>' would prune everything; exact counts do not."""
    w = {"a": torch.ones(10, 10)}
    m = magnitude_prune(w, {"a": torch.ones(10, 10, dtype=torch.bool)}, {"a": "fc"}, PruneConfig("layerwise", {"fc": 0.2}))
    assert int(m["a"].sum()) == 80


def test_random_pruning_keeps_every_layers_count():
    net = lenet()
    kinds = layer_kinds(net)
    m = magnitude_prune(weights(net), dense_mask(net, kinds, LTH_LENET), kinds, LTH_LENET, levels=5)
    r = random_prune(m, torch.Generator().manual_seed(0))
    assert {n: int(v.sum()) for n, v in r.items()} == {n: int(v.sum()) for n, v in m.items()}
    assert any(not torch.equal(r[n], m[n]) for n in m)


def test_oneshot_reaches_exactly_the_count_of_the_same_number_of_imp_levels():
    net = lenet()
    kinds = layer_kinds(net)
    m = dense_mask(net, kinds, LTH_LENET)
    iterative = m
    for _ in range(4):
        iterative = magnitude_prune(weights(net), iterative, kinds, LTH_LENET)
    oneshot = magnitude_prune(weights(net), m, kinds, LTH_LENET, levels=4)
    assert {n: int(v.sum()) for n, v in oneshot.items()} == {n: int(v.sum()) for n, v in iterative.items()}
    assert prune_counts(m, kinds, LTH_LENET, 4) == [int(iterative[n].sum()) for n in sorted(iterative)]
    assert density(oneshot) == pytest.approx(sum(int(v.sum()) for v in iterative.values()) / 266_200)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero_after_every_optimizer_step(optimizer):
    """Checked inside the optimizer's own post-step hook, i.e. *before* the weights are re-masked: masking
    the gradients already keeps momentum, Adam moments and weight decay off the pruned coordinates."""
    torch.manual_seed(0)
    net = lenet()
    kinds = layer_kinds(net)
    mask = magnitude_prune(weights(net), dense_mask(net, kinds, LTH_LENET), kinds, LTH_LENET, levels=3)
    masked = MaskedParameters(net, mask)
    masked.apply_to_weights()
    params = dict(net.named_parameters())
    lr = 0.1 if optimizer == "sgd" else 1e-2
    opt = make_optimizer(TrainConfig(optimizer, lr, 16, "20it", momentum=0.9, weight_decay=1e-3), net.parameters())
    checked = []

    def all_pruned_zero(*_):
        checked.append(all(torch.count_nonzero(params[n][~m]) == 0 for n, m in mask.items()))

    handle = opt.register_step_post_hook(all_pruned_zero)
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(net(torch.randn(16, 1, 28, 28)), torch.randint(10, (16,)))
        opt.zero_grad()
        loss.backward()
        masked.apply_to_gradients()
        opt.step()
        masked.apply_to_weights()
    handle.remove()
    assert checked == [True] * 20
    assert all(torch.count_nonzero(params[n][m]) == int(m.sum()) for n, m in mask.items())  # survivors train


def test_density_total_is_the_lth_p_m_of_its_resnet_with_unpruned_shortcuts_and_output_counted():
    """LTH Sec. 4 quotes P_m = 41.7 / 27.1 / 21.9 / 11.8 % for its ResNet after 4, 6, 7, 10 rounds of global
    20 % conv pruning: (0.8**L x 267,696 + 3,200) / 270,896, the 2,560 shortcut and 640 output weights kept.
    Counting prunable weights only gives 41.0 / 26.2 / 21.0 / 10.7 %, which would match claims to the
    wrong level."""
    net = build(ModelConfig("resnet20", width=16), (3, 32, 32), 10, 0)
    kinds = layer_kinds(net)
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters() if n in kinds}
    assert sum(math.prod(s) for s in shapes.values()) == 270_896  # weights only: no biases, no BN
    mask, p_m, prunable = dense_mask(net, kinds, LTH_RESNET), {}, {}
    for level in range(1, 11):
        mask = magnitude_prune(weights(net), mask, kinds, LTH_RESNET)
        p_m[level], prunable[level] = density_total(mask, shapes), density(mask)
    assert [round(100 * p_m[lv], 1) for lv in (4, 6, 7, 10)] == [41.7, 27.1, 21.9, 11.8]
    assert [round(100 * prunable[lv], 1) for lv in (4, 6, 7, 10)] == [41.0, 26.2, 21.0, 10.7]


def test_density_total_equals_density_when_every_weight_is_prunable():
    net = lenet()
    kinds = layer_kinds(net)
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters() if n in kinds}
    mask = magnitude_prune(weights(net), dense_mask(net, kinds, LTH_LENET), kinds, LTH_LENET, levels=3)
    assert density_total(mask, shapes) == density(mask)
    with pytest.raises(ValueError, match="not among the network's weights"):
        density_total({**mask, "extra.weight": torch.ones(3, dtype=torch.bool)}, shapes)
