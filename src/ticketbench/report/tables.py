"""Tidy tables: one row per trained network (job), read from the jobs' summary.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

JOB_COLUMNS = ["experiment", "run", "config_hash", "seed", "branch", "level", "replicate", "density",
               "final_test_acc", "final_test_loss", "final_train_loss", "final_train_acc",
               "early_stop_step", "early_stop_test_acc", "early_stop_val_loss", "start_step", "end_step", "job"]


def collect(run_dirs: list[Path]) -> pd.DataFrame:
    """Every finished job under the given run directories. ``density`` is the fraction of prunable
    weights remaining (the only sparsity vocabulary in tables; figures convert it to %)."""
    rows = []
    for run in run_dirs:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        for path in sorted(run.glob("*/level_*/**/summary.json")):
            s = json.loads(path.read_text())
            rows.append({**{k: s.get(k) for k in JOB_COLUMNS}, "experiment": cfg.get("name"), "run": run.name,
                         "seed": cfg.get("seeds", {}).get("init", 0), "job": str(path.parent)})
    return pd.DataFrame(rows, columns=JOB_COLUMNS).sort_values(["experiment", "seed", "branch", "level", "replicate"],
                                                               na_position="first", ignore_index=True)
