"""Hessian spectrum, trace and basin volume of the training loss of a (pruned) network.

What is computed, and why this way:

- **The operator** is the Hessian of the *masked parameterization*: the training loss as a function of
  the unpruned coordinates only. With P the 0/1 diagonal projection onto the kept coordinates of all
  trainable parameters (biases and BN parameters, which IMP never prunes, are always kept), the operator
  is ``v -> P H(w) P v`` at the point ``w = P w``: every vector is masked before and after the
  Hessian-vector product (HVP), so a pruned coordinate contributes nothing and the spectrum is the
  subnetwork's (its dimension is the number of kept parameters, ``MaskedHessian.dim``).
- **The loss** is the mean cross-entropy over a fixed, seeded subset of the training split (default 1/5,
  the fraction Saleem et al. 2024 use according to a published summary; their own text could not be
  retrieved, see ``reported_claims.yaml: sal-summary-hessian-data``), on the un-augmented training
  images, with the network in **eval mode**: BN normalizes with its running statistics, so the loss is
  a sum over examples and mini-batch HVPs add up exactly to the subset's HVP (in train mode every
  mini-batch would be a different function). PyHessian (Yao et al. 2020) also puts the model in eval mode.
- **HVPs** are exact (no Gauss-Newton approximation), forward-over-reverse by default (a JVP of the
  gradient, ``torch.func``), or double backward; ``bench/hessian.py`` measures both against a gradient.
- **Top-k eigenpairs**: Lanczos with full reorthogonalization (Golub & Van Loan, Matrix Computations,
  4th ed., Ch. 10), stopped when every one of the top k Ritz pairs has a relative residual
  ``||A x - theta x|| / |theta|`` below ``tol``; the residual is reported per eigenpair. For a symmetric
  operator a residual r puts an exact eigenvalue within r of the Ritz value (and within r^2/gap for a
  well-separated one; Parlett, The Symmetric Eigenvalue Problem, 1998, Ch. 4), so it is a certificate,
  unlike the change-between-iterations test of power iteration (PyHessian's ``tol``).
- **Trace**: Hutchinson's estimator with Rademacher probes (Hutchinson 1990; as PyHessian), deflated by
  the Lanczos basis Q when one is given: tr(A) = tr(Q^T A Q) + E[z^T (I-QQ^T) A (I-QQ^T) z], where
  Q^T A Q is the Lanczos tridiagonal T (no extra HVP), so the probes only see the part of the spectrum
  without the large outliers (the idea of Hutch++, Meyer et al. 2021). Unbiased either way.
- **Spectral density** (optional): stochastic Lanczos quadrature (Lin, Saad & Yang 2016; Ghorbani,
  Krishnan & Xiao 2019): per probe, the Ritz values of an m-step Lanczos run from a random unit vector
  and the squared first components of their eigenvectors, as nodes and weights of a quadrature.
- **Basin log-volume**: see ``log_volume_ellipsoid`` and ``log_volume_laplace``; Saleem et al.'s exact
  definition could not be retrieved (``sal-missing-volume-def``), so both standard estimates are offered
  and ``HessianConfig.volume`` names the one reported as ``log_volume``.

The Lanczos coefficients and the small tridiagonal eigenproblems are float64 on the CPU; vectors, the
basis and the HVPs are in the model's dtype and on its device (float32 for trained networks: HVP rounding,
~1e-7 relative, is the floor of the residuals; that is IEEE float32, the runtime's default precision: TF32
on a GPU would raise the floor to ~1e-3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Split, stream_seed
from ..masks import Mask, round_half_up
from ..models import memory_format
from . import HessianConfig

# Stream ids for derived seeds: the data subset, the Lanczos start vector, trace and density probes.
_SUBSET, _START, _TRACE, _DENSITY = 41, 42, 43, 44

Matvec = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------------
# The operator: HVPs of the masked training loss
# --------------------------------------------------------------------------------------------------


def training_subset(split: Split, fraction: float, seed: int) -> Split:
    """A fixed, seeded subset of ``round(fraction * n)`` examples (kept in dataset order)."""
    n = max(1, round_half_up(fraction * len(split)))
    g = torch.Generator().manual_seed(stream_seed(_SUBSET, seed))
    idx = torch.randperm(len(split), generator=g)[:n].sort().values.to(split.x.device)
    return Split(split.x[idx], split.y[idx])


class MaskedHessian:
    """``v -> P H P v`` for the mean cross-entropy of ``model`` (eval mode) over ``split``.

    Vectors are flat, over all trainable parameters in ``named_parameters`` order, in the model's
    dtype and device. ``calls`` counts HVPs (each is one pass over ``split``)."""

    def __init__(self, model: nn.Module, mask: Mask, split: Split, batch_size: int = 250,
                 method: Literal["forward_over_reverse", "double_backward"] = "forward_over_reverse",
                 channels_last: bool | None = None):
        if method not in ("forward_over_reverse", "double_backward"):
            raise ValueError(f"method: {method!r}")
        self.model = model.eval()
        self.batch_size, self.method = batch_size, method
        if channels_last is None:
            channels_last = memory_format(model) == torch.channels_last
        # Layout only (the math is unchanged): convolutions and their derivatives run faster on
        # channels_last inputs on CPU; bench/hessian.py measures it. One copy of the subset, made once.
        self.split = Split(split.x.contiguous(memory_format=torch.channels_last), split.y) if channels_last else split
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        unknown = sorted(set(mask) - {n for n, _ in named})
        if unknown:
            raise ValueError(f"mask names {unknown[0]!r}, which the model does not train")
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        p0 = named[0][1]
        self.dtype, self.device = p0.dtype, p0.device
        self.keep = torch.cat([mask[n].flatten().to(self.device, self.dtype) if n in mask
                               else torch.ones(p.numel(), device=self.device, dtype=self.dtype) for n, p in named])
        # The point of the masked parameterization: w = P w (trained weights already are; this makes it so).
        flat = self.flatten([p.detach() for _, p in named]) * self.keep
        self.point = {n: t.clone() for n, t in self.unflatten(flat).items()}
        self.buffers = dict(model.named_buffers())
        self.dim = int(self.keep.sum())
        self.calls = 0

    def flatten(self, tensors: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = s.numel()
            out[n] = v[i:i + k].view(s)
            i += k
        return out

    def project(self, v: Tensor) -> Tensor:
        return v * self.keep

    def __call__(self, v: Tensor) -> Tensor:
        tangent = self.unflatten(self.project(v.to(self.device, self.dtype)))
        total = torch.zeros_like(self.keep)
        for i in range(0, len(self.split), self.batch_size):
            x, y = self.split.x[i:i + self.batch_size], self.split.y[i:i + self.batch_size]
            total += self.flatten(self._hvp_sum(tangent, x, y))
        self.calls += 1
        return self.project(total / len(self.split))

    def _loss_sum(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        # Summed, not averaged, so that chunks of any size add up to the subset's loss.
        out = torch.func.functional_call(self.model, (params, self.buffers), (x,))
        return F.cross_entropy(out, y, reduction="sum")

    def _hvp_sum(self, tangent: dict[str, Tensor], x: Tensor, y: Tensor) -> list[Tensor]:
        if self.method == "forward_over_reverse":
            # Directional derivative of the gradient: one forward + one backward pass, each carrying a tangent.
            grad = torch.func.grad(self._loss_sum)
            _, hv = torch.func.jvp(lambda p: grad(p, x, y), (self.point,), (tangent,))
            return [hv[n] for n in self.names]
        params = {n: p.detach().requires_grad_(True) for n, p in self.point.items()}
        g = torch.autograd.grad(self._loss_sum(params, x, y), list(params.values()), create_graph=True)
        return list(torch.autograd.grad(g, list(params.values()), grad_outputs=[tangent[n] for n in self.names]))

    def random(self, generator: torch.Generator, kind: Literal["gaussian", "rademacher"] = "gaussian") -> Tensor:
        """A random vector in the kept subspace (drawn on the CPU, so it does not depend on the device)."""
        n = self.keep.numel()
        z = torch.randn(n, generator=generator, dtype=torch.float64) if kind == "gaussian" else \
            torch.randint(0, 2, (n,), generator=generator).to(torch.float64).mul_(2).sub_(1)
        return self.project(z.to(self.device, self.dtype))


# --------------------------------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------------------------------


@dataclass
class Lanczos:
    """The state of a Lanczos run: A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T, with T_m tridiagonal(alpha, beta)."""

    alpha: list[float] = field(default_factory=list)
    beta: list[float] = field(default_factory=list)
    """beta[j] = ||residual|| after step j (the off-diagonal below alpha[j]; the last one is beta_m)."""
    basis: Tensor | None = None
    """Rows q_1..q_m (orthonormal to working precision), stored as (max steps, dim)."""

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def tridiagonal(self) -> Tensor:
        m = self.steps
        t = torch.diag(torch.tensor(self.alpha, dtype=torch.float64))
        if m > 1:
            off = torch.tensor(self.beta[:m - 1], dtype=torch.float64)
            t += torch.diag(off, 1) + torch.diag(off, -1)
        return t

    def exhausted(self, dtype: torch.dtype) -> bool:
        """beta_m is rounding noise relative to ||T|| (bounded by max_j |alpha_j| + beta_j): the Krylov
        space is invariant, its Ritz values are exact eigenvalues, and a next vector would be noise."""
        scale = max(abs(a) + b for a, b in zip(self.alpha, self.beta))
        return self.beta[-1] <= 1e3 * torch.finfo(dtype).eps * scale

    def ritz(self) -> tuple[Tensor, Tensor, Tensor]:
        """Ritz values (descending), their residual norms |beta_m s_{m,i}|, and T's eigenvectors S."""
        theta, s = torch.linalg.eigh(self.tridiagonal())
        theta, s = theta.flip(0), s.flip(1)
        return theta, abs(self.beta[-1]) * s[-1].abs(), s


def lanczos(matvec: Matvec, start: Tensor, steps: int,
            stop: Callable[[Lanczos], bool] | None = None) -> Lanczos:
    """Lanczos with full reorthogonalization (classical Gram-Schmidt, applied twice: Kahan's "twice is
    enough"; Giraud, Langou & Rozloznik 2005), from ``start``, for at most ``steps`` matvecs or until ``stop(state)``.

    Full reorthogonalization keeps the basis orthonormal, so no spurious copies ("ghosts") of converged
    eigenvalues appear and the residual formula |beta_m s_{m,i}| holds. It also ends the run when the
    Krylov space is invariant (beta ~ 0): then the Ritz values are exact eigenvalues.
    """
    q = start / start.norm()
    basis = torch.zeros(steps, q.numel(), dtype=q.dtype, device=q.device)
    state = Lanczos(basis=basis)
    for j in range(steps):
        basis[j] = q
        w = matvec(q)
        a = float(torch.dot(q.double(), w.double()))
        w = w - a * q - (state.beta[-1] * basis[j - 1] if j else 0)
        for _ in range(2):
            w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        b = float(w.double().norm())
        state.alpha.append(a)
        state.beta.append(b)
        if state.exhausted(q.dtype) or (stop is not None and stop(state)):
            break
        q = w / b
    state.basis = basis[:state.steps]
    return state


@dataclass
class Eigenpairs:
    values: Tensor
    """Top-k Ritz values, descending (float64)."""
    residuals: Tensor
    """||A x_i - theta_i x_i|| per eigenpair (absolute)."""
    vectors: Tensor
    """Ritz vectors (k, dim), unit norm."""
    hvps: int
    converged: bool
    lanczos: Lanczos

    @property
    def relative_residuals(self) -> Tensor:
        return self.residuals / self.values.abs().clamp_min(torch.finfo(torch.float64).tiny)


def top_eigenpairs(matvec: Matvec, start: Tensor, k: int, max_steps: int = 100, tol: float = 1e-3) -> Eigenpairs:
    """The k algebraically largest eigenvalues of the symmetric operator ``matvec`` by Lanczos, stopping
    once all k relative residuals are <= tol (or the Krylov space is exhausted, or after max_steps).

    Largest *algebraic* (not magnitude, as power iteration finds): a volume estimate needs the positive
    curvature directions; near a minimum the two coincide."""

    def done(state: Lanczos) -> bool:
        if state.steps < k:
            return False
        theta, res, _ = state.ritz()
        return bool((res[:k] <= tol * theta[:k].abs()).all())

    state = lanczos(matvec, start, max_steps, done)
    theta, res, s = state.ritz()
    k_found = min(k, state.steps)
    # S comes from the float64 eigenproblem on the CPU; the basis lives where the model does.
    vectors = s[:, :k_found].T.to(state.basis.device, state.basis.dtype) @ state.basis
    converged = k_found == k and (state.exhausted(start.dtype) or bool((res[:k] <= tol * theta[:k].abs()).all()))
    return Eigenpairs(values=theta[:k_found], residuals=res[:k_found], vectors=vectors, hvps=state.steps,
                      converged=converged, lanczos=state)


# --------------------------------------------------------------------------------------------------
# Trace and density
# --------------------------------------------------------------------------------------------------


@dataclass
class Trace:
    value: float
    stderr: float
    """Standard error of the Hutchinson mean (0 when the deflation basis spans the whole space)."""
    samples: int


def hutchinson_trace(matvec: Matvec, probe: Callable[[], Tensor], samples: int,
                     basis: Tensor | None = None, basis_trace: float = 0.0) -> Trace:
    """tr(A) ~ basis_trace + mean_i z_i^T (I-QQ^T) A (I-QQ^T) z_i, with Rademacher probes z_i from ``probe``.

    ``basis`` (rows orthonormal, e.g. the Lanczos basis) and ``basis_trace`` = tr(Q^T A Q) deflate the
    estimator; without a basis this is plain Hutchinson (E[z z^T] = I for Rademacher z)."""
    vals = []
    for _ in range(samples):
        z = probe()
        if basis is not None:
            z = z - basis.T @ (basis @ z)
        vals.append(float(torch.dot(z.double(), matvec(z).double())))
    t = torch.tensor(vals, dtype=torch.float64)
    stderr = float(t.std() / math.sqrt(samples)) if samples > 1 else math.nan
    return Trace(value=basis_trace + float(t.mean()) if samples else basis_trace, stderr=stderr, samples=samples)


def slq_density(matvec: Matvec, probe: Callable[[], Tensor], probes: int, steps: int) -> list[tuple[Tensor, Tensor]]:
    """Stochastic Lanczos quadrature: per probe, (nodes, weights) with weights summing to 1. The
    spectral density of the operator (normalized to unit mass over its dimension) is approximated by
    the average over probes of sum_j w_j delta(x - node_j); figures smooth it with a Gaussian kernel."""
    out = []
    for _ in range(probes):
        state = lanczos(matvec, probe(), steps)
        theta, s = torch.linalg.eigh(state.tridiagonal())
        out.append((theta, s[0] ** 2))
    return out


# --------------------------------------------------------------------------------------------------
# Basin volume
# --------------------------------------------------------------------------------------------------


def log_volume_ellipsoid(eigenvalues: Tensor) -> float:
    """-1/2 sum_i log lambda_i over the given (top-k) eigenvalues; NaN if any is <= 0.

    Model: near a minimum w*, L(w*+d) ~ L(w*) + d^T H d / 2, so the sublevel set {L <= L(w*) + eps}
    restricted to the span of the top-k eigenvectors is an ellipsoid with semi-axes sqrt(2 eps/lambda_i),
    of volume V_k(unit ball) (2 eps)^(k/2) prod_i lambda_i^(-1/2). With k and eps fixed across the
    networks compared (every IMP level), the constants cancel and -1/2 sum log lambda_i is the
    comparable part. (The "-sum log lambda_i" of the issue text is twice this, the log-volume of the
    ellipsoid's square; the ranking is the same.) Assumptions: the quadratic model holds out to eps
    (it does not in flat directions, which is why only top-k positive outliers enter), and volumes are
    compared in subspaces of the same dimension k, not of the subnetwork's full dimension."""
    if eigenvalues.numel() == 0 or bool((eigenvalues <= 0).any()):
        return math.nan
    return float(-0.5 * eigenvalues.double().log().sum())


def log_volume_laplace(eigenvalues: Tensor, n_examples: int, prior_variance: float) -> float:
    """-1/2 sum_i log(1 + n sigma^2 lambda_i): the log of the posterior-to-prior volume ratio in the
    Laplace approximation (MacKay 1992's Occam factor), for a likelihood exp(-n L(w)) (L the mean loss
    over n training examples) and an isotropic Gaussian prior N(0, sigma^2 I) on the kept coordinates.
    The posterior precision is n H + I/sigma^2, so the ratio of (Gaussian) volumes is
    det(I + n sigma^2 H)^(-1/2). Directions with n sigma^2 lambda << 1 contribute ~0, which is why the
    top-k eigenvalues suffice when the bulk is small; negative eigenvalues (not a minimum in that
    direction) are clipped to 0, i.e. treated as flat. Assumptions: w* is a local minimum and the
    quadratic model holds within the posterior's width."""
    lam = eigenvalues.double().clamp_min(0.0)
    return float(-0.5 * torch.log1p(n_examples * prior_variance * lam).sum())


# --------------------------------------------------------------------------------------------------
# The whole analysis of one network
# --------------------------------------------------------------------------------------------------


@dataclass
class HessianAnalysis:
    eigen: Eigenpairs
    trace: Trace | None
    density: list[tuple[Tensor, Tensor]]
    log_volumes: dict[str, float]
    dim: int
    subset_size: int
    hvps: int


def analyse(model: nn.Module, mask: Mask, train: Split, cfg: HessianConfig, n_examples: int | None = None,
            method: Literal["forward_over_reverse", "double_backward"] = "forward_over_reverse") -> HessianAnalysis:
    """Top-k eigenpairs, trace, optional density and log-volumes of the masked training-loss Hessian.

    ``train`` is the (un-augmented) training split; the subset is drawn from it. ``n_examples`` is the
    n of the Laplace volume (default: the size of ``train``)."""
    cfg.validate()
    subset = training_subset(train, cfg.subset_fraction, cfg.seed)
    op = MaskedHessian(model, mask, subset, cfg.batch_size, method)
    g = torch.Generator().manual_seed(stream_seed(_START, cfg.seed))
    eigen = top_eigenpairs(op, op.random(g), cfg.top_k, min(cfg.max_hvps, op.dim), cfg.tol)
    trace = None
    if cfg.trace_samples:
        gt = torch.Generator().manual_seed(stream_seed(_TRACE, cfg.seed))
        lz = eigen.lanczos
        trace = hutchinson_trace(op, lambda: op.random(gt, "rademacher"), cfg.trace_samples,
                                 basis=lz.basis, basis_trace=sum(lz.alpha))
    gd = torch.Generator().manual_seed(stream_seed(_DENSITY, cfg.seed))
    density = slq_density(op, lambda: op.random(gd), cfg.density_probes, min(cfg.density_steps, op.dim))
    vols = {"ellipsoid": log_volume_ellipsoid(eigen.values),
            "laplace": log_volume_laplace(eigen.values, n_examples or len(train), cfg.prior_variance)}
    return HessianAnalysis(eigen=eigen, trace=trace, density=density, log_volumes=vols, dim=op.dim,
                           subset_size=len(subset), hvps=op.calls)
