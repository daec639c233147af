"""The figures say what the data say, and no more: a trend is drawn only where enough rewind points were
run, labels and legends hide no data, curves that cross stay distinguishable, and every figure of the
report also exists as a vector file; `snakemake --report` shows the figures by family, the tables and
the report.

The tables are hand-made (the columns the figures read, values chosen to provoke each failure), so these
tests draw in seconds and need no training; the Snakemake report is built from the committed quick
results."""

from __future__ import annotations

import colorsys
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D

from conftest import REPO
from ticketbench.report import claims, figures

ALPHAS = np.linspace(0, 1, 11)
LEVELS = 3  # IMP levels 0..3 pruning 50 % per level, as the quick run does


def jobs_table(experiment: str, family: str, ks: list[int] = (0,), seeds: tuple[int, ...] = (0, 1)) -> pd.DataFrame:
    """IMP levels of one experiment per rewind point k (one group, as a k sweep is one group)."""
    rows = [{"experiment": f"{experiment}_k{k}", "family": family, "group": "g0", "network": "resnet20",
             "dataset": "cifar10", "seed": s, "rewind_step": k, "branch": "imp", "level": lv, "density": 0.5 ** lv,
             "final_test_acc": 0.9 - 0.01 * lv + 0.002 * s, "early_stop_test_acc": np.nan, "early_stop_step": np.nan,
             "final_train_loss": 0.1 + 0.01 * lv}
            for k in ks for s in seeds for lv in range(LEVELS + 1)]
    return pd.DataFrame(rows)


def instability_table(jobs: pd.DataFrame, barrier: dict[tuple[int, int], float]) -> pd.DataFrame:
    """Copy-pair paths whose error rises by ``barrier[(k, level)]`` pp in the middle (a tent: 20 % at
    the ends, the barrier at alpha = 0.5), for the dense net and the sparsest level."""
    rows = []
    for (exp, k, seed), _ in jobs.groupby(["experiment", "rewind_step", "seed"]):
        for level in (0, LEVELS):
            tent = 0.20 + barrier[(k, level)] / 100 * (1 - np.abs(2 * ALPHAS - 1))
            rows += [{"experiment": exp, "group": "g0", "seed": seed, "rewind_step": k, "level": level, "pair": 0,
                      "alpha": a, "test_error": e} for a, e in zip(ALPHAS, tent)]
    return pd.DataFrame(rows)


@pytest.fixture
def drawn(monkeypatch):
    """The figures the next draw makes, kept open (nothing written) for inspection."""
    kept: list[plt.Figure] = []

    def keep(fig, png):
        fig.canvas.draw()  # lays the figure out as savefig would, so extents are final
        kept.append(fig)

    monkeypatch.setattr(figures, "save", keep)
    yield kept
    for fig in kept:
        plt.close(fig)


def data_lines(ax: plt.Axes) -> list[Line2D]:
    """The visible curves of the data (seaborn's), not reference lines drawn across the axes (axhline)
    nor the invisible carriers of error bars."""
    visible = lambda ln: ln.get_linestyle() != "None" or ln.get_marker() not in ("None", None, "")  # noqa: E731
    return [ln for ln in ax.lines if len(ln.get_xdata()) > 1 and ln.get_transform() == ax.transData and visible(ln)]


def inside(inner, outer) -> bool:
    return outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0 and inner.y1 <= outer.y1


def barrier_panel(drawn, ks: list[int], barrier) -> plt.Axes:
    jobs = jobs_table("stab", "stabilized", ks)
    inst = instability_table(jobs, {(k, lv): barrier(k, lv) for k in ks for lv in (0, LEVELS)})
    assert figures.stabilized_instability_figure(jobs, inst, "stab", "test", Path("unused"))
    return drawn[-1].axes[0]


# --------------------------------------------------------------------------------------------------
# Instability (LMC Figs. 3, 5)
# --------------------------------------------------------------------------------------------------


def test_two_rewind_points_are_shown_as_points_and_three_as_a_curve(drawn):
    """Two k's give no trend to draw: a line between them would claim a shape nobody measured."""
    two = barrier_panel(drawn, [0, 20], lambda k, lv: 30.0 if k == 0 else 1.0)
    assert data_lines(two) and all(ln.get_linestyle() == "None" and ln.get_marker() == "o" for ln in data_lines(two))
    three = barrier_panel(drawn, [0, 20, 100], lambda k, lv: 30.0 / (1 + k))
    assert data_lines(three) and all(ln.get_linestyle() == "-" for ln in data_lines(three))


@pytest.mark.parametrize("ks,barrier", [
    ([0, 20], lambda k, lv: 60.0 if k == 0 else 3.0),        # the quick run: unstable dense net, wide y range
    ([0, 20], lambda k, lv: 0.3 + 0.1 * lv),                  # every network stable: all barriers under 2 pp
    ([0, 100, 500, 2000, 10000], lambda k, lv: 40.0 / (1 + k / 100)),  # a paper-scale grid on a symlog axis
])
def test_the_stability_threshold_and_its_label_lie_inside_the_panel(drawn, ks, barrier):
    ax = barrier_panel(drawn, ks, barrier)
    renderer = drawn[-1].canvas.get_renderer()
    label = next(t for t in ax.texts if t.get_text().startswith("stable"))
    assert label.get_text() == "stable: < 2 pp"
    assert inside(label.get_window_extent(renderer), ax.get_window_extent(renderer))
    lo, hi = ax.get_ylim()
    assert lo < figures.STABLE_PP < hi


# --------------------------------------------------------------------------------------------------
# Saleem et al. 2024
# --------------------------------------------------------------------------------------------------


# The top five eigenvalues per level of the quick run's Saleem ResNet-20 (rounded): they fill the panel,
# lambda_1 along its top, so no corner inside the axes is free for a legend.
EIGENVALUES = [[243, 113, 42, 24, 15], [185, 92, 62, 40, 20], [130, 75, 38, 27, 24], [145, 105, 61, 33, 21]]


def hessian_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """:data:`EIGENVALUES` for every seed, and a log-volume per level."""
    imp = jobs[jobs["branch"] == "imp"]
    rows = [{**r, "quantity": "eigenvalue", "index": i, "value": v * (1 + 0.01 * r["seed"]), "method": ""}
            for r in imp.to_dict("records") for i, v in enumerate(EIGENVALUES[r["level"]])]
    rows += [{**r, "quantity": "log_volume", "index": 0, "value": -10.0 + 0.1 * r["level"], "method": "ellipsoid"}
             for r in imp.to_dict("records")]
    return pd.DataFrame(rows)


def test_the_saleem_eigenvalue_legend_sits_beside_the_panels_not_on_them(drawn):
    """The eigenvalues fill their panel, lambda_1 along its top: any place inside the axes hides or
    crowds a curve, whatever the data, so the legend goes outside, clear of every panel."""
    jobs = jobs_table("saleem", "saleem", [10], seeds=(0,)).assign(experiment="saleem")
    assert figures.saleem_levels_figure(jobs, hessian_table(jobs), "saleem", "test", Path("unused"))
    fig = drawn[-1]
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert [t.get_text() for lg in legends for t in lg.get_texts()] == ["λ1", "λ2", "λ3", "λ4", "λ5"]
    box = legends[0].get_window_extent(renderer)
    assert inside(box, fig.bbox), "the legend is not cut off"
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()


def lth_protocol_jobs() -> pd.DataFrame:
    """An LTH experiment at a paper's protocol: IMP levels 0-6 (20 % per level), random reinitialization
    and random pruning at levels 2 and 4, two seeds; accuracies and early-stop iterations as the LeNet
    scale has them (a ticket a little above the dense net, the baselines below)."""
    rows = []
    for seed, (branch, levels, gain) in itertools.product((0, 1), (("imp", range(7), 0.002), ("random_reinit", (2, 4), -0.002),
                                                                   ("random_prune", (2, 4), -0.004))):
        for lv in levels:
            acc = 0.976 + gain * min(lv, 4) - 0.003 * max(lv - 4, 0) + 0.0005 * seed
            rows.append({"experiment": "lth", "family": "lth", "network": "lenet_300_100", "dataset": "mnist",
                         "seed": seed, "rewind_step": 0, "branch": branch, "level": lv, "density": 0.8 ** lv,
                         "density_total": 0.8 ** lv, "final_test_acc": acc + 0.002, "early_stop_test_acc": acc,
                         "early_stop_step": 4000 - 200 * lv if branch == "imp" else 5000.0, "final_train_loss": 0.01})
    return pd.DataFrame(rows)


def test_the_papers_values_sit_on_our_curves_and_the_legend_hides_none_of_them(drawn):
    """One panel per quantity a paper states (a value at a density, a change against the dense net, a P_m):
    each stated value is drawn where the paper puts it, with its tolerance, and the one legend (every branch,
    every kind of mark) lies below the panels, clear of every curve and mark."""
    reported = pd.DataFrame([
        ("lth", "dense", "final_test_acc", "imp", "point", 1.0, 98.0, 0.3, False),
        ("lth", "gain", "early_stop_test_acc", "imp", "point", 0.41, 0.3, 0.0, True),
        ("lth", "back", "early_stop_test_acc", "imp", "density", 0.036, 3.6, np.nan, False),
        ("lth", "faster", "early_stop_step", "imp", "point", 0.21, 38.0, 10.0, True),
    ], columns=claims.REPORTED_COLUMNS)
    jobs = lth_protocol_jobs()
    assert figures.paper_vs_ours_figure(jobs, reported, "lth", "test", Path("unused"))
    (fig,) = drawn
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert list(panels) == ["test accuracy at early stop", "test accuracy at the end of training",
                            "iteration of minimum validation loss"]

    def marks(ax) -> list[tuple[float, float]]:
        return [(float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in ax.lines
                if ln.get_marker() == "D" and len(ln.get_xdata()) == 1]

    dense = jobs[(jobs["branch"] == "imp") & (jobs["level"] == 0)]
    assert marks(panels["test accuracy at the end of training"]) == [(100.0, 98.0)]
    x0 = 100 * dense["early_stop_test_acc"].mean()
    assert marks(panels["test accuracy at early stop"]) == [(41.0, pytest.approx(x0 + 0.3))]  # a gain, at our dense
    step0 = dense["early_stop_step"].mean()
    assert marks(panels["iteration of minimum validation loss"]) == [(21.0, pytest.approx(step0 * 0.62))]  # 38 % fewer
    verticals = [ln.get_xdata()[0] for ln in panels["test accuracy at early stop"].lines if ln.get_linestyle() == ":"]
    assert verticals == [pytest.approx(3.6)]

    renderer = fig.canvas.get_renderer()
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()][:3] == ["IMP (winning ticket)", "random reinit", "random pruning"]
    assert len(legend.get_texts()) == 6  # three branches, three kinds of the papers' marks
    box = legend.get_window_extent(renderer)
    assert inside(box, fig.bbox), "the legend is not cut off"
    taken = [ax.get_window_extent(renderer) for ax in fig.axes]
    taken += [ax.xaxis.get_tightbbox(renderer) for ax in fig.axes]
    assert not any(box.overlaps(other) for other in taken)


def successive_table(pairs: int) -> pd.DataFrame:
    """Loss paths between levels L and L+1 that all cross near the middle, in both mask modes."""
    rows = [{"experiment": "saleem", "seed": 0, "level": lv, "level_b": lv + 1, "mask": mask, "alpha": a,
             "train_loss": 0.5 + (lv + 1) * 0.2 * abs(a - 0.5)}
            for mask in ("common", "none") for lv in range(pairs) for a in ALPHAS]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("pairs", [3, 12])
def test_successive_level_pairs_differ_in_hue_and_marker(drawn, pairs):
    """Shades of one colour cannot be told apart where the paths cross: the first pairs get clearly
    different hues, and every pair its own (hue, marker)."""
    jobs = jobs_table("saleem", "saleem", [10]).assign(experiment="saleem")
    assert figures.saleem_successive_figure(jobs, successive_table(pairs), "saleem", "test", Path("unused"))
    for ax in drawn[-1].axes:
        lines = data_lines(ax)
        assert len(lines) == pairs
        styles = [(to_rgb(ln.get_color()), ln.get_marker()) for ln in lines]
        assert len(set(styles)) == pairs
        first = [rgb for rgb, _ in styles[:len(figures.HUES)]]
        assert min(np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(first, 2)) > 0.25


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def test_every_figure_is_also_an_svg_and_both_are_byte_identical_on_redraw(tmp_path):
    jobs = jobs_table("stab", "stabilized", [0, 20])
    data = {"jobs": jobs, "instability": instability_table(jobs, {(k, lv): 5.0 for k in (0, 20) for lv in (0, LEVELS)})}
    drawn, _ = figures.draw_all(data, "test", tmp_path / "a")
    figures.draw_all(data, "test", tmp_path / "b")
    assert [p.suffix for p, _ in drawn] == [".png", ".png"]
    assert sorted(f.name for f in (tmp_path / "a").iterdir()) == sorted(
        f.name for p, _ in drawn for f in (p, figures.vector_of(p)))
    for png, _ in drawn:
        svg = figures.vector_of(png)
        assert svg.parent == png.parent and svg.stem == png.stem
        assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
        for f in (png, svg):
            assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name


# --------------------------------------------------------------------------------------------------
# Snakemake's report (the Snakemake catalog's convention: `snakemake --report report.html`)
# --------------------------------------------------------------------------------------------------


def test_snakemake_report_shows_the_figures_per_family_the_tables_and_the_report(tmp_path):
    """Built from the committed quick results without running any job (no runs, no .snakemake
    metadata): what a reviewer gets from the workflow's own report command."""
    for name in ("workflow", "profiles"):
        (tmp_path / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "config", tmp_path / "config")
    committed = REPO / "results" / "quick"
    shutil.copytree(committed, tmp_path / "results" / "quick", ignore=shutil.ignore_patterns("runs", "logs"))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(bin_dir / "snakemake"), "--configfile", "config/quick.yaml", "--report", "report.html"],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    html = (tmp_path / "report.html").read_text()
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", html).group(1))
    index = pd.read_csv(committed / "tables" / "figures.csv")
    drawn = sorted(index.loc[index["drawn"], "figure"])
    shown = {cat: sorted(Path(f).name for files in sub.values() for f in files) for cat, sub in categories.items()}
    assert shown.pop("report") == ["metrics.json", "report.html", "report.md"]
    assert shown.pop("tables") == sorted(f.name for f in (committed / "tables").glob("*.csv"))
    assert set(shown) == {"lth", "stabilized", "saleem"}
    assert all(name.startswith(f"{family}_") for family, names in shown.items() for name in names)
    assert sorted(name for names in shown.values() for name in names) == drawn
    results = json.loads(re.search(r"var results = (\{.*?\});\n", html).group(1))
    labels = {Path(f).name: r["labels"] for f, r in results.items()}
    for name, caption in index.loc[index["drawn"], ["figure", "caption"]].itertuples(index=False):
        assert labels[name] == {"figure": name.removesuffix(".png"), "caption": caption}  # as report.md has it


# --------------------------------------------------------------------------------------------------
# Training curves of running and finished jobs (`ticketbench curves`)
# --------------------------------------------------------------------------------------------------


def fake_job(job: Path, evaluations: int, finished: bool, validation: bool = True) -> pd.DataFrame:
    """A job directory as training leaves it: metrics.csv after each evaluation (the columns of
    train.METRIC_COLUMNS), summary.json only once the job has finished."""
    from ticketbench.train import METRIC_COLUMNS

    steps = np.arange(1, evaluations + 1) * 100
    val = (1.0 + (steps - 300) ** 2 / 1e5) if validation else np.full(len(steps), np.nan)  # minimum at step 300
    metrics = pd.DataFrame({"step": steps, "epoch": steps / 50, "lr": 0.1, "train_loss": 2 / steps ** 0.5,
                            "val_loss": val, "val_acc": 0.8 if validation else np.nan, "test_loss": val + 0.1,
                            "test_acc": 0.5 + steps / 1e4}, columns=METRIC_COLUMNS)
    job.mkdir(parents=True)
    metrics.to_csv(job / "metrics.csv", index=False)
    if finished:
        (job / "summary.json").write_text("{}")
    return metrics


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("hash: x\n")
    fake_job(run / "imp" / "level_00", 6, finished=True)
    fake_job(run / "copy" / "level_01" / "rep_1", 3, finished=False)
    return run


def test_curves_of_a_run_draw_every_job_and_say_which_is_still_running(drawn, run_dir, tmp_path):
    figures.curves_figure(figures.job_curves([run_dir]), tmp_path / "curves.png")
    (fig,) = drawn
    imp_loss, imp_acc, copy_loss, copy_acc = fig.axes  # one row per branch, IMP first
    assert imp_loss.get_title() == "IMP (winning ticket): loss" and copy_acc.get_title() == "SGD-noise copy: accuracy"
    assert [t.get_text() for t in imp_acc.get_legend().get_texts()] == ["level 0"]
    assert [t.get_text() for t in copy_acc.get_legend().get_texts()] == ["level 1, rep 1 (running)"]
    assert "still running: copy, level 1, rep 1 (step 300)" in fig._suptitle.get_text()
    for loss in (imp_loss, copy_loss):
        stars = [ln for ln in loss.lines if ln.get_marker() == "*"]
        assert [float(s.get_xdata()[0]) for s in stars] == [300]  # the minimum validation loss of the job
        assert len([ln for ln in loss.lines if ln.get_marker() != "*"]) == 3  # its train, val and test loss


def whole_run(root: Path) -> Path:
    """A run as the quick LeNet protocol leaves it: IMP levels 0-10, random reinitialization and random
    pruning at levels 1-10, and the fine-tuning chain: 41 jobs, the last level of each still training."""
    (root / "config.yaml").parent.mkdir(parents=True)
    (root / "config.yaml").write_text("hash: x\n")
    for level in range(11):
        fake_job(root / "imp" / f"level_{level:02d}", 6, finished=level < 10)
    for branch, level in itertools.product(("random_reinit", "random_prune", "finetune"), range(1, 11)):
        rep = ("rep_0",) if branch != "finetune" else ()
        fake_job(root.joinpath(branch, f"level_{level:02d}", *rep), 6, finished=level < 10)
    return root


def hls(colour) -> tuple[float, float, float]:
    return colorsys.rgb_to_hls(*to_rgb(colour))


def test_the_curves_of_a_whole_run_keep_one_hue_per_branch_and_their_legends_beside_the_panels(drawn, tmp_path):
    """41 jobs: one row of panels per branch in its colour of the report figures, a job's level read from
    its shade (light = dense, dark = sparse, the same shade for a level in every row), and every legend
    outside the panels, clear of their axis labels (not over the middle of the figure, in 41 cycling hues)."""
    curves = figures.job_curves([whole_run(tmp_path / "run")])
    assert len(curves) == 41
    figures.curves_figure(curves, tmp_path / "curves.png")
    (fig,) = drawn
    rows = {ax.get_title().removesuffix(": loss"): (ax, acc) for ax, acc in zip(fig.axes[::2], fig.axes[1::2])}
    assert list(rows) == ["IMP (winning ticket)", "random reinit", "random pruning", "fine-tuning"]
    hues = {}
    for name, (loss, acc) in rows.items():
        colours = {to_rgb(ln.get_color()) for ax in (loss, acc) for ln in ax.lines}
        assert len(colours) == (11 if name.startswith("IMP") else 10), name  # one shade per level
        hue = {round(hls(c)[0], 6) for c in colours}
        assert len(hue) == 1, f"{name}: one hue, {hue}"
        hues[name] = hue.pop()
        labels = [t.get_text() for t in acc.get_legend().get_texts()]
        assert labels[-1].startswith("level 10") and labels[-1].endswith("(running)") and len(labels) == len(colours)
        lightness = [hls(h.get_color())[1] for h in acc.get_legend().legend_handles]
        assert lightness == sorted(lightness, reverse=True) and len(set(lightness)) == len(lightness), name
    assert all(abs(a - b) > 0.02 for a, b in itertools.combinations(hues.values(), 2)), hues  # branches differ
    for name, branch, first in (("IMP (winning ticket)", "imp", 0), ("random reinit", "random_reinit", 1)):
        handles = rows[name][1].get_legend().legend_handles
        for level in (1, 5, 10):  # a level sits as far from light to dark in every row: 0 is the lightest, 10 the darkest
            shade = figures.shade(figures.branch_hue(branch), level / 10)
            assert to_rgb(handles[level - first].get_color()) == pytest.approx(shade), (name, level)

    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + fig.legends
    assert len(legends) == 4 + 1  # one per branch, and the line styles of the splits
    taken = [ax.get_window_extent(renderer) for ax in fig.axes]
    taken += [b for ax in fig.axes for b in (ax.yaxis.get_tightbbox(renderer), ax.xaxis.get_tightbbox(renderer)) if b]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert inside(box, fig.bbox), "the legend is not cut off"
        assert not any(box.overlaps(other) for other in taken), [t.get_text() for t in legend.get_texts()][:2]


def test_a_finished_job_without_validation_split_has_no_early_stop_mark(drawn, tmp_path):
    (tmp_path / "run" / "config.yaml").parent.mkdir()
    (tmp_path / "run" / "config.yaml").write_text("hash: x\n")
    fake_job(tmp_path / "run" / "imp" / "level_02", 4, finished=True, validation=False)
    figures.curves_figure(figures.job_curves([tmp_path / "run" / "imp" / "level_02"]), tmp_path / "c.png")
    (fig,) = drawn
    assert not [ln for ax in fig.axes for ln in ax.lines if ln.get_marker() == "*"]
    assert "all finished" in fig._suptitle.get_text()


def test_the_curves_figure_is_written_as_png_and_svg_and_redraws_byte_identically(run_dir, tmp_path):
    from ticketbench import cli

    for out in ("a", "b"):
        assert cli.main(["curves", str(run_dir), "-o", str(tmp_path / out / "curves.png")]) == 0
    for name in ("curves.png", "curves.svg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_job_without_metrics_is_one_clear_error_with_exit_2(run_dir, capsys):
    from ticketbench import cli

    (run_dir / "imp" / "level_01").mkdir()
    assert cli.main(["curves", str(run_dir / "imp" / "level_01"), "-o", "never.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ticketbench: error:") and "no metrics.csv" in err[0]
