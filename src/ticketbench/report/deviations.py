"""How an experiment of a reduced scale departs from the paper experiment it shrinks.

An experiment of config/quick.yaml or config/smoke.yaml names the experiment of config/config.yaml (the
papers' protocols) that it shrinks: ``shrinks: <experiment id>``. Its deviations are then computed, not
written by hand: every key of the two workflow-config entries (the run config with its defaults filled
in, the seeds, baselines and analyses) whose values differ. A header comment can forget a deviation or
state it wrongly ("rewind points scaled to the same fraction of training" when they were not); this
comparison cannot, and tests hold the headers to it.

Both training length and rewind point are also given in iterations and the rewind point as a fraction of
training, because "200it" against "160ep" says nothing about how much shorter the schedule is, and the
instability results of Frankle et al. depend on k as a fraction of training, not on k itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import config as config_mod

PAPER_CONFIG = "config.yaml"
"""The workflow config of the papers' protocols, beside the reduced ones (config/config.yaml)."""
SHRINKS = "shrinks"
"""The key of a reduced experiment that names the paper experiment it shrinks."""
NOT_COMPARED = ("family", "source", SHRINKS, "resources", "run.name", "run.source", "run.seeds")
"""Bookkeeping, not protocol: where a run is cited from, what it shrinks, how much memory its jobs get."""
ABSENT = "not run"


@dataclass(frozen=True)
class Deviation:
    """One protocol key (a dotted path into a workflow-config experiment) where ours differs from the paper's."""

    key: str
    ours: str
    paper: str


def deviations(ours: Mapping[str, Any], paper: Mapping[str, Any]) -> list[Deviation]:
    """Every difference between two workflow-config experiment entries, in key order.

    The run configs are compared with their defaults filled in (a key the paper's config leaves at its
    default still differs from ours if ours sets it), the seeds as a number of trials, and the workflow
    sections (baselines, finetune, instability, hessian, successive) key by key, an option one side
    leaves out at its default (the Hessian's from :class:`ticketbench.analysis.HessianConfig`); a
    section one side does not have is one deviation, "not run"."""
    a, b = _protocol(ours), _protocol(paper)
    out = []
    for section in sorted({_section(k) for k in (*a, *b)}):
        mine, theirs = _within(a, section), _within(b, section)
        if not mine or not theirs:
            out.append(Deviation(section, _text(mine) if mine else ABSENT, _text(theirs) if theirs else ABSENT))
            continue
        for k in sorted(set(mine) | set(theirs)):
            x, y = mine.get(k, _default(section, k)), theirs.get(k, _default(section, k))
            if x != y:
                out.append(Deviation(f"{section}.{k}" if k else section, _text(x), _text(y)))
    return _with_schedule(out, ours, paper)


def paper_config(workflow_config: Path) -> Path | None:
    """config/config.yaml, found beside the reduced workflow config; None if there is none or it is that file."""
    path = Path(workflow_config).parent / PAPER_CONFIG
    if not path.is_file() or path.resolve() == Path(workflow_config).resolve():
        return None
    return path


@dataclass(frozen=True)
class Shrunk:
    """A reduced experiment against the paper experiment it names (``paper``), or why it cannot be."""

    paper: str | None
    found: list[Deviation]
    problem: str = ""


def of_workflow(workflow: Mapping[str, Any], paper: Mapping[str, Any]) -> dict[str, Shrunk]:
    """experiment id -> its deviations from the paper experiment it shrinks, or the problem: it names no
    paper experiment, or one that config/config.yaml does not have."""
    out: dict[str, Shrunk] = {}
    for exp, spec in sorted(workflow.items()):
        target = spec.get(SHRINKS)
        if target is None:
            out[exp] = Shrunk(None, [], f"names no paper experiment ({SHRINKS}: <experiment of config/{PAPER_CONFIG}>)")
        elif target not in paper:
            out[exp] = Shrunk(target, [], f"{SHRINKS}: {target}: config/{PAPER_CONFIG} has no such experiment")
        else:
            out[exp] = Shrunk(target, deviations(spec, paper[target]))
    return out


# --------------------------------------------------------------------------------------------------


def _protocol(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted key -> value of everything an experiment entry says about its protocol."""
    run = config_mod.experiment_run(dict(spec), "x", 0).to_dict()
    flat = _flatten({**{k: v for k, v in spec.items() if k != "run"}, "run": run})
    flat["seeds"] = len(spec.get("seeds") or [])  # trials: which seeds is bookkeeping, how many is protocol
    if run["data"]["name"] == "synthetic":  # its sizes belong to the dataset, one deviation with it
        d = run["data"]
        flat["run.data.name"] = (f"synthetic ({d['synthetic_train']:,} train / {d['synthetic_test']:,} test "
                                 f"images of {'x'.join(map(str, d['synthetic_shape']))})")
    return {k: v for k, v in flat.items() if not k.startswith(NOT_COMPARED) and not k.startswith("run.data.synthetic_")}


def _section(key: str) -> str:
    """The unit present or absent as a whole: a baseline (``baselines.oneshot``), an analysis
    (``hessian``), a run-config key (``run.train.steps``), ``seeds``."""
    parts = key.split(".")
    if parts[0] == "run":
        return key
    return ".".join(parts[:2]) if parts[0] == "baselines" else parts[0]


def _within(flat: Mapping[str, Any], section: str) -> dict[str, Any]:
    return {k[len(section) + 1:]: v for k, v in flat.items() if k == section or k.startswith(section + ".")}


def _default(section: str, key: str) -> Any:
    from ..analysis import HessianConfig

    if section == "hessian" and key in HessianConfig.__dataclass_fields__:
        return getattr(HessianConfig(), key)
    return "default"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys; a run config's ``rates`` (kind -> rate) stays one value, as it is
    one protocol choice (and a kind one side does not prune is then not a second deviation)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and k != "rates":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _with_schedule(found: list[Deviation], ours: Mapping[str, Any], paper: Mapping[str, Any]) -> list[Deviation]:
    """``run.train.steps`` and ``run.imp.rewind`` restated in iterations and as a fraction of training."""
    a, b = _schedule(ours), _schedule(paper)
    out = []
    for d in found:
        if d.key == "run.train.steps":
            d = Deviation(d.key, f"{d.ours} = {a.total:,} iterations", f"{d.paper} = {b.total:,} iterations")
        elif d.key == "run.imp.rewind":
            d = Deviation(d.key, f"{d.ours} = {_pct(a.rewind / a.total)} of training",
                          f"{d.paper} = {_pct(b.rewind / b.total)} of training")
        out.append(d)
    if "run.imp.rewind" not in {d.key for d in found} and round(a.rewind / a.total, 4) != round(b.rewind / b.total, 4):
        rewind = ours["run"]["imp"].get("rewind", "0it")
        out.append(Deviation("run.imp.rewind (fraction of training)", f"{rewind} = {_pct(a.rewind / a.total)}",
                             f"{paper['run']['imp'].get('rewind', '0it')} = {_pct(b.rewind / b.total)}"))
    return sorted(out, key=lambda d: d.key)


def _schedule(spec: Mapping[str, Any]) -> config_mod.Schedule:
    cfg = config_mod.experiment_run(dict(spec), "x", 0)
    return cfg.schedule(_train_size(cfg.data))


def _train_size(data: config_mod.DataConfig) -> int:
    """Training examples a run sees per epoch: the split after the validation hold-out, then the subset."""
    if data.name == "synthetic":
        full = data.synthetic_train
    else:

        full = config_mod.OFFICIAL_SIZES[data.name][0]
    n = full - data.validation_size
    return min(n, data.train_subset) if data.train_subset else n


def _pct(x: float) -> str:
    return f"{100 * x:.2g} %"


def _text(v: Any) -> str:
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {_text(x)}" for k, x in v.items()) or "{}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(_text, v)) + "]"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)
