"""The claims engine: verdicts that follow the data and clear its noise, filed under the right heading.

Each measure is checked on hand-made tables whose answers are known (no training)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ticketbench.report import claims, tables

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "config" / "claims.yaml"
SHARED_CLAIMS = REPO.parent / "shared" / "papers" / "reported_claims.yaml"


# --------------------------------------------------------------------------------------------------
# Claims: measures on tables with known answers
# --------------------------------------------------------------------------------------------------


def frame(rows: list[tuple]) -> pd.DataFrame:
    """(experiment, seed, k, branch, level, density, acc, es_step) -> a jobs table."""
    df = pd.DataFrame(rows, columns=["experiment", "seed", "rewind_step", "branch", "level", "density",
                                     "final_test_acc", "early_stop_step"])
    return df.assign(family="lth", group="g", network="lenet_300_100", dataset="mnist", replicate=None,
                     early_stop_test_acc=None, run=df["experiment"] + "/seed" + df["seed"].astype(str))


def lth_rows(imp: list[float], reinit: list[float], seeds=(0, 1), exp="e", k=0, es=None) -> list[tuple]:
    rows = []
    for s in seeds:
        for lv, acc in enumerate(imp):
            rows.append((exp, s, k, "imp", lv, 0.8 ** lv, acc + 0.01 * s, (es or {}).get(lv, 100)))
        for lv, acc in enumerate(reinit, start=1):
            rows.append((exp, s, k, "random_reinit", lv, 0.8 ** lv, acc + 0.01 * s, 100))
    return rows


def check(measure: str, expect: dict, **kw) -> dict:
    return {"label": "", "select": {"family": "lth"}, "measure": measure, "expect": expect, "metric": "final_test_acc", **kw}


def run(chk: dict, jobs: pd.DataFrame, configs=None, analyses=None) -> claims.Result:
    claim = {"id": "c", "paper": "p", "source": "s", "source_type": "primary", "quantity": "q", "value": 1,
             "condition": "", "check": chk}
    configs = configs or {e: {"name": e} for e in jobs["experiment"].unique()}
    (res,) = claims.evaluate([claim], jobs, configs, analyses or {})
    return res


def test_difference_at_the_sparsest_level_follows_the_data():
    better = frame(lth_rows([0.90, 0.91, 0.92], [0.89, 0.85]))
    chk = check("difference", {"op": ">", "value": 0}, at="sparsest", a={"branch": "imp"}, b={"branch": "random_reinit"})
    res = run(chk, better)
    assert res.verdict == claims.REPRODUCED
    assert res.values == pytest.approx([7.0, 7.0])  # level 2: 92 - 85 pp in both seeds
    worse = frame(lth_rows([0.90, 0.84, 0.80], [0.89, 0.85]))
    assert run(chk, worse).verdict == claims.NOT_REPRODUCED
    no_baseline = frame(lth_rows([0.90, 0.91, 0.92], []))
    res = run(chk, no_baseline)
    assert res.verdict == claims.NOT_RUN and "every compared branch" in res.detail


def test_the_range_of_a_mean_is_t_times_its_seed_spread_or_twice_its_binomial_error():
    # one difference of two accuracies near 85 % on 2,000 images: 100 sqrt(2 * .85 * .15 / 2000) = 1.129 pp
    assert claims.noise([3.0], 0.85, 2000, difference=True) == pytest.approx(2 * 1.1292, abs=2e-4)
    # two seeds on one test set: the test set's luck is theirs both, so the binomial term does not shrink;
    # it does (by sqrt 2) only where the test set's luck cancels (a paper's number on the paper's test set)
    assert claims.noise([3.0, 3.2], 0.85, 2000, difference=True) == pytest.approx(2 * 1.1292, abs=2e-4)
    assert claims.noise([3.0, 3.2], 0.85, 2000, difference=True, shared=False) == pytest.approx(
        2 * 1.1292 / 2 ** 0.5, abs=2e-4)
    # a wide spread wins, with Student's t for 1 degree of freedom (13.97), not 2: std 5.657 / sqrt 2 = 4
    assert claims.noise([1.0, 9.0], 0.85, 2000, difference=True) == pytest.approx(13.968 * 4.0, rel=1e-4)
    assert claims.noise([85.0], 0.85, 2000, difference=False) == pytest.approx(2 * 0.7984, abs=2e-4)


def test_the_t_quantile_has_the_coverage_of_two_normal_sigmas():
    assert [round(claims.t_quantile(n), 2) for n in (2, 3, 5)] == [13.97, 4.53, 2.87]
    assert claims.t_quantile(10_000) == pytest.approx(claims.NOISE_Z, abs=1e-3)
    assert claims.t_quantile(1) == math.inf


def test_an_effect_within_the_noise_is_inconclusive_and_one_clear_of_it_is_decided():
    """The quick run's "+0.50 pp, one seed, 2,000 test images" is ten images: inconclusive, not reproduced."""
    chk = check("difference", {"op": ">", "value": 0}, at="sparsest", a={"branch": "imp"}, b={"branch": "random_reinit"})
    sized = lambda jobs, n: {e: {"name": e, "data": {"name": "fashion_mnist", "test_subset": n}}  # noqa: E731
                             for e in jobs["experiment"].unique()}
    close = frame(lth_rows([0.90, 0.91, 0.865], [0.90, 0.86]))  # level 2: +0.5 pp on both seeds
    res = run(chk, close, sized(close, 2000))
    assert res.verdict == claims.INCONCLUSIVE and res.noise > 0.25 and "noise ±" in res.summary()
    assert run(chk, close, sized(close, 1_000_000)).verdict == claims.REPRODUCED  # the same effect, measured finely
    worse = frame(lth_rows([0.90, 0.84, 0.80], [0.89, 0.85]))
    assert run(chk, worse, sized(worse, 2000)).verdict == claims.NOT_REPRODUCED  # -5 pp: clear of the noise


def test_density_selection_uses_the_nearest_level_or_declines():
    jobs = frame(lth_rows([0.90, 0.91, 0.95, 0.93], [0.9, 0.9, 0.9]))  # densities 1, .8, .64, .512
    chk = check("versus_dense", {"op": "within", "value": 5.0, "tol": 0.01}, at={"density": 0.65}, of={"branch": "imp"})
    assert run(chk, jobs).values == pytest.approx([5.0, 5.0])
    res = run({**chk, "at": {"density": 0.1}}, jobs)
    assert res.verdict == claims.NOT_RUN and "no IMP level near 10%" in res.detail


def test_speedup_reduction_and_last_density():
    jobs = frame(lth_rows([0.90, 0.92, 0.91, 0.89], [], es={0: 1000, 1: 600, 2: 500, 3: 1200}))
    best = check("best", {"op": ">", "value": 1}, metric="early_stop_step", of={"branch": "imp"}, **{"as": "speedup"})
    assert run(best, jobs).values == pytest.approx([2.0, 2.0])  # 1000 / 500 at level 2
    red = check("versus_dense", {"op": ">", "value": 0}, metric="early_stop_step", at={"level": 1}, of={"branch": "imp"},
                **{"as": "reduction"})
    assert run(red, jobs).values == pytest.approx([40.0, 40.0])  # 600 is 40 % earlier than 1000
    last = check("last_density", {"op": "within_factor", "value": 64.0, "factor": 1.3}, of={"branch": "imp"},
                 cond={"op": ">=", "offset": 0})
    res = run(last, jobs)  # accuracy stays >= dense down to level 2 (64 %), falls at level 3
    assert res.values == pytest.approx([64.0]) and res.verdict == claims.REPRODUCED  # one value: the mean curve's


def test_rewind_comparison_pairs_seeds_across_the_k_sweep():
    jobs = frame(lth_rows([0.9, 0.8, 0.7], [], exp="k0", k=0) + lth_rows([0.9, 0.85, 0.8], [], exp="k500", k=500))
    chk = check("difference", {"op": ">=", "value": 0}, at="sparsest", a={"branch": "imp", "rewind": "max"},
                b={"branch": "imp", "rewind": "min"})
    res = run(chk, jobs)
    assert res.unit == "k0, k500" and res.values == pytest.approx([10.0, 10.0])
    single = run(chk, jobs[jobs["experiment"] == "k0"])
    assert single.verdict == claims.NOT_RUN and "only one rewind point" in single.detail


def path(experiment: str, k: float, level: int, errors: list[float], seed: int = 0) -> pd.DataFrame:
    alphas = [i / (len(errors) - 1) for i in range(len(errors))]
    return pd.DataFrame({"experiment": experiment, "group": "g", "seed": seed, "rewind_step": k, "level": level,
                         "pair": 0, "alpha": alphas, tables.INSTABILITY_ERROR: errors})


def test_error_barrier_is_the_peak_above_the_mean_of_the_endpoints():
    inst = path("k0", 0, 0, [0.10, 0.50, 0.20])
    b = tables.barriers(inst)
    assert b["barrier"].item() == pytest.approx(100 * (0.50 - 0.15))
    assert tables.barriers(path("k0", 0, 0, [0.1, 0.1, 0.1]))["barrier"].item() == 0


def test_instability_trend_and_onset_follow_the_barriers():
    jobs = frame(lth_rows([0.9, 0.8], [], exp="k0", k=0, seeds=(0,)) + lth_rows([0.9, 0.8], [], exp="k100", k=100, seeds=(0,))
                 + lth_rows([0.9, 0.8], [], exp="k500", k=500, seeds=(0,)))
    inst = pd.concat([path("k0", 0, 0, [0.1, 0.6, 0.1]), path("k100", 100, 0, [0.1, 0.15, 0.1]),
                      path("k500", 500, 0, [0.1, 0.11, 0.1])])
    trend = check("barrier_trend", {"op": ">", "value": 0}, at={"level": 0})
    res = run(trend, jobs, analyses={"instability": inst})
    assert res.verdict == claims.REPRODUCED and res.values == pytest.approx([49.0])
    onset = check("onset", {"op": "within_factor", "value": 500, "factor": 1.5}, at={"level": 0}, threshold=2.0)
    assert run(onset, jobs, analyses={"instability": inst}).values == [500.0]  # k = 100 still has a 5 pp barrier
    missing = run(trend, jobs, analyses={"instability": None})
    assert missing.verdict == claims.NOT_RUN and "instability analysis not run" in missing.detail


def test_quantitative_claims_run_only_on_runs_matching_the_papers_protocol():
    jobs = frame(lth_rows([0.90, 0.92], [], seeds=(0,)))
    chk = check("value", {"op": "within", "value": 90.0, "tol": 2.0}, at={"level": 0}, of={"branch": "imp"})
    chk["select"] = {"protocol": [{"train.lr": 0.0012, "train.steps": "50000it", "data.name": "mnist"}],
                     "protocol_name": "lth-lenet"}
    paper = {"e": {"name": "e", "train": {"lr": 0.0012, "steps": "50000it"}, "data": {"name": "mnist"}}}
    assert run(chk, jobs, paper).verdict == claims.REPRODUCED
    quick = {"e": {"name": "e", "train": {"lr": 0.0012, "steps": "2000it"}, "data": {"name": "mnist"}}}
    res = run(chk, jobs, quick)
    assert res.verdict == claims.NOT_RUN and "protocol 'lth-lenet'" in res.detail


def test_claims_file_names_the_broken_claim(tmp_path):
    raw = yaml.safe_load(CLAIMS.read_text())
    raw["claims"][0]["check"] = [{"measure": "vibes", "expect": {"op": ">", "value": 0}}]
    bad = tmp_path / "claims.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(claims.ClaimsError, match=f"claim {raw['claims'][0]['id']}: check.measure 'vibes'"):
        claims.load(bad)


def test_claims_file_copies_the_papers_facts_faithfully():
    """Every result claim of the shared research note is in config/claims.yaml with the same value and
    source (only the superseded version's numbers are left out)."""
    if not SHARED_CLAIMS.is_file():
        pytest.skip(f"{SHARED_CLAIMS} (the project's shared research notes) is not available here")
    ours = {c["id"]: c for c in claims.load(CLAIMS)}
    for c in yaml.safe_load(SHARED_CLAIMS.read_text()):
        if c["kind"] != "result" or c["id"] == "lth-anon-superseded":
            continue
        assert c["id"] in ours, c["id"]
        for key in ("paper", "source", "source_type", "quantity", "value", "condition"):
            assert ours[c["id"]][key] == c[key], (c["id"], key)




def claim_of(chk: dict, **kw) -> dict:
    return {"id": "c", "paper": "p", "source": "s", "source_type": "primary", "quantity": "q", "value": 1,
            "condition": "", "check": chk, **kw}


def sized(jobs: pd.DataFrame, n: int, **train) -> dict:
    return {e: {"name": e, "data": {"name": "fashion_mnist", "test_subset": n}, "train": train}
            for e in jobs["experiment"].unique()}


# ---- 1. a noise floor for every decided check -------------------------------------------------------


def seed_rows(accs: list[float], exp="e", level=0) -> list[tuple]:
    """IMP at ``level`` with one accuracy per seed."""
    return [(exp, s, 0, "imp", level, 0.8 ** level, a, 100) for s, a in enumerate(accs)]


def test_a_quantitative_check_is_reproduced_only_when_inside_its_tolerance_by_more_than_the_noise():
    jobs = frame(seed_rows([0.900, 0.905, 0.910]))  # dense 90.5 % over three seeds, std 0.5 pp
    chk = check("value", {"op": "within", "value": 90.5, "tol": 1.0}, at={"level": 0}, of={"branch": "imp"})
    fine = run(chk, jobs, sized(jobs, 1_000_000))  # seed spread: t(2 dof) 4.53 x 0.5 / sqrt 3 = 1.31 pp > 1 pp
    assert fine.verdict == claims.INCONCLUSIVE and fine.noise == pytest.approx(4.527 * 0.5 / math.sqrt(3), rel=1e-3)
    assert run({**chk, "expect": {"op": "within", "value": 90.5, "tol": 1.4}}, jobs, sized(jobs, 1_000_000)).verdict \
        == claims.REPRODUCED
    assert run({**chk, "expect": {"op": "within", "value": 80.0, "tol": 1.0}}, jobs, sized(jobs, 1_000_000)).verdict \
        == claims.NOT_REPRODUCED
    # the same seeds on 1,000 test images: one test set for all three, so its binomial error 0.93 pp is the
    # mean's too (it does not shrink with the seeds)
    coarse = run({**chk, "expect": {"op": "within", "value": 90.5, "tol": 1.4}}, jobs, sized(jobs, 1000))
    assert coarse.noise == pytest.approx(2 * 100 * math.sqrt(0.905 * 0.095 / 1000), rel=1e-3)
    assert coarse.verdict == claims.INCONCLUSIVE


def test_against_the_papers_number_on_the_papers_test_set_the_test_sets_luck_cancels():
    """The paper measured its networks on the same 10,000 CIFAR-10 test images as ours: which images they
    are moves both alike, so only each network's own noise is left, and it shrinks with the seeds."""
    jobs = frame(seed_rows([0.905] * 5))
    chk = check("value", {"op": "within", "value": 90.5, "tol": 0.3}, at={"level": 0}, of={"branch": "imp"})
    chk["select"] = {"protocol": [{"data.name": "cifar10"}], "protocol_name": "p"}
    whole = {"e": {"name": "e", "data": {"name": "cifar10"}}}
    res = run(chk, jobs, whole)  # binomial 0.293 pp on 10,000 images, / sqrt 5, x 2 = 0.26 pp < 0.3 pp
    assert res.noise == pytest.approx(2 * 100 * math.sqrt(0.905 * 0.095 / 10_000) / math.sqrt(5), rel=1e-3)
    assert res.verdict == claims.REPRODUCED
    subset = {"e": {"name": "e", "data": {"name": "cifar10", "test_subset": 5000}}}  # a sample of its own
    assert run(chk, jobs, subset).noise == pytest.approx(2 * 100 * math.sqrt(0.905 * 0.095 / 5000), rel=1e-3)
    direction = {**chk, "select": {"family": "lth"}, "expect": {"op": ">", "value": 90.0}}  # a claim about networks
    assert run(direction, jobs, whole).noise == pytest.approx(2 * 100 * math.sqrt(0.905 * 0.095 / 10_000), rel=1e-3)


def test_a_ratio_carries_the_relative_errors_of_both_accuracies():
    jobs = frame(lth_rows([0.80, 0.80], [0.40]))
    chk = check("ratio", {"op": ">", "value": 1.0}, at={"level": 1}, a={"branch": "imp"}, b={"branch": "random_reinit"})
    res = run(chk, jobs, sized(jobs, 100))
    a, b = 0.805, 0.405  # the two seeds' means: 0.80/0.81 and 0.40/0.41
    rel = math.hypot(math.sqrt(a * (1 - a) / 100) / a, math.sqrt(b * (1 - b) / 100) / b)
    assert res.noise == pytest.approx(2 * a / b * rel, rel=0.02)  # one test set: the error does not shrink
    assert res.verdict == claims.REPRODUCED  # about 2x, far from 1


def test_an_early_stopping_iteration_is_known_to_the_eval_interval():
    jobs = frame(lth_rows([0.9, 0.9], [], es={0: 1000, 1: 950}))
    chk = check("versus_dense", {"op": "<", "value": 0}, metric="early_stop_step", at={"level": 1}, of={"branch": "imp"})
    coarse = run(chk, jobs, sized(jobs, 1000, eval_every="100it"))  # 50 iterations earlier, seen every 100
    # each network's own resolution, so it shrinks with the seeds: 2 x 100 sqrt 2 / sqrt 2
    assert coarse.noise == pytest.approx(2 * 100 * math.sqrt(2) / math.sqrt(2)) and coarse.verdict == claims.INCONCLUSIVE
    assert run(chk, jobs, sized(jobs, 1000, eval_every="10it")).verdict == claims.REPRODUCED


def test_where_no_noise_is_definable_the_row_says_so():
    jobs = frame(lth_rows([0.90, 0.92], []))
    chk = check("value", {"op": ">", "value": 80.0}, at={"level": 0}, of={"branch": "imp"})
    res = run(chk, jobs)  # no run config: the test-set size is unknown
    assert res.noise is None and "no noise definable (test-set size unknown)" in res.detail
    assert res.verdict == claims.REPRODUCED


def test_a_barrier_is_noisy_by_the_spread_over_seeds_not_pairs_or_the_binomial_error_of_its_test_errors():
    jobs = frame(lth_rows([0.9, 0.8], [], exp="k0", k=0, seeds=(0, 1)))
    pairs = pd.concat([path("k0", 0, 0, [0.10, 0.13, 0.10], seed=0).assign(pair=0),  # seed 0: 3 and 2 pp
                       path("k0", 0, 0, [0.10, 0.12, 0.10], seed=0).assign(pair=1),
                       path("k0", 0, 0, [0.10, 0.14, 0.10], seed=1).assign(pair=0),  # seed 1: 4 and 3 pp
                       path("k0", 0, 0, [0.10, 0.13, 0.10], seed=1).assign(pair=1)])
    chk = check("barrier", {"op": ">", "value": 2.0}, at={"level": 0})
    fine = run(chk, jobs, sized(jobs, 10_000_000), {"instability": pairs})
    # two units (the seeds: 2.5 and 3.5 pp), not four pairs: t(1 dof) x std 0.707 / sqrt 2
    assert fine.values == pytest.approx([2.5, 3.5]) and fine.noise == pytest.approx(13.968 * 0.5, rel=1e-4)
    assert fine.verdict == claims.INCONCLUSIVE
    one = pairs[pairs["seed"] == 0]  # one seed: its pairs share a parent, no spread can be estimated
    coarse = run(chk, jobs[jobs["seed"] == 0], sized(jobs, 200), {"instability": one})
    p = (0.13 + 0.10 + 0.10 + 0.12 + 0.10 + 0.10) / 6  # the mean test error of the points involved
    assert coarse.noise == pytest.approx(2 * 100 * math.sqrt(1.5 * p * (1 - p) / 200), rel=1e-6)


def test_a_last_density_is_known_to_one_pruning_level():
    jobs = frame(lth_rows([0.90, 0.92, 0.91, 0.89], []))  # holds down to 64 %, fails at 51.2 %
    chk = check("last_density", {"op": "within_factor", "value": 64.0, "factor": 1.3}, of={"branch": "imp"})
    res = run(chk, jobs)
    assert res.interval == pytest.approx((51.2, 64.0)) and res.verdict == claims.REPRODUCED
    tight = run({**chk, "expect": {"op": "within_factor", "value": 64.0, "factor": 1.01}}, jobs)
    assert tight.verdict == claims.INCONCLUSIVE  # the level grid cannot resolve 1 %


def test_the_noise_rule_states_every_kind_of_noise():
    for words in ("binomial", "eval interval", "barrier", "pairs", "onset", "within", "inconclusive",
                  "no noise is definable"):
        assert words in claims.NOISE_RULE, words


# ---- 2. the onset --------------------------------------------------------------------------------


def sweep_jobs(ks, seeds=(0,)) -> pd.DataFrame:
    return frame(sum((lth_rows([0.9, 0.8], [], exp=f"k{k}", k=k, seeds=seeds) for k in ks), []))


def test_never_stable_up_to_the_largest_k_is_not_reproduced_and_says_so():
    ks = (0, 100, 500, 1000)
    jobs = sweep_jobs(ks)
    inst = pd.concat([path(f"k{k}", k, 0, [0.1, 0.4, 0.1]) for k in ks])
    onset = check("onset", {"op": "within_factor", "value": 500, "factor": 1.5}, at={"level": 0}, threshold=2.0)
    res = run(onset, jobs, analyses={"instability": inst})  # the onset is beyond 1000, outside 333..750
    assert res.verdict == claims.NOT_REPRODUCED and "not stable up to k = 1000" in res.detail
    assert claims.unit_of(onset) == "iterations"
    short = run(onset, jobs[jobs["rewind_step"] <= 500], analyses={"instability": inst[inst["rewind_step"] <= 500]})
    assert short.verdict == claims.INCONCLUSIVE and "not stable up to k = 500" in short.detail  # 600 would match
    later = run({**onset, "expect": {"op": ">", "value": 100}}, jobs, analyses={"instability": inst})
    assert later.verdict == claims.REPRODUCED  # "stable only after k = 100" holds: the onset is beyond 1000


def test_the_lmc_onset_is_the_first_k_where_the_mean_barrier_over_all_pairs_is_under_the_threshold():
    jobs = sweep_jobs((0, 100, 500), seeds=(0, 1))
    # seed 0 is stable from k = 100 (barrier 1 pp), seed 1 only from k = 500 (barrier 5 pp at k = 100):
    # the mean barrier at k = 100 is 3 pp, so the onset is 500 (the mean of per-seed onsets would say 300)
    inst = pd.concat([path("k0", 0, 0, [0.1, 0.5, 0.1], seed=s) for s in (0, 1)]
                     + [path("k100", 100, 0, [0.1, 0.11, 0.1], seed=0), path("k100", 100, 0, [0.1, 0.15, 0.1], seed=1)]
                     + [path("k500", 500, 0, [0.1, 0.1, 0.1], seed=s) for s in (0, 1)])
    onset = check("onset", {"op": "within_factor", "value": 500, "factor": 1.5}, at={"level": 0}, threshold=2.0)
    res = run(onset, jobs, analyses={"instability": inst})
    assert res.values == [500.0] and res.interval == (100.0, 500.0)
    assert res.verdict == claims.INCONCLUSIVE  # somewhere in (100, 500]: 333..750 is only partly covered
    wide = {**onset, "expect": {"op": "within_factor", "value": 300, "factor": 3.1}}
    assert run(wide, jobs, analyses={"instability": inst}).verdict == claims.REPRODUCED


# ---- 3. not run here vs no experiment anywhere ----------------------------------------------------


def suite_of(family: str, branches: set[str], **run_cfg) -> dict:
    return {"paper_e": claims.SuiteExperiment(family, frozenset(branches), run_cfg)}


def test_not_run_only_when_the_suite_has_an_experiment_the_check_selects():
    jobs = frame(lth_rows([0.9, 0.8], []))
    chk = check("value", {"op": ">", "value": 0}, at={"level": 0}, of={"branch": "imp"},
                select={"family": "lth", "branches": ["finetune"]})
    claim = claim_of(chk)
    configs = {"e": {"name": "e"}}
    (res,) = claims.evaluate([claim], jobs, configs, {}, suite_of("lth", {"imp", "finetune"}))
    assert res.verdict == claims.NOT_RUN and "config/config.yaml runs it as paper_e" in res.detail
    (res,) = claims.evaluate([claim], jobs, configs, {}, suite_of("saleem", {"imp", "finetune"}))
    assert res.verdict == claims.NO_EXPERIMENT
    rewound = {**chk, "select": {"family": "lth"}, "of": {"branch": "imp", "rewind": 500}}
    (res,) = claims.evaluate([claim_of(rewound)], jobs.iloc[0:0], {}, {}, suite_of("lth", {"imp"}, imp={"rewind": "0it"}))
    assert res.verdict == claims.NO_EXPERIMENT and "none rewinds to k = 500" in res.detail


def test_the_suite_is_read_from_the_paper_scale_workflow_config():
    suite = claims.paper_suite(CLAIMS)
    assert suite["lth_lenet"].family == "lth" and "random_reinit" in suite["lth_lenet"].branches
    assert suite["saleem_resnet20"].branches >= {"imp", "finetune", "oneshot"}
    assert "copy" in suite["stabilized_resnet20_k0"].branches
    assert suite["lth_lenet"].run["train"]["lr"] == 0.0012


# ---- 4. the reported quantity is the paper's, or the row says it tests a direction -----------------


def test_an_onset_claim_reports_an_iteration_or_says_it_tests_a_direction_only(tmp_path):
    raw = yaml.safe_load(CLAIMS.read_text())
    for c in claims.load(CLAIMS):
        if claims.ONSET_QUANTITY.match(str(c["quantity"])):
            for chk in claims._checks(c):
                assert claims.unit_of(chk) == "iterations" or chk["label"].startswith("direction only"), c["id"]
    onset = next(c for c in raw["claims"] if c["id"] == "lmc-onset-resnet20")
    onset["check"][1]["label"] = "qualitative, any scale"
    bad = tmp_path / "claims.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(claims.ClaimsError, match="lmc-onset-resnet20: the paper's quantity is an iteration"):
        claims.load(bad)


# ---- 5. successive levels -------------------------------------------------------------------------


def successive(level: int, mask: str, errors: list[float], seed: int = 0) -> pd.DataFrame:
    alphas = [i / (len(errors) - 1) for i in range(len(errors))]
    return pd.DataFrame({"experiment": "e", "seed": seed, "level": level, "level_b": level + 1, "mask": mask,
                         "alpha": alphas, tables.SUCCESSIVE_ERROR: errors})


def test_successive_levels_need_a_zero_barrier_on_both_masks_and_only_at_high_sparsity():
    jobs = frame(lth_rows([0.90, 0.90, 0.90, 0.90], []))  # every level matching (density 1, .8, .64, .512)
    flat = [0.1, 0.1, 0.1]
    chk = check("successive_iff_matching", {"op": ">=", "value": 100.0}, masks=["common", "none"], threshold=2.0,
                matching=0.2, select={})
    both = pd.concat([successive(lv, m, flat) for lv in (1, 2) for m in ("common", "none")])
    assert run(chk, jobs, analyses={"successive": both}).verdict == claims.REPRODUCED
    # unmasked level-1 -> 2 path has a barrier: not "zero barrier", yet level 2 matches: disagreement
    bumpy = pd.concat([successive(1, "common", flat), successive(1, "none", [0.1, 0.5, 0.1]),
                       successive(2, "common", flat), successive(2, "none", flat)])
    res = run(chk, jobs, analyses={"successive": bumpy})
    assert res.values == [50.0] and res.verdict == claims.NOT_REPRODUCED
    sparse = run({**chk, "max_density": 0.6}, jobs, analyses={"successive": bumpy})  # level 2 (64 %) left out
    assert sparse.values == [100.0] and "at or below 60% remaining" in sparse.detail
    common_only = run(chk, jobs, analyses={"successive": bumpy[bumpy["mask"] == "common"]})
    assert common_only.verdict == claims.NOT_RUN and "mask none not run" in common_only.detail


def test_a_successive_level_within_its_noise_of_a_threshold_leaves_the_share_of_agreeing_levels_open():
    """At 5 % error on 10,000 test images a barrier is known to about +/- 0.5 pp: a level whose barrier is
    2.05 pp against a 2 pp threshold is neither stable nor unstable, so the check is inconclusive, not "0 %
    of levels agree" (the quick run on 2,000 images, +/- 2 pp, got that from one CPU's kernels and 100 %
    from another's). Barriers clear of the threshold decide it."""
    jobs = frame(lth_rows([0.80, 0.83, 0.83, 0.83], []))  # every pruned level 3 pp above the dense net: matching
    chk = check("successive_iff_matching", {"op": ">=", "value": 100.0}, masks=["none"], threshold=2.0, matching=0.2,
                select={})
    configs = {"e": {"name": "e", "data": {"name": "fashion_mnist", "test_subset": 10000}}}

    def share(peaks: list[float]) -> claims.Result:
        paths = pd.concat([successive(lv, "none", [0.05, 0.05 + peak / 100, 0.05], seed)
                           for seed in (0, 1) for lv, peak in zip((1, 2), peaks)])
        return run(chk, jobs, configs, analyses={"successive": paths})

    near = share([2.05, 0.0])
    assert near.values == [50.0, 50.0] and near.verdict == claims.INCONCLUSIVE  # the mean alone would say "not"
    assert "undetermined" in near.detail
    assert share([0.0, 0.0]).verdict == claims.REPRODUCED
    assert share([10.0, 0.0]).verdict == claims.NOT_REPRODUCED  # a barrier far above 2 pp beside matching levels
    no_size = run(chk, jobs, analyses={"successive": pd.concat([successive(1, "none", [0.2, 0.2205, 0.2])])})
    assert no_size.verdict == claims.NOT_REPRODUCED and "test-set size unknown" in no_size.detail


def test_paul_successive_is_checked_on_the_solutions_as_trained_at_the_higher_sparsities():
    """Paul et al. interpolate the level L and level L+1 solutions; the common-mask path starts from level L
    projected onto level L+1's mask without retraining, whose high error makes a barrier by construction."""
    (chk,) = claims._checks(next(c for c in claims.load(CLAIMS) if c["id"] == "paul-successive-lmc"))
    assert chk["masks"] == ["none"] and chk["max_density"] < 1


# ---- 6. LTH App. B on LTH runs with a finetune branch ---------------------------------------------


def test_lth_app_b_is_checked_only_on_lth_runs_that_continue_training():
    (chk,) = claims._checks(next(c for c in claims.load(CLAIMS) if c["id"] == "lth-appB-reset"))
    assert chk["select"]["family"] == "lth" and "finetune" in chk["select"]["branches"]
    saleem = frame(lth_rows([0.9, 0.8], [])).assign(family="saleem")
    saleem = pd.concat([saleem, saleem[saleem["branch"] == "imp"].assign(branch="finetune")])
    (res,) = claims.evaluate([claim_of(chk)], saleem, {"e": {"name": "e"}}, {}, suite_of("saleem", {"imp", "finetune"}))
    assert res.verdict == claims.NO_EXPERIMENT  # Saleem's late-rewound ResNet is not LTH App. B


# ---- 7. P_m: the paper's density definition -------------------------------------------------------


def test_lth_claims_at_a_density_use_all_weights_and_refuse_tables_without_them():
    jobs = frame(lth_rows([0.90, 0.91, 0.95, 0.93], []))
    jobs["density_total"] = jobs["density"] * 0.9 + 0.1  # unpruned weights: P_m is higher than the prunable density
    chk = check("versus_dense", {"op": ">", "value": 0}, at={"density": 0.676}, of={"branch": "imp"}, density="total")
    res = run(chk, jobs)  # 0.676 = level 2 of all weights (0.64 x 0.9 + 0.1), level 3 of prunable ones (0.512)
    assert res.values == pytest.approx([5.0, 5.0]) and "level 2" in res.detail
    assert run({**chk, "density": "prunable", "at": {"density": 0.55}}, jobs).values == pytest.approx([3.0, 3.0])
    old = run(chk, jobs.drop(columns="density_total"))
    assert old.verdict == claims.NOT_RUN and "do not record density_total" in old.detail and "re-run the tables" in old.detail
    lth = [c for c in claims.load(CLAIMS) if c["paper"].startswith("Frankle & Carbin")]
    assert lth and all(chk["density"] == "total" for c in lth for chk in claims._checks(c))


def test_an_unknown_density_definition_is_refused(tmp_path):
    raw = yaml.safe_load(CLAIMS.read_text())
    raw["densities"] = {"Frankle & Carbin 2019 (arXiv:1803.03635v5)": "everything"}
    bad = tmp_path / "claims.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(claims.ClaimsError, match="densities"):
        claims.load(bad)


# ---- 8. which random reinitialization a verdict rests on ------------------------------------------


def test_a_verdict_on_random_reinit_says_which_one_and_uses_the_papers():
    jobs = frame(lth_rows([0.90, 0.91, 0.92], [0.89, 0.85], k=100))
    jobs["reinit_start"] = jobs["branch"].map({"random_reinit": "rewind"})
    chk = check("difference", {"op": ">", "value": 0}, at="sparsest", a={"branch": "imp"}, b={"branch": "random_reinit"})
    res = run(chk, jobs)
    assert "trained from k to T (reinit_start rewind)" in res.detail and "the paper does not say which" in res.detail
    assert run({**chk, "reinit_start": "zero"}, jobs).verdict == claims.NOT_RUN
    assert "before reinit_start" in run(chk, jobs.drop(columns="reinit_start")).detail
    assert "coincide" in run(chk, jobs.assign(rewind_step=0)).detail  # k = 0: both definitions are one
    (lmc,) = [c for c in claims.load(CLAIMS) if c["id"] == "lmc-random-baselines"]
    assert lmc["reinit_start"] == "rewind"


# ---- 9. the new paper-scale experiments are selected by protocol -----------------------------------


def test_the_random_baselines_instability_is_checked_on_their_own_copies():
    (lmc,) = [c for c in claims.load(CLAIMS) if c["id"] == "lmc-random-baselines"]
    stab = [chk for chk in claims._checks(lmc) if chk["measure"] == "barrier"]
    assert {chk["of"]["branch"] for chk in stab} == {"copy_random_prune", "copy_random_reinit"}
    jobs = frame(lth_rows([0.9, 0.8], [], exp="k0", k=0, seeds=(0,)))
    inst = pd.concat([path("k0", 0, 1, [0.1, 0.1, 0.1]).assign(branch="copy"),
                      path("k0", 0, 1, [0.1, 0.4, 0.1]).assign(branch="copy_random_prune")])
    chk = check("barrier", {"op": ">=", "value": 2.0}, at={"level": 1}, of={"branch": "copy_random_prune"})
    res = run(chk, jobs, sized(jobs, 10_000), {"instability": inst})
    assert res.values == pytest.approx([30.0]) and res.verdict == claims.REPRODUCED
    assert "random prune of IMP level 1" in res.detail
    imp = run({**chk, "of": {"branch": "copy"}}, jobs, sized(jobs, 10_000), {"instability": inst})
    assert imp.values == pytest.approx([0.0]) and "random" not in imp.detail
    # At any scale too: the reduced configs that train the copies get a verdict on them, not only the paper's.
    anywhere = [chk for chk in stab if "protocol" not in (chk.get("select") or {})]
    assert {chk["of"]["branch"] for chk in anywhere} == {"copy_random_prune", "copy_random_reinit"}
    assert all(chk["at"] == "sparsest" for chk in anywhere)


# ---- 10. no machine's path in the claims file -----------------------------------------------------


def test_the_claims_file_cites_files_by_project_path_only(tmp_path):
    raw = yaml.safe_load(CLAIMS.read_text())
    raw["claims"][0]["source"] = "notes at /work/shared/papers/reported_numbers.md a.2"
    bad = tmp_path / "claims.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(claims.ClaimsError, match="absolute path '/work/shared/papers/reported_numbers.md'"):
        claims.load(bad)
    claims.load(CLAIMS)  # the committed file cites shared/papers/... relatively


# ---- 11. verdicts the data can reach (issue 21; the paper-scale sweep is tests/test_reachability.py) --


def test_best_is_the_extreme_of_the_mean_curve_not_the_mean_of_each_seeds_extreme():
    """Two seeds whose noise puts their own best at different levels: each seed's best is +1 pp, the mean
    curve's best +0.5 pp. The paper reads its best off its mean curve."""
    rows = []
    for seed, gains in ((0, [1.0, 0.0]), (1, [0.0, 1.0])):
        rows.append(("e", seed, 0, "imp", 0, 1.0, 0.90, 100))
        rows += [("e", seed, 0, "imp", lv, 0.8 ** lv, 0.90 + g / 100, 100) for lv, g in enumerate(gains, start=1)]
    jobs = frame(rows)
    best = check("best", {"op": "within", "value": 0.5, "tol": 0.01}, of={"branch": "imp"}, **{"as": "difference"})
    res = run(best, jobs)
    assert res.values == pytest.approx([1.0, 0.0]) and "level 1" in res.detail  # the level, seed by seed
    assert res.verdict == claims.REPRODUCED  # its mean: +0.5 pp (the old mean of extremes said +1.0)
    worst = run({**best, "pick": "min"}, jobs)
    assert "the worst of the mean" in worst.detail and worst.values == pytest.approx([1.0, 0.0])


def test_a_last_density_is_read_on_the_mean_curve_and_one_noisy_seed_does_not_end_it():
    """Seed 1 dips below the dense net at level 1 by less than the noise; the mean curve holds there, so
    the chain goes on to level 2 (64 %), where the condition fails for sure."""
    def rows_of(seed, accs):
        return [("e", seed, 0, "imp", lv, 0.8 ** lv, a, 100) for lv, a in enumerate(accs)]
    jobs = frame(rows_of(0, [0.900, 0.905, 0.850]) + rows_of(1, [0.900, 0.898, 0.850])
                 + rows_of(2, [0.900, 0.904, 0.850]))
    chk = check("last_density", {"op": "within_factor", "value": 80.0, "factor": 1.3}, of={"branch": "imp"},
                cond={"op": ">=", "offset": 0})
    res = run(chk, jobs, sized(jobs, 10_000))
    assert res.values == pytest.approx([80.0]) and res.interval[0] == pytest.approx(64.0)
    assert "on the mean over 3 seed(s)" in res.detail
    # a noisy level only widens the range: holding by less than its noise, it may be where the chain ends
    assert res.interval[1] == pytest.approx(100.0)
    assert run({**chk, "expect": {"op": "within_factor", "value": 80.0, "factor": 1.2}}, jobs,
               sized(jobs, 10_000)).verdict == claims.INCONCLUSIVE
    clear = frame(rows_of(0, [0.900, 0.930, 0.850]) + rows_of(1, [0.900, 0.925, 0.850]) + rows_of(2, [0.900, 0.935, 0.850]))
    res = run({**chk, "expect": {"op": "within_factor", "value": 80.0, "factor": 1.3}}, clear, sized(clear, 10_000))
    assert res.interval == pytest.approx((64.0, 80.0)) and res.verdict == claims.REPRODUCED


def test_a_last_density_starts_where_the_claims_range_starts():
    """LTH Fig. 4c: one-shot tickets are faster for 67.5 % >= P_m >= 17.6 %; at 80 % they need not be."""
    es = {0: 1000, 1: 1200, 2: 800, 3: 800, 4: 1500}  # slower at 80 %, faster at 64 and 51 %, slower at 41 %
    jobs = frame(lth_rows([0.9] * 5, [], es=es))
    chk = check("last_density", {"op": "within_factor", "value": 51.2, "factor": 1.3}, of={"branch": "imp"},
                metric="early_stop_step", cond={"op": "<", "offset": 0})
    assert run(chk, jobs).verdict == claims.NOT_REPRODUCED  # the whole curve: fails at the first level
    ranged = run({**chk, "from_density": 0.675}, jobs)
    assert ranged.values == pytest.approx([51.2]) and ranged.verdict == claims.REPRODUCED
    assert "from 67.5%" in ranged.detail


def test_an_onset_on_the_k_grid_can_equal_the_papers():
    """LMC's dense ResNet-20 becomes stable at k = 2000, a point of its grid and of ours: an exact match is
    reproduced, not "somewhere in (1000, 2000]"."""
    ks = (0, 100, 500, 1000, 2000, 3000, 5000)
    jobs = sweep_jobs(ks, seeds=(0, 1, 2))
    inst = pd.concat([path(f"k{k}", k, 0, [0.1, 0.3 if k < 2000 else 0.1, 0.1], seed=s) for k in ks for s in (0, 1, 2)])
    onset = check("onset", {"op": "within_factor", "value": 2000, "factor": 1.5}, at={"level": 0}, threshold=2.0)
    res = run(onset, jobs, sized(jobs, 10_000), {"instability": inst})
    assert res.values == [2000.0] and res.interval == (2000.0, 2000.0) and res.verdict == claims.REPRODUCED
    late = pd.concat([path(f"k{k}", k, 0, [0.1, 0.3 if k < 5000 else 0.1, 0.1], seed=s) for k in ks for s in (0, 1, 2)])
    assert run(onset, jobs, sized(jobs, 10_000), {"instability": late}).verdict == claims.NOT_REPRODUCED
    # a barrier at the threshold within its noise makes that k and the next both possible onsets
    near = pd.concat([path(f"k{k}", k, 0, [0.1, 0.3 if k < 1000 else 0.118 if k == 1000 else 0.1, 0.1], seed=s)
                      for k in ks for s in (0, 1, 2)])
    res = run(onset, jobs, sized(jobs, 2000), {"instability": near})
    assert res.values == [1000.0] and res.interval == (1000.0, 2000.0) and res.verdict == claims.INCONCLUSIVE


def test_a_mean_that_is_not_finite_is_inconclusive_and_says_why():
    jobs = frame(lth_rows([0.9, 0.9], [], es={0: 1000, 1: 0}))  # level 1 stopped at step 0
    chk = check("versus_dense", {"op": ">", "value": 1}, metric="early_stop_step", at={"level": 1},
                of={"branch": "imp"}, **{"as": "speedup"})
    res = run(chk, jobs)
    assert res.verdict == claims.INCONCLUSIVE and "not finite" in res.detail and "zero denominator" in res.detail


def test_a_proxy_check_is_counted_apart_and_says_why_it_stands_in():
    hessian = next(c for c in claims.load(CLAIMS) if c["id"] == "paul-hessian")
    (chk,) = claims._checks(hessian)
    assert claims.kind_of(chk) == claims.PROXY and "Hessian" in chk["proxy"]
    assert claims.PROXY in claims.KINDS


def test_a_check_that_cannot_be_reproduced_says_why_and_the_file_refuses_a_silent_one(tmp_path):
    (appA,) = [c for c in claims.load(CLAIMS) if c["id"] == "stab-appA"]
    assert any("1.15 %" in chk.get("unreachable", "") for chk in claims._checks(appA))
    raw = yaml.safe_load(CLAIMS.read_text())
    raw["claims"][0]["check"][0]["unreachable"] = ""
    bad = tmp_path / "claims.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(claims.ClaimsError, match="unreachable must say why"):
        claims.load(bad)


def test_the_papers_values_drawn_beside_our_curves_are_those_of_checks_whose_protocol_the_runs_match():
    """A figure shows a paper's value only where a quantitative check of that protocol would read our
    runs: an absolute value at its density, a change against the dense net (placed at our dense mean), a
    P_m; a run of another protocol gets none."""
    jobs = frame(lth_rows([0.90, 0.92], [], seeds=(0,)))
    sel = {"protocol": [{"train.lr": 0.0012, "data.name": "mnist"}], "protocol_name": "lth-lenet"}
    value = check("value", {"op": "within", "value": 98.0, "tol": 0.3}, at={"level": 0}, of={"branch": "imp"}, select=sel)
    gain = check("versus_dense", {"op": ">", "value": 0.3}, at={"density": 0.8}, of={"branch": "imp"}, select=sel)
    back = check("last_density", {"op": "within_factor", "value": 3.6, "factor": 1.3}, of={"branch": "imp"}, select=sel)
    ratio = check("ratio", {"op": "within", "value": 2.5, "tol": 0.7}, at={"density": 0.8}, a={"branch": "imp"},
                  b={"branch": "random_reinit"}, select=sel)
    direction = check("difference", {"op": ">", "value": 0}, at="sparsest", a={"branch": "imp"}, b={"branch": "imp"})
    listed = [{"id": f"c{i}", "paper": "p", "check": c} for i, c in enumerate([value, gain, back, ratio, direction])]
    paper = {"e": {"name": "e", "train": {"lr": 0.0012}, "data": {"name": "mnist"}}}
    points = claims.reported_points(listed, jobs, paper)
    assert list(points["claim"]) == ["c0", "c1", "c2"]  # a ratio of two branches and direction checks have no place
    assert points.set_index("claim").loc["c0", ["kind", "density", "value", "tol", "relative"]].tolist() == \
        ["point", 1.0, 98.0, 0.3, False]
    assert bool(points.set_index("claim").loc["c1", "relative"]) is True
    assert points.set_index("claim").loc["c2", "kind"] == "density"
    assert points.set_index("claim").loc["c2", "density"] == pytest.approx(0.036)
    other = {"e": {"name": "e", "train": {"lr": 0.0012}, "data": {"name": "fashion_mnist"}}}
    assert claims.reported_points(listed, jobs, other).empty
