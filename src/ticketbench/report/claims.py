"""The papers' claims (``config/claims.yaml``) checked against our tidy tables.

A claim's ``check`` says how its quantity is computed from our tables; nothing here knows a paper's
number. Every check is evaluated per *unit*: the runs of one experiment, or of a group of experiments
that differ only in the rewind point k (the Stabilizing/LMC sweeps). Within a unit, the quantity is
computed once per seed, and the claim's expectation is tested on the mean over seeds; the report
shows mean, min and max over seeds and n. A quantity read off a curve (a best level, a last density,
an onset) is read off the mean-over-seeds curve, as the papers read theirs. The verdict is

- ``reproduced`` / ``not reproduced`` / ``inconclusive``: the unit's data exists and the expectation
  holds / fails by more than the noise, or the noise cannot tell (:data:`NOISE_RULE`);
- ``not run at this scale``: config/config.yaml has an experiment the check selects and these results
  do not, the levels do not reach the claim's density, or the analysis it needs was not run (the reason
  is given);
- ``no experiment in the suite``: no experiment of config/config.yaml is selected by the check, so no
  scale of the suite can test it;
- ``not checked``: the suite does not measure this quantity at any scale (e.g. ImageNet, L2 distances).

Check vocabulary (config/claims.yaml documents the fields once more for its readers):

- ``select``: ``family``, ``branches`` the experiment must have trained, and/or ``protocol`` (names of
  ``protocols``: dotted run-config keys that must equal the paper's values);
- ``at``: the level compared: ``{level: L}``, ``{density: d}`` (the IMP level nearest to d, within a
  factor ``DENSITY_MATCH``, in the claim's density definition :data:`DENSITY_COLUMNS`) or ``sparsest``
  (the highest pruned level every operand reached in every seed);
- operands ``of`` / ``a`` / ``b``: ``{branch, rewind}``, a branch's ``metric`` (a summary.json column;
  ``auto`` = test accuracy at early stop where there is a validation split, else at the end), of the
  runs rewound to ``rewind`` (``min``, ``max`` or a step k) where the unit sweeps k;
- measures: ``value``, ``difference`` (a - b), ``ratio`` (a / b), ``versus_dense`` (of against the
  dense net), ``best`` (the best or worst pruned level against the dense net), ``last_density`` (the
  density down to which every level keeps a condition against the dense net; ``from_density``: the
  density where the claim's range starts), ``barrier``
  (instability of the SGD-noise copies of ``of.branch``: ``copy`` = the IMP network, default, or
  ``copy_random_prune`` / ``copy_random_reinit``), ``barrier_trend`` (barrier at the smallest k minus at
  the largest k), ``onset`` (smallest k of the grid run whose mean barrier is below a threshold),
  ``successive_iff_matching`` (Paul et al. 2023; ``masks`` that must all show a zero barrier,
  ``max_density`` of the levels the claim is about);
- ``expect``: ``{op: '>'|'>='|'<'|'<=', value}``, ``{op: within, value, tol}`` or
  ``{op: within_factor, value, factor}``;
- ``proxy``: why a check that measures a consequence of the claim, not its quantity, stands in for it
  (counted apart: :data:`PROXY`); ``unreachable``: why the check cannot say "reproduced" at the suite's
  scale even when the paper's number comes back (printed beside its verdict;
  tests/test_reachability.py holds every check to reachability but these).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..analysis.barriers import STABLE_PP, barrier
from ..config import COPIES
from . import tables

REPRODUCED, NOT_REPRODUCED, NOT_RUN, NOT_CHECKED = "reproduced", "not reproduced", "not run at this scale", "not checked"
INCONCLUSIVE = "inconclusive"
NO_EXPERIMENT = "no experiment in the suite"
"""No experiment of config/config.yaml has the claim's protocol, so no scale of the suite can test it (as
opposed to NOT_RUN: the suite has such an experiment and the results at hand do not)."""
DECIDED = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
"""The verdicts of a check that was computed on data (the others say why it was not)."""
NOISE_Z = 2.0
"""Normal sigmas of a range built on a known error (binomial, eval interval); a seed spread, estimated from
the seeds themselves, gets Student's t quantile of the same coverage (:func:`t_quantile`)."""
COVERAGE = NormalDist().cdf(NOISE_Z)
"""One-sided coverage of each end of a range (97.7 %)."""
NOISE_RULE = (
    "Every computed check has a range; it is reproduced when the whole range meets the expectation (for within / "
    "within_factor: lies inside the tolerance band), not reproduced when none of it does, else inconclusive. "
    "The range of a mean over n independent units (seeds; a barrier's pairs are not independent, since the pairs "
    "of a seed share its parent network, so barriers count seeds too) is the mean ± max(t x seed spread, "
    f"{NOISE_Z:g} x measurement error). Seed spread = sample standard deviation / sqrt(n), with t Student's quantile "
    f"for n - 1 degrees of freedom at the coverage of {NOISE_Z:g} sigma (t = 14.0, 4.53, 2.87 for n = 2, 3, 5; no "
    "spread term for n = 1). Measurement error: a test accuracy p on N test images has binomial error "
    "100 sqrt(p (1 - p) / N) (a difference of two: sqrt 2 times that; a ratio a / b: (a / b) x the root sum of "
    "squares of the relative errors), and an error barrier (peak minus the mean of the endpoints) 100 sqrt(1.5 p "
    "(1 - p) / N) with p the mean test error of the points involved. Every seed is evaluated on the same test "
    "images, so this error does not shrink with n, except where a check compares with the paper's own number "
    "on the paper's whole test split: the test set's luck is then common to the paper's networks and ours and "
    "cancels, and what is left, one network's noise (at most the binomial error), shrinks as 1 / sqrt(n). An "
    "early-stopping iteration has the eval interval, one network's own (/ sqrt(n)). A trend of two barriers "
    "combines their ranges in quadrature. Curves are read on the mean over seeds: a best (worst) level is the "
    "extreme of the mean curve, with the range of that one level; a last density is, going sparser, the last "
    "level before the condition fails on the mean curve, and its range runs from the first level whose whole "
    "range fails (the true last density lies above it) to the sparsest level before it whose whole range "
    "holds; an onset is the first rewind point whose mean barrier is under the threshold, and its range "
    "runs from the first k whose barrier range reaches under the threshold to the first k whose whole range is "
    "under it (above the largest k run if none is). A share of levels (successive levels: zero barrier if and "
    "only if matching) counts a level whose barrier or accuracy gap lies within its range of the threshold as "
    "undetermined, and its range runs from the share that surely agrees to the share that may. A mean that is "
    "not finite (a zero denominator, e.g. an early-stopping step of 0) gets no verdict: inconclusive, with the "
    "reason. Where no noise is definable the row says so and the verdict rests on the mean. Multiplicity: about "
    "90 checks are each decided at this coverage with no correction for their number, so a few wrong verdicts "
    "among them are expected by chance alone; read one verdict as one test among many, and a pattern across "
    "checks and papers as the evidence.")
"""The noise floor of a verdict (issues 11, 21). The binomial term is how much one network's accuracy on N
test images moves by chance; it is what a single seed cannot tell apart from an effect (the quick run's
"+0.50 pp on 2,000 images, one seed" was +0.5 pp on one machine and -0.05 pp on another). The same range
decides quantitative checks: a mean inside the paper's tolerance by less than its noise could as well be
outside it."""
DENSITY_MATCH = 1.12
"""A claim "at P_m = d" uses the IMP level whose density is within this factor of d (about half of one
20 % pruning step), else the claim is not run at this scale."""
PERCENT_METRICS = {"final_test_acc", "early_stop_test_acc", "final_train_acc"}
METRIC_UNITS = {"early_stop_step": "iterations", "final_train_loss": "nats", "final_test_loss": "nats"}
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
QUANTITATIVE, DIRECTION, PROXY = "quantitative", "direction only", "proxy"
KINDS = (QUANTITATIVE, DIRECTION, PROXY)
"""A check either tests the paper's number (within a tolerance or a factor), or only the direction of the
effect (>, <), or is a proxy: it measures something the claim implies, not the claim's own quantity (its
``proxy`` key says why it stands in). The report's headline counts the three apart, as a reviewer weighs
them differently."""


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
    """The half-width of the range around the mean (:data:`NOISE_RULE`), in the check's unit, where the
    rule applies."""
    interval: tuple[float, float] | None = None
    """The range the verdict was decided on (:data:`NOISE_RULE`), in the check's unit."""
    unreachable: str = ""
    """Why this check cannot say "reproduced" at the suite's scale even when the paper's number comes back
    (the check's ``unreachable`` key; tests/test_reachability.py holds the list); the report prints it
    beside the verdict."""

    def summary(self) -> str:
        """mean (min..max, n) in the check's unit, or the reason it was not computed."""
        if not self.values:
            return self.detail
        v = np.asarray(self.values, dtype=float)
        fmt = _fmt(self.unit_label)
        spread = f" (min {fmt(v.min())}, max {fmt(v.max())}; n = {len(v)})" if len(v) > 1 else " (n = 1)"
        extra = f"; {self.detail}" if self.detail else ""
        noise = f"; noise ± {fmt(self.noise).lstrip('+')}" if self.noise is not None else \
            f"; range {fmt(self.interval[0])} to {fmt(self.interval[1])}" if self.interval is not None else ""
        return f"{fmt(v.mean())} {self.unit_label}{spread}{noise}{extra}"


DENSITY_COLUMNS = {"prunable": "density", "total": "density_total"}
"""A claim's ``density`` key: which fraction "% remaining" means. ``prunable`` (the suite's ``density``)
counts the weights pruning may remove; ``total`` (``density_total``) counts every weight of the network,
as the LTH paper's P_m does (its ResNet's 41.7 / 27.1 / 21.9 / 11.8 % include the unpruned shortcut and
output weights)."""
ONSET_QUANTITY = re.compile(r"^(rewind )?iteration at which")
"""A claim whose quantity is an iteration (an onset): each of its checks reports an iteration, or says in
its label that it tests a direction only (a barrier in pp is not the paper's quantity)."""
REINIT_STARTS = ("rewind", "zero")
"""A random_reinit job's ``reinit_start``: trained from the rewind step k to T (open_lth's default) or
from 0 to T; a claim's ``reinit_start`` key names the paper's, where the paper says."""


@dataclass(frozen=True)
class SuiteExperiment:
    """One experiment of config/config.yaml as a selector sees it: its family, the branches the
    workflow trains for it, and its run config (the workflow's resolution, seed 0's)."""

    family: str
    branches: frozenset[str]
    run: dict[str, Any]


def suite(experiments: dict[str, Any], where: str) -> dict[str, SuiteExperiment]:
    """The paper-scale experiments (``config/config.yaml``'s, as written), so that a check no experiment
    selects is told apart from one whose experiment these results lack. Run configs are resolved as the
    workflow resolves them (:func:`config.experiment_run`); the branches follow the experiment's keys as
    the job plan reads them (``ticketbench.plan``)."""
    from ..config import experiment_run

    out = {}
    for exp, spec in experiments.items():
        seeds = spec.get("seeds") or [0]
        run = experiment_run(spec, exp, int(seeds[0]), where).to_dict()
        out[exp] = SuiteExperiment(spec.get("family", ""), frozenset(branches_of(spec)), run)
    return out


def paper_suite(claims_path: Path) -> dict[str, SuiteExperiment] | None:
    """:func:`suite` of the paper-scale workflow config beside the claims file (``config/config.yaml``
    next to ``config/claims.yaml``), or None where there is none (then absence reads NOT_RUN)."""
    from ..plan import read_config

    path = Path(claims_path).parent / "config.yaml"
    return suite(read_config(path).get("experiments") or {}, str(path)) if path.is_file() else None


def branches_of(spec: dict[str, Any]) -> set[str]:
    """IMP, the baselines, fine-tuning, and the SGD-noise copies of the instability analysis: ``copy``
    of the IMP network, and a copy of each random baseline named in ``instability.baselines``."""
    out = {"imp", *(spec.get("baselines") or {})}
    if (spec.get("finetune") or {}).get("levels"):
        out.add("finetune")
    inst = spec.get("instability")
    if inst:
        out |= {b for b, copied in COPIES.items() if copied == "imp" or copied in (inst.get("baselines") or [])}
    return out


def load(path: Path) -> list[dict[str, Any]]:
    """The claims file, validated: unknown measures, missing fields and absolute paths fail here, not in
    a report. Each check gets its claim's ``density`` (a key of :data:`DENSITY_COLUMNS`: the claim's own
    ``density``, else its paper's in the file's ``densities``, else ``prunable``) and ``reinit_start`` (if
    the claim names one)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    _no_absolute_path(raw, str(path))
    protocols = raw.get("protocols") or {}
    claims = raw.get("claims")
    if not isinstance(claims, list):
        raise ClaimsError(f"{path}: 'claims' must be a list")
    papers = {c.get("paper") for c in claims if isinstance(c, dict)}
    densities = raw.get("densities") or {}
    for paper, how in densities.items():
        if paper not in papers or how not in DENSITY_COLUMNS:
            raise ClaimsError(f"{path}: densities: {paper!r}: {how!r} must name a paper of the claims and one of "
                              f"{', '.join(DENSITY_COLUMNS)}")
    seen = set()
    for c in claims:
        cid = c.get("id")
        for key in ("id", "paper", "source", "source_type", "quantity", "value", "condition"):
            if key not in c:
                raise ClaimsError(f"{path}: claim {cid}: missing '{key}'")
        if cid in seen:
            raise ClaimsError(f"{path}: claim {cid}: duplicate id")
        seen.add(cid)
        if c.get("density", densities.get(c.get("paper"), "prunable")) not in DENSITY_COLUMNS:
            raise ClaimsError(f"{path}: claim {cid}: density must be one of {', '.join(DENSITY_COLUMNS)}")
        if c.get("reinit_start") is not None and c["reinit_start"] not in REINIT_STARTS:
            raise ClaimsError(f"{path}: claim {cid}: reinit_start must be one of {', '.join(REINIT_STARTS)}")
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
            for key in ("proxy", "unreachable"):
                if key in chk and not (isinstance(chk[key], str) and chk[key].strip()):
                    raise ClaimsError(f"{path}: claim {cid}: check.{key} must say why, in words")
            start = chk.get("from_density", 1.0)
            if chk["measure"] != "last_density" and "from_density" in chk or \
                    not isinstance(start, (int, float)) or not 0 < start <= 1:
                raise ClaimsError(f"{path}: claim {cid}: check.from_density is a fraction in (0, 1] of a last_density check")
            if ONSET_QUANTITY.match(str(c["quantity"])) and unit_of(chk) != "iterations" and \
                    not str(chk.get("label", "")).startswith("direction only"):
                raise ClaimsError(f"{path}: claim {cid}: the paper's quantity is an iteration; a check in "
                                  f"{unit_of(chk)!r} must be labelled 'direction only: ...'")
    for c in claims:
        for chk in _checks(c):
            chk["density"] = c.get("density", densities.get(c["paper"], "prunable"))
            if c.get("reinit_start"):
                chk["reinit_start"] = c["reinit_start"]
            names = _names((chk.get("select") or {}).get("protocol"))
            if names:
                chk["select"] = {**chk["select"], "protocol": [protocols[n]["match"] for n in names], "protocol_name": " or ".join(names)}
    return claims


def _no_absolute_path(node: Any, where: str) -> None:
    """A committed output must not name a folder of the machine that built it; the claims file is
    printed into the report, so it may cite files only by their project path (``shared/papers/...``)."""
    if isinstance(node, dict):
        for v in node.values():
            _no_absolute_path(v, where)
    elif isinstance(node, list):
        for v in node:
            _no_absolute_path(v, where)
    elif isinstance(node, str):
        hit = re.search(r"(?<![\w:/.])(/(?:home|work|tmp|Users|mnt|scratch|data|root|opt|srv|var)/\S*|[A-Za-z]:\\\S+|~/\S+)", node)
        if hit:
            raise ClaimsError(f"{where}: absolute path {hit.group(0)!r}: cite files by their project path (shared/papers/...)")


def _names(proto: Any) -> list[str]:
    return [] if proto is None else [proto] if isinstance(proto, str) else list(proto)


def evaluate(claims: list[dict[str, Any]], jobs: pd.DataFrame, configs: dict[str, dict[str, Any]],
             analyses: dict[str, pd.DataFrame | None],
             paper_suite: dict[str, SuiteExperiment] | None = None) -> list[Result]:
    """Every claim on every unit its selector matches; if none matches, one NOT_RUN result when an
    experiment of ``paper_suite`` (:func:`suite`) is selected, else NO_EXPERIMENT (without a suite,
    NOT_RUN: the suite is unknown, so absence cannot be told apart).

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
                out.append(dataclasses.replace(_absent(claim, chk, label, paper_suite),
                                               unreachable=chk.get("unreachable", "")))
                continue
            for name, unit in units:
                try:
                    m = MEASURES[chk["measure"]](chk, unit, Context(analyses, configs))
                except NotRun as e:
                    out.append(Result(claim, _join(label, name), NOT_RUN, chk, detail=str(e),
                                      unreachable=chk.get("unreachable", "")))
                    continue
                verdict, interval, noise_note = decide(chk["expect"], m)
                detail = "; ".join(filter(None, [m.detail, noise_note, _reinit_note(chk, unit)]))
                out.append(Result(claim, _join(label, name), verdict, chk, list(map(float, m.values)), unit_of(chk),
                                  detail, m.noise, interval, chk.get("unreachable", "")))
    return out


def _absent(claim: dict[str, Any], chk: dict[str, Any], label: str,
            paper_suite: dict[str, SuiteExperiment] | None) -> Result:
    sel = chk.get("select") or {}
    if paper_suite is None:
        return Result(claim, label, NOT_RUN, chk, detail=_no_runs(sel))
    have = sorted(e for e, x in paper_suite.items() if _suite_matches(x, sel))
    missing = [k for k in _named_rewinds(chk) if not any(_rewinds_to(paper_suite[e].run, k) for e in have)]
    if have and missing:
        return Result(claim, label, NO_EXPERIMENT, chk, detail=f"{_no_runs(sel)}; config/config.yaml runs it as "
                      f"{', '.join(have)}, but none rewinds to k = {', '.join(map(str, missing))}")
    if have:
        return Result(claim, label, NOT_RUN, chk, detail=f"{_no_runs(sel)}; config/config.yaml runs it as {', '.join(have)}")
    return Result(claim, label, NO_EXPERIMENT, chk, detail=f"{_no_runs(sel)}, nor in config/config.yaml")


def _named_rewinds(chk: dict[str, Any]) -> list[int]:
    """The rewind points (iterations) a check names for its operands."""
    specs = [chk.get("rewind"), *((chk.get(k) or {}).get("rewind") for k in ("a", "b", "of") if isinstance(chk.get(k), dict))]
    return [int(k) for k in specs if isinstance(k, (int, float)) and not isinstance(k, bool)]


def _rewinds_to(run: dict[str, Any], k: int) -> bool:
    from ..config import ConfigError, parse_steps

    try:
        return parse_steps((run.get("imp") or {}).get("rewind", "0it")) == (0, k)
    except ConfigError:
        return False


def _suite_matches(x: SuiteExperiment, sel: dict[str, Any]) -> bool:
    if sel.get("family") is not None and sel["family"] != x.family:
        return False
    if not set(sel.get("branches") or ()) <= x.branches:
        return False
    protocols = sel.get("protocol") or []
    return not protocols or any(all(_equal(_get(x.run, k), v, k) for k, v in p.items()) for p in protocols)


@dataclass(frozen=True)
class Context:
    """What a measure reads besides its unit's jobs: the analyses' tables and the run configs."""

    analyses: dict[str, pd.DataFrame | None]
    configs: dict[str, dict[str, Any]]


@dataclass
class Measured:
    """A measure's per-seed values (a curve measure: its one value on the mean curve), what exactly was
    compared, and the range of their mean (:data:`NOISE_RULE`): ``noise``, the half-width of the range
    around the mean, or an explicit ``interval`` (an onset, a last density), or neither with ``no_noise``
    saying why."""

    values: list[float]
    detail: str
    noise: float | None = None
    interval: tuple[float, float] | None = None
    no_noise: str = ""


def decide(expect: dict[str, Any], m: Measured) -> tuple[str, tuple[float, float] | None, str]:
    """The verdict of :data:`NOISE_RULE` on the measured range, the range, and a note where no noise
    was definable or the mean is not finite."""
    mean = float(np.mean(m.values)) if m.values else math.nan
    note = ""
    if m.interval is not None:  # may be open-ended: never stable up to the largest k puts an onset above it
        lo, hi = m.interval
    elif not math.isfinite(mean):
        bad = sum(not math.isfinite(v) for v in m.values)
        return INCONCLUSIVE, None, (f"{bad} of {len(m.values)} value(s) not finite (a ratio with a zero denominator, "
                                    "e.g. an early-stopping step of 0): no verdict on an undefined quantity")
    elif m.noise is not None and math.isfinite(m.noise):
        lo, hi = mean - m.noise, mean + m.noise
    else:
        lo = hi = mean
        note = f"no noise definable ({m.no_noise or 'no error model for this quantity'}): decided on the mean"
    if expect["op"] in OPS:
        holds = [OPS[expect["op"]](x, expect["value"]) for x in (lo, hi)]
    else:
        if expect["op"] == "within":
            band = (expect["value"] - expect["tol"] - 1e-9, expect["value"] + expect["tol"] + 1e-9)
        else:
            band = (expect["value"] / expect["factor"] * (1 - 1e-9), expect["value"] * expect["factor"] * (1 + 1e-9))
        inside, outside = band[0] <= lo and hi <= band[1], hi < band[0] or lo > band[1]
        holds = [True, True] if inside else [False, False] if outside else [True, False]
    verdict = REPRODUCED if all(holds) else NOT_REPRODUCED if not any(holds) else INCONCLUSIVE
    return verdict, ((lo, hi) if note == "" else None), note


def noise(values: list[float], p: float, test_size: int, difference: bool, shared: bool = True) -> float:
    """The half-width of the range of the mean of ``values`` (in % or pp) by :data:`NOISE_RULE`: the larger
    of t x the seed spread and NOISE_Z x the binomial error of accuracies ``p`` measured on ``test_size``
    examples, which every seed ``shared`` (one test set) or not."""
    return _half_width(values, (math.sqrt(2) if difference else 1) * binomial(p, test_size), shared)


def binomial(p: float, n: int) -> float:
    """The binomial standard error, in %, of a fraction p measured on n examples."""
    return 100 * math.sqrt(max(p * (1 - p), 0.0) / n)


def barrier_error(p: float, n: int) -> float:
    """The measurement error, in pp, of an error barrier (peak minus the mean of the two endpoints) whose
    points have mean test error p (a fraction) on n examples: sqrt(1 + 2 / 4) = sqrt(1.5) times one point's
    binomial error."""
    return math.sqrt(1.5) * binomial(p, n)


def _half_width(values: list[float], error: float, shared: bool) -> float:
    """max(t x seed spread, NOISE_Z x measurement error of the mean): ``error`` is one value's, and it
    shrinks as 1 / sqrt(n) only where the values do not share it (``shared``: one test set)."""
    n = len(values)
    spread = t_quantile(n) * float(np.std(values, ddof=1)) / math.sqrt(n) if n >= 2 else 0.0
    return max(spread, NOISE_Z * error / (1.0 if shared or n < 1 else math.sqrt(n)))


def t_quantile(n: int) -> float:
    """Student's t quantile for the mean of n values (n - 1 degrees of freedom) at :data:`COVERAGE`, the
    coverage of NOISE_Z normal sigmas: 13.97 for n = 2, 4.53 for 3, 2.87 for 5, toward 2 as n grows."""
    if n < 2:
        return math.inf
    lo, hi = 0.0, 1e4
    while hi - lo > 1e-9 * hi:  # P(|T| < t) grows with t
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central(mid, n - 1) < 2 * COVERAGE - 1 else (lo, mid)
    return hi


def _t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` degrees of freedom, in closed form (Abramowitz & Stegun
    26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2.4/(3.5) cos^4 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1.3/(2.4) cos^4 + ...)
    for k in range(1, df // 2):
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return math.sin(theta) * total


def _reinit_note(chk: dict[str, Any], unit: pd.DataFrame) -> str:
    """Which random reinitialization a verdict comparing with it rests on (``reinit_start``)."""
    if "random_reinit" not in {(chk.get(k) or {}).get("branch") for k in ("a", "b", "of") if isinstance(chk.get(k), dict)}:
        return ""
    if set(unit["rewind_step"].dropna()) <= {0}:
        return "random reinit: k = 0, so training from k and from 0 coincide"
    if "reinit_start" not in unit.columns:
        return "random reinit start not recorded (results made before reinit_start; re-run the tables)"
    starts = sorted(set(unit.loc[unit["branch"] == "random_reinit", "reinit_start"].dropna()))
    words = {"rewind": "random reinit trained from k to T (reinit_start rewind)",
             "zero": "random reinit trained from 0 to T (reinit_start zero)"}
    said = ", ".join(words.get(s, str(s)) for s in starts) or "random reinit start not recorded"
    return said + ("" if chk.get("reinit_start") else "; the paper does not say which")


def _no_runs(sel: dict[str, Any]) -> str:
    has = f" with {' and '.join(sel['branches'])}" if sel.get("branches") else ""
    if sel.get("protocol"):
        return f"no run matches protocol '{sel['protocol_name']}'{has}"
    what = " ".join(filter(None, [sel.get("family"), "experiment"]))
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
    """:data:`PROXY` when the check stands in for the claim's quantity (its ``proxy`` key), else
    :data:`QUANTITATIVE` when it compares with the paper's value, else :data:`DIRECTION`."""
    if chk.get("proxy"):
        return PROXY
    return QUANTITATIVE if chk["expect"]["op"] in ("within", "within_factor") else DIRECTION


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


def _density(chk: dict[str, Any], unit: pd.DataFrame) -> str:
    """The jobs-table column of the claim's density definition; results made before ``density_total``
    was recorded cannot say where a P_m lies, and a silent fallback would match the wrong level."""
    col = DENSITY_COLUMNS[chk.get("density", "prunable")]
    if col not in unit.columns or unit.loc[unit["branch"] == "imp", col].isna().all():
        raise NotRun(f"these results do not record {col} (the paper's density counts every weight); "
                     "re-run the tables (ticketbench report --part tables) on runs that record it")
    return col


@dataclass(frozen=True)
class Errors:
    """The measurement error of each value of a metric (:func:`_error`), or None and ``why`` not, and
    whether every seed ``shared`` it (a test set's luck: then it does not shrink with the seeds)."""

    values: pd.Series | None
    why: str = ""
    shared: bool = False


def _error(chk: dict[str, Any], metric: str, x: pd.Series, unit: pd.DataFrame, ctx: Context) -> Errors:
    """The measurement error of each value of ``metric`` (in its scaled unit) by :data:`NOISE_RULE`."""
    exps = unit["experiment"].unique()
    if metric in ("final_test_acc", "early_stop_test_acc"):
        sizes = [tables.test_set_size(ctx.configs[e]) for e in exps if "data" in ctx.configs.get(e, {})]
        if not sizes:
            return Errors(None, "test-set size unknown", True)
        return Errors(x.map(lambda a: binomial(a / 100, min(sizes))), "", not _papers_test_set(chk, exps, ctx))
    if metric == "early_stop_step":
        steps = {_eval_interval(ctx.configs.get(e, {})) for e in exps}
        if None in steps or not steps:
            return Errors(None, "eval interval unknown")
        return Errors(pd.Series(float(max(steps)), index=x.index))
    return Errors(None, f"no error model for {metric}")


def _papers_test_set(chk: dict[str, Any], exps, ctx: Context) -> bool:
    """The check compares with the paper's own number (it runs only on the paper's protocol) and these runs
    evaluate the whole official test split, as the paper did: the test images' luck is then common to the
    paper's networks and ours, and cancels from the comparison (:data:`NOISE_RULE`). A test subset is a
    sample of its own."""
    if not (chk.get("select") or {}).get("protocol"):
        return False
    data = [(ctx.configs.get(e) or {}).get("data") for e in exps]
    return all(isinstance(d, dict) and d.get("name") != "synthetic" and not d.get("test_subset") for d in data)


def _eval_interval(cfg: dict[str, Any]) -> int | None:
    """The eval interval in iterations, the resolution of an early-stopping iteration (given in
    iterations; an interval in epochs is left unresolved here)."""
    from ..config import ConfigError, parse_steps

    every = (cfg.get("train") or {}).get("eval_every")
    try:
        ep, it = parse_steps(every) if every is not None else (1, 0)
    except ConfigError:
        return None
    return it if ep == 0 and it > 0 else None


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


def _reinit_rows(chk: dict[str, Any], rows: pd.DataFrame, branch: str) -> pd.DataFrame:
    """random_reinit jobs of the paper's ``reinit_start`` where the claim names one."""
    want = chk.get("reinit_start")
    if branch != "random_reinit" or not want:
        return rows
    if "reinit_start" not in rows.columns:
        raise NotRun("these results do not record reinit_start; re-run the tables on runs that record it")
    keep = (rows["branch"] != branch) | (rows["reinit_start"] == want)
    if not (keep & (rows["branch"] == branch)).any():
        raise NotRun(f"no random_reinit job with reinit_start {want} (the paper's)")
    return rows[keep]


def _per_seed(unit: pd.DataFrame, branch: str, level: int, metric: str) -> pd.Series:
    """A branch's metric at one level, per seed (replicates averaged within a seed)."""
    rows = unit[(unit["branch"] == branch) & (unit["level"] == level)]
    return rows.groupby("seed")[metric].mean().astype(float).dropna()


def _levels_with(unit: pd.DataFrame, branch: str) -> dict[int, set[int]]:
    rows = unit[unit["branch"] == branch]
    return {int(lv): set(g["seed"]) for lv, g in rows.groupby("level")}


def _resolve_level(chk: dict[str, Any], unit: pd.DataFrame, at: Any, operands: list[tuple[pd.DataFrame, str]]) -> int:
    """The level a check compares at: ``{level: L}``, ``{density: d}`` (nearest IMP level, by the
    claim's density definition) or ``sparsest`` (the highest pruned level every operand reached in
    every seed)."""
    if isinstance(at, dict) and "level" in at:
        return int(at["level"])
    if isinstance(at, dict) and "density" in at:
        col = _density(chk, unit)
        imp = unit[unit["branch"] == "imp"].groupby("level")[col].mean()
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


def _operands(chk: dict[str, Any], unit: pd.DataFrame, names: tuple[str, ...], ctx: Context
              ) -> tuple[list[pd.Series], list[pd.Series | None], int, str, str, bool]:
    """Per-seed values of the named operands (``{branch, rewind}``) at the check's level ``at``, their
    measurement errors (:func:`_error`), the level, the metric, why an error is unknown, and whether the
    seeds share it."""
    metric = _metric(chk, unit)
    specs = [chk[n] for n in names]
    rows = [_reinit_rows(chk, _rewind_rows(unit, s.get("rewind")), s["branch"]) for s in specs]
    level = _resolve_level(chk, rows[0], chk.get("at", "sparsest"), [(r, s["branch"]) for r, s in zip(rows, specs)])
    series, errors, why, shared = [], [], "", False
    for r, s in zip(rows, specs):
        v = _per_seed(r, s["branch"], level, metric)
        if v.empty:
            raise NotRun(f"no {s['branch']} job at level {level}")
        v = _scaled(metric, v)
        e = _error(chk, metric, v, unit, ctx)
        series.append(v)
        errors.append(e.values)
        why, shared = why or e.why, shared or e.shared
    return series, errors, level, metric, why, shared


def _density_note(chk: dict[str, Any], unit: pd.DataFrame, level: int, metric: str) -> str:
    col = DENSITY_COLUMNS[chk.get("density", "prunable")]
    rows = unit.loc[(unit["branch"] == "imp") & (unit["level"] == level)]
    if col not in rows.columns or rows[col].isna().all():
        col = "density"  # only says where the level lies, in the definition named
    d = rows[col].mean()
    name = {"early_stop_test_acc": "test accuracy at early stop", "final_test_acc": "final test accuracy"}.get(metric, metric)
    what = "% of all weights remaining" if col == "density_total" else \
        "% of prunable weights remaining" if chk.get("density") == "total" else "% remaining"
    return f"level {level} ({100 * d:.3g}{what}), {name}" if math.isfinite(d) else f"level {level}, {name}"


def _paired(a: pd.Series, b: pd.Series, how) -> list[float]:
    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        raise NotRun("the compared runs share no seed")
    return [how(a[s], b[s]) for s in seeds]


def _combined(how: str, a: pd.Series, b: pd.Series, ea: pd.Series | None, eb: pd.Series | None) -> float | None:
    """The mean per-seed measurement error of a combination of two measured values (difference a - b,
    ratio a / b, speedup b / a, reduction 100 (1 - a / b) %), errors propagated to first order."""
    if ea is None or eb is None:
        return None
    seeds = sorted(set(a.index) & set(b.index))
    out = []
    for s in seeds:
        x, y, ex, ey = a[s], b[s], ea[s], eb[s]
        if how == "difference":
            out.append(math.hypot(ex, ey))
        elif x and y:
            rel = math.hypot(ex / x, ey / y)
            out.append({"ratio": abs(x / y), "speedup": abs(y / x), "reduction": 100 * abs(x / y)}[how] * rel)
    return float(np.mean(out)) if out else None


def _measured(values: list[float], error: float | None, detail: str, why: str, shared: bool) -> Measured:
    if error is None:
        return Measured(values, detail, no_noise=why)
    return Measured(values, detail, noise=_half_width(values, error, shared))


# --------------------------------------------------------------------------------------------------
# Measures: each returns its per-seed values, a note saying exactly what was compared, and their noise
# --------------------------------------------------------------------------------------------------


def _value(chk, unit, ctx):
    (v,), (e,), level, metric, why, shared = _operands(chk, unit, ("of",), ctx)
    return _measured(list(v), None if e is None else float(e.mean()), _density_note(chk, unit, level, metric), why,
                     shared)


def _difference(chk, unit, ctx):
    (a, b), (ea, eb), level, metric, why, shared = _operands(chk, unit, ("a", "b"), ctx)
    return _measured(_paired(a, b, lambda x, y: x - y), _combined("difference", a, b, ea, eb),
                     _density_note(chk, unit, level, metric), why, shared)


def _ratio(chk, unit, ctx):
    (a, b), (ea, eb), level, metric, why, shared = _operands(chk, unit, ("a", "b"), ctx)
    return _measured(_paired(a, b, _divide), _combined("ratio", a, b, ea, eb),
                     _density_note(chk, unit, level, metric), why, shared)


def _divide(x: float, y: float) -> float:
    """x / y, NaN where y is 0 (an undefined ratio, which :func:`decide` reports as such)."""
    return x / y if y else math.nan


def _versus_dense(chk, unit, ctx):
    """A branch at one level against the dense net (IMP level 0) of the same seed, ``as``: difference
    (x - x0), ratio (x / x0), speedup (x0 / x, for iteration counts) or reduction (100 (1 - x / x0) %)."""
    (x,), (ex,), level, metric, why, shared = _operands(chk, unit, ("of",), ctx)
    dense = {**chk, "at": {"level": 0}, "dense": {"branch": "imp", "rewind": chk["of"].get("rewind")}}
    (x0,), (ex0,), _, _, _, _ = _operands(dense, unit, ("dense",), ctx)
    as_ = chk.get("as", "difference")
    how = {"difference": lambda a, b: a - b, "ratio": _divide, "speedup": lambda a, b: _divide(b, a),
           "reduction": lambda a, b: 100 * (1 - _divide(a, b))}[as_]
    return _measured(_paired(x, x0, how), _combined(as_, x, x0, ex, ex0),
                     _density_note(chk, unit, level, metric) + " vs. the dense net", why, shared)


def _against_dense(chk, unit, ctx) -> tuple[pd.DataFrame, str, Errors, str]:
    """Per seed and level >= 1 that every seed reached: the branch's metric x and the dense net's x0 (IMP
    level 0), their measurement errors ex, ex0 (NaN where unknown; :class:`Errors` says why and whether
    the seeds share them), and the density column."""
    metric = _metric(chk, unit)
    of = chk.get("of") or {"branch": "imp"}
    rows = _reinit_rows(chk, _rewind_rows(unit, of.get("rewind")), of["branch"])
    # A last density is the claim's quantity, so it needs the paper's definition; elsewhere the density
    # only says where a level lies, and the row names the definition it is in.
    col = _density(chk, unit) if chk["measure"] == "last_density" else \
        "density_total" if chk.get("density") == "total" and "density_total" in unit.columns and unit["density_total"].notna().any() \
        else "density"
    branch = rows[(rows["branch"] == of["branch"]) & (rows["level"] >= 1)]
    table = branch.groupby(["seed", "level"])[[metric, col]].mean().reset_index()
    dense = rows[(rows["branch"] == "imp") & (rows["level"] == 0)].groupby("seed")[metric].mean()
    if table.empty or dense.empty:
        raise NotRun(f"no dense net or no {of['branch']} levels")
    table["dense"] = table["seed"].map(dense)
    table["x"] = _scaled(metric, table[metric])
    table["x0"] = _scaled(metric, table["dense"])
    table = table.dropna(subset=["x", "x0"]).rename(columns={col: "d"})
    seeds = set(table["seed"])  # a mean curve over the seeds needs every seed at every level it has
    table = table.groupby("level").filter(lambda g: set(g["seed"]) >= seeds)
    if table.empty:
        raise NotRun(f"no {of['branch']} level that every seed reached")
    ex = _error(chk, metric, table["x"], unit, ctx)
    ex0 = _error(chk, metric, table["x0"], unit, ctx)
    table["ex"] = ex.values if ex.values is not None else math.nan
    table["ex0"] = ex0.values if ex0.values is not None else math.nan
    return table, metric, ex, col


def _best(chk, unit, ctx):
    """The best (``pick: max``, default) or worst (``pick: min``) pruned level of the mean-over-seeds curve
    against the dense net, ``as``: difference (x - x0), ratio, speedup (x0 / x, for iteration counts) or
    value (x itself). The paper reads its extreme off its mean curve; a mean of each seed's own extreme
    would be biased away from it by the seeds' noise. The range is that of the one level picked."""
    table, metric, errors, col = _against_dense(chk, unit, ctx)
    how = chk.get("as", "difference")
    gain = {"difference": table["x"] - table["x0"], "ratio": table["x"] / table["x0"],
            "speedup": table["x0"] / table["x"], "value": table["x"]}[how]
    rel = np.hypot(table["ex"] / table["x"], table["ex0"] / table["x0"])
    error = {"difference": np.hypot(table["ex"], table["ex0"]), "ratio": gain.abs() * rel, "speedup": gain.abs() * rel,
             "value": table["ex"]}[how]
    table = table.assign(g=gain.replace([np.inf, -np.inf], np.nan), e=error)
    curve = table.groupby("level")["g"].mean()
    if curve.isna().all():
        return Measured([math.nan], f"{how} undefined at every level ({metric})")
    level = int(curve.idxmin() if chk.get("pick") == "min" else curve.idxmax())
    at = table[table["level"] == level]
    e = float(at["e"].mean())
    what = "of all weights" if col == "density_total" else "of prunable weights"
    extreme = "worst" if chk.get("pick") == "min" else "best"
    return _measured(list(at["g"]), e if math.isfinite(e) else None,
                     f"level {level} ({100 * at['d'].mean():.3g}% {what} remaining), the {extreme} of the mean over "
                     f"{len(at)} seed(s) of {table['level'].nunique()} levels ({metric})",
                     errors.why or "no error model", errors.shared)


def _last_density(chk, unit, ctx):
    """Going sparser level by level on the mean-over-seeds curve, the density of the last level before the
    condition first fails (the LTH's "until P_m = ..." statements); the levels of the claim's range start
    at ``from_density`` (a fraction; denser levels are not part of the claim). The condition compares with
    the dense net: ``cond: {op, offset}`` tests ``x op x0 + offset`` on the mean over seeds of x - x0. A
    level's condition holds surely when its whole range (:data:`NOISE_RULE`) meets it and fails surely when
    none does; the verdict's range runs from the first level that surely fails (the true last density lies
    above it: one pruning level of grid) to the sparsest level that surely holds before it."""
    table, metric, errors, col = _against_dense(chk, unit, ctx)
    cond = chk.get("cond") or {"op": ">=", "offset": 0.0}
    op, offset = OPS[cond["op"]], cond.get("offset", 0.0)
    start = 100 * chk.get("from_density", 1.0)
    densities, holds, sure, fails = [], [], [], []
    for level, g in table.sort_values("level").groupby("level"):
        d = 100 * float(g["d"].mean())
        if d > start * DENSITY_MATCH:
            continue
        diff = list(g["x"] - g["x0"])
        mean = float(np.mean(diff))
        e = float(np.hypot(g["ex"], g["ex0"]).mean())
        h = _half_width(diff, e if math.isfinite(e) else 0.0, errors.shared)
        ends = [op(mean - h, offset), op(mean + h, offset)]
        densities.append(d)
        holds.append(op(mean, offset))
        sure.append(all(ends))
        fails.append(not any(ends))
    if not densities:
        raise NotRun(f"no level at or below {start:.3g}% remaining, where the claim's range starts")

    def before(i: int | None) -> float:  # the last density if the chain ends at level index i
        return densities[-1] if i is None else densities[i - 1] if i > 0 else start

    first = lambda flags: next((i for i, f in enumerate(flags) if f), None)  # noqa: E731
    point = before(first([not h for h in holds]))
    surely_failing = first(fails)
    # The sparsest level that surely holds before the first sure failure: the curve leaves the dense net's
    # level for good below it. A level whose range straddles the condition followed by sparser levels that
    # surely hold does not end the chain (near the dense net the effect is about zero, so ">= dense" is a
    # coin toss there whatever the curve does further down).
    prefix = sure[:surely_failing] if surely_failing is not None else sure
    last_sure = max((i for i, x in enumerate(prefix) if x), default=None)
    upper = densities[last_sure] if last_sure is not None else start
    interval = (densities[surely_failing] if surely_failing is not None else 0.0, upper)
    what = "all weights" if col == "density_total" else "prunable weights"
    range_note = f", from {start:.3g}%" if start < 100 else ""
    unknown = f"; {errors.why}: the range covers the level grid only" if errors.values is None and errors.why else ""
    detail = (f"{metric}; % of {what}; on the mean over {table['seed'].nunique()} seed(s){range_note}; sparsest "
              f"level trained: {densities[-1]:.3g}% (a value equal to it is a lower bound){unknown}")
    return Measured([point], detail, interval=interval)


# ---- instability (Frankle et al. 2020) ------------------------------------------------------------

def barrier_noise(pairs: pd.DataFrame, test_size: int | None, shared: bool = True, column: str = "barrier") -> float:
    """The half-width of the range of a mean barrier over ``pairs`` by :data:`NOISE_RULE`. The units are
    the seeds (the pairs of a seed share its parent network, so they are not independent draws): t x the
    spread of the per-seed means, against NOISE_Z x the binomial error of the test errors involved
    (``error``; of a peak error (``column`` max_error): of that error), which every seed ``shared``
    unless the check compares with the paper's own test set. Without a test-set size: the spread only."""
    per_seed = list(pairs.groupby("seed")[column].mean())
    if not test_size:
        return _half_width(per_seed, 0.0, shared)
    if column == "max_error":
        error = binomial(float(pairs[column].mean()) / 100, test_size)
    else:
        error = barrier_error(float(pairs["error"].mean()) / 100, test_size)
    return _half_width(per_seed, error, shared)


def _instability_unit(chk, unit: pd.DataFrame, ctx: Context) -> pd.DataFrame:
    b = tables.pair_barriers(ctx.analyses.get("instability"))
    b = b[b["experiment"].isin(unit["experiment"].unique())]
    if b.empty:
        raise NotRun("instability analysis not run for these runs")
    copied = (chk.get("of") or {}).get("branch", "copy") if isinstance(chk.get("of"), dict) else "copy"
    mine = b[b["branch"] == copied]
    if mine.empty:
        raise NotRun(f"no instability result of {copied} (SGD-noise copies of "
                     f"{'the IMP network' if copied == 'copy' else copied.removeprefix('copy_')})")
    return mine


def _test_size(unit: pd.DataFrame, ctx: Context) -> int | None:
    sizes = [tables.test_set_size(ctx.configs[e]) for e in unit["experiment"].unique() if "data" in ctx.configs.get(e, {})]
    return min(sizes) if sizes else None


def _instability_level(chk, unit, b: pd.DataFrame) -> int:
    at = chk.get("at", {"level": 0})
    if isinstance(at, dict) and "level" in at:
        return int(at["level"])
    levels = sorted(b["level"].unique())
    if at == "sparsest":
        return int(levels[-1])
    lv = _resolve_level(chk, unit, at, [])
    if lv not in levels:
        raise NotRun(f"instability analysis not run at level {lv}")
    return lv


def _barrier(chk, unit, ctx):
    b = _instability_unit(chk, unit, ctx)
    lv = _instability_level(chk, unit, b)
    rows = b[b["level"] == lv]
    k = chk.get("rewind")
    if k is not None:
        rows = rows[rows["rewind_step"] == ({"min": rows["rewind_step"].min(), "max": rows["rewind_step"].max()}.get(k, k))]
    if rows.empty:
        raise NotRun(f"no instability result at level {lv}" + (f", k = {k}" if k is not None else ""))
    col = "max_error" if chk.get("of") == "max_error" else "barrier"
    n = _test_size(unit, ctx)
    values = list(rows.groupby("seed")[col].mean())
    detail = _level_note(chk, unit, lv, rows["rewind_step"].unique())
    if n is None:
        return Measured(values, detail, no_noise="test-set size unknown")
    shared = not _papers_test_set(chk, unit["experiment"].unique(), ctx)
    return Measured(values, detail, noise=barrier_noise(rows, n, shared, col))


def _barrier_trend(chk, unit, ctx):
    b = _instability_unit(chk, unit, ctx)
    lv = _instability_level(chk, unit, b)
    rows = b[b["level"] == lv]
    ks = sorted(rows["rewind_step"].dropna().unique())
    if len(ks) < 2:
        raise NotRun(f"instability at level {lv} was measured at {len(ks)} rewind point(s); the trend needs two")
    lo_pairs, hi_pairs = rows[rows["rewind_step"] == ks[0]], rows[rows["rewind_step"] == ks[-1]]
    lo = lo_pairs.groupby("seed")["barrier"].mean()
    hi = hi_pairs.groupby("seed")["barrier"].mean()
    values = _paired(lo, hi, lambda x, y: x - y)
    detail = _level_note(chk, unit, lv, [ks[0], ks[-1]])
    n = _test_size(unit, ctx)
    if n is None:
        return Measured(values, detail, no_noise="test-set size unknown")
    shared = not _papers_test_set(chk, unit["experiment"].unique(), ctx)
    return Measured(values, detail, noise=math.hypot(barrier_noise(lo_pairs, n, shared), barrier_noise(hi_pairs, n, shared)))


def _onset(chk, unit, ctx):
    """The smallest rewind point k of the grid run whose mean barrier over the seeds is below the stability
    threshold (LMC: 2 %): a point of the k grid, as the paper's onset is a point of its grid, so a k the
    paper names can come back exactly. Its range (:data:`NOISE_RULE`) runs from the first k whose barrier
    range reaches under the threshold to the first k whose whole range is under it; never stable up to
    the largest k run puts it above that k."""
    b = _instability_unit(chk, unit, ctx)
    lv = _instability_level(chk, unit, b)
    rows = b[b["level"] == lv]
    threshold = chk.get("threshold", STABLE_PP)
    n = _test_size(unit, ctx)
    shared = not _papers_test_set(chk, unit["experiment"].unique(), ctx)
    ks = sorted(rows["rewind_step"].dropna().unique())
    onset = possible = sure = None
    for k in ks:
        pairs = rows[rows["rewind_step"] == k]
        mean = float(pairs.groupby("seed")["barrier"].mean().mean())
        h = barrier_noise(pairs, n, shared)
        onset = k if onset is None and mean < threshold else onset
        possible = k if possible is None and mean - h < threshold else possible
        sure = k if sure is None and mean + h < threshold else sure
    note = (_level_note(chk, unit, lv, ks) + f"; mean barrier over {rows['seed'].nunique()} seed(s) "
            f"({len(rows)} pairs), threshold {threshold:g} pp" + ("" if n else "; test-set size unknown: seed spread only"))
    interval = (float(possible if possible is not None else ks[-1]), float(sure) if sure is not None else math.inf)
    if onset is None:
        return Measured([math.inf], f"not stable up to k = {ks[-1]:g}; {note}", interval=interval)
    return Measured([float(onset)], note, interval=interval)


def _level_note(chk, unit: pd.DataFrame, level: int, ks) -> str:
    col = DENSITY_COLUMNS[chk.get("density", "prunable")]
    rows = unit.loc[(unit["branch"] == "imp") & (unit["level"] == level)]
    d = rows[col].mean() if col in rows.columns else math.nan
    copied = COPIES.get((chk.get("of") or {}).get("branch", "copy") if isinstance(chk.get("of"), dict) else "copy", "imp")
    network = "IMP" if copied == "imp" else copied.replace("_", " ") + " of IMP"
    where = "dense network" if level == 0 else f"{network} level {level} ({100 * d:.3g}% remaining)"
    return f"{where}; k = {', '.join(f'{k:g}' for k in sorted(ks))}"


# ---- successive levels (Paul et al. 2023) ---------------------------------------------------------


def _successive_iff_matching(chk, unit, ctx):
    """Share of levels L -> L+1 where "zero barrier" (< threshold) and "level L+1 matching" (accuracy
    within ``matching`` pp of the dense net) agree, per seed. A zero barrier needs it on every
    interpolation mask of ``masks`` (Paul et al. interpolate the two solutions as they are: ``none``;
    ``common`` projects level L onto level L+1's mask without retraining), and the claim is about the
    higher sparsities: levels whose density is at most ``max_density`` (a fraction; default all).

    Both tests compare one measured value with a threshold, so a level whose barrier or accuracy gap lies
    within its noise of the threshold (:data:`NOISE_RULE`: NOISE_Z x the binomial error of a barrier, of a
    difference of two accuracies) is undetermined, and the range runs from the share of levels that surely
    agree to the share that may. Without it a barrier of 2.05 pp against 2 pp, measured on 2,000 test
    images (+/- 2 pp), turned the verdict from all levels agreeing to none between two CPUs."""
    from .tables import SUCCESSIVE_ERROR

    s = ctx.analyses.get("successive")
    if s is None or s[s["experiment"].isin(unit["experiment"].unique())].empty:
        raise NotRun("successive-level interpolation not run for these runs")
    masks = _names(chk.get("masks", chk.get("mask", "common")))
    s = s[s["experiment"].isin(unit["experiment"].unique())]
    if "bn" in s.columns and s["bn"].nunique() > 1:
        s = s[s["bn"] == "as_is"]
    missing = [m for m in masks if not (s["mask"] == m).any()]
    if missing:
        raise NotRun(f"successive-level interpolation with mask {', '.join(missing)} not run for these runs")
    threshold, matching = chk.get("threshold", STABLE_PP), chk.get("matching", 0.2)
    max_density = chk.get("max_density", 1.0)
    metric = _metric(chk, unit)
    test_size = _test_size(unit, ctx)
    density = unit[unit["branch"] == "imp"].groupby("level")["density"].mean()
    out, surely, maybe = [], [], []
    for seed, g in s[s["mask"].isin(masks)].groupby("seed"):
        agree, sure_agree, sure_disagree = [], [], []
        for lv, paths in g[g["level"] >= 1].groupby("level"):
            if float(density.get(int(lv) + 1, math.nan)) > max_density + 1e-12 or int(lv) + 1 not in density:
                continue
            acc = _per_seed(unit, "imp", int(lv) + 1, metric).get(seed)
            dense = _per_seed(unit, "imp", 0, metric).get(seed)
            if acc is None or dense is None:
                continue
            # per mask: (barrier, its half-width); the gap to the dense net, its half-width (0: no noise known)
            barriers = [(_path_barrier(p, SUCCESSIVE_ERROR),
                         NOISE_Z * barrier_error(float(p[SUCCESSIVE_ERROR].mean()), test_size) if test_size else 0.0)
                        for _, p in paths.groupby("mask")]
            gap = 100 * (dense - acc)
            h = noise([gap], float(acc), test_size, difference=True) if test_size else 0.0
            zero, match = all(b < threshold for b, _ in barriers), gap <= matching
            zero_known = all(b + e < threshold for b, e in barriers) or any(b - e >= threshold for b, e in barriers)
            known = zero_known and (gap + h <= matching or gap - h > matching)
            agree.append(zero == match)
            sure_agree.append(known and zero == match)
            sure_disagree.append(known and zero != match)
        if agree:
            out.append(100 * float(np.mean(agree)))
            surely.append(100 * float(np.mean(sure_agree)))
            maybe.append(100 - 100 * float(np.mean(sure_disagree)))
    if not out:
        raise NotRun(f"no successive-level result with both levels trained at or below {100 * max_density:.3g}% remaining")
    where = f", levels at or below {100 * max_density:.3g}% remaining" if max_density < 1 else ""
    detail = (f"barrier < {threshold:g} pp on mask {' and '.join(masks)} vs. matching (within {matching:g} pp of "
              f"dense){where}")
    if not test_size:
        return Measured(out, detail, no_noise="test-set size unknown: a share of levels that agree")
    return Measured(out, detail + "; a level within its noise of either threshold is undetermined",
                    interval=(float(np.mean(surely)), float(np.mean(maybe))))


def _path_barrier(path: pd.DataFrame, column: str) -> float:
    return float(barrier(100 * path.sort_values("alpha")[column].to_numpy(dtype=float)))


MEASURES = {"value": _value, "difference": _difference, "ratio": _ratio, "versus_dense": _versus_dense, "best": _best,
            "last_density": _last_density, "barrier": _barrier, "barrier_trend": _barrier_trend,
            "onset": _onset, "successive_iff_matching": _successive_iff_matching}


# ---- the papers' values, for drawing beside our curves ---------------------------------------------

REPORTED_COLUMNS = ["experiment", "claim", "metric", "branch", "kind", "density", "value", "tol", "relative"]
"""One row per paper value a figure can place (:func:`reported_points`): ``kind`` point = ``value`` (in
the metric's unit, +/- ``tol``) at ``density`` (fraction of all weights); ``relative`` = the paper's
value is a change against the dense network (pp, or % fewer iterations), to be placed at our dense
network's mean; ``kind`` density = a P_m the paper reports for ``branch`` (``value``, in %)."""


def reported_points(claims: list[dict[str, Any]], jobs: pd.DataFrame,
                    configs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The paper values of the quantitative checks (those that select a ``protocol``) that sit at a
    density of the accuracy or early-stop curves, per experiment whose protocol the check matches:
    values at a density or at the dense net (``value``), changes against the dense net at a density
    (``versus_dense``), and P_m values (``last_density``). Other measures (ratios of two branches, a
    best level, barriers) have no single place on such a curve and are left to the report's table."""
    rows = []
    for claim in claims:
        for chk in _checks(claim):
            sel = chk.get("select") or {}
            expect = chk.get("expect") or {}
            if not sel.get("protocol") or not isinstance(expect.get("value"), (int, float)) or \
                    chk["measure"] not in ("value", "versus_dense", "last_density"):
                continue
            at = chk.get("at") if isinstance(chk.get("at"), dict) else {}
            measure = chk["measure"]
            branch = (chk.get("of") or {}).get("branch", "imp")
            density = 1.0 if at.get("level") == 0 else at.get("density")
            for name, unit in _units(chk, jobs, configs):
                for exp in sorted(unit["experiment"].unique()):
                    base = {"experiment": exp, "claim": claim["id"], "metric": _metric(chk, unit), "branch": branch}
                    if measure == "value" and density is not None and expect.get("op") == "within":
                        rows.append({**base, "kind": "point", "density": density, "value": float(expect["value"]),
                                     "tol": float(expect["tol"]), "relative": False})
                    elif measure == "versus_dense" and density is not None and chk.get("as", "difference") in (
                            "difference", "reduction"):
                        rows.append({**base, "kind": "point", "density": density, "value": float(expect["value"]),
                                     "tol": float(expect.get("tol", 0.0)), "relative": True})
                    elif measure == "last_density" and expect.get("op") in ("within_factor", "within"):
                        rows.append({**base, "kind": "density", "density": float(expect["value"]) / 100,
                                     "value": float(expect["value"]), "tol": math.nan, "relative": False})
    return pd.DataFrame(rows, columns=REPORTED_COLUMNS).drop_duplicates(ignore_index=True)
