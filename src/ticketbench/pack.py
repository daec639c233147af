"""Packs: several training jobs of one experiment trained by one process.

A lone job pays the start of a process, ``import torch``, a dataset load and (on a cluster) a scheduler
and container start before its first step; at the papers' scale that is thousands of times. A pack pays
them once for P jobs that the plan has side by side: the seeds of an IMP level, the baselines, replicates
and SGD-noise copies of a level, the fine-tuning levels of several seeds. How it then trains them is the
runtime's ``pack_mode``: ``batched`` runs the members that share a ``train.pack_key`` in lockstep as one
vmapped computation (``train.fit_packed``), ``sequential`` trains them one after another exactly as lone
jobs (``imp.Run.train``). Either way each member writes a lone job's files in its own job directory, and
its summary records the pack (``pack``: size, index, identity, mode).

A member that diverges does not end its pack: it is stopped, its folder gets ``diverged.json`` (the step and
the reason) in place of a summary, the others finish, and then the pack fails with one line naming it, so
the workflow reports it. A rerun does not train it again (it would diverge again): it says so and how to
proceed.

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
from .config import BRANCHES, JOB_BRANCHES, ConfigError
from .imp import Pending, Run
from .train import Member, TrainingDiverged, diverged, fit_packed, pack_identity, pack_key, record_divergence

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
        if branch not in JOB_BRANCHES:
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
    order (finished ones as they are stored). If a job diverged, now or in an earlier run, the others are
    trained and then ``TrainingDiverged`` names it."""
    todo = [p for p in pendings if isinstance(p, Pending) and not (p.job.out / layout.SUMMARY).is_file()]
    if todo:
        ident = pack_identity([_member(p) for p in todo])
        log.info("pack %s: %d of %d jobs to train, %s", ident, len(todo), len(pendings), mode)
        for i, p in enumerate(todo):
            p.job.extra["pack"] = {"size": len(todo), "index": i, "identity": ident, "mode": mode}
    done: dict[int, dict[str, Any]] = {}
    stopped: list[Pending] = []
    if mode == "sequential":
        for p in todo:
            if diverged(p.job.out) is not None:
                stopped.append(p)
                continue
            try:
                done[id(p)] = p.run.train(p)
            except TrainingDiverged as e:
                record_divergence(p.job.out, e)
                log.warning("%s: %s by step %d; recorded in %s, the pack goes on", p.job.label, e.reason, e.step,
                            p.job.out / layout.DIVERGED)
                stopped.append(p)
    else:
        for group in _lockstep_groups(todo):
            with ExitStack() as locks:
                for p in group:
                    locks.enter_context(JobLock(p.job.out))
                    p.claim()
                members = [_member(p) for p in group]
                for p, s in zip(group, fit_packed(members, group[0].run.runtime, group[0].run.schedule.eval_every)):
                    if s is None:
                        stopped.append(p)
                    else:
                        done[id(p)] = s
    if stopped:
        raise _diverged_error(stopped, len(pendings))
    return [p if isinstance(p, dict) else done.get(id(p)) or p.run.train(p) for p in pendings]


def _diverged_error(stopped: list[Pending], size: int) -> TrainingDiverged:
    """One line naming the pack's diverged jobs (from their records), what happened to the others and what
    to do: a rerun alone would not train them again."""
    parts = []
    for p in stopped:
        record = diverged(p.job.out) or {}
        try:
            name = p.job.out.relative_to(p.run.root.parent).as_posix()
        except ValueError:
            name = str(p.job.out)
        parts.append(f"{name} by step {record.get('step')} ({record.get('reason')})")
    first = stopped[0]
    return TrainingDiverged(
        f"pack: {len(stopped)} of {size} jobs diverged: {'; '.join(parts)}; the others are done. Each is recorded in its "
        f"{layout.DIVERGED} (e.g. {first.job.out / layout.DIVERGED}) and not trained again: change the config (a lower "
        f"learning rate, warmup), or delete that file to try the job again as it is")


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
