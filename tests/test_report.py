"""The reviewer-facing report: tidy tables, figures, and claims whose verdicts follow the data.

The end-to-end tests read a tiny results tree trained with the CLI (tests/synthetic_results.py); the
claim measures are specified in tests/test_claims.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

import synthetic_results
from test_claims import frame, lth_rows
from ticketbench import cli
from ticketbench.report import claims, deviations, document, figures, tables

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "config" / "claims.yaml"


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
    assert sorted(index.index[index["drawn"]]) == sorted(p.name for p in (out / "figures").glob("*.png"))
    data = document.read_tables(out)
    stab = {"jobs": data["jobs"][data["jobs"]["family"] == "stabilized"], "instability": None}
    drawn, skipped = figures.draw_all(stab, "tiny", tmp_path / "figures")
    assert [p.name for p, _ in drawn] == ["stabilized_accuracy_stab_tiny.png"]
    assert skipped == {"stabilized_instability_stab_tiny": "the instability analysis was not run at this scale"}
    trend = next(c for c in claims.load(CLAIMS) if c["id"] == "lmc-onset-resnet20")
    res = claims.evaluate([trend], stab["jobs"], document.run_configs(out), stab)
    assert [(r.verdict, r.detail) for r in res if "direction only" in r.unit] == [
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
    # Each PNG has its SVG beside it, and the folder holds nothing else.
    assert {p.name for p in (out / "figures").iterdir()} == names | {n.replace(".png", ".svg") for n in names}
    again = tmp_path / "tiny"
    shutil.copytree(out / "runs", again / "runs")
    assert cli.main(["report", str(again), "--config", str(config), "--claims", str(CLAIMS)]) == 0
    for name in sorted(p.name for p in (out / "figures").iterdir()) + ["report.md", "report.html", "metrics.json"]:
        folder = "figures/" if name.endswith((".png", ".svg")) else ""
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
    # the qualitative claims ran on the tiny tree: they have verdicts, of which inconclusive is one (a share
    # of successive levels on its few hundred test images is within the noise of either threshold)
    assert counts["reproduced"] + counts["not_reproduced"] + counts["inconclusive"] > 0


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
    assert f"{len(kinds[claims.PROXY])} proxy checks (a consequence of the claim, not its quantity):" in top
    direction = metrics["checks"]["direction_only"]
    assert direction["reproduced"] == sum(r.verdict == claims.REPRODUCED for r in kinds[claims.DIRECTION])
    checks = metrics["checks"]
    assert sum(checks["quantitative"].values()) + sum(checks["direction_only"].values()) + \
        sum(checks["proxy"].values()) + checks["not_checked"] == len(found) == sum(metrics["claims"].values())
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


def test_report_of_a_folder_without_runs_fails_with_a_message(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path), "--claims", str(CLAIMS)]) == 2
    assert "no run directories" in capsys.readouterr().err
