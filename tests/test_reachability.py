"""Reachability: every check of config/claims.yaml can say "reproduced" when the paper's number comes back
and "not reproduced" when a number far from it does, at the scale config/config.yaml runs it.

For each check, the tables of the paper-scale workflow config are laid out as its job plan lays them out
(seeds, IMP levels and their densities, baselines, rewind-point grids, instability pairs: the helper
``synthetic_results.planned``), with the noise the suite's rule reads from them (the runs' test-set
sizes and eval intervals); then only the check's own quantity is planted, equal to the paper's value
(within / within_factor) or on the paper's side of its bound by a clear margin (>, <), and then far
outside. A check whose verdict is fixed by construction, not by the data, fails here.

A check that cannot pass says why in its ``unreachable`` key in config/claims.yaml, which the report
prints beside its verdict; :data:`EXCEPTIONS` pins that list, so a new exception is a visible decision
and a fixed one must leave it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import synthetic_results
from ticketbench.report import claims

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "config" / "claims.yaml"
PAPER = REPO / "config" / "config.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

EXCEPTIONS = {
    # claim id, check label: a phrase of the reason its `unreachable` gives in config/claims.yaml
    ("stab-appA", "paper protocol, winning ticket"): "stops at 20 levels (1.15 % of all weights)",
}

DENSE_ACCURACY = {"lenet_300_100": 98.0, "conv2": 65.0, "conv4": 75.0, "conv6": 79.0, "resnet20": 90.5,
                  "vgg19": 92.0, "vgg16": 93.0}
"""The test accuracy (%) every network gets before a check plants its quantity: about the papers' dense
networks (LTH Figs. 3, 5, 7; Stabilizing Fig. 2; LMC Table 1), so that the binomial error the rule
expects is that of the paper's scale."""
ENDPOINT_ERROR = 0.10
"""Test error at both ends of every interpolation path."""
SEED_SPREAD = 0.1
"""Standard deviation (pp) of the seeds' test accuracies around each planted value: about what the
papers' min-max bars show (Stabilizing Fig. 2: +/- 0.0-0.2 pp over three trials), a third of the binomial
error on 10,000 images. The seeds' offsets sum to zero at every level and branch, so every mean over
seeds is the planted value, while the rule's t x seed spread is exercised."""
MARGIN = {"pp": 5.0, "%": 5.0, "% test error": 5.0, "x": 0.5, "iterations": 2000.0}
"""How far beyond a one-sided bound (>, <) the paper's side is planted: clear of the rule's noise."""


@pytest.fixture(scope="module")
def paper_scale():
    return synthetic_results.planned(PAPER, SCHEMA)


def every_check():
    for claim in claims.load(CLAIMS):
        for i, chk in enumerate(claims._checks(claim)):
            yield pytest.param(claim, chk, id=f"{claim['id']}[{i}]")


@pytest.mark.parametrize("claim,chk", list(every_check()))
def test_every_check_is_reachable_at_the_paper_scale(claim, chk, paper_scale):
    exception = EXCEPTIONS.get((claim["id"], chk.get("label", "")))
    assert bool(exception) == bool(chk.get("unreachable")), \
        "a check is an exception exactly when config/claims.yaml says why (unreachable) and EXCEPTIONS lists it"
    if exception:
        assert exception in " ".join(chk["unreachable"].split())
    reproduced = verdicts(claim, chk, paper_scale, "paper")
    far = verdicts(claim, chk, paper_scale, "far")
    if exception:  # still unreachable, or the exception has outlived its reason
        assert claims.REPRODUCED not in reproduced.values(), "reachable now: drop it from EXCEPTIONS and claims.yaml"
        return
    assert reproduced and set(reproduced.values()) == {claims.REPRODUCED}, reproduced
    assert set(far.values()) == {claims.NOT_REPRODUCED}, far


def test_the_report_prints_why_an_exception_cannot_be_reproduced(paper_scale):
    from ticketbench.report import document

    (claim,) = [c for c in claims.load(CLAIMS) if c["id"] == "stab-appA"]
    found = claims.evaluate([claim], *tables_for(claim, paper_scale))
    (row,) = [r for r in found if r.unreachable]
    (table,) = [t for paper, t in document._by_paper(found, document._Sources(found))]
    assert any(row.unreachable in cell for cell in table["verdict"])


def verdicts(claim, chk, planned, side) -> dict[str, str]:
    """unit -> verdict of the check on tables where its quantity is the paper's (``side`` paper) or far
    from it (far). Units the plan gives no data for (e.g. a family experiment without an instability
    analysis) are left out; a check must be decided on at least one."""
    jobs, configs, analyses = tables_for({**claim, "check": [chk]}, planned)
    jobs, analyses = plant(chk, jobs, analyses, planned, side)
    jobs = spread_seeds(jobs)
    found = claims.evaluate([{**claim, "check": [chk]}], jobs, configs, analyses)
    return {r.unit: r.verdict for r in found if r.verdict in claims.DECIDED}


def tables_for(claim, planned):
    """The plan's tables of the experiments the claim's checks select, with neutral values."""
    suite = paper_suite()
    chosen = {e for chk in claims._checks(claim) for e, x in suite.items()
              if claims._suite_matches(x, chk.get("select") or {})}
    jobs = planned.jobs[planned.jobs["experiment"].isin(chosen)].copy()
    validated = jobs["experiment"].map(lambda e: bool(planned.configs[e]["data"]["validation_size"]))
    steps = jobs["experiment"].map(lambda e: float(early_stop_of(planned, e)))
    acc = jobs["network"].map(DENSE_ACCURACY) / 100
    jobs = jobs.assign(final_test_acc=acc, early_stop_test_acc=np.where(validated, acc, np.nan),
                       final_train_acc=0.95, early_stop_step=steps)
    inst = planned.instability[planned.instability["experiment"].isin(chosen)]
    succ = planned.successive[planned.successive["experiment"].isin(chosen)]
    analyses = {"instability": paths(inst, bump=0.0) if not inst.empty else None,
                "successive": paths(succ, bump=0.0) if not succ.empty else None, "hessian": None}
    return jobs, {e: planned.configs[e] for e in chosen}, analyses


@cache
def paper_suite() -> dict:
    """config/config.yaml's experiments as a check's selector sees them (``claims.paper_suite``)."""
    return claims.paper_suite(CLAIMS)


def early_stop_of(planned, experiment) -> int:
    """The dense network's early-stopping step: a fifth of training, on the eval grid."""
    s = planned.schedules[experiment]
    return max(s.eval_every, round(s.total / 5 / s.eval_every) * s.eval_every)


def spread_seeds(jobs) -> pd.DataFrame:
    """Each seed's accuracies moved by a fixed offset (:data:`SEED_SPREAD`), a different one at each
    level and branch, summing to zero over the seeds of each experiment."""
    out = []
    for _, g in jobs.groupby("experiment", sort=False):
        seeds = sorted(g["seed"].unique())
        n = len(seeds)
        pattern = np.arange(n) - (n - 1) / 2
        pattern = pattern / pattern.std(ddof=1) * SEED_SPREAD / 100 if n > 1 else pattern
        branch = g["branch"].map(lambda b: sum(map(ord, b)))
        offset = pattern[(g["seed"].map(seeds.index) + g["level"] + branch) % n]
        out.append(g.assign(final_test_acc=g["final_test_acc"] + offset,
                            early_stop_test_acc=g["early_stop_test_acc"] + offset))
    return pd.concat(out).loc[jobs.index]


def paths(pairs: pd.DataFrame, bump) -> pd.DataFrame:
    """Three-point interpolation paths (the ends and the middle) for each planned pair, the middle raised
    by ``bump`` pp of test error (a barrier of exactly ``bump``); the number of points does not move a
    barrier whose peak is a point."""
    out = []
    for alpha, raise_ in ((0.0, 0.0), (0.5, 1.0), (1.0, 0.0)):
        bumps = bump if np.isscalar(bump) else bump.to_numpy()
        out.append(pairs.assign(alpha=alpha, test_error=ENDPOINT_ERROR + raise_ * np.asarray(bumps) / 100,
                                test_loss=0.3, train_loss=0.3))
    return pd.concat(out, ignore_index=True)


# --------------------------------------------------------------------------------------------------
# Planting a check's quantity
# --------------------------------------------------------------------------------------------------


def target(chk, side) -> float:
    """The check's quantity on the paper's side (``paper``) or far from it (``far``), in its unit."""
    e, unit = chk["expect"], claims.unit_of(chk)
    if e["op"] == "within":
        if side == "paper":
            return e["value"]
        far = 10 * e["tol"] + 10
        return e["value"] - far if unit == "%" and e["value"] + far > 100 else e["value"] + far
    if e["op"] == "within_factor":
        return e["value"] if side == "paper" else e["value"] * e["factor"] ** 3
    sign = 1 if e["op"] in (">", ">=") else -1
    margin = MARGIN.get(unit, 5.0)
    return e["value"] + sign * margin if side == "paper" else e["value"] - sign * margin


def plant(chk, jobs, analyses, planned, side):
    """The check's quantity (:func:`target`) planted in the tables it reads, and nothing else moved."""
    measure = chk["measure"]
    metric = chk.get("metric", "auto")
    t = target(chk, side)
    if measure == "value":
        set_metric(jobs, rows(jobs, chk["of"]), metric, t)
    elif measure == "difference":
        headroom(jobs, metric, t)
        a = rows(jobs, chk["a"])
        set_metric(jobs, a, metric, base(metric, jobs) + t)
    elif measure == "ratio":
        set_metric(jobs, rows(jobs, chk["a"]), metric, base(metric, jobs) * t)
    elif measure == "versus_dense":
        if chk.get("as", "difference") == "difference":
            headroom(jobs, metric, t)
        of = rows(jobs, chk["of"]) & (jobs["level"] >= 1)
        set_metric(jobs, of, metric, against(chk.get("as", "difference"), base(metric, jobs), t))
    elif measure == "best":
        plant_best(chk, jobs, metric, t)
    elif measure == "last_density":
        plant_last_density(chk, jobs, metric, side, planned)
    elif measure in ("barrier", "barrier_trend", "onset"):
        analyses = {**analyses, "instability": plant_barriers(chk, analyses["instability"], t)}
    elif measure == "successive_iff_matching":  # every level matching, clear of one network's binomial range
        imp = (jobs["branch"] == "imp") & (jobs["level"] >= 1)  # (about +/- 0.8 pp on 10,000 images at 90 %)
        set_metric(jobs, imp, metric, base(metric, jobs) + chk.get("matching", 0.2) + 2.0)
        succ = analyses["successive"]
        pairs = succ[succ["alpha"] == 0].drop(columns=["alpha", "test_error", "test_loss", "train_loss"])
        analyses = {**analyses, "successive": paths(pairs, bump=0.0 if side == "paper" else 10.0)}
    else:
        raise AssertionError(f"no planting for measure {measure}")
    return jobs, analyses


def rows(jobs, spec) -> pd.Series:
    """The jobs of an operand ``{branch, rewind}``; ``min`` / ``max`` are per group, as a unit reads them."""
    mask = jobs["branch"] == spec["branch"]
    k = spec.get("rewind")
    if k in ("min", "max"):
        mask &= jobs["rewind_step"] == jobs.groupby("group")["rewind_step"].transform(k)
    elif k is not None:
        mask &= jobs["rewind_step"] == float(k)
    return mask


def base(metric, jobs) -> pd.Series:
    """Every job's neutral value of the metric, in the check's unit (accuracies in %)."""
    column = {"early_stop_step": "early_stop_step", "final_train_acc": "final_train_acc"}.get(metric, "final_test_acc")
    return jobs[column].astype(float) * (1 if metric == "early_stop_step" else 100)


def headroom(jobs, metric, top) -> None:
    """Lower the neutral accuracies where a planted ``top`` pp above them would pass 100 %."""
    if metric != "early_stop_step" and top > 0:
        set_metric(jobs, jobs.index == jobs.index, metric, np.minimum(base(metric, jobs), 99.0 - top))


def against(how, x0, t):
    """The value x that gives ``t`` against the dense net's ``x0``, ``as`` how."""
    return {"difference": lambda: x0 + t, "ratio": lambda: x0 * t, "speedup": lambda: x0 / t,
            "reduction": lambda: x0 * (1 - t / 100), "value": lambda: x0 * 0 + t}[how]()


def set_metric(jobs, mask, metric, value) -> None:
    """Set a metric (in the check's unit; ``value`` a number or one per job) on the masked jobs; an
    accuracy is set both at the end and at early stop, so that ``auto`` reads it whichever it picks."""
    mask = pd.Series(np.asarray(mask, dtype=bool), index=jobs.index)
    value = pd.Series(value, index=jobs.index, dtype=float)
    if metric == "early_stop_step":
        jobs.loc[mask, "early_stop_step"] = value[mask]
    elif metric == "final_train_acc":
        jobs.loc[mask, "final_train_acc"] = value[mask] / 100
    else:
        jobs.loc[mask, "final_test_acc"] = value[mask] / 100
        stopped = mask & jobs["early_stop_test_acc"].notna()
        jobs.loc[stopped, "early_stop_test_acc"] = value[stopped] / 100


def plant_best(chk, jobs, metric, t) -> None:
    """One level of the operand's curve (the middle one) at ``t`` against the dense net, every other
    level on the far side of it by a clear step, so that the extreme of the mean curve is ``t``."""
    how = chk.get("as", "difference")
    of = rows(jobs, chk["of"]) & (jobs["level"] >= 1)
    step = MARGIN[claims.unit_of(chk)] if how != "speedup" else 0.5 * t
    other = t + step if chk.get("pick") == "min" else t - step
    if how == "difference":
        headroom(jobs, metric, max(t, other))
    middle = of & (jobs["level"] == int(jobs.loc[of, "level"].median()))
    x0 = base(metric, jobs)
    set_metric(jobs, of, metric, against(how, x0, other))
    set_metric(jobs, middle, metric, against(how, x0, t))


def plant_last_density(chk, jobs, metric, side, planned) -> None:
    """The condition holds (by a clear margin) at every level of the claim's range down to the paper's
    density and fails below it: for within / within_factor the paper's value; for a bound (<=) a density
    well beyond it. Levels denser than the claim's range (``from_density``) fail, as the paper's range
    allows."""
    e = chk["expect"]
    if e["op"] in ("within", "within_factor"):
        down_to = e["value"] if side == "paper" else (4 * e["value"] if 4 * e["value"] < 100 else e["value"] / 4)
    else:
        down_to = e["value"] / 1.6 if side == "paper" else 3 * e["value"]
    cond = chk.get("cond") or {"op": ">=", "offset": 0.0}
    up = cond["op"] in (">", ">=")
    of = rows(jobs, chk["of"]) & (jobs["level"] >= 1)
    density = 100 * jobs[claims.DENSITY_COLUMNS[chk.get("density", "prunable")]]
    holds = (density >= down_to * (1 - 1e-9)) & (density <= 100 * chk.get("from_density", 1.0) * claims.DENSITY_MATCH)
    # a clear step either side of the dense net: 3 pp of accuracy, or ten eval intervals of early stopping
    step = 3.0 if metric != "early_stop_step" else 10 * jobs["experiment"].map(lambda e: planned.schedules[e].eval_every)
    shift = np.where(holds == up, 1.0, -1.0) * step
    headroom(jobs, metric, 3.0 + cond.get("offset", 0.0))
    set_metric(jobs, of, metric, base(metric, jobs) + cond.get("offset", 0.0) + shift)


def plant_barriers(chk, inst, t) -> pd.DataFrame:
    """Barriers of the copies the check reads: ``t`` everywhere (barrier, max_error), the trend ``t``
    between the smallest and the largest k, or stable (0 pp) from the onset ``t`` on and unstable
    (20 pp) before it."""
    pairs = inst[inst["alpha"] == 0].drop(columns=["alpha", "test_error", "test_loss", "train_loss"]).copy()
    copied = chk["of"]["branch"] if isinstance(chk.get("of"), dict) else "copy"
    mine = pairs["branch"] == copied
    bump = pd.Series(0.0, index=pairs.index)
    if chk["measure"] == "barrier" and chk.get("of") == "max_error":
        bump[mine] = 100 * (t / 100 - ENDPOINT_ERROR)
    elif chk["measure"] == "barrier":
        bump[mine] = max(t, 0.0)
    elif chk["measure"] == "barrier_trend":
        first = pairs["rewind_step"] == pairs.groupby("group")["rewind_step"].transform("min")
        bump[mine & first], bump[mine & ~first] = max(t, 0.0), max(-t, 0.0)
    else:  # onset: the first k at or after t is stable
        bump[mine & (pairs["rewind_step"] < t)] = 20.0
    return paths(pairs, bump)
