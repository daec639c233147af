"""The barrier of a path: the one formula of the LMC instability and of successive-level connectivity.

Along a linear path between two networks, the **barrier** of a metric is its maximum along the path
minus the mean of its two endpoint values (Frankle et al. 2020, Sec. 2). The analyses that compute paths
(``interpolation``, which needs torch) and the report that reads them (which must not) both use it from
here, so the definition is written once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

STABLE_PP = 2.0
"""LMC Sec. 3: a network is stable to SGD noise when the test-error barrier between its copies is below
2 percentage points (the claims' default threshold and the line the instability figure draws)."""
METRICS = ("train_loss", "train_error", "test_loss", "test_error")
"""The metrics evaluated at every point of a path (``interpolation.path``)."""


def barrier(values: Iterable[float]) -> float:
    """max along the path - mean of the two endpoints (>= 0, since the endpoints are on the path)."""
    v = list(values)
    if len(v) < 2:
        raise ValueError("a barrier needs a path with both endpoints")
    return max(v) - (v[0] + v[-1]) / 2


def barriers(paths: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per path (the groups of ``by``): the barrier of each metric, ``<metric>_barrier``, and
    the endpoint values ``<metric>_a`` / ``<metric>_b``. Rows of a path must be ordered by alpha."""
    rows = []
    for key, g in paths.sort_values([*by, "alpha"]).groupby(by, sort=True, dropna=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for m in METRICS:
            v = g[m].tolist()
            row[f"{m}_barrier"] = barrier(v)
            row[f"{m}_a"], row[f"{m}_b"] = v[0], v[-1]
        rows.append(row)
    return pd.DataFrame(rows)


def spread(per_pair: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sample standard deviation, min, max and count of every barrier over the pairs in each group
    of ``by`` (LMC reports means over replicates with their spread)."""
    cols = [f"{m}_barrier" for m in METRICS]
    rows = []
    for key, g in per_pair.groupby(by, sort=True, dropna=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["pairs"] = len(g)
        for c in cols:
            row[f"{c}_mean"] = float(g[c].mean())
            row[f"{c}_std"] = float(g[c].std(ddof=1)) if len(g) > 1 else math.nan
            row[f"{c}_min"], row[f"{c}_max"] = float(g[c].min()), float(g[c].max())
        rows.append(row)
    return pd.DataFrame(rows)
