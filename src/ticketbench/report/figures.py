"""Figures (seaborn, PNG), drawn from the tidy tables only."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..checkpoints import atomic_write  # noqa: E402

BRANCH_LABELS = {"imp": "IMP (winning ticket)", "random_reinit": "random reinit", "random_prune": "random pruning",
                 "oneshot": "one-shot pruning", "finetune": "fine-tuning", "copy": "SGD-noise copy"}


def save_png(fig: plt.Figure, path: Path) -> None:
    """Write a figure atomically with fixed metadata, so reruns give byte-identical PNGs."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def accuracy_vs_density(table: pd.DataFrame, output: Path, title: str = "") -> None:
    """Test accuracy (at early stop where there is a validation split, else at the end of training)
    vs. % of weights remaining on a log axis; mean over seeds with a min-max band (the LTH's error bars)."""
    df = table[table["branch"].isin(["imp", "random_reinit", "random_prune", "oneshot", "finetune"])].copy()
    df["% weights remaining"] = 100 * df["density"]
    has_es = df["early_stop_test_acc"].notna().any()
    panels = [("final_test_acc", "at end of training")] + ([("early_stop_test_acc", "at early stop (min val loss)")] if has_es else [])
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (col, label) in zip(axes[0], panels):
        d = df.assign(**{"test accuracy (%)": 100 * df[col], "method": df["branch"].map(BRANCH_LABELS)})
        sns.lineplot(data=d, x="% weights remaining", y="test accuracy (%)", hue="method", marker="o",
                     errorbar=("pi", 100), estimator="mean", ax=ax)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_title(f"test accuracy {label}")
        ax.legend(title=None, fontsize="small")
    if title:
        fig.suptitle(title)
    save_png(fig, output)
