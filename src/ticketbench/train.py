"""Training jobs: a (masked) network trained from step ``start`` to step ``end`` of a schedule, alone
(``fit``) or packed with other jobs of the same shape into one batched computation (``fit_packed``).

The loop is deliberately small. What it guarantees:
- pruned weights are exactly zero after every optimizer step (gradients and weights are masked);
- the state at every requested snapshot step (the rewind point k) is captured during the run;
- validation/test loss and accuracy are evaluated every ``eval_every`` steps into a tidy CSV;
- it checkpoints periodically and on SIGTERM (what SLURM sends before pre-emption), and a rerun resumes
  from the checkpoint with bitwise-identical results on CPU: batches are addressed by step (see
  ``data.Batches``), so the checkpoint only needs the model, the optimizer and the metrics so far;
- a non-finite loss stops the job at once, naming the step; the last good checkpoint is kept.

A pack trains P jobs as one network whose parameters carry a leading member dimension (torch.func
``functional_call`` under ``vmap``): one kernel launch per layer for all members instead of P, which is what
pays on a GPU where a lone LeNet or ResNet-20 step is launch-bound. Each member keeps everything a lone job
has: its mask, start state, data order and augmentation stream, optimizer state (the optimizers are
elementwise, so one optimizer over stacked tensors is P independent ones), BatchNorm running statistics
(buffers are stacked too and updated in place per member), evaluations, early-stop point, final files and
summary, written exactly as ``fit`` writes them. Batched kernels round differently from lone ones, so a
packed member equals its lone job within noise, not bit for bit; for a given pack it is bit-for-bit
deterministic and resumable (one checkpoint holds the whole pack, written atomically). A member whose loss
stops being finite is stopped alone (frozen at zero, out of every update) and recorded in its folder's
``diverged.json``; the others finish exactly as beside a healthy member.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from . import checkpoints, environment, layout
from .checkpoints import atomic_write
from .config import RunConfig, TrainConfig
from .data import Batches, Data, Split
from .masks import Mask, MaskedParameters, density, density_total
from .models import layer_kinds, layout_name, memory_format
from .runtime import Runtime

log = logging.getLogger("ticketbench")
METRIC_COLUMNS = ["step", "epoch", "lr", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc"]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite (or an evaluation did): ``reason`` says which, ``step`` is
    the step at which it was found (both unset for a pack's summary of its diverged members)."""

    def __init__(self, message: str, step: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.step, self.reason = step, reason


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint was written and the job should exit for requeueing."""


@dataclass
class Job:
    """Everything that defines one training job, besides the run config."""

    out: Path
    state: dict[str, torch.Tensor]
    """Model state (weights and BN statistics) at ``start``. Masked weights are zeroed on load."""
    mask: Mask
    start: int
    end: int
    lr: Callable[[int], float]
    data_order_seed: int
    augmentation_seed: int
    label: str = "train"
    optimizer_state: dict | None = None
    snapshots: tuple[int, ...] = ()
    on_snapshot: Callable[[int, nn.Module, torch.optim.Optimizer], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Recorded verbatim in summary.json (level, branch, replicate, ...)."""


def make_optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # fused=True: the same algorithm in one kernel. PyTorch's default CPU Adam is ~2x slower on masked
    # networks because torch.sqrt takes a slow path on the exact zeros a mask leaves in exp_avg_sq
    # (bench/README.md). Fused Adam runs on CPU and CUDA alike.
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 1000, channels_last: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a split, with the network in eval mode (BN frozen)."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=split.x.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.x.device)
    for i in range(0, len(split), batch_size):
        x, y = split.x[i:i + batch_size], split.y[i:i + batch_size]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    n = max(1, len(split))
    return float(loss) / n, float(correct) / n


def prepare(model: nn.Module, state: dict[str, torch.Tensor], mask: Mask, device: torch.device | str,
            layout: str) -> tuple[MaskedParameters, torch.memory_format]:
    """Put a network where and how a job runs it: on ``device``, in the memory layout
    ``models.memory_format`` allows for the requested ``layout``, with ``state`` loaded and the pruned
    weights zeroed. Training, the audit's re-evaluations and the benchmarks all go through here, so a
    network is never re-evaluated in a preparation that differs from the one it was trained in."""
    fmt = memory_format(model, layout)
    model.to(device, memory_format=fmt)
    model.load_state_dict(state)
    masked = MaskedParameters(model, mask)
    masked.apply_to_weights()
    return masked, fmt


def masked_step(model: nn.Module, opt: torch.optim.Optimizer, masked: MaskedParameters, x: torch.Tensor,
                y: torch.Tensor, lr: float) -> torch.Tensor:
    """One update of a pruned network at learning rate ``lr``: gradients are masked before the step and
    weights after it, so pruned weights are exactly zero after every step (weight decay and momentum
    would otherwise revive them). Returns the batch's training loss (detached)."""
    for group in opt.param_groups:
        group["lr"] = lr
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    masked.apply_to_gradients()
    opt.step()
    masked.apply_to_weights()
    return loss.detach()


@dataclass
class _Position:
    """Where a job stands: what a checkpoint stores besides the model and optimizer."""

    step: int
    rows: list[dict[str, Any]]
    loss_sum: torch.Tensor
    """Running training loss (float64) since the last evaluation, over ``loss_n`` steps."""
    loss_n: int
    evaluated: bool
    """The step's snapshot and evaluation are done (true right after resuming from a checkpoint of it)."""


def fit(model: nn.Module, data: Data, cfg: RunConfig, job: Job, runtime: Runtime, eval_every: int) -> dict[str, Any]:
    """Run ``job`` to completion (or resume it) and return its summary. Idempotent: a finished job
    returns its stored summary without training."""
    summary_path = job.out / "summary.json"
    if summary_path.is_file():
        log.info("%s: already done, %s holds its summary", job.label, summary_path)
        return json.loads(summary_path.read_text())
    device = data.test.x.device
    weight_shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n in layer_kinds(model)}
    masked, fmt = prepare(model, job.state, job.mask, device, runtime.memory_format)
    opt = make_optimizer(cfg.train, model.parameters())
    if job.optimizer_state is not None:
        opt.load_state_dict(job.optimizer_state)
    pos = _resume(model, opt, job, cfg.hash(), device)
    first, t0 = pos.step, time.monotonic()
    _loop(model, opt, masked, data, cfg, job, runtime, eval_every, fmt == torch.channels_last, pos)
    elapsed = time.monotonic() - t0
    speed = (pos.step - first) * cfg.train.batch_size / elapsed if pos.step > first and elapsed > 0 else None
    return _finish(model, data, cfg, job, pos, fmt, weight_shapes, speed, environment.current(device, runtime.precision))


def _resume(model: nn.Module, opt: torch.optim.Optimizer, job: Job, config_hash: str, device: torch.device) -> _Position:
    """The job's position: from its checkpoint if one exists (model and optimizer restored), else its start."""
    ckpt_path = job.out / "checkpoint.pt"
    if not ckpt_path.is_file():
        return _Position(job.start, [], torch.zeros((), dtype=torch.float64, device=device), 0, False)
    # Read onto the CPU (as stored): load_state_dict copies into the model and the optimizer moves its
    # state to its parameters' device.
    ck = checkpoints.load(ckpt_path, kind="checkpoint", config_hash=config_hash)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    if not job.start <= ck["step"] <= job.end:
        raise checkpoints.CheckpointError(f"{ckpt_path}: step {ck['step']} is outside this job ({job.start}-{job.end}); delete it")
    loss_sum, loss_n = ck["train_loss"]  # the running training loss since the last evaluation
    log.info("%s: resuming from %s at step %d", job.label, ckpt_path, ck["step"])
    # A checkpoint of step s is written after s's snapshot and evaluation: resuming from it must not
    # repeat them (a second metrics row for s, with no training loss behind it).
    return _Position(ck["step"], ck["rows"], torch.tensor(loss_sum, dtype=torch.float64, device=device), loss_n, True)


def _loop(model: nn.Module, opt: torch.optim.Optimizer, masked: MaskedParameters, data: Data, cfg: RunConfig,
          job: Job, runtime: Runtime, eval_every: int, channels_last: bool, pos: _Position) -> None:
    """Train from ``pos`` to the job's end, evaluating, snapshotting and checkpointing on the way."""
    ckpt_path, config_hash = job.out / "checkpoint.pt", cfg.hash()
    batches = Batches(data, cfg.train.batch_size, job.data_order_seed, job.augmentation_seed, channels_last)
    watch = _Watch(job, pos.step, cfg.train.batch_size)
    term = _SigtermFlag()
    last_ckpt = time.monotonic()
    model.train()
    bar = tqdm(total=job.end - job.start, initial=pos.step - job.start, desc=job.label, unit="it",
               disable=not runtime.progress, mininterval=1.0, dynamic_ncols=True)
    with term:
        while True:
            step = pos.step
            if step in job.snapshots and job.on_snapshot is not None and not pos.evaluated:
                job.on_snapshot(step, model, opt)
            if (step % eval_every == 0 or step in (job.start, job.end)) and not pos.evaluated:
                _evaluate(model, data, job, pos, batches.per_epoch, step, channels_last, watch, job.out, runtime.test_eval)
            if step == job.end:
                break
            if term.raised or time.monotonic() - last_ckpt > runtime.checkpoint_seconds:
                if pos.loss_n:  # never checkpoint a diverged state
                    _check_finite(float(pos.loss_sum), job.label, step, job.out)
                checkpoints.save(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                             "rows": pos.rows, "train_loss": (float(pos.loss_sum), pos.loss_n)},
                                 kind="checkpoint", config_hash=config_hash)
                log.debug("%s: checkpoint of step %d written to %s", job.label, step, ckpt_path)
                last_ckpt = time.monotonic()
                if term.raised:
                    bar.close()
                    raise Preempted(f"{job.label}: SIGTERM at step {step}; checkpoint written to {ckpt_path}, rerun to resume")
            pos.evaluated = False
            x, y = batches[step]
            pos.loss_sum += masked_step(model, opt, masked, x, y, job.lr(step)).double()
            pos.loss_n += 1
            pos.step += 1
            bar.update(1)
    bar.close()


def _finish(model: nn.Module, data: Data, cfg: RunConfig, job: Job, pos: _Position, fmt: torch.memory_format,
            weight_shapes: dict[str, tuple[int, ...]], images_per_second: float | None,
            env: dict[str, Any]) -> dict[str, Any]:
    """Store the trained network, its metrics and its summary (written last: it marks the job done). ``env``
    is where it ran (``environment.current``)."""
    train_loss, train_acc = evaluate(model, data.train_unpadded(), channels_last=fmt == torch.channels_last)
    rows = pos.rows
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    config_hash = cfg.hash()
    summary = {
        **job.extra,
        "config_hash": config_hash,
        "start_step": job.start,
        "end_step": job.end,
        "density": density(job.mask),
        "density_total": density_total(job.mask, weight_shapes),
        "memory_format": layout_name(fmt),
        "final_train_loss": train_loss,
        "final_train_acc": train_acc,
        "final_test_loss": rows[-1]["test_loss"],
        "final_test_acc": rows[-1]["test_acc"],
        **early_stop(metrics),
        "images_per_second": images_per_second,
        "environment": env,
    }
    checkpoints.save(job.out / "final.pt", {"model": model.state_dict()}, kind="model", config_hash=config_hash)
    atomic_write(job.out / "metrics.csv", metrics.to_csv(index=False))
    summary["model_sha256"] = checkpoints.sha256_of(job.out / "final.pt")
    atomic_write(job.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    (job.out / "checkpoint.pt").unlink(missing_ok=True)
    return summary


class _Watch:
    """What a running job shows: every evaluation's row appended to ``metrics.csv`` (rewritten atomically,
    so a reader never sees half a row) and one log line with the step, losses, accuracies, speed and the
    time left, so a job can be watched with ``tail -f`` of its log and its curves drawn mid-run."""

    def __init__(self, job: Job, step: int, batch_size: int) -> None:
        self.job, self.batch_size = job, batch_size
        self.t0, self.step0 = time.monotonic(), step

    def evaluated(self, rows: list[dict[str, Any]], trained: bool) -> None:
        """Record and show the latest row; ``trained``: a step ran since the previous evaluation, so the row
        has a training loss. Without one (the evaluation before the first step) the CSV has a missing value
        and the line says ``train loss -``: a ``nan`` there would read as a diverged run."""
        job, row = self.job, rows[-1]
        atomic_write(job.out / "metrics.csv", pd.DataFrame(rows, columns=METRIC_COLUMNS).to_csv(index=False))
        done, elapsed = row["step"] - self.step0, time.monotonic() - self.t0
        speed = done / elapsed if done > 0 and elapsed > 0 else math.nan
        eta = (job.end - row["step"]) / speed if math.isfinite(speed) and speed > 0 else math.nan
        train = f"{row['train_loss']:.4f}" if trained else "-"
        val = f" val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}" if math.isfinite(row["val_acc"]) else ""
        test = f" test acc {row['test_acc']:.4f}" if math.isfinite(row["test_acc"]) else ""
        log.info("%s: step %d/%d train loss %s%s%s, %s img/s, ETA %s", job.label, row["step"], job.end,
                 train, val, test, f"{speed * self.batch_size:,.0f}" if math.isfinite(speed) else "-", _duration(eta))


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def early_stop(metrics: pd.DataFrame) -> dict[str, Any]:
    """The LTH's early-stopping point: the evaluation step of minimum validation loss, and the test
    accuracy there (Frankle & Carbin 2019, Sec. 1 fn. 2, App. C). Without a validation split: none."""
    if metrics["val_loss"].isna().all():
        return {"early_stop_step": None, "early_stop_test_acc": None, "early_stop_val_loss": None}
    i = metrics["val_loss"].idxmin()
    return {"early_stop_step": int(metrics.at[i, "step"]), "early_stop_test_acc": float(metrics.at[i, "test_acc"]),
            "early_stop_val_loss": float(metrics.at[i, "val_loss"])}


def _metrics_row(model: nn.Module, data: Data, step: int, per_epoch: int, lr: float, train_loss: float,
                 channels_last: bool, test_if_best: float | None = None) -> dict[str, Any]:
    """One evaluation row. With ``test_if_best`` (the lowest validation loss so far), the test set is
    evaluated only if this validation loss is lower: the rows early stopping can pick (the first minimum,
    ``early_stop``) then all have their test numbers; the others record NaN."""
    val = evaluate(model, data.val, channels_last=channels_last) if data.val is not None else (math.nan, math.nan)
    skip = test_if_best is not None and data.val is not None and not val[0] < test_if_best
    test = (math.nan, math.nan) if skip else evaluate(model, data.test, channels_last=channels_last)
    return {"step": step, "epoch": step / per_epoch, "lr": lr, "train_loss": train_loss,
            "val_loss": val[0], "val_acc": val[1], "test_loss": test[0], "test_acc": test[1]}


def _evaluate(model: nn.Module, data: Data, job: Job, pos: _Position, per_epoch: int, step: int, channels_last: bool,
              watch: _Watch, kept: Path, test_eval: str) -> None:
    """The evaluation row of ``job`` at ``step`` (a lone job's, or a pack member's on its lone network):
    appended to ``pos.rows`` with the mean training loss since the last one, shown by ``watch``. A
    non-finite loss stops the job, naming ``kept``, the folder of its last good checkpoint."""
    if pos.loss_n:
        _check_finite(float(pos.loss_sum), job.label, step, kept)
    best = None
    if test_eval == "early-stop" and step != job.end:
        best = min((r["val_loss"] for r in pos.rows if math.isfinite(r["val_loss"])), default=math.inf)
    trained = pos.loss_n > 0
    row = _metrics_row(model, data, step, per_epoch, job.lr(step),
                       float(pos.loss_sum / pos.loss_n) if trained else math.nan, channels_last, best)
    pos.rows.append(row)
    pos.loss_sum.zero_()
    pos.loss_n = 0
    evaluated = "test_loss" if math.isfinite(row["test_loss"]) or data.val is None else "val_loss"
    if not math.isfinite(row[evaluated]):
        reason = f"{evaluated.replace('_', ' ')} is not finite"
        raise TrainingDiverged(f"{job.label}: {reason} at step {step}; the weights diverged (last good checkpoint kept "
                               f"in {kept})", step, reason)
    watch.evaluated(pos.rows, trained)
    pos.evaluated = True


def _check_finite(loss_sum: float, label: str, step: int, out: Path) -> None:
    if not math.isfinite(loss_sum):
        raise TrainingDiverged(f"{label}: training loss became {loss_sum} before step {step}; lower the learning "
                               f"rate or add warmup (last good checkpoint kept in {out})", step,
                               f"training loss became {loss_sum}")


def record_divergence(out: Path, error: TrainingDiverged, **extra: Any) -> Path:
    """Write a diverged job's record, ``<job>/diverged.json``: the step at which it was found and why. A pack
    that meets the record does not train the job again (``diverged``)."""
    path = out / layout.DIVERGED
    atomic_write(path, json.dumps({"step": error.step, "reason": error.reason, **extra}, indent=2) + "\n")
    return path


def diverged(out: Path) -> dict[str, Any] | None:
    """A job's divergence record (``record_divergence``), or None if it has none."""
    path = out / layout.DIVERGED
    return json.loads(path.read_text()) if path.is_file() else None


class _SigtermFlag:
    """Turns SIGTERM into a flag the loop checks between steps, so the checkpoint it writes is consistent."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> "_SigtermFlag":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# --------------------------------------------------------------------------------------------------
# Packed training: P jobs of one shape as one batched computation
# --------------------------------------------------------------------------------------------------


@dataclass
class Member:
    """One job of a pack: what ``fit`` takes. ``build`` makes a fresh network of the member's architecture
    (the pack needs several: the stacked one's template and the lone one each evaluation runs on)."""

    build: Callable[[], nn.Module]
    data: Data
    cfg: RunConfig
    job: Job


def pack_key(m: Member, eval_every: int) -> tuple:
    """What members of one pack must share: the architecture, the optimizer and its hyperparameters, the
    batch size, the steps and the learning rate at every step, the evaluation interval, whether an
    optimizer state is restored and the snapshot steps. Members with equal keys train in lockstep."""
    t, j = m.cfg.train, m.job
    return (m.cfg.model, m.data.shape, m.data.classes, t.optimizer, t.lr, t.momentum, t.weight_decay, t.batch_size,
            j.start, j.end, tuple(j.lr(s) for s in range(j.start, j.end + 1)), eval_every,
            j.optimizer_state is None, j.snapshots)


class _Stack:
    """The members' networks as one: parameters and buffers stacked along a leading member dimension and
    run through a shape-only copy of the architecture (``functional_call`` on the meta device) under
    ``vmap``. BatchNorm updates its running statistics in place, on each member's slice of the stacked
    buffers, so they stay per member and exact.

    The optimizer's leaves are the stacked parameters, except that fully connected weights are stored
    transposed (P, in, out) and handed to the network as a transposed view: the batched matmul's weight
    gradient then arrives in the leaf's own layout, where the (P, out, in) layout made autograd copy every
    gradient (a third of a packed LeNet step on the CPU, bench/README.md). Layout only: the values and
    every member's files are as if stored plainly."""

    def __init__(self, members: list[Member], device: torch.device) -> None:
        nets = []
        for m in members:
            net = m.build().to(device)
            net.load_state_dict(m.job.state)
            nets.append(net)
        self.keys = list(nets[0].state_dict())
        params, self.buffers = stack_module_state(nets)
        self.transposed = {n for n, p in params.items() if p.dim() == 3}
        self.leaves = {n: self._to_leaf(n, p.detach()).requires_grad_(True) for n, p in params.items()}
        self.base = members[0].build().to("meta")
        self.masks = {n: self._to_leaf(n, torch.stack([m.job.mask[n] for m in members]).to(device, params[n].dtype))
                      for n in sorted(members[0].job.mask)}
        self.size = len(members)
        self.stopped: set[int] = set()
        self.unmasked: dict[str, torch.Tensor] = {}
        """Per leaf the mask has no entry for (biases, BatchNorm), 0 for stopped members and 1 for the others;
        empty while no member is stopped."""
        self.apply_to_weights()

    def _to_leaf(self, name: str, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.transpose(1, 2).contiguous() if name in self.transposed else stacked

    def _from_leaf(self, name: str, leaf: torch.Tensor) -> torch.Tensor:
        """A leaf (or a slice of it along the member dimension) in the parameter's own layout."""
        return leaf.transpose(-1, -2) if name in self.transposed else leaf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def one(p: dict, b: dict, xi: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (xi,))

        params = {n: self._from_leaf(n, t) for n, t in self.leaves.items()}
        return vmap(one)(params, self.buffers, x)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.leaves.values())

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        torch._foreach_mul_([self.leaves[n] for n in self.masks], list(self.masks.values()))

    @torch.no_grad()
    def apply_to_gradients(self) -> None:
        factors = {**self.masks, **self.unmasked}
        names = [n for n in factors if self.leaves[n].grad is not None]
        if names:
            torch._foreach_mul_([self.leaves[n].grad for n in names], [factors[n] for n in names])

    @torch.no_grad()
    def stop(self, i: int, opt: torch.optim.Optimizer) -> None:
        """Take member i out of training for good (it diverged): its parameters, buffers and optimizer moments
        become zero, and so from now on does each of its gradients (its mask rows, and ``unmasked`` for the
        leaves without a mask). An update then leaves it at exactly zero (SGD with momentum and weight decay,
        Adam: a zero gradient on a zero weight with zero moments moves nothing), where it computes finite
        numbers only. Every operation of a step is per member, so the others train exactly as they would beside
        a healthy member."""
        for t in [*self.leaves.values(), *self.buffers.values()]:
            t[i].zero_()
        for state in opt.state.values():
            for v in state.values():
                if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == self.size:
                    v[i].zero_()
        for m in self.masks.values():
            m[i].zero_()
        self.stopped.add(i)
        alive = torch.tensor([0.0 if j in self.stopped else 1.0 for j in range(self.size)])
        self.unmasked = {n: alive.to(leaf.device, leaf.dtype).view(-1, *[1] * (leaf.dim() - 1))
                         for n, leaf in self.leaves.items() if n not in self.masks}

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's state dict, as its lone network holds it."""
        return {k: (self._from_leaf(k, self.leaves[k][i]) if k in self.leaves else self.buffers[k][i]).detach().clone(
                    memory_format=torch.contiguous_format) for k in self.keys}

    @torch.no_grad()
    def load_member_state(self, i: int, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            if k in self.leaves:
                self._from_leaf(k, self.leaves[k][i]).copy_(v)
            else:
                self.buffers[k][i].copy_(v)

    def member_optimizer(self, opt_state: dict, i: int) -> dict:
        """Member i's optimizer state in a lone optimizer's format: its slice of the stacked moments (in
        the parameter's layout); scalars (Adam's step count, equal for all members by construction) as
        they are."""
        names = list(self.leaves)

        def part(name: str, v: Any) -> Any:
            if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == self.size:
                return self._from_leaf(name, v[i]).clone(memory_format=torch.contiguous_format)
            return v

        return {"state": {idx: {k: part(names[int(idx)], v) for k, v in st.items()} for idx, st in opt_state["state"].items()},
                "param_groups": opt_state["param_groups"]}

    def stacked_optimizer(self, states: list[dict]) -> dict:
        """The inverse of ``member_optimizer``: the members' lone optimizer states as the pack's."""
        names = list(self.leaves)

        def stack(idx: Any, k: str) -> Any:
            vs = [s["state"][idx][k] for s in states]
            if torch.is_tensor(vs[0]) and vs[0].dim() > 0:
                return self._to_leaf(names[int(idx)], torch.stack(vs))
            return vs[0]

        first = states[0]
        return {"state": {idx: {k: stack(idx, k) for k in st} for idx, st in first["state"].items()},
                "param_groups": first["param_groups"]}


def pack_identity(members: list[Member]) -> str:
    """The pack's name: a digest of its members in order (config hash, branch, level, replicate, steps),
    so that a pack checkpoint is only ever resumed by the same pack."""
    import hashlib

    ident = [[m.cfg.hash(), m.job.extra.get("branch"), m.job.extra.get("level"), m.job.extra.get("replicate"),
              m.job.start, m.job.end] for m in members]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:12]


class _Lone:
    """A member's network as a lone job holds it (prepared in the runtime's layout, with its mask): what
    every evaluation, snapshot and the final files of a packed member are computed from, so that a packed
    member's recorded numbers are exactly those of its weights evaluated alone (the audit re-checks them)."""

    def __init__(self, m: Member, device: torch.device, layout: str) -> None:
        self.net = m.build()
        self.masked, self.fmt = prepare(self.net, m.job.state, m.job.mask, device, layout)
        self.cfg = m.cfg

    def load(self, state: dict[str, torch.Tensor]) -> nn.Module:
        self.net.load_state_dict(state)
        return self.net

    def optimizer(self, opt_state: dict) -> torch.optim.Optimizer:
        opt = make_optimizer(self.cfg.train, self.net.parameters())
        opt.load_state_dict(opt_state)
        return opt


def fit_packed(members: list[Member], runtime: Runtime, eval_every: int) -> list[dict[str, Any] | None]:
    """Train the members (all of one ``pack_key``, none finished) side by side and return their summaries
    in order. The pack checkpoints into ``<first member's folder>/pack-<identity>.pt`` (one atomic file
    for all members, so a kill can never leave them at different steps); each member's final files are a
    lone job's, and its summary records the pack it ran in.

    A member that diverges (a non-finite training loss or evaluation) is stopped (``_Stack.stop``) and
    recorded (``record_divergence``); the others train on and finish. Its place in the result is None. A
    member that arrives with a record stays stopped: it is resumed stopped from the pack's checkpoint if
    there is one, else left out of the stack."""
    if len({pack_key(m, eval_every) for m in members}) != 1:
        raise ValueError("fit_packed: the members differ in architecture, optimizer, steps or learning rate")
    device = members[0].data.test.x.device
    ident = pack_identity(members)
    ckpt_path = members[0].job.out / f"pack-{ident}.pt"
    recorded = [diverged(m.job.out) is not None for m in members]
    if any(recorded) and not ckpt_path.is_file():
        live = [m for m, r in zip(members, recorded) if not r]
        trained = iter(fit_packed(live, runtime, eval_every) if live else [])
        return [None if r else next(trained) for r in recorded]
    stack = _Stack(members, device)
    # The stacked computation runs in NCHW whatever the runtime's layout (batches and stacked parameters are
    # contiguous; vmap folds the member dimension into them). The lone networks that evaluate the members
    # and store their files are prepared in that layout too, so a member's numbers and its recorded layout
    # are those it trained in.
    lone = [_Lone(m, device, "contiguous") for m in members]
    opt = make_optimizer(members[0].cfg.train, stack.parameters())
    if members[0].job.optimizer_state is not None:
        opt.load_state_dict(stack.stacked_optimizer([m.job.optimizer_state for m in members]))
    pos = _resume_packed(stack, opt, members, ckpt_path, ident, device)
    for i, r in enumerate(recorded):
        if r:
            stack.stop(i, opt)
    first, t0 = pos[0].step, time.monotonic()
    _loop_packed(stack, opt, members, lone, runtime, eval_every, pos, ckpt_path, ident)
    elapsed = time.monotonic() - t0
    steps = pos[0].step - first
    # Each member's own rate, as a lone job records it (the pack's aggregate is len(members) times this).
    speed = steps * members[0].cfg.train.batch_size / elapsed if steps > 0 and elapsed > 0 else None
    weight_shapes = {n: tuple(p.shape) for n, p in lone[0].net.named_parameters() if n in layer_kinds(lone[0].net)}
    env = environment.current(device, runtime.precision)
    summaries = [None if i in stack.stopped else
                 _finish(lone[i].load(stack.member_state(i)), m.data, m.cfg, m.job, pos[i], lone[i].fmt, weight_shapes,
                         speed, env) for i, m in enumerate(members)]
    ckpt_path.unlink(missing_ok=True)
    return summaries


def _resume_packed(stack: _Stack, opt: torch.optim.Optimizer, members: list[Member], ckpt_path: Path, ident: str,
                   device: torch.device) -> list[_Position]:
    """Every member's position: from the pack's checkpoint if one exists, else its start."""
    if not ckpt_path.is_file():
        return [_Position(m.job.start, [], torch.zeros((), dtype=torch.float64, device=device), 0, False)
                for m in members]
    ck = checkpoints.load(ckpt_path, kind="checkpoint", config_hash=ident)  # onto the CPU, as in _resume
    for i, one in enumerate(ck["members"]):
        stack.load_member_state(i, one["model"])
    opt.load_state_dict(stack.stacked_optimizer([one["optimizer"] for one in ck["members"]]))
    log.info("pack %s: resuming %d jobs from %s at step %d", ident, len(members), ckpt_path, ck["step"])
    return [_Position(ck["step"], one["rows"], torch.tensor(one["train_loss"][0], dtype=torch.float64, device=device),
                      one["train_loss"][1], True) for one in ck["members"]]


def _loop_packed(stack: _Stack, opt: torch.optim.Optimizer, members: list[Member], lone: list[_Lone], runtime: Runtime,
                 eval_every: int, pos: list[_Position], ckpt_path: Path, ident: str) -> None:
    """``_loop`` for a pack: the same snapshots, evaluations, checkpoints and SIGTERM handling, for every
    member at once; one batched step per iteration. Where ``_loop`` raises ``TrainingDiverged``, the member
    is stopped and recorded (``_stop``) and the others go on."""
    job0, size = members[0].job, len(members)
    batches = [Batches(m.data, m.cfg.train.batch_size, m.job.data_order_seed, m.job.augmentation_seed) for m in members]
    watches = [_Watch(m.job, pos[i].step, m.cfg.train.batch_size) for i, m in enumerate(members)]
    term, last_ckpt = _SigtermFlag(), time.monotonic()
    # The running training losses of all members in one tensor, so a step adds them in one kernel; each
    # member's _Position gets its value back whenever an evaluation or a checkpoint reads it.
    loss_sums = torch.stack([p.loss_sum for p in pos])
    stack.base.train()
    bar = tqdm(total=job0.end - job0.start, initial=pos[0].step - job0.start, desc=f"pack of {size}", unit="it",
               disable=not runtime.progress, mininterval=1.0, dynamic_ncols=True)

    def live() -> list[int]:
        return [i for i in range(size) if i not in stack.stopped]

    with term:
        while True:
            step = pos[0].step
            if not pos[0].evaluated:
                snap = step in job0.snapshots and job0.on_snapshot is not None
                due = step % eval_every == 0 or step in (job0.start, job0.end)
                if snap or due:
                    opt_state = opt.state_dict() if snap else None
                    _unstack_losses(loss_sums, pos)
                    for i in live():
                        m = members[i]
                        try:
                            if snap and pos[i].loss_n:  # never snapshot a diverged state (_evaluate checks too)
                                _check_finite(float(pos[i].loss_sum), m.job.label, step, ckpt_path.parent)
                            net = lone[i].load(stack.member_state(i))
                            if snap:
                                m.job.on_snapshot(step, net, lone[i].optimizer(stack.member_optimizer(opt_state, i)))
                            if due:
                                _evaluate(net, m.data, m.job, pos[i], batches[i].per_epoch, step,
                                          lone[i].fmt == torch.channels_last, watches[i], ckpt_path.parent,
                                          runtime.test_eval)
                        except TrainingDiverged as e:
                            _stop(stack, opt, members, i, e, ident)
                    loss_sums = torch.stack([p.loss_sum for p in pos])
            if step == job0.end or not live():  # done, or every member diverged
                break
            if term.raised or time.monotonic() - last_ckpt > runtime.checkpoint_seconds:
                _unstack_losses(loss_sums, pos)
                for i in live():  # never checkpoint a diverged state
                    try:
                        _check_finite(float(pos[i].loss_sum), members[i].job.label, step, ckpt_path.parent)
                    except TrainingDiverged as e:
                        _stop(stack, opt, members, i, e, ident)
                _save_pack(stack, opt, pos, ckpt_path, ident, step)
                last_ckpt = time.monotonic()
                if term.raised:
                    bar.close()
                    raise Preempted(f"pack {ident}: SIGTERM at step {step}; checkpoint written to {ckpt_path}, rerun "
                                    f"the same pack to resume")
            xs, ys = zip(*(b[step] for b in batches))
            lr = job0.lr(step)
            for group in opt.param_groups:
                group["lr"] = lr
            out = stack.forward(torch.stack(xs))
            y = torch.stack(ys)
            # Each member's loss is the mean over its own batch; their sum has each member's gradient.
            per_member = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(size, -1).mean(1)
            opt.zero_grad(set_to_none=True)
            per_member.sum().backward()
            stack.apply_to_gradients()
            opt.step()
            stack.apply_to_weights()
            loss_sums += per_member.detach().double()
            for p in pos:
                p.loss_n += 1
                p.step += 1
                p.evaluated = False
            bar.update(1)
    bar.close()


def _stop(stack: _Stack, opt: torch.optim.Optimizer, members: list[Member], i: int, error: TrainingDiverged,
          ident: str) -> None:
    """Member i diverged: stop it (``_Stack.stop``) and write its record, and say so; the pack trains on."""
    stack.stop(i, opt)
    path = record_divergence(members[i].job.out, error, pack=ident)
    others = stack.size - len(stack.stopped)
    log.warning("%s: %s by step %d; stopped and recorded in %s, the other %d member%s of pack %s train on",
                members[i].job.label, error.reason, error.step, path, others, "" if others == 1 else "s", ident)


def _unstack_losses(loss_sums: torch.Tensor, pos: list[_Position]) -> None:
    for i, p in enumerate(pos):
        p.loss_sum = loss_sums[i].clone()


def _save_pack(stack: _Stack, opt: torch.optim.Optimizer, pos: list[_Position], path: Path, ident: str,
               step: int) -> None:
    """One checkpoint for the whole pack, each member's part in a lone checkpoint's format (a stopped member's
    is zeros: it stays stopped by its record, ``diverged.json``)."""
    opt_state = opt.state_dict()
    parts = [{"model": stack.member_state(i), "optimizer": stack.member_optimizer(opt_state, i), "rows": p.rows,
              "train_loss": (float(p.loss_sum), p.loss_n)} for i, p in enumerate(pos)]
    checkpoints.save(path, {"step": step, "members": parts}, kind="checkpoint", config_hash=ident)
    log.debug("pack %s: checkpoint of step %d written to %s", ident, step, path)
