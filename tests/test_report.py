"""The reviewer-facing report: tidy tables, figures, and claims whose verdicts follow the data.

The end-to-end tests read a tiny results tree trained with the CLI (tests/synthetic_results.py); the
claim measures are checked on hand-made tables whose answers are known."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

import synthetic_results
from ticketbench import cli
from ticketbench.report import claims, deviations, document, figures, tables

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "config" / "claims.yaml"
SHARED_CLAIMS = REPO.parent / "shared" / "papers" / "reported_claims.yaml"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return synthetic_results.tree(tmp_path_factory)


@pytest.fixture(scope="module")
def reported(tree, tmp_path_factory):
    """The tree's report, built with the CLI into a copy of the results."""
    results, config = tree
    out = tmp_path_factory.mktemp("reported") / "tiny"
    shutil.copytree(results / "runs", out / "runs")
    assert cli.main(["report", str(out), "--config", str(config), "--claims", str(CLAIMS)]) == 0
    return out, config


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def test_jobs_table_has_one_row_per_finished_job_with_its_run(reported):
    out, _ = reported
    jobs = pd.read_csv(out / "tables" / "jobs.csv")
    assert len(jobs) == len(list((out / "runs").glob("*/seed*/*/level_*/**/summary.json")))
    assert set(jobs["family"]) == {"lth", "stabilized", "saleem"}
    k = jobs.groupby("experiment")["rewind_step"].unique().to_dict()
    assert {e: list(v) for e, v in k.items()} == {"lth_tiny": [0], "stab_tiny_k0": [0], "stab_tiny_k10": [10], "saleem_tiny": [5]}
    # The two rewind points of the k sweep form one group; other experiments differ in more than k.
    groups = jobs.groupby("experiment")["group"].first()
    assert groups["stab_tiny_k0"] == groups["stab_tiny_k10"] != groups["saleem_tiny"]
    assert not any(Path(j).is_absolute() for j in jobs["job"])


def test_analysis_tables_stack_every_run_with_its_run_columns(reported):
    out, _ = reported
    inst = pd.read_csv(out / "tables" / "instability.csv")
    assert set(inst["experiment"]) == {"stab_tiny_k0", "stab_tiny_k10"} and set(inst["level"]) == {0, 2}
    assert set(inst["rewind_step"]) == {0, 10} and (inst.groupby(["experiment", "level", "pair"]).size() == 5).all()
    hessian = pd.read_csv(out / "tables" / "hessian.csv")
    assert set(zip(hessian["branch"], hessian["level"])) == {("imp", 0), ("imp", 1), ("imp", 2), ("oneshot", 1), ("oneshot", 2)}
    successive = pd.read_csv(out / "tables" / "successive.csv")
    assert set(successive["mask"]) == {"common", "none"} and "job_a" not in successive.columns


def test_tables_do_not_depend_on_where_the_results_live(reported, tmp_path):
    out, config = reported
    moved = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(out / "runs", moved / "runs")
    document.write_tables(moved, config)
    for name in ("jobs", "instability", "hessian", "successive"):
        assert (moved / "tables" / f"{name}.csv").read_bytes() == (out / "tables" / f"{name}.csv").read_bytes(), name


def test_missing_analysis_is_reported_and_malformed_one_rejected(reported, tmp_path):
    out, config = reported
    index = pd.read_csv(out / "tables" / "figures.csv").set_index("figure")
    assert sorted(index.index[index["drawn"]]) == sorted(p.name for p in (out / "figures").iterdir())
    data = document.read_tables(out)
    stab = {"jobs": data["jobs"][data["jobs"]["family"] == "stabilized"], "instability": None}
    drawn, skipped = figures.draw_all(stab, "tiny", tmp_path / "figures")
    assert [p.name for p, _ in drawn] == ["stabilized_accuracy_stab_tiny.png"]
    assert skipped == {"stabilized_instability_stab_tiny": "the instability analysis was not run at this scale"}
    trend = next(c for c in claims.load(CLAIMS) if c["id"] == "lmc-onset-resnet20")
    res = claims.evaluate([trend], stab["jobs"], document.run_configs(out), stab)
    assert [(r.verdict, r.detail) for r in res if "qualitative" in r.unit] == [
        (claims.NOT_RUN, "instability analysis not run for these runs")]
    broken = tmp_path / "tiny"
    shutil.copytree(out / "runs", broken / "runs")
    bad = broken / "runs" / "stab_tiny_k0" / "seed0" / "analysis" / "instability" / "level_00.csv"
    bad.write_text("alpha,something\n0,1\n")
    with pytest.raises(tables.ResultsError, match="level_00.csv: malformed instability table"):
        document.write_tables(broken, config)


# --------------------------------------------------------------------------------------------------
# Figures and report
# --------------------------------------------------------------------------------------------------


def test_figures_of_every_family_are_drawn_and_byte_identical_on_rerun(reported, tmp_path):
    out, config = reported
    names = {p.name for p in (out / "figures").glob("*.png")}
    assert names == {"lth_accuracy_lth_tiny.png", "lth_early_stop_lth_tiny.png", "stabilized_accuracy_stab_tiny.png",
                     "stabilized_instability_stab_tiny.png", "saleem_methods_saleem_tiny.png", "saleem_levels_saleem_tiny.png",
                     "saleem_hessian_saleem_tiny.png", "saleem_successive_saleem_tiny.png"}
    again = tmp_path / "tiny"
    shutil.copytree(out / "runs", again / "runs")
    assert cli.main(["report", str(again), "--config", str(config), "--claims", str(CLAIMS)]) == 0
    for name in sorted(names) + ["report.md", "report.html", "metrics.json"]:
        folder = "figures/" if name.endswith(".png") else ""
        assert (again / folder / name).read_bytes() == (out / folder / name).read_bytes(), name


def test_report_gives_every_claim_a_verdict_and_is_viewable_offline(reported):
    out, _ = reported
    md = (out / "report.md").read_text()
    ids = [c["id"] for c in yaml.safe_load(CLAIMS.read_text())["claims"]]
    assert all(f"`{i}`" in md for i in ids)
    assert "not comparable" in md and "(secondary source)" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((out / "figures").glob("*.png")))
    assert "src='http" not in html and 'src="http' not in html


def test_metrics_json_has_the_headline_numbers_of_the_tables(reported):
    out, _ = reported
    metrics = json.loads((out / "metrics.json").read_text())
    jobs = pd.read_csv(out / "tables" / "jobs.csv")
    lth = jobs[jobs["experiment"] == "lth_tiny"]
    dense = lth[(lth["branch"] == "imp") & (lth["level"] == 0)]["final_test_acc"].mean()
    assert metrics["lth_tiny"]["dense_test_acc"] == pytest.approx(dense, abs=1e-6)
    assert metrics["lth_tiny"]["seeds"] == 2
    assert set(metrics["saleem_tiny"]["sparsest_test_acc"]) == {"imp", "oneshot", "finetune", "random_reinit", "random_prune"}
    counts = metrics["claims"]
    assert counts["not_checked"] > 0 and counts["not_run_at_this_scale"] > 0
    assert counts["reproduced"] + counts["not_reproduced"] > 0  # the qualitative claims ran on the tiny tree


def test_report_opens_with_verdict_counts_per_kind_of_check_and_per_paper(reported):
    """The headline never adds a check of the paper's number to a check of the sign of an effect; the
    per-paper table below it counts every check and every unchecked claim once."""
    out, _ = reported
    md = (out / "report.md").read_text()
    top = md.split("\n## ")[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert claims.NO_EXPERIMENT in document.VERDICT_ORDER
    found = claims.evaluate(claims.load(CLAIMS), *reported_inputs(out))
    kinds = {k: [r for r in found if r.check and claims.kind_of(r.check) == k] for k in claims.KINDS}
    assert f"{len(kinds[claims.QUANTITATIVE])} quantitative checks (the paper's number):" in top
    assert f"{len(kinds[claims.DIRECTION])} direction-only checks (the sign of an effect):" in top
    direction = metrics["checks"]["direction_only"]
    assert direction["reproduced"] == sum(r.verdict == claims.REPRODUCED for r in kinds[claims.DIRECTION])
    checks = metrics["checks"]
    assert sum(checks["quantitative"].values()) + sum(checks["direction_only"].values()) + checks["not_checked"] == \
        len(found) == sum(metrics["claims"].values())
    assert metrics["missing"] == 0 and "Partial results" not in md
    rows = [line.split(" | ") for line in top.splitlines() if line.startswith("| P")]
    assert {row[1] for row in rows} == {r.claim["paper"] for r in found}
    assert sum(int(x.strip(" |")) for row in rows for x in row[2:]) == len(found)


def reported_inputs(out: Path):
    data = document.read_tables(out)
    return data["jobs"], document.run_configs(out), data


def test_report_prints_each_source_once_and_no_long_text_dozens_of_times(reported):
    out, _ = reported
    md = (out / "report.md").read_text()
    for c in claims.load(CLAIMS):
        assert md.count(c["source"]) <= 1 + sum(c["source"] in o["source"] and c["source"] != o["source"]
                                                for o in claims.load(CLAIMS)), c["source"]
    cells: dict[str, int] = {}
    for line in md.splitlines():
        if line.startswith("| "):
            for cell in line.strip("| ").split(" | "):
                cells[cell] = cells.get(cell, 0) + 1
    repeated = {c: n for c, n in cells.items() if len(c) >= 30 and n > 3}
    assert not repeated, repeated


def test_a_report_of_partial_results_says_what_is_missing_in_its_first_lines(reported, tmp_path):
    """A seed, an IMP level, an analysis and an experiment of the workflow config that the tables lack
    are each named before any verdict."""
    out, config = reported
    part = tmp_path / "tiny"
    shutil.copytree(out / "tables", part / "tables")
    shutil.copytree(out / "figures", part / "figures")
    jobs = pd.read_csv(part / "tables" / "jobs.csv")
    drop = ((jobs["experiment"] == "lth_tiny") & (jobs["seed"] == 1)) | \
           ((jobs["experiment"] == "saleem_tiny") & (jobs["branch"] == "imp") & (jobs["level"] == 2))
    tables.write_csv(jobs[~drop], part / "tables" / "jobs.csv")
    inst = pd.read_csv(part / "tables" / "instability.csv")
    tables.write_csv(inst[inst["experiment"] != "stab_tiny_k10"], part / "tables" / "instability.csv")
    workflow = yaml.safe_load(config.read_text())
    workflow["experiments"]["stab_tiny_k10"]["instability"] = {"pairs": 1}
    workflow["experiments"]["lth_tiny_more"] = workflow["experiments"]["lth_tiny"]
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(workflow))
    assert cli.main(["report", str(part), "--config", str(tmp_path / "tiny.yaml"), "--claims", str(CLAIMS),
                     "--part", "document"]) == 0
    first = (part / "report.md").read_text().split(" claims, ")[0]  # before the verdict counts
    assert "Partial results" in first
    for gap in ("`lth_tiny`: no job of seed 1", "`lth_tiny_more`: no job of it in these results",
                "`saleem_tiny` seed 0: IMP level 2 missing", "`stab_tiny_k10`: instability analysis missing for seed 0"):
        assert gap in first, gap
    assert json.loads((part / "metrics.json").read_text())["missing"] == 4


def test_report_outputs_name_no_folder_of_the_machine_that_built_them(reported):
    from test_repository import MACHINE_PATH

    out, _ = reported
    for name in ("report.md", "report.html", "metrics.json", "tables/jobs.csv", "tables/figures.csv"):
        assert not MACHINE_PATH.findall((out / name).read_text()), name


def test_experiments_table_gives_both_densities_and_the_reinit_start_or_says_they_were_not_recorded():
    """Tables made before jobs recorded ``density_total`` and ``reinit_start`` lack those columns: the
    report says so instead of guessing that the LTH's P_m equals the prunable density."""
    old = frame(lth_rows([0.90, 0.91, 0.92], [0.89, 0.85]))
    (row,) = document.experiments_table(old).to_dict("records")
    assert row["sparsest: % of prunable weights (of all)"] == "64 (not recorded)"
    assert row["random reinit trains from"] == "not recorded"
    new = old.assign(density_total=old["density"] * 0.5 + 0.01,
                     reinit_start=old["branch"].map({"random_reinit": "rewind"}))
    (row,) = document.experiments_table(new).to_dict("records")
    assert row["sparsest: % of prunable weights (of all)"] == "64 (33)"
    assert row["random reinit trains from"] == "rewind"


# --------------------------------------------------------------------------------------------------
# Deviations: a reduced experiment against the paper experiment it shrinks
# --------------------------------------------------------------------------------------------------


def experiment(steps="400it", rewind="40it", **workflow) -> dict:
    return {"family": "saleem", "seeds": [0, 1, 2], "source": "the paper",
            "run": {**synthetic_results.RUN, "train": {**synthetic_results.RUN["train"], "steps": steps},
                    "imp": {"levels": 2, "rewind": rewind}}, **workflow}


def test_deviations_are_every_protocol_key_that_differs_with_rewind_as_a_fraction_of_training():
    paper = experiment(baselines={"random_reinit": {"replicates": 3}}, hessian={"branches": ["imp", "oneshot"]})
    ours = {**experiment("40it", "10it", baselines={"random_reinit": {"replicates": 1}},
                         hessian={"branches": ["imp"], "top_k": 5}, instability={"points": 11}),
            "seeds": [0], "source": "shrunk", "shrinks": "p"}
    found = {d.key: (d.ours, d.paper) for d in deviations.deviations(ours, paper)}
    assert found == {
        "baselines.random_reinit.replicates": ("1", "3"),
        "hessian.branches": ("[imp]", "[imp, oneshot]"),
        "hessian.top_k": ("5", "10"),  # the paper leaves it at HessianConfig's default
        "instability": ("points: 11", "not run"),
        "run.imp.rewind": ("10it = 25 % of training", "40it = 10 % of training"),
        "run.train.steps": ("40it = 40 iterations", "400it = 400 iterations"),
        "seeds": ("1", "3"),
    }
    assert deviations.deviations(paper, paper) == []


def test_the_deviations_table_has_a_row_per_deviating_key_and_a_column_per_experiment():
    paper = {"p": experiment()}
    shrunk = deviations.of_workflow({"a": {**experiment("40it", "4it"), "shrinks": "p"},
                                     "b": {**experiment(), "seeds": [0], "shrinks": "p"}}, paper)
    table = document.deviations_table(shrunk).set_index("key")
    assert list(table.columns) == ["a (shrinks p)", "b (shrinks p)"]
    assert table.loc["seeds"].tolist() == ["", "1 (paper: 3)"]
    assert table.loc["run.train.steps", "a (shrinks p)"] == "40it = 40 iterations (paper: 400it = 400 iterations)"


def test_the_same_rewind_step_in_a_shorter_schedule_is_a_deviation_of_its_fraction():
    found = {d.key: (d.ours, d.paper) for d in deviations.deviations(experiment("40it", "4it"), experiment("400it", "4it"))}
    assert found["run.imp.rewind (fraction of training)"] == ("4it = 10 %", "4it = 1 %")


def test_an_experiment_naming_no_or_an_unknown_paper_experiment_is_said_so():
    shrunk = deviations.of_workflow({"a": experiment(), "b": {**experiment(), "shrinks": "nowhere"},
                                     "c": {**experiment(), "shrinks": "p"}}, {"p": experiment()})
    assert "names no paper experiment" in shrunk["a"].problem
    assert "has no such experiment" in shrunk["b"].problem
    assert shrunk["c"].paper == "p" and shrunk["c"].found == [] and not shrunk["c"].problem


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


def test_the_noise_of_a_verdict_is_the_larger_of_seed_spread_and_binomial_error():
    # one difference of two accuracies near 85 % on 2,000 images: 100 sqrt(2 * .85 * .15 / 2000) = 1.129 pp
    assert claims.noise([3.0], 0.85, 2000, difference=True) == pytest.approx(1.1292, abs=1e-4)
    # two seeds: the binomial error of their mean shrinks by sqrt(2); a wide spread wins over it
    assert claims.noise([3.0, 3.2], 0.85, 2000, difference=True) == pytest.approx(1.1292 / 2 ** 0.5, abs=1e-4)
    assert claims.noise([1.0, 9.0], 0.85, 2000, difference=True) == pytest.approx(4.0)  # std 5.657 / sqrt 2
    assert claims.noise([85.0], 0.85, 2000, difference=False) == pytest.approx(0.7984, abs=1e-4)


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
    last = check("last_density", {"op": "within_factor", "value": 64.0, "factor": 1.01}, of={"branch": "imp"},
                 cond={"op": ">=", "offset": 0})
    res = run(last, jobs)  # accuracy stays >= dense down to level 2 (64 %), falls at level 3
    assert res.values == pytest.approx([64.0, 64.0]) and res.verdict == claims.REPRODUCED


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
    b = claims.barriers(inst)
    assert b["barrier"].item() == pytest.approx(100 * (0.50 - 0.15))
    assert claims.barriers(path("k0", 0, 0, [0.1, 0.1, 0.1]))["barrier"].item() == 0


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
    jobs = frame(lth_rows([0.90, 0.92], []))
    chk = check("value", {"op": "within", "value": 90.0, "tol": 0.5}, at={"level": 0}, of={"branch": "imp"})
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


def test_report_of_a_folder_without_runs_fails_with_a_message(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path), "--claims", str(CLAIMS)]) == 2
    assert "no run directories" in capsys.readouterr().err
