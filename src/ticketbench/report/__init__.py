"""Tidy tables, figures and the reported-numbers report, computed from stored runs only."""

from .figures import accuracy_vs_density
from .tables import collect

__all__ = ["accuracy_vs_density", "collect"]
