"""A tiny results tree laid out as the workflow lays it out (``results/N/runs/<experiment>/seed<S>/``),
made with the ``ticketbench`` CLI on synthetic data: one experiment per paper family, seconds to train.
Shared by the report, audit and DVC tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from ticketbench import cli

RUN = {
    "data": {"name": "synthetic", "validation_size": 64, "synthetic_train": 384, "synthetic_test": 128,
             "synthetic_shape": [1, 8, 8]},
    "model": {"name": "lenet_300_100", "init": "glorot_normal"},
    "train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 32, "steps": "40it",
              "eval_every": "10it", "milestones": ["30it"]},
    "prune": {"strategy": "layerwise", "rates": {"fc": 0.5, "output": 0.25}},
}
LEVELS = 2


def workflow_config(name: str = "tiny") -> dict:
    """Experiments of the three families, as config/*.yaml declares them."""
    def run(rewind: str, **imp) -> dict:
        return {**RUN, "imp": {"levels": LEVELS, "rewind": rewind, **imp}}

    return {
        "name": name,
        "experiments": {
            "lth_tiny": {"family": "lth", "seeds": [0, 1], "run": run("0it")},
            "stab_tiny_k0": {"family": "stabilized", "seeds": [0], "run": run("0it")},
            "stab_tiny_k10": {"family": "stabilized", "seeds": [0], "run": run("10it")},
            "saleem_tiny": {"family": "saleem", "seeds": [0], "run": run("5it", finetune_steps="10it")},
        },
    }


def ticketbench(*argv: str) -> int:
    """One CLI call, in this process (the torch import is paid once per test session)."""
    return cli.main(list(argv))


JOBS = {  # family -> (kind, level, replicate) of the branches trained at every pruned level
    "lth": [("random_reinit", None, 0), ("random_prune", None, 0)],
    "stabilized": [("copy", 0, 0), ("copy", 0, 1), ("copy", LEVELS, 0), ("copy", LEVELS, 1)],
    "saleem": [("oneshot", None, 0), ("random_reinit", None, 0), ("random_prune", None, 0), ("finetune", None, None)],
}


def make(results: Path, config_path: Path) -> Path:
    """Train every job of :func:`workflow_config` into ``results/runs`` (1 thread, no progress bars)."""
    spec = yaml.safe_load(config_path.read_text())
    for exp, e in spec["experiments"].items():
        for seed in e["seeds"]:
            base = [str(config_path), "--experiment", exp, "--seed", str(seed),
                    "--run-dir", str(results / "runs" / exp / f"seed{seed}"), "--threads", "1", "--no-progress"]
            assert ticketbench("imp", *base) == 0
            for kind, level, rep in JOBS[e["family"]]:
                for lv in [level] if level is not None else range(1, LEVELS + 1):
                    if kind == "finetune":
                        assert ticketbench("finetune", *base, "--level", str(lv)) == 0
                    else:
                        assert ticketbench("branch", *base, "--kind", kind, "--level", str(lv), "--replicate", str(rep)) == 0
            analyse(results / "runs" / exp / f"seed{seed}", e["family"])
    return results


def analyse(run: Path, family: str) -> None:
    """The analyses the workflow runs for each family, with tiny settings (5 points, top-3 eigenvalues)."""
    rt = ["--threads", "1", "--no-progress"]
    a = run / "analysis"
    if family == "stabilized":
        for lv in (0, LEVELS):
            assert ticketbench("instability", str(run), "--level", str(lv), "--pairs", "1", "--points", "5",
                               "-o", str(a / "instability" / f"level_{lv:02d}.csv"),
                               "--barriers", str(a / "barriers" / f"instability_level_{lv:02d}.csv"), *rt) == 0
    if family == "saleem":
        for lv in range(LEVELS):
            assert ticketbench("interpolate", str(run / "imp" / f"level_{lv:02d}"), str(run / "imp" / f"level_{lv + 1:02d}"),
                               "--mask", "common", "none", "--points", "5",
                               "-o", str(a / "successive" / f"level_{lv:02d}.csv"),
                               "--barriers", str(a / "barriers" / f"successive_level_{lv:02d}.csv"), *rt) == 0
        jobs = [("imp", lv, run / "imp" / f"level_{lv:02d}") for lv in range(LEVELS + 1)]
        jobs += [("oneshot", lv, run / "oneshot" / f"level_{lv:02d}" / "rep_0") for lv in range(1, LEVELS + 1)]
        for branch, lv, job in jobs:
            assert ticketbench("hessian", str(job), "--top-k", "3", "--max-hvps", "30", "--trace-samples", "0",
                               "--subset-fraction", "0.5", "-o", str(a / "hessian" / f"{branch}_level_{lv:02d}.csv"), *rt) == 0


def write_config(path: Path, name: str = "tiny") -> Path:
    path.write_text(yaml.safe_dump(workflow_config(name), sort_keys=False))
    return path


_TREES: dict[Path, tuple[Path, Path]] = {}


def tree(tmp_path_factory) -> tuple[Path, Path]:
    """(results/tiny, tiny.yaml), trained once per test session and shared read-only: tests that
    modify results copy them first."""
    base = tmp_path_factory.getbasetemp()
    if base not in _TREES:
        root = tmp_path_factory.mktemp("tree")
        config = write_config(root / "tiny.yaml")
        _TREES[base] = (make(root / "results" / "tiny", config), config)
    return _TREES[base]
