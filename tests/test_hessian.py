"""The Hessian analysis against ground truth: explicit matrices with known spectra, and a tiny network
whose full Hessian ``torch.autograd.functional.hessian`` computes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketbench.analysis import HessianConfig
from ticketbench.analysis.hessian import (MaskedHessian, analyse, hutchinson_trace, lanczos, log_volume_ellipsoid,
                                          log_volume_laplace, slq_density, top_eigenpairs, training_subset)
from ticketbench.data import Split

torch.set_num_threads(1)


def symmetric(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T with a random orthogonal Q: the Hessian of a quadratic loss."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def start(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- quadratic loss: L(w) = w^T A w / 2 has Hessian A ---------------------------------------------


def test_lanczos_finds_the_top_eigenvalues_of_a_quadratic_with_certified_residuals():
    spectrum = [50.0, 20.0, 10.0, 5.0, 2.0] + [0.01 * i for i in range(-20, 75)]
    a = symmetric(spectrum)
    eig = top_eigenpairs(lambda v: a @ v, start(len(spectrum)), k=4, max_steps=100, tol=1e-8)
    assert eig.converged
    assert torch.allclose(eig.values, torch.tensor([50.0, 20.0, 10.0, 5.0], dtype=torch.float64), rtol=1e-8)
    # The reported residual is the true one: ||A x - theta x|| for the returned Ritz vectors.
    true = (eig.vectors @ a - eig.values[:, None] * eig.vectors).norm(dim=1)
    assert torch.allclose(eig.residuals, true, atol=1e-10)
    assert (eig.relative_residuals <= 1e-8).all()
    assert eig.hvps < 60  # far fewer matvecs than the dimension (100)


def test_lanczos_stops_early_at_a_loose_tolerance_and_the_residual_bounds_the_error():
    spectrum = [9.0, 7.0, 6.5, 3.0] + [0.1] * 60
    a = symmetric(spectrum, seed=3)
    eig = top_eigenpairs(lambda v: a @ v, start(64), k=3, max_steps=64, tol=1e-2)
    exact = torch.tensor(spectrum[:3], dtype=torch.float64)
    assert eig.converged and eig.hvps < 64
    # Residual certificate: each Ritz value is within its residual of the exact eigenvalue.
    assert ((eig.values - exact).abs() <= eig.residuals + 1e-12).all()


def test_lanczos_basis_stays_orthonormal_and_reproduces_the_tridiagonal():
    a = symmetric([float(i) for i in range(1, 41)], seed=5)
    state = lanczos(lambda v: a @ v, start(40), steps=30)
    q = state.basis
    assert torch.allclose(q @ q.T, torch.eye(30, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(q @ a @ q.T, state.tridiagonal(), atol=1e-9)


def test_lanczos_stops_on_an_invariant_subspace_with_exact_eigenvalues():
    spectrum = [4.0, 3.0, 2.0, 1.0, 0.5, -1.0]
    a = symmetric(spectrum, seed=7)
    eig = top_eigenpairs(lambda v: a @ v, start(6), k=6, max_steps=50, tol=1e-12)
    assert eig.hvps == 6 and eig.converged
    assert torch.allclose(eig.values, torch.tensor(spectrum, dtype=torch.float64), atol=1e-10)


def test_hutchinson_trace_is_unbiased_and_exact_when_deflated_by_a_complete_basis():
    spectrum = [30.0, 10.0] + [0.5] * 48
    a = symmetric(spectrum, seed=2)
    g = torch.Generator().manual_seed(0)

    def rademacher() -> torch.Tensor:
        return torch.randint(0, 2, (50,), generator=g).double() * 2 - 1

    plain = hutchinson_trace(lambda v: a @ v, rademacher, samples=400)
    assert abs(plain.value - sum(spectrum)) < 4 * plain.stderr
    distinct = [30.0, 10.0] + [0.5 + 0.01 * i for i in range(48)]
    b = symmetric(distinct, seed=2)
    full = lanczos(lambda v: b @ v, start(50), steps=50)
    assert full.steps == 50
    exact = hutchinson_trace(lambda v: b @ v, rademacher, samples=3, basis=full.basis, basis_trace=sum(full.alpha))
    assert exact.value == pytest.approx(sum(distinct), rel=1e-9)
    assert exact.stderr < 1e-6
    # Deflating the two outliers leaves only the flat bulk: far less variance than plain Hutchinson.
    part = lanczos(lambda v: a @ v, start(50), steps=8)
    deflated = hutchinson_trace(lambda v: a @ v, rademacher, samples=50, basis=part.basis, basis_trace=sum(part.alpha))
    assert abs(deflated.value - sum(spectrum)) < 4 * deflated.stderr + 1e-9
    assert deflated.stderr < plain.stderr / 5


def test_slq_quadrature_reproduces_spectral_moments():
    spectrum = [5.0, 3.0, 1.0, 1.0, 0.5, 0.25, 0.0, -0.5]
    a = symmetric(spectrum, seed=4)
    g = torch.Generator().manual_seed(1)
    runs = slq_density(lambda v: a @ v, lambda: torch.randn(8, generator=g, dtype=torch.float64), probes=1, steps=8)
    nodes, weights = runs[0]
    assert weights.sum().item() == pytest.approx(1.0)
    # With as many steps as the dimension the quadrature is exact for the probe's spectral measure:
    # sum_j w_j node_j^p = u^T A^p u for the unit start vector u. Its nodes are the eigenvalues.
    assert sorted(set(round(x, 8) for x in nodes.tolist())) == sorted(set(spectrum))


# -- basin volume --------------------------------------------------------------------------------


def test_ellipsoid_log_volume_matches_a_monte_carlo_sublevel_set_volume():
    lam = torch.tensor([8.0, 2.0, 0.5], dtype=torch.float64)
    eps = 0.5
    g = torch.Generator().manual_seed(0)
    half = torch.sqrt(2 * eps / lam)  # the box [-half, half] contains the ellipsoid
    pts = (torch.rand(400_000, 3, generator=g, dtype=torch.float64) * 2 - 1) * half
    inside = ((pts ** 2 * lam).sum(1) / 2 <= eps).double().mean()
    mc = math.log(float(inside)) + float(torch.log(2 * half).sum())
    unit_ball = math.log(4 / 3 * math.pi)
    # log V = log V_3(unit ball) + (3/2) log(2 eps) - 1/2 sum log lambda_i (the docstring's formula).
    assert mc == pytest.approx(unit_ball + 1.5 * math.log(2 * eps) + log_volume_ellipsoid(lam), abs=0.01)
    assert math.isnan(log_volume_ellipsoid(torch.tensor([1.0, -0.1])))


def test_laplace_log_volume_is_the_log_determinant_ratio():
    spectrum = [4.0, 1.0, 0.25]
    a = symmetric(spectrum)
    n, s2 = 100, 0.3
    expected = -0.5 * torch.logdet(torch.eye(3, dtype=torch.float64) + n * s2 * a)
    assert log_volume_laplace(torch.tensor(spectrum), n, s2) == pytest.approx(float(expected), rel=1e-10)
    # A negative eigenvalue is a flat direction here, not an error.
    assert log_volume_laplace(torch.tensor([4.0, -1.0]), n, s2) == pytest.approx(log_volume_laplace(torch.tensor([4.0]), n, s2))


# -- a tiny network whose full Hessian is computable ----------------------------------------------


class Tiny(nn.Module):
    """Conv + BN (eval mode, non-trivial running statistics) + ReLU + linear: 51 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def tiny_problem(seed: int = 0) -> tuple[nn.Module, Split]:
    torch.manual_seed(seed)
    net = Tiny().double()
    with torch.no_grad():
        net.bn.running_mean.copy_(torch.tensor([0.1, -0.2]))
        net.bn.running_var.copy_(torch.tensor([0.5, 2.0]))
        net.bn.weight.copy_(torch.tensor([1.3, 0.7]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    return net.eval(), Split(x, y)


def full_hessian(net: nn.Module, split: Split) -> torch.Tensor:
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    flat = torch.cat([p.detach().flatten() for _, p in net.named_parameters()])
    buffers = dict(net.named_buffers())

    def loss(w: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = w[i:i + s.numel()].view(s)
            i += s.numel()
        return F.cross_entropy(torch.func.functional_call(net, (params, buffers), (split.x,)), split.y)

    return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.parametrize("method", ["forward_over_reverse", "double_backward"])
def test_hvp_of_a_tiny_net_equals_its_full_hessian_times_v(method):
    net, split = tiny_problem()
    h = full_hessian(net, split)
    op = MaskedHessian(net, {}, split, batch_size=7, method=method)  # chunks of 7: 40 = 5*7 + 5
    v = start(h.shape[0], seed=3)
    assert torch.allclose(op(v), h @ v, rtol=1e-9, atol=1e-12)


def test_top_eigenvalues_of_a_tiny_net_agree_with_its_full_hessian():
    net, split = tiny_problem()
    exact = torch.linalg.eigvalsh(full_hessian(net, split)).flip(0)
    op = MaskedHessian(net, {}, split, batch_size=16)
    eig = top_eigenpairs(op, op.random(torch.Generator().manual_seed(0)), k=5, max_steps=op.dim, tol=1e-10)
    assert torch.allclose(eig.values, exact[:5], rtol=1e-4)


def test_a_masked_coordinate_contributes_nothing():
    net, split = tiny_problem()
    keep = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    keep[0, 0, 1, :] = False  # prune three conv weights
    keep[1, 0, 0, 0] = False
    mask = {"conv.weight": keep}
    with torch.no_grad():
        net.conv.weight.mul_(keep)  # a trained subnetwork holds zeros there
    h = full_hessian(net, split)
    kept = torch.cat([keep.flatten(), torch.ones(h.shape[0] - keep.numel(), dtype=torch.bool)])
    op = MaskedHessian(net, mask, split)
    assert op.dim == int(kept.sum()) == h.shape[0] - 4

    v = start(h.shape[0])
    hv = op(v)
    assert (hv[~kept] == 0).all()  # nothing comes out of a pruned coordinate ...
    w = v.clone()
    w[~kept] = 123.0
    assert torch.equal(op(w), hv)  # ... and nothing goes in
    # The spectrum is that of the Hessian restricted to the kept coordinates, not of the full Hessian.
    sub = torch.linalg.eigvalsh(h[kept][:, kept]).flip(0)
    eig = top_eigenpairs(op, op.random(torch.Generator().manual_seed(0)), k=4, max_steps=op.dim, tol=1e-10)
    assert torch.allclose(eig.values, sub[:4], rtol=1e-4)
    assert not torch.allclose(eig.values, torch.linalg.eigvalsh(h).flip(0)[:4], rtol=1e-4)


def test_a_pruned_weight_left_nonzero_in_the_model_does_not_change_the_operator():
    net, split = tiny_problem()
    keep = torch.ones(3, 8, dtype=torch.bool)
    keep[:, :2] = False
    with torch.no_grad():
        net.fc.weight.mul_(keep)
    clean = MaskedHessian(net, {"fc.weight": keep}, split)
    with torch.no_grad():
        net.fc.weight[~keep] = 5.0
    dirty = MaskedHessian(net, {"fc.weight": keep}, split)
    v = start(clean.keep.numel())
    assert torch.equal(clean(v), dirty(v))  # the operator is evaluated at w = P w


def test_analyse_reports_a_seeded_subset_converged_eigenvalues_and_the_exact_trace():
    net, split = tiny_problem()
    cfg = HessianConfig(top_k=3, subset_fraction=0.5, batch_size=8, max_hvps=51, tol=1e-9, trace_samples=4,
                        density_probes=2, density_steps=10, seed=3)
    result = analyse(net, {}, split, cfg)
    subset = training_subset(split, 0.5, 3)
    assert result.subset_size == len(subset) == 20
    assert torch.equal(subset.x, training_subset(split, 0.5, 3).x)  # fixed by the seed
    h = full_hessian(net, subset)
    exact = torch.linalg.eigvalsh(h).flip(0)
    assert result.eigen.converged
    assert torch.allclose(result.eigen.values, exact[:3], rtol=1e-4)
    # Deflated by the Lanczos basis, Hutchinson is unbiased; its error is within a few standard errors.
    assert abs(result.trace.value - float(torch.trace(h))) <= 4 * result.trace.stderr + 1e-8
    assert len(result.density) == 2 and all(len(n) == 10 for n, _ in result.density)
    assert result.hvps == result.eigen.hvps + 4 + 2 * 10
    assert result.log_volumes["ellipsoid"] == pytest.approx(-0.5 * float(exact[:3].log().sum()), rel=1e-6)


def test_config_rejects_values_that_cannot_work():
    with pytest.raises(ValueError, match="max_hvps"):
        HessianConfig(top_k=10, max_hvps=10).validate()
    with pytest.raises(ValueError, match="subset_fraction"):
        HessianConfig(subset_fraction=0.0).validate()


def test_the_hessian_options_are_the_fields_of_its_config_everywhere():
    """``HessianConfig`` is the one list of the analysis's options: the CLI has one flag per field with the
    field's default, and every option the workflow schema allows is a field whose flag is its name."""
    import dataclasses

    import yaml

    from ticketbench.analysis import HessianConfig
    from ticketbench.analysis.commands import HESSIAN_FLAG_NAMES
    from ticketbench.cli import build_parser

    from conftest import REPO

    args = build_parser().parse_args(["hessian", "job", "-o", "h.csv"])
    fields = {f.name for f in dataclasses.fields(HessianConfig)}
    assert HessianConfig(**{name: getattr(args, name) for name in fields}) == HessianConfig()
    changed = build_parser().parse_args(["hessian", "job", "-o", "h.csv", "--top-k", "3", "--hessian-seed", "7",
                                         "--volume", "laplace"])
    assert (changed.top_k, changed.seed, changed.volume) == (3, 7, "laplace")
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())

    def hessian_block(node):  # the experiments' `hessian:` properties, wherever the schema nests them
        if isinstance(node, dict):
            if isinstance(node.get("hessian"), dict) and "properties" in node["hessian"]:
                return node["hessian"]["properties"]
            return next((b for b in map(hessian_block, node.values()) if b), None)
        return None

    hessian = hessian_block(schema)
    options = set(hessian) - {"branches", "levels"}
    assert options and options <= fields and not options & set(HESSIAN_FLAG_NAMES)
