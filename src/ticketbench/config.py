"""Typed run configuration, validated once at the edge.

A *run* is one lottery-ticket experiment for one seed: a dense training run, the IMP levels that follow
it, and the baselines that branch off each level. Its configuration is plain data in YAML with five
sections (``data``, ``model``, ``train``, ``prune``, ``imp``) plus ``seeds``. Every protocol value lives
in the config files under ``config/`` next to the paper section it comes from; the defaults here are
only the neutral ones (no warmup, no weight decay, ...), so a config that omits a protocol value fails
validation instead of silently taking ours.

The run's identity is the hash of the canonical JSON of its *non-default* fields (as in open_lth): adding
a new option whose default is a no-op keeps every existing run name valid. ``tests/test_config.py`` pins
a few hashes so that an accidental change of identity is caught.

This module must not import torch: Snakemake imports it at DAG-build time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

log = logging.getLogger("ticketbench")

DATASETS = ("mnist", "fashion_mnist", "cifar10", "synthetic")
OFFICIAL_SIZES = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000), "cifar10": (50000, 10000)}
"""(train, test) examples of the official datasets: here, not in ``data`` (which imports torch), so that the
workflow's parse-time schedule checks and the report use the same numbers as the loader's integrity check."""
MODELS = ("lenet_300_100", "conv2", "conv4", "conv6", "resnet20", "vgg16", "vgg19")
LAYER_KINDS = ("conv", "shortcut", "fc", "output")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
"""Tensor layouts a run may ask for (a runtime choice, not hashed; ``models.memory_format`` decides auto)."""
BRANCHES = ("random_reinit", "random_prune", "oneshot", "copy", "copy_random_reinit", "copy_random_prune")
"""The baselines and SGD-noise copies that branch off an IMP level (``imp.Run.branch`` says what each is).
Named here, beside the rest of the run vocabulary, so the CLI and the workflow can list them without torch."""
COPIES = {"copy": "imp", "copy_random_reinit": "random_reinit", "copy_random_prune": "random_prune"}
"""Each SGD-noise copy branch (LMC Sec. 3) -> the network it copies: the IMP subnetwork, or a random baseline
(LMC Sec. 4: random pruning and reinitialization are neither stable nor matching)."""
JOB_BRANCHES = ("imp", *BRANCHES, "finetune")
"""Every kind of trained network a run holds: the IMP chain, its branches and the fine-tuning chain (the
first folder of a job below its run, ``layout.job_path``)."""
REINITIALIZED = tuple(b for b in BRANCHES if COPIES.get(b, b) == "random_reinit")
"""The branches that train fresh weights, and so start where ``imp.reinit_start`` says."""
REINIT_STARTS = ("rewind", "zero")


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key and says how to fix it."""


# --------------------------------------------------------------------------------------------------
# Step strings: '160ep', '500it', '2ep10it'. Schedules read like the paper and are converted to
# iterations in exactly one place, once the number of iterations per epoch is known.
# --------------------------------------------------------------------------------------------------

_STEP_RE = re.compile(r"^(?:(\d+)ep)?(?:(\d+)it)?$")


def parse_steps(text: str, key: str = "steps") -> tuple[int, int]:
    """'2ep10it' -> (2, 10). Raises ConfigError naming ``key`` on malformed input."""
    m = _STEP_RE.match(str(text).strip())
    if not m or (m.group(1) is None and m.group(2) is None):
        raise ConfigError(f"{key}: {text!r} is not a step string; write e.g. '160ep', '500it' or '2ep10it'")
    return int(m.group(1) or 0), int(m.group(2) or 0)


def to_iterations(text: str, iterations_per_epoch: int, key: str = "steps") -> int:
    """Convert a step string to an iteration count (epochs * iterations_per_epoch + iterations)."""
    ep, it = parse_steps(text, key)
    return ep * iterations_per_epoch + it


def iterations_per_epoch(num_train: int, batch_size: int) -> int:
    """The last, partial batch of an epoch counts as an iteration (as PyTorch's DataLoader does)."""
    return math.ceil(num_train / batch_size)


# --------------------------------------------------------------------------------------------------
# The sections
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    name: str
    validation_size: int = 0
    """Training examples held out (seeded) for validation/early stopping; the LTH uses 5,000."""
    split_seed: int = 0
    train_subset: int = 0
    """If > 0, train on only this many (seeded) examples of the training split. A named deviation for
    CPU-sized runs; 0 = the full split."""
    test_subset: int = 0
    """If > 0, evaluate on only this many test examples (CPU-sized runs); 0 = the official test set."""
    augment: bool = False
    """Random crop with 4-pixel zero padding + horizontal flip, per sample (CIFAR protocol)."""
    synthetic_shape: tuple[int, int, int] = (1, 28, 28)
    synthetic_train: int = 512
    synthetic_test: int = 256

    def validate(self) -> None:
        _choice("data.name", self.name, DATASETS)
        _nonneg("data.validation_size", self.validation_size)
        _nonneg("data.train_subset", self.train_subset)
        _nonneg("data.test_subset", self.test_subset)
        if len(self.synthetic_shape) != 3 or min(self.synthetic_shape) < 1:
            raise ConfigError("data.synthetic_shape: must be three positive ints [channels, height, width]")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    init: Literal["glorot_normal", "kaiming_normal"] = "kaiming_normal"
    width: int = 16
    """ResNet-20 base width (16 in the papers; 8 is a CPU-sized variant). Ignored by other models."""
    batchnorm_init: Literal["uniform", "ones"] = "uniform"
    """BN scale init: open_lth draws it from U[0,1) ('uniform'); PyTorch's default is 'ones'."""

    def validate(self) -> None:
        _choice("model.name", self.name, MODELS)
        _choice("model.init", self.init, ("glorot_normal", "kaiming_normal"))
        _choice("model.batchnorm_init", self.batchnorm_init, ("uniform", "ones"))
        if self.width < 1:
            raise ConfigError("model.width: must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Literal["sgd", "adam"]
    lr: float
    batch_size: int
    steps: str
    momentum: float = 0.0
    weight_decay: float = 0.0
    milestones: tuple[str, ...] = ()
    gamma: float = 0.1
    warmup: str = "0it"
    """Linear warmup from 0 to ``lr`` over this many steps (LTH App. I.5)."""
    eval_every: str = "1ep"
    """Evaluation cadence (validation and test loss/accuracy); the LTH evaluates every 100 iterations."""

    def validate(self) -> None:
        _choice("train.optimizer", self.optimizer, ("sgd", "adam"))
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"train.lr: {self.lr} must be a positive number")
        if self.batch_size < 1:
            raise ConfigError("train.batch_size: must be >= 1")
        for key in ("momentum", "weight_decay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}: must be >= 0")
        if not 0 < self.gamma <= 1:
            raise ConfigError("train.gamma: must be in (0, 1]")
        parse_steps(self.steps, "train.steps")
        parse_steps(self.warmup, "train.warmup")
        parse_steps(self.eval_every, "train.eval_every")
        for m in self.milestones:
            parse_steps(m, "train.milestones")


@dataclass(frozen=True)
class PruneConfig:
    strategy: Literal["layerwise", "global"]
    rates: dict[str, float]
    """Fraction of the *remaining* weights pruned per level, by layer kind (conv, shortcut, fc, output).
    Kinds not listed are never pruned. ``global`` pools every listed kind and needs one common rate."""

    def validate(self) -> None:
        _choice("prune.strategy", self.strategy, ("layerwise", "global"))
        if not self.rates:
            raise ConfigError("prune.rates: name at least one layer kind, e.g. {conv: 0.2}")
        for kind, rate in self.rates.items():
            _choice("prune.rates", kind, LAYER_KINDS)
            if not (isinstance(rate, (int, float)) and 0 < rate < 1):
                raise ConfigError(f"prune.rates.{kind}: {rate} is outside (0, 1); it is the fraction pruned per level")
        if self.strategy == "global" and len(set(self.rates.values())) > 1:
            raise ConfigError("prune.rates: global pruning pools all listed kinds, so they need one common rate")


@dataclass(frozen=True)
class ImpConfig:
    levels: int
    """Pruning levels after the dense run (level 0): 10 levels of 20 % leave 0.8**10 = 10.7 %."""
    rewind: str = "0it"
    """Rewind point k: survivors are reset to their values at step k (0 = the LTH's theta_0)."""
    rewind_optimizer: bool = False
    """False (open_lth): each level starts a fresh optimizer at step k (momentum reset). True: the
    optimizer state saved at step k is restored, masked to the survivors."""
    finetune_steps: str = "0it"
    """Length of each fine-tuning level (Renda et al. 2020): trained weights are kept and training
    continues at the end-of-schedule learning rate. '0it' = the length of one IMP level (T - k)."""
    reinit_start: Literal["rewind", "zero"] = "rewind"
    """Where the fresh weights of random reinitialization start training when k > 0. 'rewind' (open_lth's
    default, ``start_at_step_zero=False``): from step k to T, the steps of the level it ablates, at the
    learning rate of step k, so it trains k fewer steps than the networks it is compared with. 'zero': from
    step 0 to T with the full schedule (warmup included), as a network trained from initialization is.
    The two coincide at k = 0, the LTH's protocol. The default keeps the hash of every earlier run."""

    def validate(self) -> None:
        if self.levels < 0:
            raise ConfigError("imp.levels: must be >= 0")
        parse_steps(self.rewind, "imp.rewind")
        parse_steps(self.finetune_steps, "imp.finetune_steps")
        _choice("imp.reinit_start", self.reinit_start, REINIT_STARTS)


@dataclass(frozen=True)
class Seeds:
    """Separate streams, so two runs can share an initialization and differ only in SGD noise."""

    init: int = 0
    data_order: int = 0
    augmentation: int = 0


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    prune: PruneConfig
    imp: ImpConfig = field(default_factory=lambda: ImpConfig(levels=0))
    seeds: Seeds = field(default_factory=Seeds)
    name: str = "run"
    """Human-readable part of the run directory name. Not part of the hash."""
    source: str = ""
    """The paper, section and table the protocol comes from. Not part of the hash."""

    # ----------------------------------------------------------------------------------------------
    def validate(self) -> "RunConfig":
        for section in (self.data, self.model, self.train, self.prune, self.imp):
            section.validate()
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"name: {self.name!r} may only contain letters, digits, '_', '.', '-'")
        if self.data.name == "synthetic" and self.data.validation_size >= self.data.synthetic_train:
            raise ConfigError("data.validation_size: must be smaller than data.synthetic_train")
        return self

    def schedule(self, num_train: int) -> "Schedule":
        """Resolve every step string against the training-set size. Also checks the rewind point."""
        ipe = iterations_per_epoch(num_train, self.train.batch_size)
        total = to_iterations(self.train.steps, ipe, "train.steps")
        if total < 1:
            raise ConfigError("train.steps: training must last at least one iteration")
        rewind = to_iterations(self.imp.rewind, ipe, "imp.rewind")
        if rewind >= total:
            raise ConfigError(
                f"imp.rewind: step {rewind} ({self.imp.rewind}) is not before the end of training "
                f"({total} iterations = {self.train.steps}); choose a smaller rewind point"
            )
        finetune = to_iterations(self.imp.finetune_steps, ipe, "imp.finetune_steps") or (total - rewind)
        return Schedule(
            iterations_per_epoch=ipe,
            total=total,
            rewind=rewind,
            warmup=to_iterations(self.train.warmup, ipe, "train.warmup"),
            milestones=tuple(to_iterations(m, ipe, "train.milestones") for m in self.train.milestones),
            eval_every=max(1, to_iterations(self.train.eval_every, ipe, "train.eval_every")),
            finetune=finetune,
            reinit=0 if self.imp.reinit_start == "zero" else rewind,
        )

    # ----------------------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The non-default fields that define what is computed (name and source excluded)."""
        d = _non_default(self)
        d.pop("name", None)
        d.pop("source", None)
        return d

    def hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def run_name(self) -> str:
        return f"{self.name}-{self.hash()}"

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def replace(self, **sections: Any) -> "RunConfig":
        return dataclasses.replace(self, **sections)


@dataclass(frozen=True)
class Schedule:
    """All step counts of a run, in iterations."""

    iterations_per_epoch: int
    total: int
    rewind: int
    warmup: int
    milestones: tuple[int, ...]
    eval_every: int
    finetune: int
    reinit: int
    """The step random reinitialization's fresh weights start at (``imp.reinit_start``): k or 0."""

    def steps_of(self, branch: str, level: int) -> tuple[int, int]:
        """The (start, end) steps of a job: the dense network trains 0..T; IMP levels, baselines and
        SGD-noise copies train k..T, random reinitialization (and copies of it) from ``reinit`` (k or 0);
        fine-tuning level L continues the step count from T, ``finetune`` steps per level."""
        if branch == "imp" and level == 0:
            return 0, self.total
        if branch == "finetune":
            start = self.total + (level - 1) * self.finetune
            return start, start + self.finetune
        if branch in REINITIALIZED:
            return self.reinit, self.total
        return self.rewind, self.total

    def lr_at(self, step: int, lr: float, gamma: float) -> float:
        """Learning rate used by the update *from* ``step``: linear warmup from 0 (open_lth's
        ``min(1, step / warmup)``), times ``gamma`` for every milestone already reached."""
        warm = min(1.0, step / self.warmup) if self.warmup > 0 else 1.0
        return lr * warm * gamma ** sum(1 for m in self.milestones if step >= m)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def from_dict(raw: Any) -> RunConfig:
    """Build and validate a RunConfig from plain data, rejecting unknown keys and wrong types."""
    cfg = _build(RunConfig, raw, "")
    return cfg.validate()


def load(path: str | Path) -> RunConfig:
    path = Path(path)
    raw = _read_yaml(path)  # its errors name the file already
    try:
        return from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_experiment(path: str | Path, experiment: str, seed: int) -> RunConfig:
    """The run config of one experiment and seed in a workflow config (``config/*.yaml``).

    A workflow config holds ``experiments: {<id>: {run: <RunConfig without name/seeds>, ...}}``; the other
    keys of an experiment (seeds, baselines, analyses) belong to the workflow. The experiment id becomes
    the run name, and one integer seed sets all three seed streams."""
    raw = _read_yaml(Path(path))
    experiments = raw.get("experiments") if isinstance(raw, dict) else None
    if not isinstance(experiments, dict) or experiment not in experiments:
        known = ", ".join(sorted(experiments)) if isinstance(experiments, dict) else "none"
        raise ConfigError(f"{path}: experiments.{experiment}: no such experiment (known: {known})")
    seeds = experiments[experiment].get("seeds") if isinstance(experiments[experiment], dict) else None
    if isinstance(seeds, list) and seed not in seeds:
        # Allowed (another seed of the same protocol is a legitimate extra trial), but the workflow and its
        # report only know the listed seeds: say so rather than let the user believe the run counts there.
        log.warning("%s: seed %d is not one of experiments.%s.seeds %s; the run is trained, but the workflow and "
                    "its report count only the listed seeds", path, seed, experiment, seeds)
    return experiment_run(experiments[experiment], experiment, seed, str(path))


def experiment_run(spec: Any, experiment: str, seed: int, where: str = "config") -> RunConfig:
    if not isinstance(spec, dict) or not isinstance(spec.get("run"), dict):
        raise ConfigError(f"{where}: experiments.{experiment}.run: required mapping is missing")
    run = dict(spec["run"])
    for key in ("name", "seeds"):
        if key in run:
            raise ConfigError(f"{where}: experiments.{experiment}.run.{key}: set by the workflow (experiment id, seed list)")
    run["name"] = experiment
    run["seeds"] = {"init": seed, "data_order": seed, "augmentation": seed}
    if "source" in spec and "source" not in run:  # the experiment's citation travels with its runs
        run["source"] = str(spec["source"])
    try:
        return from_dict(run)
    except ConfigError as e:
        raise ConfigError(f"{where}: experiments.{experiment}.run.{e}") from None


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None


RESOLVED_KEYS = ("hash", "schedule")
"""What a run directory's config.yaml adds to the config it was asked for: the config's hash and its
schedule resolved in iterations (``Schedule``), so that readers (the report, the audit) take k, T and the
milestones from the run instead of re-deriving them; loading ignores them."""


def dump(cfg: RunConfig, schedule: Schedule | None = None) -> str:
    """The config.yaml of a run: the config, its hash and, given, its resolved schedule."""
    resolved = ({"schedule": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(schedule).items()}}
                if schedule is not None else {})
    return yaml.safe_dump({**cfg.to_dict(), "hash": cfg.hash(), **resolved}, sort_keys=False)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields) - set(RESOLVED_KEYS if not prefix else ()))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required key is missing")
            continue
        kwargs[name] = _coerce(hints[name], raw[name], key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin is Literal:
        return _coerce(type(typing.get_args(tp)[0]), value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0]
        return tuple(_coerce(item, v, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp)
        return {_coerce(kt, k, key): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp} at {key}")  # a programming error, not a user error


def _non_default(obj: Any) -> Any:
    if not dataclasses.is_dataclass(obj):
        return _plain(obj)
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        if f.default_factory is not dataclasses.MISSING and value == f.default_factory():
            continue
        out[f.name] = _non_default(value)
    return out


def _plain(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key}: unknown value {value!r}; choose one of {', '.join(options)}")


def _nonneg(key: str, value: int) -> None:
    if value < 0:
        raise ConfigError(f"{key}: must be >= 0")
