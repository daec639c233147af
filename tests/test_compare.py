"""``ticketbench compare A B``: two reproductions agree when every accuracy differs by less than the
noise (seed spread or binomial test-set error, Bonferroni over the rows) and every claim verdict is
the same.

The statistics are checked against hand-computed values; the command on hand-made tables of the
synthetic workflow config (tests/synthetic_results.py, with a 4,000-example test set so that the
noise is small and known), on the trained synthetic tree (tables built in memory from runs/), and on
the committed results/quick."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

import synthetic_results
from ticketbench import cli
from ticketbench.config import experiment_run
from ticketbench.report import compare, document, tables

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "config" / "claims.yaml"
N = 4000
"""Test-set size of the hand-made tables: the binomial error of an 85 % accuracy is 0.56 pp."""
BASE = {"imp": 0.90, "copy": 0.90, "oneshot": 0.88, "random_reinit": 0.84, "random_prune": 0.83, "finetune": 0.80}


def workflow(path: Path) -> Path:
    """The synthetic workflow config (one experiment per family), evaluating on N test examples."""
    spec = synthetic_results.workflow_config("tiny")
    for e in spec["experiments"].values():
        e["run"] = {**e["run"], "data": {**e["run"]["data"], "synthetic_test": N}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def jobs_table(config: Path) -> pd.DataFrame:
    """tables/jobs.csv of the config's jobs (synthetic_results.JOBS), as the workflow would record
    them: IMP beats the baselines by 2-10 points, a later rewind point is 1 point better, seeds and
    replicates differ by a fraction of a point; accuracies are whole examples out of N."""
    spec = yaml.safe_load(config.read_text())
    rows = []
    for exp, e in spec["experiments"].items():
        rewind = float(e["run"]["imp"]["rewind"].removesuffix("it"))
        for seed in e["seeds"]:
            cfg = experiment_run(e, exp, seed)
            jobs = [("imp", lv, None) for lv in range(synthetic_results.LEVELS + 1)]
            for kind, level, rep in synthetic_results.JOBS[e["family"]]:
                jobs += [(kind, lv, rep) for lv in ([level] if level is not None else range(1, synthetic_results.LEVELS + 1))]
            for branch, level, rep in jobs:
                acc = BASE[branch] - 0.01 * level + 0.003 * seed + 0.002 * (rep or 0) + 0.01 * (rewind > 0)
                rows.append({"experiment": exp, "family": e["family"], "group": "stab" if e["family"] == "stabilized" else exp,
                             "network": "lenet_300_100", "dataset": "synthetic", "seed": seed, "rewind_step": rewind,
                             "run": f"{exp}/seed{seed}", "config_hash": cfg.hash(), "branch": branch, "level": level,
                             "replicate": rep, "density": 0.5 ** level, "final_test_acc": round(acc * N) / N,
                             "early_stop_test_acc": round((acc + 0.002) * N) / N})
    columns = tables.RUN_COLUMNS + [c for c in tables.JOB_COLUMNS if c not in tables.RUN_COLUMNS]
    return pd.DataFrame(rows).reindex(columns=columns)


def results(folder: Path, jobs: pd.DataFrame) -> Path:
    tables.write_csv(jobs, folder / "tables" / "jobs.csv")
    return folder


@pytest.fixture
def pair(tmp_path, monkeypatch):
    """(config, jobs): the workflow config at tmp_path/config/tiny.yaml, run from tmp_path."""
    monkeypatch.chdir(tmp_path)
    config = workflow(tmp_path / "config" / "tiny.yaml")
    return config, jobs_table(config)


def ticketbench(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["compare", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def summary_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("compare: "))


# --------------------------------------------------------------------------------------------------
# The statistics, against hand-computed values
# --------------------------------------------------------------------------------------------------


def test_a_networks_noise_is_the_larger_of_seed_spread_and_binomial_error():
    # seeds at 85 % and 86 % on 2,000 examples: spread 0.707 pp < binomial sqrt(.855 * .145 / 2000) = 0.787 pp
    assert compare.network_sigma([0.85, 0.86], 2000) == pytest.approx(math.sqrt(0.855 * 0.145 / 2000))
    # seeds at 80 % and 90 %: spread sqrt(2) * 5 pp = 7.07 pp > binomial 0.3 pp
    assert compare.network_sigma([0.80, 0.90], 10000) == pytest.approx(0.05 * math.sqrt(2))
    # one seed: the binomial error alone, sqrt(.5 * .5 / 100) = 5 pp
    assert compare.network_sigma([0.5], 100) == pytest.approx(0.05)


def test_the_standard_error_of_a_difference_adds_the_variances_of_the_two_means():
    assert compare.difference_se(0.03, 1, 0.04, 1) == pytest.approx(0.05)
    assert compare.difference_se(0.02, 4, 0.02, 4) == pytest.approx(math.sqrt(2) * 0.01)


def test_the_bonferroni_z_is_the_normal_quantile_at_alpha_over_twice_the_rows_and_grows_with_them():
    assert compare.bonferroni_z(0.05, 1) == pytest.approx(1.959964, abs=1e-6)
    assert compare.bonferroni_z(0.05, 10) == pytest.approx(2.807034, abs=1e-6)  # quantile at 1 - 0.0025
    assert compare.bonferroni_z(0.05, 100) == pytest.approx(3.480756, abs=1e-6)  # quantile at 1 - 0.00025
    zs = [compare.bonferroni_z(0.05, m) for m in (1, 2, 10, 100, 1000)]
    assert zs == sorted(zs) and len(set(zs)) == len(zs)
    with pytest.raises(ValueError):
        compare.bonferroni_z(1.5, 10)


def test_a_row_agrees_up_to_and_including_z_standard_errors():
    assert compare.within_noise(0.02, 0.01, 2.0)
    assert compare.within_noise(-0.02, 0.01, 2.0)
    assert not compare.within_noise(0.0201, 0.01, 2.0)
    assert compare.within_noise(0.0, 0.0, 3.0)  # one network at accuracy 1 on both sides


def test_the_test_set_size_is_the_subset_evaluated_else_the_official_test_split():
    fmnist = {"name": "fashion_mnist", "test_subset": 0}
    assert tables.test_set_size({"data": {**fmnist, "test_subset": 2000}}) == 2000
    assert tables.test_set_size({"data": fmnist}) == 10000
    assert tables.test_set_size({"data": {"name": "synthetic", "synthetic_test": 128, "test_subset": 0}}) == 128


def test_an_inconclusive_verdict_is_compatible_with_either_decision_and_opposite_decisions_differ():
    from ticketbench.report import claims

    assert compare.claim_status(claims.REPRODUCED, claims.REPRODUCED) == compare.AGREE
    assert compare.claim_status(claims.REPRODUCED, claims.INCONCLUSIVE) == compare.COMPATIBLE
    assert compare.claim_status(claims.INCONCLUSIVE, claims.NOT_REPRODUCED) == compare.COMPATIBLE
    assert compare.claim_status(claims.REPRODUCED, claims.NOT_REPRODUCED) == compare.DIFFER
    assert compare.claim_status(claims.NOT_RUN, claims.REPRODUCED) == compare.DIFFER


def test_a_row_compares_the_means_with_the_standard_error_computed_by_hand():
    def jobs(accs):
        return pd.DataFrame({"experiment": "e", "branch": "imp", "level": 1, "density": 0.8, "final_test_acc": accs,
                             "early_stop_test_acc": math.nan})

    rows = compare.compare_rows(compare.row_stats(jobs([0.80, 0.84]), {"e": 10000}),
                                compare.row_stats(jobs([0.83]), {"e": 10000}), alpha=0.05)
    (row,) = rows.itertuples()
    # A: spread 2.83 pp beats binomial 0.38 pp; B: one seed, binomial sqrt(.83 * .17 / 1e4) = 0.376 pp
    se = math.sqrt((0.02 * math.sqrt(2)) ** 2 / 2 + 0.83 * 0.17 / 10000)
    assert (row.metric, row.n_a, row.n_b) == ("final_test_acc", 2, 1)
    assert row.difference == pytest.approx(-0.01)
    assert row.se == pytest.approx(se) and row.se == pytest.approx(0.020350, abs=1e-6)
    assert row.z == pytest.approx(1.959964, abs=1e-6)  # one row: no correction
    assert row.status == compare.WITHIN  # 1 pp < 1.96 * 2.03 pp


def test_within_noise_is_not_agreement_one_seed_on_2000_images_cannot_show_equivalence_within_1_point():
    """Equal means on one seed each: within the noise, yet the interval is +-2.2 pp (z = 1.96 on one row,
    SE = sqrt(2) * sqrt(.85 * .15 / 2000) = 1.13 pp), which no margin of 1 pp contains. Ten seeds per side
    at the binomial floor shrink it to +-0.70 pp: equivalent within 1 pp, not within 0.5 pp."""
    def jobs(accs):
        return pd.DataFrame({"experiment": "e", "branch": "imp", "level": 1, "density": 0.8, "final_test_acc": accs,
                             "early_stop_test_acc": math.nan})

    one = compare.row_stats(jobs([0.85]), {"e": 2000})
    (row,) = compare.compare_rows(one, one, alpha=0.05, margin=0.01).itertuples()
    assert row.status == compare.WITHIN and row.equivalence == compare.NOT_EQUIVALENT
    assert row.bound == pytest.approx(1.959964 * math.sqrt(2 * 0.85 * 0.15 / 2000), abs=1e-9)
    assert row.bound == pytest.approx(0.0221, abs=1e-4)

    ten = compare.row_stats(jobs([0.85] * 10), {"e": 2000})
    assert compare.compare_rows(ten, ten, alpha=0.05, margin=0.01)["equivalence"].tolist() == [compare.EQUIVALENT]
    assert compare.compare_rows(ten, ten, alpha=0.05, margin=0.005)["equivalence"].tolist() == [compare.NOT_EQUIVALENT]
    assert "equivalence" not in compare.compare_rows(ten, ten, alpha=0.05).columns  # no margin: not asked


def test_a_row_is_equivalent_only_when_the_whole_interval_lies_within_the_margin():
    assert compare.equivalent(0.005, 0.004, 0.01)  # [0.1, 0.9] pp within +-1 pp
    assert compare.equivalent(-0.006, 0.004, 0.01)  # [-1.0, -0.2] pp: touches the margin
    assert not compare.equivalent(0.007, 0.004, 0.01)  # [0.3, 1.1] pp
    assert not compare.equivalent(0.0, 0.011, 0.01)  # a zero difference with a wide interval shows nothing


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def test_a_results_directory_compared_with_itself_agrees_on_every_row_and_every_claim(pair, capsys):
    config, jobs = pair
    a = results(Path("results/tiny"), jobs)
    code, out, _ = ticketbench(capsys, str(a), str(a), "--claims", str(CLAIMS), "-o", "compare.csv")
    assert code == 0
    found = pd.read_csv("compare.csv")
    rows, claim_rows = found[found["kind"] == "accuracy"], found[found["kind"] == "claim"]
    # every (experiment, branch, level) of jobs.csv, once per accuracy
    assert len(rows) == 2 * len(jobs.groupby(["experiment", "branch", "level"]))
    assert set(rows["status"]) == {compare.WITHIN} and (rows["difference"] == 0).all()
    assert set(claim_rows["status"]) == {compare.AGREE}
    assert claim_rows["verdict_a"].eq("reproduced").any()  # the qualitative claims were decided, not just skipped
    z = compare.bonferroni_z(0.05, len(rows))
    median = 100 * rows["bound"].median()
    assert summary_line(out) == (f"compare: {len(rows)} rows, {len(rows)} within noise, 0 beyond (z = {z:.2f}, Bonferroni "
                                 f"over {len(rows)} rows at alpha 0.05; within noise = not shown to differ, median bound "
                                 f"{median:.2f} pp); claims: {len(claim_rows)} agree, 0 compatible, 0 differ")
    assert "sqrt(p(1-p)/N)" in out and f"{N:,} examples" in out  # the rule and the test-set size are stated
    assert "not shown to differ" in out.split("compare: ")[0]  # said above the table too, beside each row's bound
    assert rows["equivalence"].isna().all()  # no margin asked


def test_with_a_margin_every_row_must_be_shown_equivalent_for_exit_0(pair, capsys):
    """A copy of the tables is within the noise everywhere; whether it is shown equivalent depends on the
    margin against each row's bound (about 0.6-1.3 pp here: 4,000 examples, a few seeds)."""
    config, jobs = pair
    a, b = str(results(Path("a"), jobs)), str(results(Path("b"), jobs))
    common = ("--config", str(config), "--claims", str(CLAIMS), "-o", "compare.csv")
    code, out, _ = ticketbench(capsys, a, b, *common, "--margin", "5")
    found = pd.read_csv("compare.csv")
    rows = found[found["kind"] == "accuracy"]
    assert code == 0 and set(rows["equivalence"]) == {compare.EQUIVALENT} and (rows["margin"] == 0.05).all()
    assert f"; margin 5 pp: {len(rows)} equivalent, 0 not shown equivalent; claims: " in summary_line(out)

    code, out, _ = ticketbench(capsys, a, b, *common, "--margin", "0.1")
    rows = pd.read_csv("compare.csv").query("kind == 'accuracy'")
    assert code == 1  # nothing differs, yet nothing is shown equal to within 0.1 pp
    assert set(rows["status"]) == {compare.WITHIN} and set(rows["equivalence"]) == {compare.NOT_EQUIVALENT}
    assert " 0 beyond " in summary_line(out) and f"margin 0.1 pp: 0 equivalent, {len(rows)} not shown equivalent" in summary_line(out)
    assert sum(line.rstrip().endswith(compare.NOT_EQUIVALENT) for line in out.splitlines()) == len(rows)

    bound = rows["bound"].max()  # a margin just above the widest bound: every row of a zero difference is equivalent
    assert ticketbench(capsys, a, b, *common, "--margin", f"{100 * bound + 0.01:.4f}")[0] == 0
    assert ticketbench(capsys, a, b, *common, "--margin", f"{100 * bound - 0.01:.4f}")[0] == 1
    with pytest.raises(SystemExit) as bad:
        ticketbench(capsys, a, b, *common, "--margin", "-1")
    assert bad.value.code == 2 and "positive number of percentage points" in capsys.readouterr().err


def test_a_rerun_whose_accuracies_moved_by_much_less_than_the_binomial_error_agrees(pair, capsys):
    config, jobs = pair
    moved = jobs.copy()
    one_example = [(1 if i % 2 else -1) / N for i in range(len(moved))]  # a twentieth of the binomial error
    moved["final_test_acc"] += one_example
    moved["early_stop_test_acc"] -= one_example
    code, out, _ = ticketbench(capsys, str(results(Path("a"), jobs)), str(results(Path("b"), moved)), "--config", str(config),
                               "--claims", str(CLAIMS))
    assert code == 0
    assert " 0 beyond " in summary_line(out) and "0 differ" in summary_line(out)


def test_an_accuracy_moved_by_10_points_on_one_row_is_beyond_the_noise_and_exits_1(pair, capsys):
    config, jobs = pair
    moved = jobs.copy()
    row = (moved["experiment"] == "saleem_tiny") & (moved["branch"] == "random_prune") & (moved["level"] == 1)
    moved.loc[row, "final_test_acc"] -= 0.10
    code, out, _ = ticketbench(capsys, str(results(Path("a"), jobs)), str(results(Path("b"), moved)),
                               "--config", str(config), "--claims", str(CLAIMS), "-o", "compare.csv")
    assert code == 1
    found = pd.read_csv("compare.csv")
    beyond = found[found["status"] == compare.BEYOND]
    assert list(zip(beyond["experiment"], beyond["branch"], beyond["level"], beyond["metric"])) == [
        ("saleem_tiny", "random_prune", 1, "final_test_acc")]
    assert beyond["difference"].iloc[0] == pytest.approx(0.10)
    assert " 1 beyond " in summary_line(out) and "claims: " in summary_line(out) and "0 differ" in summary_line(out)


def test_a_claim_whose_verdict_flips_is_reported_as_differing_and_exits_1(pair, capsys):
    config, jobs = pair
    moved = jobs.copy()
    sparsest = (moved["experiment"] == "saleem_tiny") & (moved["branch"] == "imp") & (moved["level"] == synthetic_results.LEVELS)
    moved.loc[sparsest, ["final_test_acc", "early_stop_test_acc"]] -= 0.10  # now below one-shot pruning
    code, out, _ = ticketbench(capsys, str(results(Path("a"), jobs)), str(results(Path("b"), moved)),
                               "--config", str(config), "--claims", str(CLAIMS), "-o", "compare.csv")
    assert code == 1
    found = pd.read_csv("compare.csv")
    flipped = found[(found["kind"] == "claim") & (found["status"] == compare.DIFFER)]
    assert "paul-hessian" in set(flipped["claim"])
    hessian = flipped[flipped["claim"] == "paul-hessian"].iloc[0]
    assert (hessian["verdict_a"], hessian["verdict_b"]) == ("reproduced", "not reproduced")


def test_an_experiment_run_with_another_config_on_one_side_is_pointed_out(pair):
    config, jobs = pair
    other = jobs.assign(config_hash=jobs["config_hash"].where(jobs["experiment"] != "lth_tiny", "0123456789ab"))
    (note,) = compare.protocol_differences(jobs, other)
    assert note.startswith("lth_tiny: the two sides ran different run configs") and "0123456789ab" in note
    assert compare.protocol_differences(jobs, jobs) == []


def test_an_experiment_run_in_tf32_on_one_side_is_pointed_out_as_another_environment(pair, capsys):
    """TF32 rounds every matmul and convolution to a 10-bit mantissa: not the noise the rule is about. Tables
    made before the precision was recorded (no column) ran in fp32."""
    config, jobs = pair
    tf32 = jobs.assign(precision=jobs["precision"].where(jobs["experiment"] != "lth_tiny", "tf32"))
    (note,) = compare.environment_differences(jobs.drop(columns="precision"), tf32)
    assert note.startswith("lth_tiny: the two sides ran in different float32 precisions (fp32 vs. tf32)")
    assert compare.environment_differences(jobs, jobs.assign(precision="fp32")) == []
    code, out, _ = ticketbench(capsys, str(results(Path("a"), jobs)), str(results(Path("b"), tf32)), "--config",
                               str(config), "--claims", str(CLAIMS))
    assert "note: lth_tiny: the two sides ran in different float32 precisions (fp32 vs. tf32)" in out


def test_rows_on_one_side_only_are_listed_and_fail_only_with_strict(pair, capsys):
    config, jobs = pair
    fewer = jobs[~((jobs["experiment"] == "lth_tiny") & (jobs["branch"] == "random_prune") & (jobs["level"] == 2))]
    a, b = str(results(Path("a"), jobs)), str(results(Path("b"), fewer))
    code, out, _ = ticketbench(capsys, a, b, "--config", str(config), "--claims", str(CLAIMS))
    assert code == 0
    assert ", 2 missing on B " in summary_line(out)  # final and early-stop accuracy
    assert sum(line.endswith(compare.MISSING_B) for line in out.splitlines()) == 2
    assert ticketbench(capsys, a, b, "--config", str(config), "--claims", str(CLAIMS), "--strict")[0] == 1


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True)


def test_a_git_revisions_tables_can_be_compared_with_a_results_directory(pair, capsys, tmp_path):
    """The revision is read with its own workflow config: after the working copy's config changed, the
    directory's claims cannot be evaluated (its tables' hashes no longer match), the revision's can."""
    config, jobs = pair
    results(Path("results/tiny"), jobs)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "config", "results")
    git(tmp_path, "commit", "-q", "-m", "results")
    code, out, _ = ticketbench(capsys, "results/tiny", "HEAD:results/tiny", "--claims", str(CLAIMS))  # config/tiny.yaml by default
    assert code == 0, out
    assert "0 beyond" in summary_line(out) and " 0 differ" in summary_line(out)

    spec = yaml.safe_load(config.read_text())
    spec["experiments"]["lth_tiny"]["run"]["train"]["lr"] = 0.1
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    code, out, _ = ticketbench(capsys, "results/tiny", "HEAD:results/tiny", "--claims", str(CLAIMS))
    assert code == 0
    assert "claims: not evaluated on A" in summary_line(out)
    assert "config/tiny.yaml" in out and "lth_tiny seed 0" in out  # why: the working config no longer has its hash


def test_an_unknown_git_revision_is_one_line_and_exit_2(pair, capsys, tmp_path):
    config, jobs = pair
    results(Path("results/tiny"), jobs)
    git(tmp_path, "init", "-q")
    code, out, err = ticketbench(capsys, "results/tiny", "v9.9:results/tiny", "--claims", str(CLAIMS))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("ticketbench: error: v9.9:results/tiny: unknown git revision 'v9.9'")


def test_a_missing_directory_is_one_line_and_exit_2(pair, capsys):
    code, out, err = ticketbench(capsys, "results/nowhere", "results/nowhere", "--claims", str(CLAIMS))
    assert code == 2 and out == ""
    assert err == ("ticketbench: error: results/nowhere: no such results directory; give results/N (with tables/ or runs/) "
                   "or a git revision's tables as REV:results/N\n")
    Path("results/empty").mkdir(parents=True)
    code, _, err = ticketbench(capsys, "results/empty", "results/empty", "--claims", str(CLAIMS))
    assert code == 2 and err.count("\n") == 1 and "neither tables/jobs.csv nor runs/" in err


def test_trained_runs_without_tables_are_compared_through_tables_built_in_memory(tmp_path_factory, tmp_path, capsys):
    runs, config = synthetic_results.tree(tmp_path_factory)
    reported = tmp_path / "tiny"
    shutil.copytree(runs / "runs", reported / "runs")
    document.write_tables(reported, config)
    shutil.rmtree(reported / "runs")  # tables only: run configs come from the workflow config, checked by hash
    code, out, _ = ticketbench(capsys, str(runs), str(reported), "--config", str(config), "--claims", str(CLAIMS))
    assert code == 0, out
    line = summary_line(out)
    assert " 0 beyond " in line and " 0 differ" in line and "missing" not in line
    assert "(test set: 128 examples)" in out  # synthetic_results' synthetic_test, read from the runs


def test_the_committed_quick_results_agree_with_themselves(capsys, monkeypatch):
    if subprocess.run(["git", "cat-file", "-e", "HEAD:results/quick/tables/jobs.csv"], cwd=REPO,
                      capture_output=True).returncode != 0:
        pytest.skip("not a git checkout with committed results/quick tables")
    monkeypatch.chdir(REPO)
    code, out, _ = ticketbench(capsys, "results/quick", "HEAD:results/quick")
    assert code == 0, out
    assert " 0 beyond " in summary_line(out) and " 0 differ" in summary_line(out)
