"""Per-job overhead: where the wall time of one training job goes, besides the training loop.

Issue 13 ("Fewer, fuller jobs") proposes packing many runs into one process. Whether that pays depends
on the fraction of a job that is not training: process start, imports, config and data loading, device
initialisation, model build, evaluations, checkpoint writes and the final save. This script measures
that breakdown for four jobs, each level 0 (the dense run) of an experiment, 1 torch thread:

- ``quick LeNet``: config/quick.yaml ``lth_lenet`` (Fashion-MNIST), run to the end;
- ``quick ResNet-20``: config/quick.yaml ``stabilized_resnet20_k0`` (Fashion-MNIST), run to the end;
- ``paper LeNet``: config/config.yaml ``lth_lenet``, with Fashion-MNIST in place of MNIST (not on this
  machine; same shapes and split sizes, so the same cost);
- ``paper ResNet-20``: config/config.yaml ``stabilized_resnet20_k0``, with synthetic uint8 CIFAR-10-shaped
  images written in the official pickle format (``throughput.write_synthetic_cifar``) and read with
  ``--no-verify``; pixel values do not change the cost of dense kernels.

The paper-scale jobs run only a *slice* of their steps (``--paper-steps``): per-step loop time, time per
evaluation point and per checkpoint write are measured on the slice and extrapolated to the full
schedule (evaluation points from the config's ``eval_every``; periodic checkpoints every
``Runtime.checkpoint_seconds`` of wall time); one-off costs (start, imports, data, build, final
evaluation and save) are measured as they are. The output says which figures are extrapolated.

Every job runs in a fresh ``python`` subprocess through the real CLI (``cli.main(["imp", ...])``), so
interpreter start and imports are real. Phases are timed from outside the package, by wrapping the
functions a job calls (``config.load_experiment``, ``Runtime.apply``, ``data.load``, ``models.build``,
``train.prepare``, ``train.make_optimizer``, ``train._loop``, ``train.evaluate``, ``checkpoints.save``, ``train._finish``, ...):
each phase is its function's time minus that of the wrapped functions it calls, so phases add up.
Process start is the child's first timestamp minus the parent's launch time; exit is the parent's
time after ``wait`` minus the child's last timestamp.

Data loading is measured three ways on the quick LeNet job: without prepared datasets (the sources
decoded and MD5-checked, as every job did before them), cold (decoded, checked and the prepared file
written) and warm (the prepared file read). The other jobs run warm, the steady state of a workflow.
Prepared files go to a temporary $TICKETBENCH_CACHE, never to the user's cache.

Run: ``.venv/bin/python bench/overhead.py [--jobs JOB ...] [--repeats R] [--paper-steps L R] [--quick]``. Writes
``bench/out/overhead.json``.
"""

from __future__ import annotations

import time

T0 = time.time()  # the child's first timestamp: before any import beyond time

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out" / "overhead.json"
THREADS = 1

# name -> (config file, experiment, data substitution, full run or paper slice)
JOBS = {
    "quick LeNet": ("config/quick.yaml", "lth_lenet", None, False),
    "quick ResNet-20": ("config/quick.yaml", "stabilized_resnet20_k0", None, False),
    "paper LeNet": ("config/config.yaml", "lth_lenet", "fashion_mnist", True),
    "paper ResNet-20": ("config/config.yaml", "stabilized_resnet20_k0", "synthetic_cifar10", True),
}
DATA_MODES = ("no prepared file", "cold", "warm")

# Phases in the order of a job; the labels of the table and JSON.
PHASES = ["process start", "import torch", "import ticketbench", "CLI parser (its lazy imports)", "config load", "device init", "data.load",
          "model build", "prepare", "optimizer build", "training loop", "evaluations", "checkpoint writes", "final evaluation",
          "final save + summary", "other (run dir, locks, logging)", "process exit"]
EXTRAPOLATED = {"training loop", "evaluations", "checkpoint writes"}  # the phases that grow with the schedule


# --------------------------------------------------------------------------------------------------
# Child: one job, timed from the inside of a fresh interpreter
# --------------------------------------------------------------------------------------------------


class Phases:
    """Exclusive wall time per label: a wrapped call's time minus that of the wrapped calls inside it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list] = []  # [label, seconds of nested wrapped calls]

    def wrap(self, owner: object, attr: str, label) -> None:
        """Replace ``owner.attr`` by a timed version; ``label`` is a phase name, or a function of the
        enclosing phase and the call's arguments that returns one."""
        setattr(owner, attr, self.timed(getattr(owner, attr), label))

    def timed(self, fn, label):
        def timed(*args, **kwargs):
            name = label(self._parent(), args, kwargs) if callable(label) else label
            start = time.perf_counter()
            self._stack.append([name, 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                _, nested = self._stack.pop()
                self.add(name, elapsed - nested)
                if self._stack:
                    self._stack[-1][1] += elapsed

        return timed

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def _parent(self) -> str | None:
        return self._stack[-1][0] if self._stack else None


def child(spec: dict) -> None:
    t_import = time.perf_counter()
    import torch

    t_torch = time.perf_counter()
    import dataclasses

    from ticketbench import checkpoints, cli, config, data, imp, models, runtime, train

    t_ours = time.perf_counter()
    ph = Phases()
    ph.add("import torch", t_torch - t_import)
    ph.add("import ticketbench", t_ours - t_torch)

    substitute = spec["substitute"]

    real_load_experiment, real_fit = config.load_experiment, train.fit

    def load_experiment(path, experiment, seed):
        cfg = real_load_experiment(path, experiment, seed)
        if substitute:  # the paper's dataset is not on this machine: same shapes, same cost
            name = "cifar10" if substitute == "synthetic_cifar10" else substitute
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, name=name))
        return cfg

    seen: dict = {"checkpoint_seconds_default": runtime.Runtime.checkpoint_seconds}

    def fit(model, ds, cfg, job, rt, eval_every):
        seen.update(start=job.start, end=job.end, eval_every=eval_every, checkpoint_seconds=rt.checkpoint_seconds)
        if spec["slice_steps"]:
            job = dataclasses.replace(job, end=min(job.end, job.start + spec["slice_steps"]))
        seen["ran_to"] = job.end
        return real_fit(model, ds, cfg, job, rt, eval_every)

    ckpt_label = {"checkpoint": "checkpoint writes", "rewind": "checkpoint writes", "mask": "checkpoint writes",
                  "model": "final save + summary"}
    config.load_experiment = load_experiment
    ph.wrap(config, "load_experiment", "config load")
    imp.fit = fit
    ph.wrap(cli, "build_parser", "CLI parser (its lazy imports)")
    ph.wrap(runtime.Runtime, "apply", "device init")
    ph.wrap(data, "load", "data.load")
    if spec["data_mode"] == "no prepared file":
        data.prepared = data.read_official
    ph.wrap(models, "build", "model build")
    ph.wrap(train, "prepare", "prepare")
    # The first optimizer of a process imports torch._dynamo (torch.optim.Optimizer.__init__): an import cost.
    ph.wrap(train, "make_optimizer", "optimizer build")
    ph.wrap(train, "_loop", "training loop")
    ph.wrap(train, "evaluate", lambda parent, a, k: "final evaluation" if parent == "final save + summary" else "evaluations")
    ph.wrap(checkpoints, "save", lambda parent, a, k: ckpt_label[k["kind"]])
    ph.wrap(train, "_finish", "final save + summary")
    for owner in (train, imp):
        ph.wrap(owner, "atomic_write", lambda parent, a, k: parent if parent == "final save + summary" else "other (run dir, locks, logging)")

    code = ph.timed(cli.main, "other (run dir, locks, logging)")(spec["argv"])  # what no wrapped phase covers
    out = {"code": code, "t0": T0, "t_end": time.time(), "seconds": ph.seconds, "calls": ph.calls,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "schedule": seen}
    Path(spec["result"]).write_text(json.dumps(out))


# --------------------------------------------------------------------------------------------------
# Parent: launch the jobs, extrapolate the slices, print the table
# --------------------------------------------------------------------------------------------------


def evaluation_points(start: int, end: int, every: int) -> int:
    """The rows of metrics.csv a job writes: every multiple of eval_every, plus its first and last step."""
    return len(set(range(-(-start // every) * every, end + 1, every)) | {start, end})


def run_job(name: str, data_mode: str, tmp: Path, cache: Path, paper_steps: dict[str, int], cifar_root: Path) -> dict:
    config_file, experiment, substitute, sliced = JOBS[name]
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=tmp))
    result = run_dir / "timings.json"
    argv = ["imp", config_file, "--experiment", experiment, "--seed", "0", "--level", "0", "--run-dir", str(run_dir),
            "--threads", str(THREADS), "--no-progress"]
    if substitute == "synthetic_cifar10":
        argv += ["--data-root", str(cifar_root), "--no-verify"]
    if sliced:
        argv += ["--checkpoint-seconds", "1"]  # a few periodic writes inside the slice, to time one
    spec = {"argv": argv, "substitute": substitute, "slice_steps": paper_steps[name] if sliced else 0,
            "data_mode": data_mode, "result": str(result)}
    env = {**os.environ, "TICKETBENCH_CACHE": str(cache), "OMP_NUM_THREADS": str(THREADS),
           "MKL_NUM_THREADS": str(THREADS), "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    load_before = os.getloadavg()[0]
    launched = time.time()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    ended = time.time()
    if proc.returncode != 0 or not result.is_file():
        raise SystemExit(f"overhead: {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    r = json.loads(result.read_text())
    seconds = {p: r["seconds"].get(p, 0.0) for p in PHASES}
    seconds["process start"] = r["t0"] - launched
    seconds["process exit"] = ended - r["t_end"]
    measured = dict(seconds)
    s = r["schedule"]
    extrapolated = sliced and s["ran_to"] < s["end"]
    if extrapolated:
        steps_run, steps_full = s["ran_to"] - s["start"], s["end"] - s["start"]
        points_run = evaluation_points(s["start"], s["ran_to"], s["eval_every"])
        points_full = evaluation_points(s["start"], s["end"], s["eval_every"])
        seconds["training loop"] *= steps_full / steps_run
        seconds["evaluations"] *= points_full / points_run
        writes = r["calls"].get("checkpoint writes", 0)
        per_write = measured["checkpoint writes"] / writes if writes else 0.0
        # at the interval the workflow's jobs use (the CLI default; the slice ran with 1 s to time one)
        periodic = int((seconds["training loop"] + seconds["evaluations"]) // s["checkpoint_seconds_default"])
        one_off = 2  # the mask and the rewind snapshot of level 0
        seconds["checkpoint writes"] = per_write * (one_off + periodic)
    total = sum(seconds.values())
    return {"job": name, "data_mode": data_mode, "config": config_file, "experiment": experiment,
            "data": {"fashion_mnist": "Fashion-MNIST in place of MNIST", "synthetic_cifar10":
                     "synthetic CIFAR-10-shaped images (--no-verify)"}.get(substitute, "as configured"),
            "extrapolated": bool(extrapolated), "schedule": s, "seconds": seconds, "measured_seconds": measured,
            "calls": r["calls"], "total_seconds": total,
            "not_training_fraction": 1 - seconds["training loop"] / total, "torch": r["torch"], "threads": r["threads"],
            "load_average_before": load_before, "load_average_after": os.getloadavg()[0]}


def median_row(rows: list[dict]) -> dict:
    first = dict(rows[0])
    first["seconds"] = {p: statistics.median(r["seconds"][p] for r in rows) for p in PHASES}
    first["total_seconds"] = statistics.median(r["total_seconds"] for r in rows)
    first["not_training_fraction"] = statistics.median(r["not_training_fraction"] for r in rows)
    first["repeats"] = len(rows)
    return first


def print_table(rows: list[dict]) -> None:
    head = ["phase"] + [f"{r['job']}{' (' + r['data_mode'] + ')' if r['data_mode'] != 'warm' else ''}" for r in rows]
    print("\n" + " | ".join(head))
    for p in PHASES:
        print(" | ".join([p] + [_fmt(r["seconds"][p]) + ("*" if r["extrapolated"] and p in EXTRAPOLATED else "")
                                for r in rows]))
    print(" | ".join(["total"] + [_fmt(r["total_seconds"]) for r in rows]))
    print(" | ".join(["not the training loop"] + [f"{100 * r['not_training_fraction']:.0f} %" for r in rows]))
    print("* extrapolated from a slice of the schedule to the full one")


def _fmt(s: float) -> str:
    return f"{s:,.0f} s" if s >= 100 else f"{s:.2f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=1, help="runs per job; the median is reported (default 1)")
    p.add_argument("--paper-steps", type=int, nargs=2, default=[500, 20], metavar=("LENET", "RESNET20"),
                   help="steps of the paper-scale slices (default 500 20)")
    p.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS), metavar="JOB",
                   help=f"jobs to measure (default all: {', '.join(JOBS)})")
    p.add_argument("--quick", action="store_true", help="one run per job, short slices: a smoke test")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.quick:
        args.repeats, args.paper_steps = 1, [100, 2]
    paper_steps = {"paper LeNet": args.paper_steps[0], "paper ResNet-20": args.paper_steps[1]}

    sys.path[:0] = [str(REPO / "src"), str(BENCH)]
    from throughput import _cpu_name, write_synthetic_cifar  # noqa: E402  (one home for the synthetic CIFAR files)

    import torch

    from ticketbench import data

    os.chdir(REPO)  # the jobs' default data root is ./data, as in the workflow
    print(f"torch {torch.__version__}, {THREADS} thread per job, device cpu ({_cpu_name()}, {os.cpu_count()} cores), "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    rows, raw = [], []
    with tempfile.TemporaryDirectory(prefix="ticketbench-overhead-") as t:
        tmp = Path(t)
        cifar = tmp / "data"
        write_synthetic_cifar(cifar / "cifar10")
        warm = Path(tempfile.mkdtemp(prefix="cache-", dir=tmp))  # prepared once, as by a workflow's first job
        os.environ["TICKETBENCH_CACHE"] = str(warm)
        data.prepared("fashion_mnist", None, verify=True)
        data.prepared("cifar10", cifar, verify=False)
        plan = [(j, m) for j in args.jobs for m in (DATA_MODES if j == "quick LeNet" else ("warm",))]
        for name, mode in plan:
            runs = []
            for i in range(args.repeats):
                cache = Path(tempfile.mkdtemp(prefix="cache-", dir=tmp)) if mode == "cold" else warm
                runs.append(run_job(name, mode, tmp, cache, paper_steps, cifar))
                print(f"{name} ({mode}) run {i + 1}: {runs[-1]['total_seconds']:.2f} s, data.load "
                      f"{runs[-1]['seconds']['data.load']:.2f} s, load average {runs[-1]['load_average_after']:.2f}", flush=True)
            raw += runs
            rows.append(median_row(runs))
    print_table(rows)
    meta = {"torch": torch.__version__, "threads": THREADS, "cpu": _cpu_name(), "cores": os.cpu_count(),
            "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "repeats": args.repeats,
            "paper_steps": paper_steps, "phases": PHASES}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary": rows, "runs": raw}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
