"""Audit stored results: every number a report cites is recomputed from the stored networks.

For every finished job of every run (``results/N/runs/<experiment>/seed<S>``) the audit checks:

- ``hash``: final.pt, mask.pt and rewind.pt pass their content-hash check (``checkpoints.load``) and
  final.pt's hash equals the ``model_sha256`` recorded in summary.json;
- ``accuracy``: the stored final network, re-evaluated on the test set, gives the recorded
  ``final_test_acc`` and ``final_test_loss``. The evaluation repeats the training loop's (same batch
  partition, memory layout and eval mode), so on the CPU the match is exact; the tolerance is
  ``atol`` (0 by default; runs trained on a GPU and audited on a CPU need a small one);
- ``mask``: the per-layer table stored in mask.pt equals the mask; the recorded density equals the
  mask's; pruned weights are exactly zero in the final network; and the kept counts are the ones the
  prune config implies: IMP, one-shot and fine-tuning level L keep ``masks.prune_counts(dense, L)``
  per pruning group, random pruning keeps IMP level L's per-layer counts, random reinit and the
  SGD-noise copies use IMP level L's mask itself;
- ``start``: the job started from the state it claims. The training loop evaluates the network at its
  first step before any update (first row of metrics.csv); the audit rebuilds that start state from
  the stored files (the initialization for level 0, the rewind snapshot rewind.pt masked for IMP
  levels, random pruning, one-shot and copies, the previous fine-tuned network for fine-tuning) and
  evaluates it. Equal test loss and accuracy show that the rewound weights are the stored snapshot.
  With k = 0 the snapshot must also equal the initialization exactly (Frankle & Carbin's reset to
  theta_0). Random reinitialization starts from fresh weights, which nothing stores: not checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import layout
from ..config import COPIES
from ..environment import recorded_layout

CHECKS = ("hash", "accuracy", "mask", "start")
OK, FAIL, SKIP = "ok", "FAIL", "-"


@dataclass
class Finding:
    run: str
    job: str
    check: str
    status: str
    detail: str = ""


def run_dirs(path: Path) -> list[Path]:
    """A results directory (``results/N``) or a single run directory."""
    from .tables import run_dirs as under

    path = Path(path)
    return [path] if (path / "config.yaml").is_file() else under(path)


def audit(path: Path, runtime: Any, atol: float = 0.0) -> list[Finding]:
    from ..checkpoints import CheckpointError
    from ..config import ConfigError
    from ..imp import Run

    findings: list[Finding] = []
    runs = run_dirs(path)
    if not runs:
        return [Finding(str(path), "", "runs", FAIL, "no run directories (runs/<experiment>/seed<S>/config.yaml) found")]
    for root in runs:
        name = _name(root, path)
        try:
            run = Run.open(root / "config.yaml", root, runtime)
        except (ConfigError, CheckpointError) as e:
            findings.append(Finding(name, "", "run", FAIL, str(e)))
            continue
        findings += _audit_run(run, name, atol)
    return findings


def _name(root: Path, base: Path) -> str:
    try:
        return root.relative_to(Path(base) / "runs").as_posix()
    except ValueError:
        return root.name


def _audit_run(run: Any, name: str, atol: float) -> list[Finding]:
    import torch

    from .. import checkpoints
    from ..checkpoints import CheckpointError

    out: list[Finding] = []
    rewind: dict | None = None
    try:
        rewind = run.rewind_state()
        out.append(Finding(name, "rewind.pt", "hash", OK))
        problems = []
        if rewind["step"] != run.schedule.rewind:
            problems.append(f"snapshot taken at step {rewind['step']}, config rewinds to {run.schedule.rewind}")
        if run.schedule.rewind == 0:
            init = run.model().state_dict()
            diff = [k for k in init if not torch.equal(init[k].cpu(), rewind["model"][k].cpu())]
            if diff:
                problems.append(f"k = 0 but the snapshot differs from the initialization in {diff[0]}")
        out.append(Finding(name, "rewind.pt", "start", FAIL if problems else OK, "; ".join(problems)))
    except CheckpointError as e:
        out.append(Finding(name, "rewind.pt", "hash", FAIL, str(e)))

    kinds = run.kinds
    masks: dict[str, Any] = {}
    # IMP jobs first, copies last: the other branches are checked against IMP's masks, copies of a random
    # baseline against that baseline's.
    rank = lambda p: (p.parts[len(run.root.parts)] != "imp", p.parts[len(run.root.parts)] in COPIES, p)  # noqa: E731
    for summary_path in sorted(run.root.glob(layout.JOB_GLOB), key=rank):
        folder = summary_path.parent
        job = folder.relative_to(run.root).as_posix()
        s = json.loads(summary_path.read_text())
        rows = {c: Finding(name, job, c, SKIP) for c in CHECKS}
        final = mask = None
        try:
            final = checkpoints.load(folder / "final.pt", kind="model", config_hash=run.hash)["model"]
            mask = checkpoints.load(folder / "mask.pt", kind="mask", config_hash=run.hash)
            recorded = s.get("model_sha256")
            found = checkpoints.sha256_of(folder / "final.pt")
            rows["hash"] = Finding(name, job, "hash", OK if recorded == found else FAIL,
                                   "" if recorded == found else f"summary.json records {recorded}, final.pt holds {found}")
        except CheckpointError as e:
            rows["hash"] = Finding(name, job, "hash", FAIL, str(e))
        if final is not None and mask is not None:
            masks[job] = mask["mask"]
            rows["accuracy"] = _accuracy(run, name, job, s, final, mask["mask"], atol)
            rows["mask"] = _mask(run, name, job, s, final, mask, kinds, masks)
            rows["start"] = _start(run, name, job, s, folder, mask["mask"], rewind, atol)
        out += rows.values()
    return out


# --------------------------------------------------------------------------------------------------


def evaluate_state(run: Any, state: dict, mask: dict, layout: str) -> tuple[float, float]:
    """Test loss and accuracy of a (masked) state, evaluated exactly as the training loop does, in the
    memory layout the job recorded (another layout rounds differently)."""
    import torch

    from ..train import evaluate, prepare

    net = run.model()
    _, fmt = prepare(net, state, mask, run.data.test.x.device, layout)
    return evaluate(net, run.data.test, channels_last=fmt == torch.channels_last)


def _close(a: float, b: float, atol: float) -> bool:
    return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= atol)


def _accuracy(run, name, job, s, final, mask, atol) -> Finding:
    loss, acc = evaluate_state(run, final, mask, recorded_layout(s))
    bad = []
    if not _close(acc, s["final_test_acc"], atol):
        bad.append(f"test accuracy {acc!r} re-evaluated vs {s['final_test_acc']!r} recorded")
    if not _close(loss, s["final_test_loss"], atol):
        bad.append(f"test loss {loss!r} re-evaluated vs {s['final_test_loss']!r} recorded")
    return Finding(name, job, "accuracy", FAIL if bad else OK, "; ".join(bad) or f"test accuracy {acc:.4f}")


def _mask(run, name, job, s, final, stored, kinds, masks) -> Finding:
    from ..masks import density, groups, layer_table, prune_counts

    mask, bad = stored["mask"], []
    if stored.get("layers") != layer_table(mask, kinds):
        bad.append("the per-layer table in mask.pt does not match the mask")
    if s["density"] != density(mask):
        bad.append(f"summary.json density {s['density']} != mask density {density(mask)}")
    nonzero = [n for n, m in mask.items() if bool((final[n][~m.to(final[n].device)] != 0).any())]
    if nonzero:
        bad.append(f"pruned weights are not zero in {nonzero[0]}")
    branch, level = s.get("branch"), s.get("level")
    copied = COPIES.get(branch, branch)  # an SGD-noise copy has the mask of the network it copies
    dense = masks.get(layout.job_path("imp", 0))
    imp = masks.get(layout.job_path("imp", level)) if level is not None else None
    kept = lambda m: [sum(int(m[n].sum()) for n in names) for names, _ in groups(m, kinds, run.cfg.prune)]  # noqa: E731
    if branch in ("imp", "oneshot", "finetune") and dense is not None:
        want = prune_counts(dense, kinds, run.cfg.prune, levels=level)
        if kept(mask) != want:
            bad.append(f"kept weights per pruning group {kept(mask)}, the prune config implies {want} at level {level}")
    elif copied == "random_prune" and imp is not None:
        if {n: int(m.sum()) for n, m in mask.items()} != {n: int(m.sum()) for n, m in imp.items()}:
            bad.append(f"per-layer counts differ from IMP level {level}'s")
        baseline = masks.get(layout.job_path("random_prune", level, 0))
        if copied != branch and baseline is not None and any(not bool((mask[n] == baseline[n]).all()) for n in baseline):
            bad.append(f"mask differs from the random pruning of level {level} it copies")
    elif copied in ("random_reinit", "imp") and imp is not None:
        if any(not bool((mask[n] == imp[n]).all()) for n in imp):
            bad.append(f"mask differs from IMP level {level}'s")
    elif dense is None or imp is None:
        bad.append("the IMP mask this job is compared with is missing")
    return Finding(name, job, "mask", FAIL if bad else OK, "; ".join(bad) or f"density {s['density']:.4f}")


def _start(run, name, job, s, folder, mask, rewind, atol) -> Finding:
    from ..checkpoints import CheckpointError

    branch, level = s.get("branch"), s.get("level")
    copied = COPIES.get(branch, branch)  # an SGD-noise copy starts where the network it copies started
    state_of: Callable[[], dict] | None
    if branch == "imp" and level == 0:
        state_of, what = (lambda: run.model().state_dict()), "the initialization"
    elif copied in ("imp", "random_prune", "oneshot"):
        if rewind is None:
            return Finding(name, job, "start", FAIL, "rewind.pt is missing or corrupt")
        state_of, what = (lambda: rewind["model"]), f"the rewind snapshot (step {rewind['step']})"
    elif branch == "finetune":
        prev = run.level_dir(0) if level == 1 else run.level_dir(level - 1, "finetune")
        state_of, what = (lambda: run.final_state(prev)), f"the trained network of {prev.relative_to(run.root).as_posix()}"
    else:
        return Finding(name, job, "start", SKIP, "fresh initialization: no stored start state to compare")
    metrics = pd.read_csv(folder / "metrics.csv")
    first = metrics[metrics["step"] == s["start_step"]]
    if first.empty:
        return Finding(name, job, "start", FAIL, f"metrics.csv has no row for the start step {s['start_step']}")
    try:
        loss, acc = evaluate_state(run, state_of(), mask, recorded_layout(s))
    except CheckpointError as e:
        return Finding(name, job, "start", FAIL, str(e))
    rec_loss, rec_acc = float(first["test_loss"].iloc[0]), float(first["test_acc"].iloc[0])
    if _close(loss, rec_loss, atol) and _close(acc, rec_acc, atol):
        return Finding(name, job, "start", OK, f"started from {what}")
    return Finding(name, job, "start", FAIL, f"first evaluation (loss {rec_loss!r}, acc {rec_acc!r}) does not match "
                                             f"{what} masked (loss {loss!r}, acc {acc!r})")


# --------------------------------------------------------------------------------------------------


def table(findings: list[Finding]) -> pd.DataFrame:
    """One row per job, one column per check (ok / FAIL / -)."""
    df = pd.DataFrame([f.__dict__ for f in findings])
    wide = df.pivot_table(index=["run", "job"], columns="check", values="status", aggfunc="first", sort=False)
    cols = [c for c in (*CHECKS, "run") if c in wide.columns]
    return wide.reindex(columns=cols).fillna(SKIP).reset_index()


def failures(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == FAIL]
