"""Iterative magnitude pruning with rewinding, and the baselines that branch off each level.

Layout of a run directory (one config, one seed; the names are ``layout``'s)::

    RUN/config.yaml                      resolved config and its hash
    RUN/rewind.pt                        state at the rewind step k (weights, BN statistics, optimizer),
                                         captured during the dense run and shared by every level/branch
    RUN/imp/level_00/                    the dense network (level 0)
    RUN/imp/level_LL/                    IMP level L: mask.pt, final.pt, metrics.csv, summary.json
    RUN/<branch>/level_LL/rep_R/         baselines and SGD-noise copies at level L (config.BRANCHES)
    RUN/finetune/level_LL/               the fine-tuning chain (Renda et al. 2020)

Level L (L >= 1) prunes the trained weights of level L-1 by magnitude, resets the survivors (and the BN
statistics) to their values at step k, and trains them from k to T, as in Frankle et al. 2020
(Algorithm 2; k = 0 is Frankle & Carbin 2019). Each function below is idempotent: a job whose
summary.json exists is not recomputed, so rerunning with more levels just continues.
"""

from __future__ import annotations

from collections.abc import Callable
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from . import checkpoints, config, data, layout, models
from .checkpoints import CheckpointError, JobLock, atomic_write
from .config import BRANCHES, COPIES, ConfigError, RunConfig, Schedule, dump
from .data import Data, stream_seed
from .masks import Mask, dense_mask, density, layer_table, magnitude_prune, random_prune
from .runtime import Runtime
from .train import Job, fit

log = logging.getLogger("ticketbench")

# Stream ids for derived seeds (reinit weights, random masks, SGD-noise copies).
_REINIT, _RANDOM_MASK, _COPY = 11, 12, 13


@dataclass
class Run:
    """A run directory bound to its config, its data and its schedule."""

    cfg: RunConfig
    root: Path
    data: Data
    runtime: Runtime

    def __post_init__(self) -> None:
        self.schedule: Schedule = self.cfg.schedule(len(self.data.train))
        self.hash = self.cfg.hash()
        self.kinds: dict[str, str] = models.layer_kinds(self.model())
        self._claim()

    @classmethod
    def open(cls, config_path: Path, run_dir: Path | None, runtime: Runtime, experiment: str | None = None,
             seed: int = 0, datasets: dict | None = None) -> Run:
        """Load the config, the data (on the run's device) and bind them to a run directory. Runs opened
        with the same ``datasets`` dict share each dataset (a pack's runs load it once)."""
        cfg = config.load_experiment(config_path, experiment, seed) if experiment else config.load(config_path)
        device = runtime.apply()
        root = run_dir or layout.standalone_run_dir(cfg.run_name())
        datasets = {} if datasets is None else datasets
        if (cfg.data, device) not in datasets:
            datasets[cfg.data, device] = data.load(cfg.data, device, root=runtime.data_root, verify=runtime.verify,
                                                   download=runtime.download)
        ds = datasets[cfg.data, device]
        try:  # step strings resolve only against the data's size: name the file and key like any config error
            cfg.schedule(len(ds.train))
        except ConfigError as e:
            raise ConfigError(f"{config_path}: {f'experiments.{experiment}.run.' if experiment else ''}{e}") from None
        log.info("run %s (%s) on %s -> %s", cfg.run_name(), cfg.source or "no source given", device, root)
        return cls(cfg, root, ds, runtime)

    # -- paths -------------------------------------------------------------------------------------
    def level_dir(self, level: int, branch: str = "imp", replicate: int | None = None) -> Path:
        return layout.job_dir(self.root, branch, level, replicate)

    def _claim(self) -> None:
        """Record the config in the run directory, or refuse one that belongs to another config."""
        path = self.root / layout.RUN_CONFIG
        if path.is_file():
            stored = (yaml.safe_load(path.read_text()) or {}).get("hash")
            if stored != self.hash:
                raise ConfigError(f"{self.root}: holds a run of config {stored}, not {self.hash}; use another --run-dir "
                                  f"(or delete it) instead of mixing two configurations")
        else:
            atomic_write(path, dump(self.cfg, self.schedule))

    # -- building blocks ---------------------------------------------------------------------------
    def model(self, seed: int | None = None) -> torch.nn.Module:
        return models.build(self.cfg.model, self.data.shape, self.data.classes, self.cfg.seeds.init if seed is None else seed)

    def lr(self) -> Callable[[int], float]:
        s, t = self.schedule, self.cfg.train
        return lambda step: s.lr_at(step, t.lr, t.gamma)

    def load_mask(self, folder: Path) -> Mask:
        return checkpoints.load(folder / "mask.pt", kind="mask", config_hash=self.hash)["mask"]

    def save_mask(self, folder: Path, mask: Mask) -> None:
        checkpoints.save(folder / "mask.pt", {"mask": mask, "layers": layer_table(mask, self.kinds)},
                         kind="mask", config_hash=self.hash)

    def final_state(self, folder: Path) -> dict[str, torch.Tensor]:
        if not (folder / "summary.json").is_file():
            raise CheckpointError(f"{folder}: this level has not finished training; run it first")
        return checkpoints.load(folder / "final.pt", kind="model", config_hash=self.hash)["model"]

    def rewind_state(self) -> dict[str, Any]:
        path = self.root / layout.REWIND
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; the dense run (level 0) captures it, run level 0 first")
        return checkpoints.load(path, kind="rewind", config_hash=self.hash)

    def _job(self, folder: Path, label: str, state: dict, mask: Mask, start: int, end: int, *,
             lr: Callable[[int], float] | None = None, optimizer_state: dict | None = None,
             seeds: tuple[int, int] | None = None, snapshot: Callable | None = None, **extra: Any) -> Pending:
        order, aug = seeds or (self.cfg.seeds.data_order, self.cfg.seeds.augmentation)
        job = Job(out=folder, state=state, mask=mask, start=start, end=end, lr=lr or self.lr(),
                  data_order_seed=order, augmentation_seed=aug, label=label, optimizer_state=optimizer_state,
                  snapshots=(self.schedule.rewind,) if snapshot else (), on_snapshot=snapshot,
                  extra={"run": self.cfg.run_name(), **extra})
        return Pending(self, job)

    def train(self, pending: Pending | dict[str, Any]) -> dict[str, Any]:
        """Train a pending job of this run alone (a finished one's summary is returned as it is)."""
        if isinstance(pending, dict):
            return pending
        job = pending.job
        with JobLock(job.out):
            pending.claim()
            return fit(self.model(), self.data, self.cfg, job, self.runtime, self.schedule.eval_every)

    def _start_state(self, mask: Mask) -> tuple[dict, dict | None]:
        """Weights and BN statistics at step k, and the optimizer state if the config rewinds it."""
        rewind = self.rewind_state()
        opt = _masked_optimizer_state(rewind["optimizer"], rewind["param_names"], mask) if self.cfg.imp.rewind_optimizer else None
        return rewind["model"], opt

    # -- the IMP chain -----------------------------------------------------------------------------
    def dense(self) -> dict[str, Any]:
        """Level 0: train the dense network from initialization, capturing the state at step k."""
        return self.train(self.dense_job())

    def dense_job(self) -> Pending | dict[str, Any]:
        model = self.model()
        mask = dense_mask(model, self.kinds, self.cfg.prune)
        names = [n for n, _ in model.named_parameters()]

        def snapshot(step: int, net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
            checkpoints.remove_stale_temporaries(self.root, layout.REWIND)  # under the level-0 job lock
            checkpoints.save(self.root / layout.REWIND, {"step": step, "model": _cpu(net.state_dict()),
                                                       "optimizer": opt.state_dict(), "param_names": names},
                             kind="rewind", config_hash=self.hash)

        return self._job(self.level_dir(0), "level 0 (dense)", model.state_dict(), mask, *self.schedule.steps_of("imp", 0),
                           snapshot=snapshot, branch="imp", level=0, replicate=None)

    def level(self, level: int) -> dict[str, Any]:
        """IMP level L: prune level L-1's trained weights, rewind the survivors to step k, train k..T."""
        return self.train(self.level_job(level))

    def level_job(self, level: int) -> Pending | dict[str, Any]:
        if level == 0:
            return self.dense_job()
        folder = self.level_dir(level)
        if (folder / "summary.json").is_file():
            return _read_summary(folder)
        prev = self.level_dir(level - 1)
        mask = self._existing_mask(folder) or magnitude_prune(self.final_state(prev), self.load_mask(prev), self.kinds, self.cfg.prune)
        state, opt = self._start_state(mask)
        return self._job(folder, f"level {level}", state, mask, *self.schedule.steps_of("imp", level),
                           optimizer_state=opt, branch="imp", level=level, replicate=None)

    def all_levels(self) -> list[dict[str, Any]]:
        return [self.level(lv) for lv in range(self.cfg.imp.levels + 1)]

    # -- branches off level L ----------------------------------------------------------------------
    def branch(self, kind: str, level: int, replicate: int = 0) -> dict[str, Any]:
        return self.train(self.branch_job(kind, level, replicate))

    def branch_job(self, kind: str, level: int, replicate: int = 0) -> Pending | dict[str, Any]:
        """A baseline at IMP level L, trained over the same steps (k..T) as the level it ablates (fresh
        weights: see ``imp.reinit_start``), or an SGD-noise copy of one:

        - random_reinit: the level's mask on freshly initialized weights (LTH Sec. 2). With k > 0 the new
          weights train from step k (``imp.reinit_start: rewind``, open_lth's default and LMC's
          reinitialized subnetworks) or from step 0 (``zero``) to T;
        - random_prune: a random mask with the level's per-layer counts, on the rewound weights;
        - oneshot: the dense network's trained weights pruned once to the level's sparsity, rewound;
        - copy: the level's own subnetwork retrained with different data-order and augmentation seeds;
          copies 2r and 2r+1 form the pair that instability analysis interpolates (LMC Sec. 3);
        - copy_random_reinit, copy_random_prune: the same SGD-noise copies of a random baseline (LMC
          Sec. 4 finds those neither stable nor matching). Every copy starts from the network of the
          baseline's replicate 0 (its fresh weights, or its random mask on the rewound weights), so that
          copies differ in SGD noise only. Copy r of any branch draws the same data-order and
          augmentation seeds, so IMP and its random baselines are compared under the same noise.
        """
        if kind not in BRANCHES:
            raise ConfigError(f"branch: unknown kind {kind!r}; choose one of {', '.join(BRANCHES)}")
        if kind != "copy" and level < 1:
            raise ConfigError(f"{kind}: level must be >= 1 (level 0 is the dense network)")
        folder = self.level_dir(level, kind, replicate)
        if (folder / "summary.json").is_file():
            return _read_summary(folder)
        imp_mask = self.load_mask(self.level_dir(level))
        # A copy trains the network of replicate 0 of the branch it copies.
        original, network = (COPIES[kind], 0) if kind in COPIES else (kind, replicate)
        seeds, extra = None, {}
        if original == "random_reinit":
            mask = imp_mask
            state = self.model(stream_seed(_REINIT, self.cfg.seeds.init, level, network)).state_dict()
            opt = None
            extra = {"reinit_start": self.cfg.imp.reinit_start}
        else:
            if original == "random_prune":
                g = torch.Generator().manual_seed(stream_seed(_RANDOM_MASK, self.cfg.seeds.init, level, network))
                mask = self._existing_mask(folder) or random_prune(imp_mask, g)
            elif original == "oneshot":
                dense = self.level_dir(0)
                mask = self._existing_mask(folder) or magnitude_prune(self.final_state(dense), self.load_mask(dense),
                                                                      self.kinds, self.cfg.prune, levels=level)
            else:  # the IMP subnetwork
                mask = imp_mask
            state, opt = self._start_state(mask)
        if kind in COPIES:
            base = self.cfg.seeds
            seeds = (stream_seed(_COPY, base.data_order, level, replicate), stream_seed(_COPY, base.augmentation, level, replicate))
        return self._job(folder, f"{kind} level {level} rep {replicate}", state, mask, *self.schedule.steps_of(kind, level),
                           optimizer_state=opt, seeds=seeds, branch=kind, level=level, replicate=replicate, **extra)

    def finetune(self, level: int) -> dict[str, Any]:
        return self.train(self.finetune_job(level))

    def finetune_job(self, level: int) -> Pending | dict[str, Any]:
        """Fine-tuning chain (Renda et al. 2020; Saleem et al.'s baseline): prune the previous
        fine-tuned network (level 0 = the dense one) and keep training its surviving weights for
        ``imp.finetune_steps`` at the end-of-schedule learning rate, instead of rewinding."""
        if level < 1:
            raise ConfigError("finetune: level must be >= 1 (level 0 is the dense network)")
        folder = self.level_dir(level, "finetune")
        if (folder / "summary.json").is_file():
            return _read_summary(folder)
        prev = self.level_dir(0) if level == 1 else self.level_dir(level - 1, "finetune")
        state = self.final_state(prev)
        mask = self._existing_mask(folder) or magnitude_prune(state, self.load_mask(prev), self.kinds, self.cfg.prune)
        t, s = self.cfg.train, self.schedule
        final_lr = s.lr_at(s.total, t.lr, t.gamma)
        # Steps are numbered on from T so the fine-tuning batches continue the data order.
        return self._job(folder, f"finetune level {level}", state, mask, *s.steps_of("finetune", level),
                           lr=lambda step: final_lr, branch="finetune", level=level, replicate=None)

    def network(self, folder: Path) -> torch.nn.Module:
        """The trained network of a finished job, on the run's device, in eval mode."""
        net = self.model()
        net.load_state_dict(self.final_state(folder))
        return net.to(self.data.test.x.device).eval()

    def _existing_mask(self, folder: Path) -> Mask | None:
        """A mask already chosen for this job (a resumed job must not re-derive it)."""
        return self.load_mask(folder) if (folder / "mask.pt").is_file() else None


@dataclass
class Pending:
    """A job of a run that is ready to train: the ``train.Job`` and the run it belongs to. ``Run.train``
    trains it alone; ``pack.train`` trains several side by side in one process."""

    run: Run
    job: Job

    def claim(self) -> None:
        """Store the job's mask before training (under the job's lock): a resumed job must not re-derive it."""
        if not (self.job.out / "mask.pt").is_file():
            self.run.save_mask(self.job.out, self.job.mask)
        log.debug("%s: steps %d-%d, data-order seed %d, augmentation seed %d, density %.4f, into %s", self.job.label,
                  self.job.start, self.job.end, self.job.data_order_seed, self.job.augmentation_seed,
                  density(self.job.mask), self.job.out)


def run_root_of(job: Path) -> Path:
    """The run directory that holds a job directory (the nearest parent with a config.yaml)."""
    for folder in (job, *job.parents):
        if (folder / "config.yaml").is_file():
            return folder
    raise ConfigError(f"{job}: not inside a run directory (no config.yaml above it)")


def _read_summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text())


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone() for k, v in state.items()}


def _masked_optimizer_state(opt_state: dict, names: list[str], mask: Mask) -> dict:
    """The optimizer state at step k with pruned coordinates zeroed (momentum, Adam moments)."""
    out = {"param_groups": opt_state["param_groups"], "state": {}}
    for idx, st in opt_state["state"].items():
        name = names[int(idx)]
        m = mask.get(name)
        out["state"][idx] = {k: (v * m.to(v.device, v.dtype) if m is not None and torch.is_tensor(v) and v.shape == m.shape else v)
                             for k, v in st.items()}
    return out
