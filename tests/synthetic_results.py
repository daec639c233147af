"""A tiny results tree laid out as the workflow lays it out (``results/N/runs/<experiment>/seed<S>/``),
made with the ``ticketbench`` CLI on synthetic data: one experiment per paper family, seconds to train.
Shared by the report, audit and DVC tests. And, without training, the tables of a whole workflow config
as its job plan lays them out (:func:`planned`), for tests that fill in the numbers (reachability)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
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


# --------------------------------------------------------------------------------------------------
# Tables at a workflow config's scale without training: every job the plan lays out, values left empty
# --------------------------------------------------------------------------------------------------


@dataclass
class Planned:
    """The tables a workflow config's results would have, as the job plan (``ticketbench.plan``) lays
    them out, with every metric left for a test to fill in."""

    jobs: pd.DataFrame
    """One row per training job: the run columns of ``tables.jobs`` (family, group, network, dataset,
    seed, rewind_step, run), branch, level, replicate, density and density_total as IMP reaches them, and
    reinit_start."""
    instability: pd.DataFrame
    """One row per instability pair the plan analyses (run columns, branch, level, pair)."""
    successive: pd.DataFrame
    """One row per successive-level pair the plan analyses (run columns, level, level_b, mask)."""
    configs: dict
    """Experiment -> run config (its first seed's), as the report reads them (``document.configs_from_workflow``)."""
    schedules: dict
    """Experiment -> its schedule in iterations (``config.Schedule``)."""


def planned(config_path: Path, schema: Path) -> Planned:
    """:class:`Planned` for the workflow config at ``config_path`` (e.g. config/config.yaml)."""
    from ticketbench import plan
    from ticketbench.report import tables

    experiments = plan.resolve_all(plan.load_config(config_path, schema), str(config_path))
    jobs, pairs, successive, configs, schedules = [], [], [], {}, {}
    for exp in experiments.values():
        first = next(iter(exp.runs.values()))
        configs[exp.id] = {**first.to_dict(), "hash": first.hash()}
        schedules[exp.id] = first.schedule(plan.train_size(first))
        levels = level_densities(first)
        planned_jobs = plan.jobs(exp, "results")
        for seed, run in exp.runs.items():
            info = {"experiment": exp.id, "family": exp.family, "group": tables._group_of(run.to_dict()),
                    "network": run.model.name, "dataset": run.data.name, "seed": seed,
                    "rewind_step": float(schedules[exp.id].rewind), "run": f"{exp.id}/seed{seed}"}
            for job in planned_jobs:
                if job.seed == seed and job.trains:
                    d, total = levels[job.level]
                    jobs.append({**info, "branch": job.branch, "level": job.level, "replicate": job.replicate,
                                 "density": d, "density_total": total,
                                 "reinit_start": run.imp.reinit_start if "reinit" in job.branch else None})
            for branch, level in exp.instability:
                pairs += [{**info, "branch": branch, "level": level, "pair": p}
                          for p in range(exp.options["instability"]["pairs"])]
            masks = exp.options.get("successive", {}).get("mask", ["common"])
            successive += [{**info, "level": lv, "level_b": lv + 1, "mask": m}
                           for lv in exp.successive for m in (masks if isinstance(masks, list) else [masks])]
    return Planned(pd.DataFrame(jobs), pd.DataFrame(pairs), pd.DataFrame(successive), configs, schedules)


_DENSITIES: dict = {}


def level_densities(run) -> list[tuple[float, float]]:
    """(density, density_total) of IMP levels 0..L of a run config: the counts ``masks.prune_counts``
    keeps, over the prunable weights and over all the network's weights (``masks.density_total``)."""
    import torch

    from ticketbench import masks, models
    from ticketbench.data import SHAPES

    key = (run.model.name, run.model.width, run.data.name, run.prune.strategy, tuple(sorted(run.prune.rates.items())),
           run.imp.levels)
    if key not in _DENSITIES:
        with torch.device("meta"):  # shapes only: no memory, no initialization
            model = models._construct(run.model, SHAPES[run.data.name], 10)
        kinds = models.layer_kinds(model)
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n in kinds}
        dense = {n: _Ones(math.prod(s)) for n, s in shapes.items() if kinds[n] in run.prune.rates}
        prunable, total = sum(m.n for m in dense.values()), sum(math.prod(s) for s in shapes.values())
        out = []
        for level in range(run.imp.levels + 1):
            kept = sum(masks.prune_counts(dense, kinds, run.prune, level))
            out.append((kept / prunable, (total - (prunable - kept)) / total))
        _DENSITIES[key] = out
    return _DENSITIES[key]


@dataclass(frozen=True)
class _Ones:
    """A dense mask of ``n`` weights as ``masks.prune_counts`` reads it (its count of ones), without
    allocating VGG-19's 20 million."""

    n: int

    def sum(self) -> int:
        return self.n
