"""Loss-landscape analyses of trained (sub)networks: Hessian spectrum and basin volume (``hessian``),
linear interpolation, barriers and instability (``interpolation``), and their CLI subcommands
(``commands``).

The analyses' typed configuration lives here, not in ``hessian.py``, because the CLI reads its defaults
to build ``--help`` and importing this package must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class HessianConfig:
    """What the Hessian analysis computes. Sources and reasons are on each field; each field's ``flag``
    metadata is the one-line help of its ``ticketbench hessian`` option, which is generated from the fields
    (``commands.hessian_flags``), so an option is added here once and reaches the CLI and the workflow."""

    top_k: int = field(default=10, metadata={"flag": "eigenvalues (10 = number of classes)"})
    """Number of top eigenvalues. 10 = the number of classes C of every dataset here (MNIST,
    Fashion-MNIST, CIFAR-10): the Hessian of a trained C-class cross-entropy network has about C
    outlier eigenvalues that separate from a bulk concentrated near zero (Sagun et al. 2017, "Empirical
    analysis of the Hessian of over-parametrized neural networks"; Papyan 2019/2020, the C outliers
    come from the class means of the Gauss-Newton term). A volume estimate needs eigenvalues that are
    well-determined and positive: the outliers are, the bulk is not (its eigenvalues are tiny, of both
    signs, and their logarithms would dominate any sum). Saleem et al.'s own k is not known
    (``sal-missing-hessian-method``). Also the k of the benchmark in issue 4 (top-10)."""
    subset_fraction: float = field(default=0.2, metadata={"flag": "of the training split"})
    """Fraction of the training split the loss is averaged over: 1/5, as Saleem et al. (published
    summary, ``sal-summary-hessian-data``). The subset is fixed by ``seed``."""
    batch_size: int = field(default=250, metadata={"flag": "examples per HVP chunk, speed only"})
    """Examples per HVP chunk. Does not change the result (eval-mode loss is a sum over examples), only
    speed and memory; 250 was the fastest per example for ResNet-20 on one CPU thread (bench/hessian.py)."""
    max_hvps: int = field(default=100, metadata={"flag": "Lanczos steps at most"})
    """Lanczos steps at most (one HVP each); as PyHessian's maxIter. Stored basis: max_hvps x dim floats."""
    tol: float = field(default=1e-3, metadata={"flag": "relative residual of every top-k pair"})
    """Stop when all top-k Ritz pairs have relative residual <= tol. 1e-3 is PyHessian's default
    tolerance, here applied to a residual, which bounds the eigenvalue error (see module docstring)."""
    seed: int = field(default=0, metadata={"flag": "subset, start vector and probes"})
    """Seeds the subset, the Lanczos start vector and the probes (separate derived streams)."""
    trace_samples: int = field(default=16, metadata={"flag": "Hutchinson probes, 0 = none"})
    """Hutchinson probes (one HVP each), deflated by the Lanczos basis; 0 = no trace. On the ResNet-20
    of bench/hessian.py, 8 deflated probes gave a standard error of 1 % of the trace, 8 plain ones 20 %;
    16 keeps it near 1 % for less than the HVPs of the eigenvalues."""
    density_probes: int = field(default=0, metadata={"flag": "SLQ probes, 0 = none"})
    """Stochastic Lanczos quadrature runs for a spectral density (0 = none; PyHessian's default is 1)."""
    density_steps: int = field(default=64, metadata={"flag": "Lanczos steps per SLQ probe"})
    """Lanczos steps per density probe (PyHessian's default is 100; fewer HVPs here, raise it for a
    finer density)."""
    volume: Literal["ellipsoid", "laplace"] = field(default="ellipsoid", metadata={"flag": "estimate reported as log_volume"})
    """The basin log-volume reported as ``log_volume`` (both are always reported under their own names)."""
    prior_variance: float = field(default=1.0, metadata={"flag": "Laplace prior sigma^2"})
    """sigma^2 of the isotropic Gaussian prior of the Laplace estimate (a convention, no paper source)."""

    def validate(self) -> "HessianConfig":
        if self.top_k < 1:
            raise ValueError("top_k: must be >= 1")
        if not 0.0 < self.subset_fraction <= 1.0:
            raise ValueError("subset_fraction: must be in (0, 1]")
        if self.batch_size < 1 or self.max_hvps < 1 or self.density_steps < 1:
            raise ValueError("batch_size, max_hvps and density_steps must be >= 1")
        if self.max_hvps <= self.top_k:
            raise ValueError(f"max_hvps: must exceed top_k ({self.top_k}) for Lanczos to resolve k eigenvalues")
        if self.tol <= 0 or self.prior_variance <= 0:
            raise ValueError("tol and prior_variance must be > 0")
        if self.trace_samples < 0 or self.density_probes < 0:
            raise ValueError("trace_samples and density_probes must be >= 0")
        if self.volume not in ("ellipsoid", "laplace"):
            raise ValueError(f"volume: {self.volume!r}; choose ellipsoid or laplace")
        return self
