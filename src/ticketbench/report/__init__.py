"""Tidy tables, figures, the claims report and the audit, computed from stored runs only.

Submodules are imported on first use (PEP 562), so that ``ticketbench --help`` does not pay for
pandas and matplotlib: ``tables`` (tidy CSVs), ``figures`` (PNGs), ``claims`` (config/claims.yaml
checked against the tables), ``document`` (report.md/html, metrics.json), ``audit``, ``commands``."""

from importlib import import_module
from typing import Any

_EXPORTS = {"accuracy_vs_density": "figures", "collect": "tables"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
