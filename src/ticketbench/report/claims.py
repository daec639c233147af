"""The papers' claims (``config/claims.yaml``) checked against our tidy tables.

A claim's ``check`` says how its quantity is computed from our tables; nothing here knows a paper's
number. Every check is evaluated per *unit*: the runs of one experiment, or of a group of experiments
that differ only in the rewind point k (the Stabilizing/LMC sweeps). Within a unit, the quantity is
computed once per seed, and the claim's expectation is tested on the mean over seeds; the report
shows mean, min and max over seeds and n. The verdict is

- ``reproduced`` / ``not reproduced``: the unit's data exists and the expectation holds / fails;
- ``not run at this scale``: no run matches the claim's protocol, the levels do not reach the claim's
  density, or the analysis it needs was not run (the reason is given);
- ``not checked``: the suite does not measure this quantity at any scale (e.g. ImageNet, L2 distances).

Check vocabulary (config/claims.yaml documents the fields once more for its readers):

- ``select``: ``family``, ``branches`` the experiment must have trained, and/or ``protocol`` (names of
  ``protocols``: dotted run-config keys that must equal the paper's values);
- ``at``: the level compared: ``{level: L}``, ``{density: d}`` (the IMP level nearest to d, within a
  factor ``DENSITY_MATCH``) or ``sparsest`` (the highest pruned level every operand reached in every seed);
- operands ``of`` / ``a`` / ``b``: ``{branch, rewind}``, a branch's ``metric`` (a summary.json column;
  ``auto`` = test accuracy at early stop where there is a validation split, else at the end), of the
  runs rewound to ``rewind`` (``min``, ``max`` or a step k) where the unit sweeps k;
- measures: ``value``, ``difference`` (a - b), ``ratio`` (a / b), ``versus_dense`` (of against the
  dense net), ``best`` (the best or worst pruned level against the dense net), ``last_density`` (the
  density down to which every level keeps a condition against the dense net), ``barrier``
  (instability), ``barrier_trend`` (barrier at the smallest k minus at the largest k), ``onset``
  (smallest k with a barrier below a threshold), ``successive_iff_matching`` (Paul et al. 2023);
- ``expect``: ``{op: '>'|'>='|'<'|'<=', value}``, ``{op: within, value, tol}`` or
  ``{op: within_factor, value, factor}``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from . import tables

REPRODUCED, NOT_REPRODUCED, NOT_RUN, NOT_CHECKED = "reproduced", "not reproduced", "not run at this scale", "not checked"
INCONCLUSIVE = "inconclusive"
NO_EXPERIMENT = "no experiment in the suite"
"""No experiment of config/config.yaml has the claim's protocol, so no scale of the suite can test it (as
opposed to NOT_RUN: the suite has such an experiment and the results at hand do not)."""
DECIDED = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
"""The verdicts of a check that was computed on data (the others say why it was not)."""
NOISE_Z = 2.0
NOISE_RULE = ("A direction check on test accuracies (>, >=, <, <= on an accuracy in % or on a difference of two "
              "accuracies in pp) is decided only when its mean over seeds clears the threshold by more than "
              f"{NOISE_Z:g} x its noise, else it is inconclusive. Noise = max(seed spread, binomial error) of the "
              "mean of n values: seed spread = sample standard deviation / sqrt(n) (n >= 2), binomial error = "
              "100 sqrt(k p (1 - p) / N) / sqrt(n), with p the mean accuracy of the runs involved, N their test-set "
              "size, k = 2 for a difference of two accuracies and 1 for one accuracy.")
"""The noise floor of a verdict (issue "Verdicts a reviewer can trust"). The binomial term is how much one
network's accuracy on N test images moves by chance; it is what a single seed cannot tell apart from an
effect (the quick run's "+0.50 pp on 2,000 images, one seed" was +0.5 pp on one machine and -0.05 pp on
another). Quantitative checks (within, within_factor) and other measures are decided as before."""
DENSITY_MATCH = 1.12
"""A claim "at P_m = d" uses the IMP level whose density is within this factor of d (about half of one
20 % pruning step), else the claim is not run at this scale."""
PERCENT_METRICS = {"final_test_acc", "early_stop_test_acc", "final_train_acc"}
METRIC_UNITS = {"early_stop_step": "iterations", "final_train_loss": "nats", "final_test_loss": "nats"}
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
QUANTITATIVE, DIRECTION = "quantitative", "direction only"
KINDS = (QUANTITATIVE, DIRECTION)
"""A check either tests the paper's number (within a tolerance or a factor) or only the direction of the
effect (>, <); the report's headline counts the two apart, as a reviewer weighs them differently."""


class ClaimsError(ValueError):
    """config/claims.yaml is malformed; the message names the claim and the key."""


class NotRun(Exception):
    """The data a check needs is absent at this scale; the message says what is missing."""


@dataclass
class Result:
    """One claim evaluated on one unit (or on none)."""

    claim: dict[str, Any]
    unit: str
    verdict: str
    check: dict[str, Any] | None = None
    values: list[float] = field(default_factory=list)
    unit_label: str = ""
    detail: str = ""
    noise: float | None = None
    """The noise of the mean (:data:`NOISE_RULE`), in the check's unit, where the rule applies."""

    def summary(self) -> str:
        """mean (min..max, n) in the check's unit, or the reason it was not computed."""
        if not self.values:
            return self.detail
        v = np.asarray(self.values, dtype=float)
        fmt = _fmt(self.unit_label)
        spread = f" (min {fmt(v.min())}, max {fmt(v.max())}; n = {len(v)})" if len(v) > 1 else " (n = 1)"
        extra = f"; {self.detail}" if self.detail else ""
        noise = f"; noise ± {fmt(self.noise).lstrip('+')}" if self.noise is not None else ""
        return f"{fmt(v.mean())} {self.unit_label}{spread}{noise}{extra}"


def load(path: Path) -> list[dict[str, Any]]:
    """The claims file, validated: unknown measures and missing fields fail here, not in a report."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    protocols = raw.get("protocols") or {}
    claims = raw.get("claims")
    if not isinstance(claims, list):
        raise ClaimsError(f"{path}: 'claims' must be a list")
    seen = set()
    for c in claims:
        cid = c.get("id")
        for key in ("id", "paper", "source", "source_type", "quantity", "value", "condition"):
            if key not in c:
                raise ClaimsError(f"{path}: claim {cid}: missing '{key}'")
        if cid in seen:
            raise ClaimsError(f"{path}: claim {cid}: duplicate id")
        seen.add(cid)
        checks = c.get("check")
        if checks is None:
            if not c.get("not_checked"):
                raise ClaimsError(f"{path}: claim {cid}: give a 'check' or say why it is 'not_checked'")
            continue
        for chk in checks if isinstance(checks, list) else [checks]:
            if chk.get("measure") not in MEASURES:
                raise ClaimsError(f"{path}: claim {cid}: check.measure {chk.get('measure')!r} is not one of {', '.join(MEASURES)}")
            for proto in _names((chk.get("select") or {}).get("protocol")):
                if not isinstance(protocols.get(proto), dict) or not isinstance(protocols[proto].get("match"), dict):
                    raise ClaimsError(f"{path}: claim {cid}: unknown protocol {proto!r} (protocols.<name>.match)")
            if (chk.get("expect") or {}).get("op") not in (*OPS, "within", "within_factor"):
                raise ClaimsError(f"{path}: claim {cid}: check.expect.op must be one of >, >=, <, <=, within, within_factor")
    for c in claims:
        for chk in _checks(c):
            names = _names((chk.get("select") or {}).get("protocol"))
            if names:
                chk["select"] = {**chk["select"], "protocol": [protocols[n]["match"] for n in names], "protocol_name": " or ".join(names)}
    return claims


def _names(proto: Any) -> list[str]:
    return [] if proto is None else [proto] if isinstance(proto, str) else list(proto)


def evaluate(claims: list[dict[str, Any]], jobs: pd.DataFrame, configs: dict[str, dict[str, Any]],
             analyses: dict[str, pd.DataFrame | None]) -> list[Result]:
    """Every claim on every unit its selector matches (one NOT_RUN result if none matches).

    ``configs`` maps experiment id -> its run config (as stored in the run's config.yaml)."""
    out: list[Result] = []
    for claim in claims:
        checks = _checks(claim)
        if not checks:
            out.append(Result(claim, "", NOT_CHECKED, detail=claim.get("not_checked", "")))
            continue
        for chk in checks:
            label = chk.get("label", "")
            units = _units(chk, jobs, configs)
            if not units:
                out.append(Result(claim, label, NOT_RUN, chk, detail=_no_runs(chk.get("select") or {})))
                continue
            for name, unit in units:
                try:
                    values, detail = MEASURES[chk["measure"]](chk, unit, analyses)
                except NotRun as e:
                    out.append(Result(claim, _join(label, name), NOT_RUN, chk, detail=str(e)))
                    continue
                mean = float(np.mean(values))
                floor = _noise_floor(chk, unit, values, configs)
                if floor is not None and math.isfinite(mean) and abs(mean - chk["expect"]["value"]) <= NOISE_Z * floor:
                    verdict = INCONCLUSIVE
                else:
                    verdict = REPRODUCED if _expect(chk["expect"], mean) else NOT_REPRODUCED
                out.append(Result(claim, _join(label, name), verdict, chk, list(map(float, values)), unit_of(chk), detail,
                                  floor))
    return out


def noise(values: list[float], p: float, test_size: int, difference: bool) -> float:
    """The noise of the mean of ``values`` (in % or pp) by :data:`NOISE_RULE`: the larger of the seed
    spread and the binomial error of accuracies ``p`` measured on ``test_size`` examples."""
    n = len(values)
    binomial = 100 * math.sqrt((2 if difference else 1) * p * (1 - p) / test_size) / math.sqrt(n)
    spread = float(np.std(values, ddof=1)) / math.sqrt(n) if n >= 2 else 0.0
    return max(spread, binomial)


def _noise_floor(chk: dict[str, Any], unit: pd.DataFrame, values: list[float],
                 configs: dict[str, dict[str, Any]]) -> float | None:
    """:func:`noise` for a direction check on test accuracies (None where :data:`NOISE_RULE` does not apply)."""
    how = chk.get("as", "difference")
    difference = chk["measure"] in ("difference", "versus_dense", "best") and how == "difference"
    single = chk["measure"] == "value" or (chk["measure"] == "best" and how == "value")
    metric = _metric(chk, unit)
    if chk["expect"]["op"] not in OPS or not (difference or single) or metric not in ("final_test_acc", "early_stop_test_acc"):
        return None
    sizes = [tables.test_set_size(configs[e]) for e in unit["experiment"].unique() if "data" in configs.get(e, {})]
    p = float(unit[metric].mean())
    if not sizes or not values or not math.isfinite(p):
        return None
    return noise(values, p, min(sizes), difference)


def _no_runs(sel: dict[str, Any]) -> str:
    if sel.get("protocol"):
        return f"no run matches protocol '{sel['protocol_name']}'"
    what = " ".join(filter(None, [sel.get("family"), "experiment"]))
    has = f" with {' and '.join(sel['branches'])}" if sel.get("branches") else ""
    return f"no {what}{has} in these results"


def unit_of(chk: dict[str, Any]) -> str:
    """The unit a check's values are in (accuracies in %, their differences in percentage points)."""
    m, how = chk["measure"], chk.get("as", "difference")
    pct = chk.get("metric", "auto") == "auto" or chk.get("metric") in PERCENT_METRICS
    base = "%" if pct else METRIC_UNITS.get(chk.get("metric"), "")
    if m == "value" or (m == "best" and how == "value"):
        return base
    if m == "barrier" and chk.get("of") == "max_error":
        return "% test error"
    if m in ("difference", "versus_dense", "best") and how == "difference":
        return "pp" if pct else base
    if m in ("ratio", "versus_dense", "best") and how in ("ratio", "speedup", "difference"):
        return "x"
    if how == "reduction":
        return "%"
    return {"last_density": "% remaining", "barrier": "pp", "barrier_trend": "pp", "onset": "iterations",
            "successive_iff_matching": "% of levels"}[m]


def expectation(chk: dict[str, Any]) -> str:
    """The expectation in words, for the report."""
    e = chk["expect"]
    unit = unit_of(chk)
    if e["op"] == "within":
        return f"{e['value']:g} ± {e['tol']:g} {unit}"
    if e["op"] == "within_factor":
        return f"{e['value']:g} {unit} within a factor {e['factor']:g}"
    return f"{e['op']} {e['value']:g} {unit}"


def _checks(claim: dict[str, Any]) -> list[dict[str, Any]]:
    c = claim.get("check")
    return [] if c is None else (c if isinstance(c, list) else [c])


def _join(a: str, b: str) -> str:
    return f"{a}: {b}" if a and b else a or b


def kind_of(chk: dict[str, Any]) -> str:
    """:data:`QUANTITATIVE` when the check compares with the paper's value, else :data:`DIRECTION`."""
    return QUANTITATIVE if chk["expect"]["op"] in ("within", "within_factor") else DIRECTION


def _expect(e: dict[str, Any], x: float) -> bool:
    if not math.isfinite(x):
        return False
    if e["op"] == "within":
        return abs(x - e["value"]) <= e["tol"] + 1e-9
    if e["op"] == "within_factor":
        return x > 0 and abs(math.log(x / e["value"])) <= math.log(e["factor"]) + 1e-9
    return OPS[e["op"]](x, e["value"])


def _fmt(unit: str):
    if unit in ("iterations",):
        return lambda x: f"{x:,.0f}"
    if unit == "x":
        return lambda x: f"{x:.2f}"
    if unit in ("pp",):
        return lambda x: f"{x:+.2f}"
    return lambda x: f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


# --------------------------------------------------------------------------------------------------
# Selecting units
# --------------------------------------------------------------------------------------------------


def _units(chk: dict[str, Any], jobs: pd.DataFrame, configs: dict[str, dict[str, Any]]) -> list[tuple[str, pd.DataFrame]]:
    """(name, jobs) per group of experiments matching the selector. Checks that do not compare rewind
    points are evaluated per rewind point too, so a k sweep gives one unit per k."""
    sel = chk.get("select") or {}
    chosen = [e for e in sorted(configs) if _matches(configs[e], jobs, e, sel)]
    df = jobs[jobs["experiment"].isin(chosen)]
    units = []
    per_rewind = not _uses_rewind(chk)
    for group, g in df.groupby("group", sort=True):
        if per_rewind:
            for k, gk in g.groupby("rewind_step", sort=True, dropna=False):
                names = sorted(gk["experiment"].unique())
                units.append((", ".join(names), gk))
        else:
            names = sorted(g["experiment"].unique())
            units.append((", ".join(names), g))
    return units


def _uses_rewind(chk: dict[str, Any]) -> bool:
    if chk["measure"] in ("barrier_trend", "onset") or "rewind" in chk:
        return True
    return any("rewind" in (chk.get(k) or {}) for k in ("a", "b", "of"))


def _matches(cfg: dict[str, Any], jobs: pd.DataFrame, experiment: str, sel: dict[str, Any]) -> bool:
    """The experiment is of the selected family, has the selected branches, and its run config matches
    one of the selected protocols (dotted keys; ``{any: [...]}`` accepts alternatives)."""
    mine = jobs[jobs["experiment"] == experiment]
    if sel.get("family") is not None and sel["family"] not in set(mine["family"].dropna()):
        return False
    if not set(sel.get("branches") or ()) <= set(mine["branch"]):
        return False
    protocols = sel.get("protocol") or []
    return not protocols or any(all(_equal(_get(cfg, k), v, k) for k, v in p.items()) for p in protocols)


def _get(cfg: dict[str, Any], key: str) -> Any:
    have: Any = cfg
    for part in key.split("."):
        have = have.get(part) if isinstance(have, dict) else None
    return have


def _equal(have: Any, want: Any, key: str) -> bool:
    """Step strings compare by value ('50000it' == '50000it', not '160ep'); numbers with a relative
    tolerance of 1e-9; everything else exactly."""
    if isinstance(want, dict) and set(want) == {"any"}:
        return any(_equal(have, w, key) for w in want["any"])
    if key.split(".")[-1] in ("steps", "rewind", "warmup", "eval_every") or key.endswith("milestones"):
        from ..config import ConfigError, parse_steps

        try:
            norm = (lambda v: [parse_steps(x) for x in v]) if isinstance(want, list) else parse_steps
            return have is not None and norm(have) == norm(want)
        except (ConfigError, TypeError):
            return False
    if isinstance(want, float) or isinstance(have, float):
        return have is not None and not isinstance(have, (str, dict, list)) and math.isclose(float(have), float(want), rel_tol=1e-9)
    return have == want


# --------------------------------------------------------------------------------------------------
# Operands
# --------------------------------------------------------------------------------------------------


def _metric(chk: dict[str, Any], unit: pd.DataFrame) -> str:
    m = chk.get("metric", "auto")
    if m == "auto":
        return "early_stop_test_acc" if unit["early_stop_test_acc"].notna().any() else "final_test_acc"
    return m


def _scaled(metric: str, s: pd.Series) -> pd.Series:
    return 100 * s.astype(float) if metric in PERCENT_METRICS else s.astype(float)


def _rewind_rows(unit: pd.DataFrame, spec: Any) -> pd.DataFrame:
    if spec is None:
        return unit
    ks = sorted(unit["rewind_step"].dropna().unique())
    if not ks:
        raise NotRun("the rewind step of these runs is unknown")
    k = {"min": ks[0], "max": ks[-1]}.get(spec, spec)
    if spec in ("min", "max") and len(ks) < 2:
        raise NotRun(f"only one rewind point (k = {ks[0]:g}) in these runs")
    rows = unit[unit["rewind_step"] == float(k)]
    if rows.empty:
        raise NotRun(f"no run rewinds to k = {k}")
    return rows


def _per_seed(unit: pd.DataFrame, branch: str, level: int, metric: str) -> pd.Series:
    """A branch's metric at one level, per seed (replicates averaged within a seed)."""
    rows = unit[(unit["branch"] == branch) & (unit["level"] == level)]
    return rows.groupby("seed")[metric].mean().astype(float).dropna()


def _levels_with(unit: pd.DataFrame, branch: str) -> dict[int, set[int]]:
    rows = unit[unit["branch"] == branch]
    return {int(lv): set(g["seed"]) for lv, g in rows.groupby("level")}


def _resolve_level(unit: pd.DataFrame, at: Any, operands: list[tuple[pd.DataFrame, str]]) -> int:
    """The level a check compares at: ``{level: L}``, ``{density: d}`` (nearest IMP level) or
    ``sparsest`` (the highest pruned level every operand reached in every seed)."""
    if isinstance(at, dict) and "level" in at:
        return int(at["level"])
    if isinstance(at, dict) and "density" in at:
        imp = unit[unit["branch"] == "imp"].groupby("level")["density"].mean()
        if imp.empty:
            raise NotRun("no IMP levels")
        lv = (np.log(imp) - math.log(at["density"])).abs().idxmin()
        if abs(math.log(imp[lv] / at["density"])) > math.log(DENSITY_MATCH):
            raise NotRun(f"no IMP level near {100 * at['density']:.3g}% remaining (nearest: {100 * imp[lv]:.3g}%)")
        return int(lv)
    common: set[int] | None = None
    for rows, branch in operands:
        have = {lv for lv, s in _levels_with(rows, branch).items() if s >= set(rows["seed"]) and lv >= 1}
        common = have if common is None else common & have
    if not common:
        raise NotRun("no pruned level that every compared branch reached in every seed")
    return max(common)


def _operands(chk: dict[str, Any], unit: pd.DataFrame, names: tuple[str, ...]) -> tuple[list[pd.Series], int, str]:
    """Per-seed values of the named operands (``{branch, rewind}``) at the check's level ``at``."""
    metric = _metric(chk, unit)
    specs = [chk[n] for n in names]
    rows = [_rewind_rows(unit, s.get("rewind")) for s in specs]
    level = _resolve_level(rows[0], chk.get("at", "sparsest"), [(r, s["branch"]) for r, s in zip(rows, specs)])
    series = []
    for r, s in zip(rows, specs):
        v = _per_seed(r, s["branch"], level, metric)
        if v.empty:
            raise NotRun(f"no {s['branch']} job at level {level}")
        series.append(_scaled(metric, v))
    return series, level, metric


def _density_note(unit: pd.DataFrame, level: int, metric: str) -> str:
    d = unit.loc[(unit["branch"] == "imp") & (unit["level"] == level), "density"].mean()
    name = {"early_stop_test_acc": "test accuracy at early stop", "final_test_acc": "final test accuracy"}.get(metric, metric)
    return f"level {level} ({100 * d:.3g}% remaining), {name}" if math.isfinite(d) else f"level {level}, {name}"


def _paired(a: pd.Series, b: pd.Series, how) -> list[float]:
    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        raise NotRun("the compared runs share no seed")
    return [how(a[s], b[s]) for s in seeds]


# --------------------------------------------------------------------------------------------------
# Measures: each returns (per-seed values, a note saying exactly what was compared)
# --------------------------------------------------------------------------------------------------


def _value(chk, unit, analyses):
    (v,), level, metric = _operands(chk, unit, ("of",))
    return list(v), _density_note(unit, level, metric)


def _difference(chk, unit, analyses):
    (a, b), level, metric = _operands(chk, unit, ("a", "b"))
    return _paired(a, b, lambda x, y: x - y), _density_note(unit, level, metric)


def _ratio(chk, unit, analyses):
    (a, b), level, metric = _operands(chk, unit, ("a", "b"))
    return _paired(a, b, lambda x, y: x / y if y else math.nan), _density_note(unit, level, metric)


def _versus_dense(chk, unit, analyses):
    """A branch at one level against the dense net (IMP level 0) of the same seed, ``as``: difference
    (x - x0), ratio (x / x0), speedup (x0 / x, for iteration counts) or reduction (100 (1 - x / x0) %)."""
    (x,), level, metric = _operands(chk, unit, ("of",))
    dense = {**chk, "at": {"level": 0}, "dense": {"branch": "imp", "rewind": chk["of"].get("rewind")}}
    (x0,), _, _ = _operands(dense, unit, ("dense",))
    how = {"difference": lambda a, b: a - b, "ratio": lambda a, b: a / b, "speedup": lambda a, b: b / a,
           "reduction": lambda a, b: 100 * (1 - a / b)}[chk.get("as", "difference")]
    return _paired(x, x0, how), _density_note(unit, level, metric) + " vs. the dense net"


def _against_dense(chk, unit) -> tuple[pd.DataFrame, str]:
    """Per seed and level >= 1: the branch's metric and the dense net's (IMP level 0)."""
    metric = _metric(chk, unit)
    of = chk.get("of") or {"branch": "imp"}
    rows = _rewind_rows(unit, of.get("rewind"))
    branch = rows[(rows["branch"] == of["branch"]) & (rows["level"] >= 1)]
    table = branch.groupby(["seed", "level"])[[metric, "density"]].mean().reset_index()
    dense = rows[(rows["branch"] == "imp") & (rows["level"] == 0)].groupby("seed")[metric].mean()
    if table.empty or dense.empty:
        raise NotRun(f"no dense net or no {of['branch']} levels")
    table["dense"] = table["seed"].map(dense)
    table["x"] = _scaled(metric, table[metric])
    table["x0"] = _scaled(metric, table["dense"])
    return table.dropna(subset=["x", "x0"]), metric


def _best(chk, unit, analyses):
    """The best (``pick: max``, default) or worst (``pick: min``) pruned level against the dense net,
    ``as``: difference (x - x0), ratio, speedup (x0 / x, for iteration counts) or value (x itself)."""
    table, metric = _against_dense(chk, unit)
    how = chk.get("as", "difference")
    gain = {"difference": table["x"] - table["x0"], "ratio": table["x"] / table["x0"],
            "speedup": table["x0"] / table["x"], "value": table["x"]}[how]
    table = table.assign(g=gain)
    pick = table.groupby("seed")["g"].idxmin() if chk.get("pick") == "min" else table.groupby("seed")["g"].idxmax()
    best = table.loc[pick]
    where = ", ".join(f"{100 * d:.3g}%" for d in best["density"])
    return list(best["g"]), f"attained at {where} remaining ({metric})"


def _last_density(chk, unit, analyses):
    """Going sparser level by level, the density of the last level before the condition first fails
    (the LTH's "until P_m = ..." statements). The condition compares with the dense net:
    ``cond: {op, offset}`` tests ``x op x0 + offset``."""
    table, metric = _against_dense(chk, unit)
    cond = chk.get("cond") or {"op": ">=", "offset": 0.0}
    out = []
    for _, g in table.sort_values("level").groupby("seed"):
        ok = OPS[cond["op"]](g["x"], g["x0"] + cond.get("offset", 0.0)).to_numpy()
        fails = np.flatnonzero(~ok)
        if len(fails) == 0:
            out.append(100 * g["density"].min())  # holds at every level trained: a lower bound
        elif fails[0] == 0:
            out.append(100.0)
        else:
            out.append(100 * g["density"].iloc[fails[0] - 1])
    sparsest = 100 * table["density"].min()
    return out, f"{metric}; sparsest level trained: {sparsest:.3g}% (a value equal to it is a lower bound)"


# ---- instability (Frankle et al. 2020) ------------------------------------------------------------


def barriers(instability: pd.DataFrame | None) -> pd.DataFrame:
    """Error barrier per run, level and copy pair: max over the path of the test error minus the mean
    of the endpoints' errors (LMC Sec. 2), in percentage points; averaged over pairs per seed."""
    from .tables import INSTABILITY_ERROR, instability_paths

    if instability is None:
        return pd.DataFrame(columns=["experiment", "group", "seed", "rewind_step", "level", "barrier", "max_error"])
    instability = instability_paths(instability)
    keys = ["experiment", "group", "seed", "rewind_step", "level"]
    pair = [c for c in ("pair", "replicate") if c in instability.columns][:1]

    def one(path: pd.DataFrame) -> pd.Series:
        p = path.sort_values("alpha")
        err = 100 * p[INSTABILITY_ERROR].to_numpy(dtype=float)
        return pd.Series({"barrier": err.max() - (err[0] + err[-1]) / 2, "max_error": err.max()})

    per_pair = instability.groupby(keys + pair, dropna=False)[["alpha", INSTABILITY_ERROR]].apply(one).reset_index()
    return per_pair.groupby(keys, dropna=False)[["barrier", "max_error"]].mean().reset_index()


def _instability_unit(unit: pd.DataFrame, analyses) -> pd.DataFrame:
    b = barriers(analyses.get("instability"))
    b = b[b["experiment"].isin(unit["experiment"].unique())]
    if b.empty:
        raise NotRun("instability analysis not run for these runs")
    return b


def _instability_level(chk, unit, b: pd.DataFrame) -> int:
    at = chk.get("at", {"level": 0})
    if isinstance(at, dict) and "level" in at:
        return int(at["level"])
    levels = sorted(b["level"].unique())
    if at == "sparsest":
        return int(levels[-1])
    lv = _resolve_level(unit, at, [])
    if lv not in levels:
        raise NotRun(f"instability analysis not run at level {lv}")
    return lv


def _barrier(chk, unit, analyses):
    b = _instability_unit(unit, analyses)
    lv = _instability_level(chk, unit, b)
    rows = b[b["level"] == lv]
    k = chk.get("rewind")
    if k is not None:
        rows = rows[rows["rewind_step"] == ({"min": rows["rewind_step"].min(), "max": rows["rewind_step"].max()}.get(k, k))]
    if rows.empty:
        raise NotRun(f"no instability result at level {lv}" + (f", k = {k}" if k is not None else ""))
    col = "max_error" if chk.get("of") == "max_error" else "barrier"
    return list(rows.groupby("seed")[col].mean()), _level_note(unit, lv, rows["rewind_step"].unique())


def _barrier_trend(chk, unit, analyses):
    b = _instability_unit(unit, analyses)
    lv = _instability_level(chk, unit, b)
    rows = b[b["level"] == lv]
    ks = sorted(rows["rewind_step"].dropna().unique())
    if len(ks) < 2:
        raise NotRun(f"instability at level {lv} was measured at {len(ks)} rewind point(s); the trend needs two")
    lo = rows[rows["rewind_step"] == ks[0]].set_index("seed")["barrier"]
    hi = rows[rows["rewind_step"] == ks[-1]].set_index("seed")["barrier"]
    return _paired(lo, hi, lambda x, y: x - y), _level_note(unit, lv, [ks[0], ks[-1]])


def _onset(chk, unit, analyses):
    """The smallest rewind point k whose barrier is below the stability threshold (LMC: 2 %)."""
    b = _instability_unit(unit, analyses)
    lv = _instability_level(chk, unit, b)
    rows = b[b["level"] == lv]
    threshold = chk.get("threshold", 2.0)
    out = []
    for _, g in rows.groupby("seed"):
        stable = g[g["barrier"] < threshold]["rewind_step"]
        if stable.empty:
            raise NotRun(f"never stable (barrier < {threshold:g} pp) at the rewind points run "
                         f"({', '.join(f'{k:g}' for k in sorted(g['rewind_step']))})")
        out.append(float(stable.min()))
    return out, _level_note(unit, lv, rows["rewind_step"].unique())


def _level_note(unit: pd.DataFrame, level: int, ks) -> str:
    d = unit.loc[(unit["branch"] == "imp") & (unit["level"] == level), "density"].mean()
    where = "dense network" if level == 0 else f"IMP level {level} ({100 * d:.3g}% remaining)"
    return f"{where}; k = {', '.join(f'{k:g}' for k in sorted(ks))}"


# ---- successive levels (Paul et al. 2023) ---------------------------------------------------------


def _successive_iff_matching(chk, unit, analyses):
    """Share of levels L -> L+1 (L >= 1) where "zero barrier" (< threshold) and "level L+1 matching"
    (accuracy within ``matching`` pp of the dense net) agree, per seed."""
    from .tables import SUCCESSIVE_ERROR

    s = analyses.get("successive")
    if s is None or s[s["experiment"].isin(unit["experiment"].unique())].empty:
        raise NotRun("successive-level interpolation not run for these runs")
    s = s[s["experiment"].isin(unit["experiment"].unique()) & (s["mask"] == chk.get("mask", "common"))]
    if "bn" in s.columns and s["bn"].nunique() > 1:
        s = s[s["bn"] == "as_is"]
    threshold, matching = chk.get("threshold", 2.0), chk.get("matching", 0.2)
    metric = _metric(chk, unit)
    out = []
    for seed, g in s.groupby("seed"):
        agree = []
        for lv, path in g[g["level"] >= 1].groupby("level"):
            err = 100 * path.sort_values("alpha")[SUCCESSIVE_ERROR].to_numpy(dtype=float)
            barrier = err.max() - (err[0] + err[-1]) / 2
            acc = _per_seed(unit, "imp", int(lv) + 1, metric).get(seed)
            dense = _per_seed(unit, "imp", 0, metric).get(seed)
            if acc is None or dense is None:
                continue
            agree.append((barrier < threshold) == (100 * (dense - acc) <= matching))
        if agree:
            out.append(100 * float(np.mean(agree)))
    if not out:
        raise NotRun("no successive-level result with both levels trained")
    return out, f"barrier < {threshold:g} pp vs. matching (within {matching:g} pp of dense)"


MEASURES = {"value": _value, "difference": _difference, "ratio": _ratio, "versus_dense": _versus_dense, "best": _best,
            "last_density": _last_density, "barrier": _barrier, "barrier_trend": _barrier_trend,
            "onset": _onset, "successive_iff_matching": _successive_iff_matching}
