"""Packs: several training jobs of one experiment trained by one process.

A lone job pays the start of a process, ``import torch``, a dataset load and (on a cluster) a scheduler
and container start before its first step; at the papers' scale that is thousands of times. A pack pays
them once for P jobs that the plan has side by side: the seeds of an IMP level, the baselines, replicates
and SGD-noise copies of a level, the fine-tuning levels of several seeds. How it then trains them is the
runtime's ``pack_mode``: ``batched`` runs the members that share a ``train.pack_key`` in lockstep as one
vmapped computation (``train.fit_packed``), ``sequential`` trains them one after another exactly as lone
jobs (``imp.Run.train``). Either way each member writes a lone job's files in its own job directory, and
its summary records the pack (``pack``: size, index, identity, mode).

Jobs are named as in the run layout, relative to the experiment's folder of run directories:
``seed<S>/<branch>/level_<LL>[/rep_<R>]``.
"""

from __future__ import annotations

import logging
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import layout
from .checkpoints import JobLock
from .config import BRANCHES, ConfigError
from .imp import Pending, Run
from .train import Member, fit_packed, pack_identity, pack_key

log = logging.getLogger("ticketbench")

_JOB = re.compile(r"seed(?P<seed>\d+)/(?P<branch>[a-z_]+)/level_(?P<level>\d+)(?:/rep_(?P<replicate>\d+))?")


@dataclass(frozen=True)
class JobName:
    """One job of a pack: the seed's run and the (branch, level, replicate) within it."""

    seed: int
    branch: str
    level: int
    replicate: int | None

    @classmethod
    def parse(cls, text: str) -> JobName:
        m = _JOB.fullmatch(text.strip("/"))
        if m is None:
            raise ConfigError(f"pack: {text!r} is not a job name; write seed<S>/<branch>/level_<LL>[/rep_<R>], "
                              f"e.g. seed0/imp/level_03 or seed1/random_reinit/level_02/rep_0")
        branch, replicate = m["branch"], m["replicate"]
        if branch not in ("imp", "finetune", *BRANCHES):
            raise ConfigError(f"pack: {text}: unknown branch {branch!r}; choose imp, finetune or one of "
                              f"{', '.join(BRANCHES)}")
        if (replicate is None) != (branch in ("imp", "finetune")):
            raise ConfigError(f"pack: {text}: {'a' if replicate is None else 'no'} replicate (rep_<R>) "
                              f"{'is needed for' if replicate is None else 'is allowed on'} {branch}")
        return cls(int(m["seed"]), branch, int(m["level"]), None if replicate is None else int(replicate))

    def pending(self, run: Run) -> Pending | dict[str, Any]:
        if self.branch == "imp":
            return run.level_job(self.level)
        if self.branch == "finetune":
            return run.finetune_job(self.level)
        return run.branch_job(self.branch, self.level, self.replicate or 0)


def train(pendings: list[Pending | dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Train the unfinished jobs (``Pending``) of a pack in ``mode`` and return every job's summary in
    order (finished ones as they are stored)."""
    todo = [p for p in pendings if isinstance(p, Pending) and not (p.job.out / layout.SUMMARY).is_file()]
    if todo:
        ident = pack_identity([_member(p) for p in todo])
        log.info("pack %s: %d of %d jobs to train, %s", ident, len(todo), len(pendings), mode)
        for i, p in enumerate(todo):
            p.job.extra["pack"] = {"size": len(todo), "index": i, "identity": ident, "mode": mode}
    done: dict[int, dict[str, Any]] = {}
    if mode == "sequential":
        for p in todo:
            done[id(p)] = p.run.train(p)
    else:
        for group in _lockstep_groups(todo):
            with ExitStack() as locks:
                for p in group:
                    locks.enter_context(JobLock(p.job.out))
                    p.claim()
                members = [_member(p) for p in group]
                for p, s in zip(group, fit_packed(members, group[0].run.runtime, group[0].run.schedule.eval_every)):
                    done[id(p)] = s
    return [p if isinstance(p, dict) else done.get(id(p)) or p.run.train(p) for p in pendings]


def _member(p: Pending) -> Member:
    return Member(build=p.run.model, data=p.run.data, cfg=p.run.cfg, job=p.job)


def _lockstep_groups(todo: list[Pending]) -> list[list[Pending]]:
    """The jobs split into groups that can step together (equal ``train.pack_key``), in order of first
    appearance: e.g. random reinitialization from step 0 beside jobs that start at the rewind step k."""
    groups: dict[tuple, list[Pending]] = {}
    for p in todo:
        groups.setdefault(pack_key(_member(p), p.run.schedule.eval_every), []).append(p)
    if len(groups) > 1:
        log.info("pack: %d jobs in %d lockstep groups (they differ in steps, learning rate or optimizer state)",
                 len(todo), len(groups))
    return list(groups.values())


def open_runs(config_path: Path, experiment: str | None, seeds: list[int], run_dir: str, runtime: Any) -> dict[int, Run]:
    """The runs of ``seeds`` of one experiment, sharing one copy of each dataset on the device."""
    runs: dict[int, Run] = {}
    datasets: dict = {}
    for seed in seeds:
        runs[seed] = Run.open(config_path, Path(run_dir.format(seed=seed)), runtime, experiment, seed, datasets=datasets)
    return runs
