"""The papers' key figures (seaborn; PNG for the report, SVG beside each for print), drawn from the
tidy tables only.

Every curve is the mean over seeds with a min-max band (the LTH's and Stabilizing's error bars:
"min and max of any trial"). Sparsity is shown as % of weights remaining on a log axis that runs
from dense (left) to sparse (right), as in the papers. PNGs and SVGs carry fixed metadata and are
written atomically, so drawing the same tables twice gives byte-identical files (DVC and the tests rely
on it).

Each ``*_figure`` function returns the PNGs it wrote (each has its SVG, :func:`vector_of`);
:func:`draw_all` picks the figures that a family's data supports and skips (and reports) the ones whose
analysis was not run at this scale.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from ..analysis.barriers import STABLE_PP  # noqa: E402
from ..checkpoints import atomic_write  # noqa: E402
from ..config import JOB_BRANCHES, ConfigError  # noqa: E402
from .tables import SUCCESSIVE_LOSS, remaining_column  # noqa: E402

BRANCH_LABELS = {"imp": "IMP (winning ticket)", "random_reinit": "random reinit", "random_prune": "random pruning",
                 "oneshot": "one-shot pruning", "finetune": "fine-tuning", "copy": "SGD-noise copy"}
_PALETTE = sns.color_palette("colorblind", 10)
# Distinct hues (the palette's orange and vermillion are too close to tell apart) and marker shapes, so
# that overlapping curves stay distinguishable in print and for colour-blind readers. Curves are paired
# with (hue, marker) in order; the two cycles have coprime lengths, so 72 curves get distinct pairs.
HUES = [_PALETTE[i] for i in (0, 1, 2, 4, 5, 7, 8, 9)]
MARKERS = ["o", "s", "^", "D", "v", "X", "P", "*", "<"]
BRANCH_COLORS = dict(zip(BRANCH_LABELS.values(), HUES))
BRANCH_MARKERS = dict(zip(BRANCH_LABELS.values(), MARKERS))
BAND = ("pi", 100)  # the band spans min..max over seeds
REMAINING = "weights remaining (%)"
ACCURACY = "test accuracy (%)"


def _encode(fig: plt.Figure, fmt: str) -> bytes:
    """The figure's bytes without a date, software version or random ids, so reruns are byte-identical."""
    buf = io.BytesIO()
    if fmt == "svg":
        with plt.rc_context({"svg.hashsalt": "ticketbench"}):  # clip-path and glyph ids, else random
            fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    else:
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def save_png(fig: plt.Figure, path: Path) -> None:
    """Write a figure as PNG, atomically."""
    atomic_write(path, _encode(fig, "png"))
    plt.close(fig)


def vector_of(png: Path) -> Path:
    """The SVG drawn beside a report figure's PNG: the same figure, scalable, for print and zooming in."""
    return png.with_suffix(".svg")


def save(fig: plt.Figure, png: Path) -> None:
    """Write a report figure: the PNG the report embeds and its SVG (:func:`vector_of`). The PNG is
    rendered first, so that it is the PNG that :func:`save_png` would have written."""
    atomic_write(png, _encode(fig, "png"))
    atomic_write(vector_of(png), _encode(fig, "svg"))
    plt.close(fig)


def _theme() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.95)


def _subplots(*args, **kwargs):
    """Constrained layout keeps the two-line suptitle clear of the panel titles."""
    return plt.subplots(*args, layout="constrained", **kwargs)


def _remaining_axis(ax: plt.Axes, densities: pd.Series) -> None:
    """Log x axis of % remaining, dense on the left, ticks at the levels actually trained."""
    ax.set_xscale("log")
    values = sorted({float(f"{100 * d:.3g}") for d in densities.dropna() if d > 0}, reverse=True)
    step = max(1, int(np.ceil(len(values) / 8)))
    ticks = values[::step]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    if values:
        ax.set_xlim(max(values) * 1.15, min(values) / 1.15)
    ax.set_xlabel(REMAINING)


def _log_if_wide(ax: plt.Axes, values: pd.Series) -> None:
    """A log y axis for quantities spanning more than a decade (eigenvalues); linear otherwise, where
    log tick labels would read 4x10^-1."""
    v = values[values > 0]
    if len(v) and v.max() / v.min() > 10:
        ax.set_yscale("log")


def _title(fig: plt.Figure, what: str, experiment: str, table: pd.DataFrame, scale: str) -> None:
    row = table.iloc[0]
    seeds = table["seed"].nunique()
    spread = "; mean over seeds, band = min-max" if seeds > 1 else ""
    fig.suptitle(f"{what}\n{experiment} ({row['network']} / {row['dataset']}), scale: {scale}, "
                 f"{seeds} seed{'s' * (seeds != 1)}{spread}", fontsize="medium")


def _pct(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(**{REMAINING: 100 * df["density"]})


def _baselines(jobs: pd.DataFrame, branches: list[str]) -> pd.DataFrame:
    """IMP levels plus the baselines trained at those levels (level 0, the dense net, is the
    common starting point of every curve)."""
    df = jobs[jobs["branch"].isin(branches) & (jobs["branch"] != "copy")].copy()
    dense = jobs[(jobs["branch"] == "imp") & (jobs["level"] == 0)]
    extra = [dense.assign(branch=b) for b in branches if b != "imp" and (df["branch"] == b).any()]
    df = pd.concat([df, *extra], ignore_index=True)
    return _pct(df).assign(method=df["branch"].map(BRANCH_LABELS))


def _methods(df: pd.DataFrame) -> list[str]:
    """Legend order: IMP first, then the baselines in a fixed order, so colours and order never move."""
    return [label for label in BRANCH_LABELS.values() if (df["method"] == label).any()]


# --------------------------------------------------------------------------------------------------
# Frankle & Carbin 2019
# --------------------------------------------------------------------------------------------------


def _accuracy_figure(table: pd.DataFrame, branches: tuple[str, ...]) -> plt.Figure:
    df = _baselines(table, list(branches))
    has_es = df["early_stop_test_acc"].notna().any()
    panels = ([("early_stop_test_acc", "at early stop (minimum validation loss)")] if has_es else []) + [
        ("final_test_acc", "at the end of training")]
    _theme()
    fig, axes = _subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False, sharey=True)
    for ax, (col, label) in zip(axes[0], panels):
        d = df.assign(**{ACCURACY: 100 * df[col].astype(float)})
        sns.lineplot(data=d, x=REMAINING, y=ACCURACY, hue="method", hue_order=_methods(d), palette=BRANCH_COLORS,
                     style="method", style_order=_methods(d), markers=BRANCH_MARKERS, dashes=False, errorbar=BAND, ax=ax)
        _remaining_axis(ax, df["density"])
        ax.set_title(f"test accuracy {label}", fontsize="medium")
        ax.legend(title=None, fontsize="small")
    return fig


def accuracy_vs_density(table: pd.DataFrame, output: Path, title: str = "",
                        branches: tuple[str, ...] = ("imp", "random_reinit", "random_prune", "oneshot", "finetune")) -> None:
    """Test accuracy at early stop (where there is a validation split) and at the end of training vs.
    % weights remaining, for IMP and its baselines (LTH Figs. 3-5: early stop; Fig. 4b: end)."""
    fig = _accuracy_figure(table, branches)
    if title:
        fig.suptitle(title, fontsize="medium")
    save_png(fig, output)


def lth_accuracy_figure(jobs: pd.DataFrame, experiment: str, scale: str, out: Path) -> list[tuple[Path, str]]:
    df = jobs[jobs["experiment"] == experiment]
    fig = _accuracy_figure(df, ("imp", "random_reinit", "random_prune"))
    _title(fig, "Frankle & Carbin 2019, Figs. 3-5: winning tickets vs. random reinit and random pruning", experiment, df, scale)
    path = out / f"lth_accuracy_{experiment}.png"
    save(fig, path)
    return [(path, f"{experiment}: test accuracy vs. weights remaining for IMP, random reinitialization and random "
                   f"pruning (Frankle & Carbin 2019, Figs. 3-5)")]


def lth_early_stop_figure(jobs: pd.DataFrame, experiment: str, scale: str, out: Path) -> list[tuple[Path, str]]:
    """Early-stop iteration (minimum validation loss) vs. % remaining: the LTH's learning-speed proxy."""
    df = jobs[jobs["experiment"] == experiment]
    d = _baselines(df, ["imp", "random_reinit", "random_prune"]).dropna(subset=["early_stop_step"])
    if d.empty:
        return []
    d = d.assign(**{"early-stop iteration": d["early_stop_step"].astype(float)})
    _theme()
    fig, ax = _subplots(figsize=(6.4, 4.6))
    sns.lineplot(data=d, x=REMAINING, y="early-stop iteration", hue="method", hue_order=_methods(d),
                 palette=BRANCH_COLORS, style="method", style_order=_methods(d), markers=BRANCH_MARKERS, dashes=False,
                 errorbar=BAND, ax=ax)
    _remaining_axis(ax, d["density"])
    ax.set_ylabel("early-stop iteration (iterations)")
    ax.legend(title=None, fontsize="small")
    _title(fig, "Frankle & Carbin 2019, Figs. 3-5: iteration of minimum validation loss", experiment, df, scale)
    path = out / f"lth_early_stop_{experiment}.png"
    save(fig, path)
    return [(path, f"{experiment}: early-stop iteration (minimum validation loss) vs. weights remaining "
                   f"(Frankle & Carbin 2019, Figs. 3-5)")]


PAPER_PANELS = {"early_stop_test_acc": ("test accuracy at early stop", ACCURACY),
                "final_test_acc": ("test accuracy at the end of training", ACCURACY),
                "early_stop_step": ("iteration of minimum validation loss", "early-stop iteration")}


def paper_vs_ours_figure(jobs: pd.DataFrame, reported: pd.DataFrame, experiment: str, scale: str,
                         out: Path) -> list[tuple[Path, str]]:
    """Our curves (mean over seeds, min-max band) with the papers' values of config/claims.yaml on top,
    one panel per quantity the claims read (:func:`claims.reported_points`): black diamonds with the
    check's tolerance for values at a density, hollow ones for changes against the dense network (placed
    at our dense network's mean, since the paper gives the change, not its dense value), and dotted
    verticals for the P_m where the paper says a curve crosses the dense network's. x is % of all
    weights, the LTH paper's P_m."""
    df = jobs[jobs["experiment"] == experiment]
    points = reported[reported["experiment"] == experiment]
    panels = [m for m in PAPER_PANELS if (points["metric"] == m).any()]
    if not panels or df.empty:
        return []
    branches = [b for b in BRANCH_LABELS if b != "finetune"]
    d = _baselines(df, branches)
    col = remaining_column(d)
    d = d.assign(**{REMAINING: 100 * d[col].astype(float)})
    dense = df[(df["branch"] == "imp") & (df["level"] == 0)]
    _theme()
    fig, axes = _subplots(1, len(panels), figsize=(6.2 * len(panels), 5.2), squeeze=False)
    keys: dict[str, plt.Artist] = {}  # label -> handle, over every panel (a branch may be drawn in one panel only)
    for ax, metric in zip(axes[0], panels):
        title, ylabel = PAPER_PANELS[metric]
        scale_y = 100.0 if metric in ("early_stop_test_acc", "final_test_acc") else 1.0
        y = d.assign(**{ylabel: scale_y * d[metric].astype(float)}).dropna(subset=[ylabel])
        sns.lineplot(data=y, x=REMAINING, y=ylabel, hue="method", hue_order=_methods(y), palette=BRANCH_COLORS,
                     style="method", style_order=_methods(y), markers=BRANCH_MARKERS, dashes=False, errorbar=BAND, ax=ax)
        x0 = scale_y * float(dense[metric].astype(float).mean())
        mine = points[points["metric"] == metric]
        for _, r in mine.iterrows():
            color = BRANCH_COLORS.get(BRANCH_LABELS.get(r["branch"], ""), "black")
            if r["kind"] == "density":
                ax.axvline(r["value"], color=color, linestyle=":", linewidth=1.2)
                ax.annotate(f"{r['claim']}\n{r['value']:g}%", (r["value"], 1.0), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", ha="right", fontsize="x-small", color=color, annotation_clip=True)
                continue
            if r["relative"]:
                v = x0 * (1 - r["value"] / 100) if metric == "early_stop_step" else x0 + r["value"]
                e = x0 * r["tol"] / 100 if metric == "early_stop_step" else r["tol"]
            else:
                v, e = r["value"], r["tol"]
            ax.errorbar([100 * r["density"]], [v], yerr=[e], fmt="D", markersize=7, capsize=3, color="black",
                        markerfacecolor="white" if r["relative"] else color, markeredgecolor="black", zorder=5)
            ax.annotate(r["claim"], (100 * r["density"], v), textcoords="offset points", xytext=(6, 4),
                        fontsize="x-small")
        _remaining_axis(ax, pd.concat([d[col], mine["density"]]))  # the paper's P_m inside the axis too
        ax.set_xlabel("weights remaining, % of all weights (the LTH's P_m)")
        ax.set_title(title, fontsize="medium")
        keys.update({label: h for h, label in zip(*ax.get_legend_handles_labels())})
        ax.get_legend().remove()
    keys |= {"paper's value (+/- check tolerance)":
             Line2D([], [], marker="D", color="black", linestyle="", markerfacecolor="grey"),
             "paper's change vs. dense, at our dense":
             Line2D([], [], marker="D", color="black", linestyle="", markerfacecolor="white"),
             "paper's P_m where the curve crosses dense": Line2D([], [], color="grey", linestyle=":")}
    # One legend below the panels: the curves and the paper's marks fill each panel wherever the data put
    # them, so a legend inside one hides some of them (it hid the random baselines of the LeNet scale).
    fig.legend(list(keys.values()), list(keys), loc="outside lower center", ncol=4, fontsize="small")
    _title(fig, "The papers' reported values (config/claims.yaml) beside our curves", experiment, df, scale)
    path = out / f"paper_vs_ours_{experiment}.png"
    save(fig, path)
    return [(path, f"{experiment}: the papers' reported values (config/claims.yaml, quantitative checks of this "
                   f"protocol) beside our curves")]


# --------------------------------------------------------------------------------------------------
# Frankle et al. 2019/2020 (Stabilizing the LTH; Linear Mode Connectivity)
# --------------------------------------------------------------------------------------------------


MIN_K_FOR_A_LINE = 3  # rewind points needed before barriers vs. k are joined into a curve


def _k_label(k: float) -> str:
    return f"k = {k:g}" if np.isfinite(k) else "k unknown"


def stabilized_accuracy_figure(jobs: pd.DataFrame, group: pd.DataFrame, name: str, scale: str, out: Path) -> list[tuple[Path, str]]:
    """IMP test accuracy vs. % remaining, one curve per rewind point k (Stabilizing Fig. 5; LMC Fig. 7)."""
    df = _pct(group[group["branch"] == "imp"])
    df = df.assign(**{ACCURACY: 100 * df["final_test_acc"].astype(float),
                      "rewind point": df["rewind_step"].map(_k_label)})
    order = [_k_label(k) for k in sorted(df["rewind_step"].unique())]
    _theme()
    fig, ax = _subplots(figsize=(6.6, 4.6))
    sns.lineplot(data=df, x=REMAINING, y=ACCURACY, hue="rewind point", hue_order=order, marker="o", errorbar=BAND,
                 palette="viridis", ax=ax)
    _remaining_axis(ax, df["density"])
    ax.legend(title="rewind point (iterations)", fontsize="small")
    _title(fig, "Frankle et al. 2019/2020: IMP with rewinding to step k, final test accuracy", name, group, scale)
    path = out / f"stabilized_accuracy_{_slug(name)}.png"
    save(fig, path)
    return [(path, f"{name}: IMP subnetworks rewound to step k, final test accuracy vs. weights remaining "
                   f"(Stabilizing the LTH Fig. 5; LMC Fig. 7)")]


def stabilized_instability_figure(group: pd.DataFrame, instability: pd.DataFrame, name: str, scale: str,
                                  out: Path) -> list[tuple[Path, str]]:
    """Left: error barrier vs. rewind point k for the dense net and the IMP subnetworks (LMC Figs. 3, 5).
    Right: test error along the linear path between the two SGD-noise copies, per k (LMC Fig. 2)."""
    from .tables import INSTABILITY_ERROR, barriers, instability_paths

    inst = instability_paths(instability)
    inst = inst[inst["experiment"].isin(group["experiment"].unique())]
    if inst.empty:
        return []
    dens = group[group["branch"] == "imp"].groupby("level")["density"].mean()
    label = lambda lv: "dense network" if lv == 0 else f"IMP, {100 * dens.get(lv, np.nan):.3g}% remaining"  # noqa: E731
    b = barriers(inst)
    b = b.assign(subnetwork=b["level"].map(label), barrier_pp=b["barrier"])
    levels = sorted(b["level"].unique())
    ks = sorted(b["rewind_step"].unique())
    _theme()
    fig, (ax1, ax2) = _subplots(1, 2, figsize=(12.4, 4.6))
    # A line through two or fewer rewind points would draw a trend between k's that were never run:
    # there, the points stand alone, their min-max spread as error bars.
    sparse_grid = dict(linestyle="", err_style="bars", markersize=8) if len(ks) < MIN_K_FOR_A_LINE else {}
    sns.lineplot(data=b, x="rewind_step", y="barrier_pp", hue="subnetwork", hue_order=[label(lv) for lv in levels],
                 marker="o", errorbar=BAND, ax=ax1, palette="rocket", **sparse_grid)
    if len(ks) > 1 and ks[0] == 0:
        ax1.set_xscale("symlog", linthresh=max(1.0, ks[1]))
    ax1.xaxis.set_major_locator(FixedLocator(ks))
    ax1.xaxis.set_minor_locator(NullLocator())
    ax1.set_xticklabels([f"{k:g}" for k in ks])
    ax1.margins(x=0.1)
    ax1.axhline(STABLE_PP, color="0.5", ls="--", lw=1)
    # Anchored to the left edge of the axes (x in axes units), so it stays inside whatever the k range;
    # the y range leaves room above the threshold for it when every barrier is below it.
    ax1.set_ylim(top=max(ax1.get_ylim()[1], 1.5 * STABLE_PP))
    ax1.text(0.01, STABLE_PP, f"stable: < {STABLE_PP:g} pp", transform=ax1.get_yaxis_transform(), va="bottom",
             ha="left", fontsize="x-small", color="0.4")
    ax1.set_xlabel("rewind point k (iterations)")
    ax1.set_ylabel("error barrier (pp of test error)")
    ax1.set_title("instability: error barrier between two copies", fontsize="medium")
    ax1.legend(title=None, fontsize="small")
    path_df = inst.assign(**{"test error (%)": 100 * inst[INSTABILITY_ERROR].astype(float),
                             "rewind point": inst["rewind_step"].map(_k_label),
                             "subnetwork": inst["level"].map(label)})
    path_df = path_df[path_df["level"] == levels[-1]]
    sns.lineplot(data=path_df, x="alpha", y="test error (%)", hue="rewind point",
                 hue_order=[_k_label(k) for k in ks if (path_df["rewind_step"] == k).any()], errorbar=BAND,
                 palette="viridis", ax=ax2)
    ax2.set_xlabel("interpolation coefficient α (0 = copy 1, 1 = copy 2)")
    ax2.set_title(f"test error along the linear path: {label(levels[-1])}", fontsize="medium")
    ax2.legend(title="rewind point (iterations)", fontsize="small")
    _title(fig, "Frankle et al. 2020 (LMC): instability analysis", name, group, scale)
    path = out / f"stabilized_instability_{_slug(name)}.png"
    save(fig, path)
    return [(path, f"{name}: error barrier between two copies trained from step k with different SGD noise "
                   f"(dense network and IMP subnetworks), and the test error along the path (LMC Figs. 2-5)")]


# --------------------------------------------------------------------------------------------------
# Saleem et al. 2024
# --------------------------------------------------------------------------------------------------


def saleem_methods_figure(jobs: pd.DataFrame, experiment: str, scale: str, out: Path) -> list[tuple[Path, str]]:
    df = jobs[jobs["experiment"] == experiment]
    fig = _accuracy_figure(df, ("imp", "oneshot", "finetune", "random_reinit", "random_prune"))
    _title(fig, "Saleem et al. 2024: IMP vs. one-shot pruning, fine-tuning, random reinit and random pruning",
           experiment, df, scale)
    path = out / f"saleem_methods_{experiment}.png"
    save(fig, path)
    return [(path, f"{experiment}: IMP with rewinding vs. one-shot magnitude pruning, fine-tuning (Renda et al. 2020), "
                   f"random reinitialization and random pruning at the same per-layer sparsity")]


def hessian_quantity(hessian: pd.DataFrame, quantity: str) -> pd.DataFrame:
    """Rows of one quantity of the Hessian table (eigenvalue, trace, log_volume), with % remaining."""
    return _pct(hessian[hessian["quantity"] == quantity]).assign(value=lambda d: d["value"].astype(float))


def saleem_levels_figure(jobs: pd.DataFrame, hessian: pd.DataFrame | None, experiment: str, scale: str,
                         out: Path) -> list[tuple[Path, str]]:
    """Per IMP level: training loss and test accuracy of the trained network and, where the Hessian
    analysis ran, its top eigenvalues and log-volume estimate (Saleem et al. 2024)."""
    df = jobs[(jobs["experiment"] == experiment) & (jobs["branch"] == "imp")]
    if df.empty:
        return []
    loss = "training loss (cross-entropy, nats)"
    df = _pct(df).assign(**{ACCURACY: 100 * df["final_test_acc"].astype(float), loss: df["final_train_loss"].astype(float)})
    h = None if hessian is None else hessian[(hessian["experiment"] == experiment) & (hessian["branch"] == "imp")]
    has_h = h is not None and not h.empty
    _theme()
    fig, axes = _subplots(2 if has_h else 1, 2, figsize=(11.5, 8.6 if has_h else 4.4), squeeze=False)
    ax = axes.flatten()
    sns.lineplot(data=df, x=REMAINING, y=loss, marker="o", errorbar=BAND, ax=ax[0], color="C0")
    ax[0].set_title("training loss of the trained network", fontsize="medium")
    sns.lineplot(data=df, x=REMAINING, y=ACCURACY, marker="o", errorbar=BAND, ax=ax[1], color="C0")
    ax[1].set_title("test accuracy", fontsize="medium")
    if has_h:
        eig = hessian_quantity(h, "eigenvalue")
        eig = eig.assign(rank=eig["index"].map(lambda i: f"λ{int(i) + 1}"))
        ranks = [f"λ{i + 1}" for i in sorted(eig["index"].astype(int).unique())]
        sns.lineplot(data=eig, x=REMAINING, y="value", hue="rank", hue_order=ranks, marker="o", markersize=4,
                     errorbar=BAND, ax=ax[2], palette="mako")
        _log_if_wide(ax[2], eig["value"])
        ax[2].set_ylabel("eigenvalue of the training-loss Hessian")
        ax[2].set_title(f"top {len(ranks)} Hessian eigenvalues (unpruned coordinates)", fontsize="medium")
        # Outside the axes: the top eigenvalue runs along the top of the panel, where a legend would sit.
        ax[2].legend(title=None, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        vol = hessian_quantity(h, "log_volume")
        method = vol["method"].dropna().iloc[0] if "method" in vol and vol["method"].notna().any() else ""
        sns.lineplot(data=vol, x=REMAINING, y="value", marker="o", errorbar=BAND, ax=ax[3], color="C4")
        ax[3].set_ylabel("log-volume estimate (nats)")
        ax[3].set_title(f"basin log-volume ({method} estimate)" if method else "basin log-volume", fontsize="medium")
    for a, d in zip(ax, (df, df, df, df)):
        _remaining_axis(a, d["density"])
    _title(fig, "Saleem et al. 2024: the IMP solution at each level", experiment, df, scale)
    path = out / f"saleem_levels_{experiment}.png"
    save(fig, path)
    note = "" if has_h else " (Hessian analysis not run at this scale)"
    return [(path, f"{experiment}: per IMP level, training loss, test accuracy, top Hessian eigenvalues and "
                   f"log-volume of the trained network (Saleem et al. 2024){note}")]


def saleem_hessian_figure(jobs: pd.DataFrame, hessian: pd.DataFrame, experiment: str, scale: str,
                          out: Path) -> list[tuple[Path, str]]:
    """Top eigenvalue and log-volume of IMP's solutions beside the baselines' at the same sparsity."""
    h = hessian[hessian["experiment"] == experiment]
    if h.empty or h["branch"].nunique() < 2:
        return []
    top = hessian_quantity(h, "eigenvalue")
    top = top[top["index"] == 0]
    vol = hessian_quantity(h, "log_volume")
    _theme()
    fig, (ax1, ax2) = _subplots(1, 2, figsize=(12.4, 4.6))
    for ax, d, ylabel, title in ((ax1, top, "top eigenvalue λ1", "sharpness: top Hessian eigenvalue"),
                                 (ax2, vol, "log-volume estimate (nats)", "basin log-volume")):
        d = d.assign(method=d["branch"].map(BRANCH_LABELS))
        sns.lineplot(data=d, x=REMAINING, y="value", hue="method", hue_order=_methods(d), palette=BRANCH_COLORS,
                     style="method", style_order=_methods(d), markers=BRANCH_MARKERS, dashes=False, errorbar=BAND, ax=ax)
        _remaining_axis(ax, d["density"])
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize="medium")
        ax.legend(title=None, fontsize="small")
    _log_if_wide(ax1, top["value"])
    _title(fig, "Saleem et al. 2024: curvature of IMP's solutions vs. the baselines'", experiment,
           jobs[jobs["experiment"] == experiment], scale)
    path = out / f"saleem_hessian_{experiment}.png"
    save(fig, path)
    return [(path, f"{experiment}: top Hessian eigenvalue and basin log-volume of the trained networks of IMP and "
                   f"the baselines analysed, vs. weights remaining")]


MASK_LABELS = {"common": "both endpoints on the sparser mask", "none": "weights as stored"}


def saleem_successive_figure(jobs: pd.DataFrame, successive: pd.DataFrame, experiment: str, scale: str,
                             out: Path) -> list[tuple[Path, str]]:
    """Training loss along the line from the level-L solution to the level-(L+1) solution (Saleem et
    al.; Paul et al. 2023 measure the error barrier of the same path), one panel per mask mode."""
    s = successive[successive["experiment"] == experiment]
    if s.empty:
        return []
    s = s.assign(pair=[f"level {int(a)} → {int(b)}" for a, b in zip(s["level"], s["level_b"])],
                 loss=s[SUCCESSIVE_LOSS].astype(float))
    order = [f"level {lv} → {lv + 1}" for lv in sorted(s["level"].astype(int).unique())]
    # One hue and one marker shape per pair (not shades of one colour): the paths cross and overlap.
    colors = {pair: HUES[i % len(HUES)] for i, pair in enumerate(order)}
    markers = {pair: MARKERS[i % len(MARKERS)] for i, pair in enumerate(order)}
    modes = [m for m in ("common", "none") if (s["mask"] == m).any()]
    _theme()
    fig, axes = _subplots(1, len(modes), figsize=(6.2 * len(modes), 4.6), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes):
        sns.lineplot(data=s[s["mask"] == mode], x="alpha", y="loss", hue="pair", hue_order=order, errorbar=BAND,
                     palette=colors, style="pair", style_order=order, markers=markers, dashes=False, markersize=5,
                     ax=ax)
        ax.set_xlabel("interpolation coefficient α (0 = level L, 1 = level L+1)")
        ax.set_ylabel("training loss (cross-entropy, nats)")
        ax.set_title(MASK_LABELS.get(mode, mode), fontsize="medium")
        ax.legend(title=None, fontsize="small", ncol=2)
    _title(fig, "Saleem et al. 2024 / Paul et al. 2023: loss between successive IMP solutions", experiment,
           jobs[jobs["experiment"] == experiment], scale)
    path = out / f"saleem_successive_{experiment}.png"
    save(fig, path)
    return [(path, f"{experiment}: training loss along the linear path between the solutions of IMP levels L and L+1")]


# --------------------------------------------------------------------------------------------------
# Training curves of jobs (ticketbench curves): a running job is watched through its metrics.csv
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """One job's evaluations (its metrics.csv, rewritten atomically at every evaluation while it trains)."""

    run: str  # the run's folder name where several runs are drawn, else ""
    branch: str
    level: int
    rep: int | None
    metrics: pd.DataFrame
    running: bool  # no summary.json yet: the job is training, interrupted, or waiting to resume

    @property
    def job(self) -> str:
        """``level 3`` or ``level 3, rep 1``: the job within its branch."""
        return f"level {self.level}" + ("" if self.rep is None else f", rep {self.rep}")

    @property
    def label(self) -> str:
        """``imp, level 3``, or ``seed1, copy, level 3, rep 1`` where several runs are drawn."""
        return ", ".join([self.run] * bool(self.run) + [self.branch, self.job])


CURVE_STYLES = {"train": "-", "val": "--", "test": ":"}
CURVE_SPLITS = {"train": "training", "val": "validation", "test": "test"}


def _curve(job: Path, root: Path, runs: int) -> Curve:
    """A job's curve; its branch, level and replicate are its folders below the run (``layout.job_path``)."""
    branch, level, *rep = job.resolve().relative_to(root.resolve()).parts
    number = lambda part: int(part.rpartition("_")[2])  # noqa: E731
    return Curve(root.name if runs > 1 else "", branch, number(level), number(rep[0]) if rep else None,
                 pd.read_csv(job / "metrics.csv"), not (job / "summary.json").is_file())


def job_curves(paths: list[Path]) -> list[Curve]:
    """The curves of job directories, or of every job of a run directory that has evaluated at least
    once. A job directory without a metrics.csv is an error (it has not evaluated yet, or is no job)."""
    from ..imp import run_root_of

    jobs: list[tuple[Path, Path]] = []
    for path in paths:
        if (path / "config.yaml").is_file():
            found = sorted({*path.glob("*/level_*/metrics.csv"), *path.glob("*/level_*/rep_*/metrics.csv")})
            if not found:
                raise ConfigError(f"{path}: no job of this run has a metrics.csv yet (nothing has been evaluated)")
            jobs += [(m.parent, path) for m in found]
        elif (path / "metrics.csv").is_file():
            jobs.append((path, run_root_of(path)))
        else:
            raise ConfigError(f"{path}: no metrics.csv (the job has not evaluated yet, or this is not a job directory)")
    runs = len({root.resolve() for _, root in jobs})
    return [_curve(job, root, runs) for job, root in jobs]


_CURVE_BRANCHES = [*BRANCH_LABELS, *(b for b in JOB_BRANCHES if b not in BRANCH_LABELS)]
"""The order of the branches' rows: the report's order, then the branches no report figure shows."""


def branch_hue(branch: str) -> tuple[float, float, float]:
    """A branch's colour: the report figures' (``BRANCH_COLORS``); the branches they do not show (the
    SGD-noise copies of the random baselines) take the hues left over."""
    if branch in BRANCH_LABELS:
        return BRANCH_COLORS[BRANCH_LABELS[branch]]
    spare = HUES[len(BRANCH_LABELS):]
    return spare[_CURVE_BRANCHES.index(branch) % len(spare)] if branch in _CURVE_BRANCHES else (0.3, 0.3, 0.3)


def shade(hue: tuple[float, float, float], t: float) -> tuple[float, float, float]:
    """The hue lightened (``t`` = 0, the figure's densest level) or darkened (``t`` = 1, its sparsest), the hue
    itself at 0.5. The light end is the hue mixed with white, the dark end with black: every shade keeps
    the hue, so a branch's jobs share its colour."""
    rgb = np.asarray(hue, dtype=float)
    light, dark = rgb + 0.6 * (1 - rgb), 0.5 * rgb
    c = light + 2 * t * (rgb - light) if t <= 0.5 else rgb + (2 * t - 1) * (dark - rgb)
    return tuple(float(x) for x in c)


def curves_figure(curves: list[Curve], png: Path) -> Path:
    """Loss (left) and accuracy (right) vs. step: one row of panels per branch (per run and branch where
    several runs are drawn), in the branch's colour of the report figures, light for its densest level and
    dark for its sparsest; one line style per split. Each row's legend names its jobs beside the panels,
    so a whole run (IMP levels and every baseline) stays readable. Where a validation split exists, a star
    marks the early-stopping point (minimum validation loss, LTH Sec. 2)."""
    _theme()
    runs, rank = list(dict.fromkeys(c.run for c in curves)), {b: i for i, b in enumerate(_CURVE_BRANCHES)}
    rows = sorted({(c.run, c.branch) for c in curves}, key=lambda r: (runs.index(r[0]), rank.get(r[1], len(rank)), r[1]))
    fig, axes = _subplots(len(rows), 2, figsize=(13.6, 1.0 + 2.9 * len(rows)), squeeze=False, sharex="all",
                          sharey="col")
    lo, hi = min(c.level for c in curves), max(c.level for c in curves)
    for (run, branch), (ax_loss, ax_acc) in zip(rows, axes):
        row = sorted((c for c in curves if (c.run, c.branch) == (run, branch)), key=lambda c: (c.level, c.rep or 0))
        handles = []
        for c in row:
            # one shade per level across the rows, so that a level of a baseline matches the IMP level it ablates
            colour, m = shade(branch_hue(branch), (c.level - lo) / (hi - lo) if hi > lo else 0.5), c.metrics
            for split, style in CURVE_STYLES.items():
                if m[f"{split}_loss"].notna().any():
                    ax_loss.plot(m["step"], m[f"{split}_loss"], color=colour, ls=style, lw=1.3)
                if f"{split}_acc" in m and m[f"{split}_acc"].notna().any():
                    ax_acc.plot(m["step"], 100 * m[f"{split}_acc"], color=colour, ls=style, lw=1.3)
            if m["val_loss"].notna().any():
                best = m.loc[m["val_loss"].idxmin()]
                ax_loss.plot(best["step"], best["val_loss"], "*", color=colour, ms=10, mec="black", mew=0.5)
                ax_acc.plot(best["step"], 100 * best["test_acc"], "*", color=colour, ms=10, mec="black", mew=0.5)
            handles.append(Line2D([], [], color=colour, lw=2.5, label=c.job + (" (running)" if c.running else "")))
        name = BRANCH_LABELS.get(branch, branch.replace("_", " "))
        name = f"{run}: {name}" if run else name
        ax_loss.set(ylabel="cross-entropy loss", title=f"{name}: loss")
        ax_acc.set(ylabel="accuracy (%)", title=f"{name}: accuracy")
        ax_acc.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                      fontsize="x-small", ncol=1 + (len(handles) - 1) // 12,
                      title="light = dense\ndark = sparse" if hi > lo else None, title_fontsize="x-small")
    for ax in axes[-1]:
        ax.set_xlabel("step (iterations)")
    any_val = any(c.metrics["val_loss"].notna().any() for c in curves)
    keys = [Line2D([], [], color="0.3", ls=style, label=CURVE_SPLITS[s]) for s, style in CURVE_STYLES.items()]
    keys += [Line2D([], [], ls="", marker="*", color="0.6", mec="black", ms=10,
                    label="early stop (min val. loss; on accuracy: test accuracy there)")] * any_val
    fig.legend(handles=keys, loc="outside lower center", ncol=len(keys), fontsize="small")
    running = [c for c in curves if c.running and len(c.metrics)]
    if not running:
        status = "all finished"
    elif len(running) <= 3:
        status = "still running: " + "; ".join(f"{c.label} (step {int(c.metrics['step'].iloc[-1])})" for c in running)
    else:
        status = f"still running: {len(running)} jobs (marked in the legends)"
    fig.suptitle(f"Training curves of {len(curves)} job{'s' * (len(curves) != 1)}\n{status}", fontsize="medium")
    save(fig, png)
    return png


# --------------------------------------------------------------------------------------------------


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def group_name(experiments: list[str]) -> str:
    """A k sweep's name: the experiments' common prefix without a trailing '_k'/'-k' (or the first id)."""
    import os

    prefix = os.path.commonprefix(sorted(experiments)).rstrip("_-")
    if prefix.endswith(("_k", "-k")):
        prefix = prefix[:-2]
    return prefix.rstrip("_-") or sorted(experiments)[0]


def draw_all(data: dict[str, pd.DataFrame | None], scale: str, out: Path,
             reported: pd.DataFrame | None = None) -> tuple[list[tuple[Path, str]], dict[str, str]]:
    """Every figure the tables support, per family; returns (drawn figures with captions, skipped
    figure -> reason). ``reported``: the papers' values to draw beside our curves
    (:func:`claims.reported_points`); an experiment without any gets no such figure."""
    jobs = data["jobs"]
    drawn: list[tuple[Path, str]] = []
    skipped: dict[str, str] = {}

    def attempt(name: str, needs: str | None, draw: Callable[[], list[tuple[Path, str]]],
                empty: str = "no data for it in these results") -> None:
        if needs is not None and data.get(needs) is None:
            skipped[name] = f"the {needs} analysis was not run at this scale"
            return
        got = draw()
        if got:
            drawn.extend(got)
        else:
            skipped[name] = empty

    families = jobs.groupby("experiment")["family"].first()
    for exp, fam in families.items():
        if reported is not None and (reported["experiment"] == exp).any():
            attempt(f"paper_vs_ours_{exp}", None, lambda e=exp: paper_vs_ours_figure(jobs, reported, e, scale, out))
        if fam == "lth":
            attempt(f"lth_accuracy_{exp}", None, lambda e=exp: lth_accuracy_figure(jobs, e, scale, out))
            attempt(f"lth_early_stop_{exp}", None, lambda e=exp: lth_early_stop_figure(jobs, e, scale, out))
        elif fam == "saleem":
            attempt(f"saleem_methods_{exp}", None, lambda e=exp: saleem_methods_figure(jobs, e, scale, out))
            attempt(f"saleem_levels_{exp}", None, lambda e=exp: saleem_levels_figure(jobs, data.get("hessian"), e, scale, out))
            attempt(f"saleem_hessian_{exp}", "hessian", lambda e=exp: saleem_hessian_figure(jobs, data["hessian"], e, scale, out),
                    "the Hessian analysis ran on one branch only; this figure compares IMP with the baselines")
            attempt(f"saleem_successive_{exp}", "successive",
                    lambda e=exp: saleem_successive_figure(jobs, data["successive"], e, scale, out))
    stab = jobs[jobs["family"] == "stabilized"]
    for _, group in stab.groupby("group", sort=True):
        name = group_name(list(group["experiment"].unique()))
        attempt(f"stabilized_accuracy_{name}", None, lambda g=group, n=name: stabilized_accuracy_figure(jobs, g, n, scale, out))
        attempt(f"stabilized_instability_{name}", "instability",
                lambda g=group, n=name: stabilized_instability_figure(g, data["instability"], n, scale, out))
    return drawn, skipped
