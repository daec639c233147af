"""The steps of the device check (bench/device_check.sh runs each one in its own process, under its own time
budget, and skips it, saying why, when something it needs is missing; read that script's header first).

    python bench/device_check.py STEP --out-dir O --work W [--cpu-dry-run]

Each step writes O/steps/STEP.json: ``status`` (ok or failed), ``checks`` (named booleans: ok means all are
true), its figures, and a ``headline`` of the few figures the summary lifts to the top. The CLI jobs a step
starts write their logs to O/logs/STEP/. Run directories and other large files go to W, which the shell
script deletes after copying the small files (summaries, metrics, tables) to O/jobs/.

Everything the package does is reached the way a user reaches it: training, packs, evaluation and the
analyses through ``python -m ticketbench`` with PYTHONPATH=src (no installed package, no console script);
the measurements (synchronisations, throughput, precision) call the production loops ``train.fit`` and
``train.fit_packed`` in process under ``Runtime.apply()``, the settings every job runs with.

Only the standard library is imported at module level: the preflight and the summary run where torch does not.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODULES = ("torch", "torchvision", "numpy", "pandas", "yaml", "tqdm", "matplotlib", "seaborn", "PIL", "jsonschema",
           "snakemake", "dvc", "pytest")
"""What the preflight reports as importable: the package's own needs, then the workflow's and the tests'."""

# Sizes per mode. The GPU sizes keep every step well inside its budget on an H100 (bench/device_check.sh lists
# the budgets); the dry run's are the smallest that still run every code path on a CPU.
SIZES: dict[str, dict[str, Any]] = {
    "gpu": {
        "lenet": {"train": 10000, "val": 1000, "test": 2000, "steps": 3000, "eval": 500},
        "resnet": {"shape": [3, 32, 32], "train": 10000, "val": 1000, "test": 2000, "width": 16, "batch": 128,
                   "steps": 600, "eval": 150, "rewind": 75},
        "hessian": ["--top-k", "3", "--max-hvps", "20", "--tol", "1e-2", "--trace-samples", "2", "--subset-fraction", "0.1"],
        "interpolation": ["--points", "5", "--train-examples", "1000"],
        "syncs": {"steps": (20, 60), "lenet_pack": 8, "resnet_pack": 4},
        "throughput": {"lenet": {"steps": 400, "warmup": 100, "packs": [8, 32]},
                       "resnet": {"steps": 80, "warmup": 20, "packs": [4, 8, 16]}, "precisions": ["fp32", "tf32"]},
        "precision": {"steps": 400, "batch": 256},
    },
    "dry": {
        "lenet": {"train": 2000, "val": 200, "test": 500, "steps": 400, "eval": 100},
        "resnet": {"shape": [3, 16, 16], "train": 512, "val": 64, "test": 128, "width": 8, "batch": 32,
                   "steps": 40, "eval": 10, "rewind": 5},
        "hessian": ["--top-k", "2", "--max-hvps", "6", "--tol", "1e-1", "--trace-samples", "1", "--subset-fraction",
                    "0.1", "--batch-size", "32"],
        "interpolation": ["--points", "3", "--train-examples", "64"],
        "syncs": {"steps": (2, 4), "lenet_pack": 2, "resnet_pack": 2},
        "throughput": {"lenet": {"steps": 20, "warmup": 5, "packs": [2, 4]},
                       "resnet": {"steps": 6, "warmup": 2, "packs": [2]}, "precisions": ["fp32"]},
        "precision": {"steps": 6, "batch": 16},
    },
}
PACK = 8
"""Members of the CLI pack (issue 18: a pack of 8 with evaluation)."""


class StepFailed(Exception):
    """A step could not produce its figures; the message says what went wrong."""


class Context:
    """Where a step reads and writes, and how big it runs."""

    def __init__(self, step: str, out: Path, work: Path, dry: bool) -> None:
        self.step, self.out, self.work, self.dry = step, out, work, dry
        self.device = "cpu" if dry else "cuda"
        self.sizes = SIZES["dry" if dry else "gpu"]
        self.threads = 1 if dry else 0  # the dry run shares two cores; a GPU node's torch takes its default
        (out / "steps").mkdir(parents=True, exist_ok=True)

    def log(self, name: str) -> Path:
        path = self.out / "logs" / self.step / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def facts(self) -> dict[str, str]:
        """What the preflight found (steps/facts.env), e.g. the dataset folders."""
        path = self.out / "steps" / "facts.env"
        found = {}
        for line in path.read_text().splitlines() if path.is_file() else []:
            key, _, value = line.partition("=")
            found[key] = shlex.split(value)[0] if value else ""
        return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--cpu-dry-run", action="store_true")
    p.add_argument("--summary", type=Path, help="summary step: the JSON to write")
    p.add_argument("--seconds", type=float, default=0.0, help="summary step: the run's wall time so far")
    p.add_argument("--budget", type=float, default=0.0, help="summary step: the run's time budget")
    args = p.parse_args()
    ctx = Context(args.step, args.out_dir, args.work, args.cpu_dry_run)
    result: dict[str, Any]
    try:
        result = STEPS[args.step](ctx, args) or {}
        checks = result.get("checks", {})
        result = {"status": "ok" if all(checks.values()) else "failed", **result}
        if checks and not all(checks.values()):
            result["failed_checks"] = [k for k, v in checks.items() if not v]
    except StepFailed as e:
        result = {"status": "failed", "error": str(e)}
    except Exception as e:  # a step reports what broke, in its JSON and its log, and the next step still runs
        traceback.print_exc()
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc().splitlines()[-12:]}
    if args.step == "summary":
        return 0 if result["status"] == "ok" else 1
    (ctx.out / "steps" / f"{args.step}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"device_check: {args.step}: {result['status']}"
          + (f" ({', '.join(result['failed_checks'])})" if result.get("failed_checks") else "")
          + (f" ({result['error']})" if result.get("error") else ""), flush=True)
    return 0 if result["status"] == "ok" else 1


# --------------------------------------------------------------------------------------------------
# preflight: what the machine has, before anything that could hang or take long
# --------------------------------------------------------------------------------------------------

TORCH_FACTS = r"""
import json, sys
import torch
facts = {"torch": torch.__version__, "cuda_build": torch.version.cuda,
         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
         "cuda_available": torch.cuda.is_available(), "devices": []}
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        facts["devices"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                 "memory_gib": round(p.total_memory / 2**30, 1), "multiprocessors": p.multi_processor_count})
print(json.dumps(facts))
"""

PACKAGE_FACTS = r"""
import importlib, json, pkgutil, sys, traceback
import ticketbench
CORE = ("ticketbench.cli", "ticketbench.train", "ticketbench.imp", "ticketbench.pack", "ticketbench.data",
        "ticketbench.models", "ticketbench.analysis.commands", "ticketbench.analysis.hessian",
        "ticketbench.analysis.interpolation", "ticketbench.gpu_slots")
failed = {}
names = ["ticketbench"] + [m.name for m in pkgutil.walk_packages(ticketbench.__path__, "ticketbench.")
                           if m.name != "ticketbench.__main__"]
for name in names:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = traceback.format_exception_only(type(e), e)[-1].strip()
from ticketbench import data, environment
datasets = {}
for name in ("mnist", "cifar10"):
    try:
        datasets[name] = str(data.locate(name, None))
    except Exception:
        datasets[name] = None
facts = {"version": ticketbench.__version__, "modules": len(names), "import_failures": failed, "datasets": datasets,
         "core_failures": {m: e for m, e in failed.items() if m in CORE}}
if sys.argv[1] == "cuda":
    facts["cuda_problem"] = environment.cuda_problem()
print(json.dumps(facts))
"""


def preflight(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """The machine as found: python, nvidia-smi, what is importable, torch's build and devices, and whether every
    module of the package imports under this torch. Writes preflight.json at once (merging what the shell wrote
    first) and steps/facts.env, which the shell reads to skip the steps whose needs are missing."""
    path = ctx.out / "preflight.json"
    found: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    found["python"] = {"executable": sys.executable, "version": platform.python_version()}
    found["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "memory_gib": _memory_gib()}
    found["nvidia_smi"] = _nvidia_smi()
    found["importable"] = {m: _importable(m) for m in MODULES}
    facts = {"have_torch": 0, "have_package": 0, "have_snakemake": int(found["importable"]["snakemake"]["found"]),
             "have_jsonschema": int(found["importable"]["jsonschema"]["found"])}
    why = {"why_snakemake": f"snakemake is not importable by {sys.executable} (the workflow step needs it)",
           "why_jsonschema": f"jsonschema is not importable by {sys.executable} (the workflow plan needs it)"}

    def record() -> None:  # after each part, so that a preflight cut short by its budget still says what it found
        known = {**facts, **{k: v for k, v in why.items() if not facts.get(k.replace("why_", "have_"))}}
        found["facts"] = known
        path.write_text(json.dumps(found, indent=2) + "\n")
        (ctx.out / "steps" / "facts.env").write_text("".join(f"{k}={shlex.quote(str(v))}\n" for k, v in known.items()))

    record()  # what is known so far, before importing torch
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    torch_facts = _run_json([sys.executable, "-c", TORCH_FACTS], env, timeout=120)
    found["torch"] = torch_facts
    if "error" in torch_facts:
        why["why_torch"] = f"torch does not import under {sys.executable}: {torch_facts['error']}"
        why["why_package"] = f"the package needs torch, which does not import under {sys.executable}"
    else:
        facts["have_torch"] = 1
        record()
        pkg = _run_json([sys.executable, "-c", PACKAGE_FACTS, ctx.device], env, timeout=120)
        found["package"] = pkg
        # Modules the device check runs must import; a failure elsewhere (say, the report's plotting) is recorded
        # in preflight.json and stops nothing here.
        if "error" in pkg or pkg.get("core_failures"):
            why["why_package"] = (f"ticketbench (PYTHONPATH=src) does not import under torch {torch_facts['torch']}: "
                                  f"{pkg.get('error') or pkg['core_failures']}")
        else:
            facts["have_package"] = 1
            for name, folder in pkg["datasets"].items():
                facts[f"dataset_{name}"] = folder or ""
    record()
    gpu = (torch_facts.get("devices") or [{}])[0].get("name")
    return {"checks": {"torch_imports": bool(facts["have_torch"]), "package_imports": bool(facts["have_package"])},
            "headline": {"python": platform.python_version(), "torch": torch_facts.get("torch"),
                         "cuda": torch_facts.get("cuda_build"), "cudnn": torch_facts.get("cudnn"), "gpu": gpu,
                         "driver": found["nvidia_smi"].get("driver")}}


def _importable(module: str) -> dict[str, Any]:
    spec = importlib.util.find_spec(module)
    version = None
    if spec is not None:
        dist = {"yaml": "pyyaml", "PIL": "pillow"}.get(module, module)
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"found": spec is not None, "version": version}


def _nvidia_smi() -> dict[str, Any]:
    if not shutil.which("nvidia-smi"):
        return {"found": False}
    query = "index,name,driver_version,memory.total,memory.used,compute_cap,temperature.gpu,power.draw,clocks.sm"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"found": True, "error": str(e)}
    gpus = [dict(zip(query.split(","), (v.strip() for v in line.split(",")))) for line in out.stdout.splitlines() if line]
    cuda = next((line.split("CUDA Version:")[1].split()[0] for line in head.splitlines() if "CUDA Version:" in line), None)
    return {"found": True, "rc": out.returncode, "driver": gpus[0]["driver_version"] if gpus else None,
            "driver_cuda": cuda, "gpus": gpus, "stderr": out.stderr.strip()[-500:]}


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _run_json(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """The JSON a helper process prints last, or {"error": its last line of output}."""
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {"error": tail, "rc": proc.returncode}


# --------------------------------------------------------------------------------------------------
# probe: the device with torch alone, before anything slow (a driver or library problem shows here, not as a
# failure deep inside a training job)
# --------------------------------------------------------------------------------------------------


def probe(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    cuda = ctx.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.path.insert(0, str(REPO / "src"))
        from ticketbench.environment import cuda_problem

        raise StepFailed(f"no usable CUDA device: {cuda_problem()}")
    t0 = time.perf_counter()
    dev = torch.device(ctx.device)
    torch.zeros(1, device=dev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    out: dict[str, Any] = {"device": str(dev), "init_seconds": round(time.perf_counter() - t0, 3),
                           "torch_defaults": _precision_settings(torch)}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        out.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_free_gib=round(free / 2**30, 1),
                   memory_total_gib=round(total / 2**30, 1))
    n = 256 if ctx.dry else 4096
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, generator=g)
    b = torch.randn(n, n, device=dev, generator=g)
    ref = a.double() @ b.double()
    matmul = {}
    for precision in (("fp32", "tf32") if cuda else ("fp32",)):
        _set_precision(torch, precision)
        c = a @ b
        err = float((c.double() - ref).abs().max() / ref.abs().max())
        seconds = _timed(lambda: a @ b, 10, cuda)
        matmul[precision] = {"max_relative_error": err, "tflops": float(f"{2 * n ** 3 / seconds / 1e12:.3g}")}
    _set_precision(torch, "fp32")
    out["matmul"] = matmul
    # A convolution, batch norm and their backward in the conv nets' layout (cuDNN autotuned, as jobs run).
    torch.backends.cudnn.benchmark = True
    x = torch.randn(8 if ctx.dry else 64, 16, 32, 32, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3, device=dev, generator=g, requires_grad=True)

    def conv_step() -> torch.Tensor:
        y = F.batch_norm(F.conv2d(x, w, padding=1), None, None, training=True)
        y.square().mean().backward()
        return y

    y = conv_step()
    out["conv_bn"] = {"finite": bool(torch.isfinite(y).all() and torch.isfinite(w.grad).all()),
                      "ms_per_step": round(_timed(conv_step, 5 if ctx.dry else 20, cuda) * 1000, 3)}
    checks = {"matmul_fp32_accurate": matmul["fp32"]["max_relative_error"] < 1e-5, "conv_bn_finite": out["conv_bn"]["finite"]}
    if cuda:
        checks["tf32_error_within_tf32_rounding"] = matmul["tf32"]["max_relative_error"] < 1e-2
        # The control of the synchronisation counter the syncs step relies on: one .item() must count once.
        count, _ = _count_syncs(torch, lambda: float(a[0, 0]))
        out["sync_counter_control"] = count
        checks["sync_counter_counts"] = count >= 1
        out["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out["checks"] = checks
    out["headline"] = {"init_seconds": out["init_seconds"], "matmul_tflops": {k: v["tflops"] for k, v in matmul.items()},
                       "tf32_matmul_relative_error": matmul.get("tf32", {}).get("max_relative_error")}
    return out


def _precision_settings(torch: Any) -> dict[str, Any]:
    """torch's own float32 settings as found (before Runtime.apply sets them): they differ between versions."""
    found: dict[str, Any] = {"cudnn_benchmark": torch.backends.cudnn.benchmark}
    for name, obj in (("matmul", torch.backends.cuda.matmul), ("cudnn_conv", getattr(torch.backends.cudnn, "conv", None))):
        if obj is not None and hasattr(obj, "fp32_precision"):
            found[f"{name}_fp32_precision"] = obj.fp32_precision
    if not any(k.endswith("fp32_precision") for k in found):
        found.update(matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32, cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return found


def _set_precision(torch: Any, precision: str) -> None:
    """As runtime.set_float32_precision does it, without the package: the probe depends on torch alone."""
    tf32 = precision == "tf32"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "tf32" if tf32 else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _timed(fn: Callable[[], Any], repeats: int, cuda: bool) -> float:
    """Seconds per call of ``fn``, after one warm-up call: CUDA events on the GPU, the wall clock on the CPU."""
    import torch

    fn()
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000 / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def _count_syncs(torch: Any, fn: Callable[[], Any]) -> tuple[int, Counter]:
    """Synchronising CUDA calls made by ``fn`` (torch.cuda.set_sync_debug_mode("warn") turns each into a warning)
    and where they were made from (file:line of the Python frame that called the op)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return len(syncs), Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)


# --------------------------------------------------------------------------------------------------
# The CLI jobs: a LeNet and a ResNet-20 with evaluation, kill and resume; a pack of 8; the analyses
# --------------------------------------------------------------------------------------------------


def experiments_file(ctx: Context) -> Path:
    """The workflow-style config the CLI jobs read (ticketbench dense/imp/pack --experiment): a LeNet-300-100 and
    a ResNet-20 with the papers' optimizers, on the real dataset where the preflight found it (GPU mode), else
    on synthetic data of the same shapes (what costs time on a GPU is the shape, not the pixel values)."""
    path = ctx.work / "device_check.yaml"
    if path.is_file():
        return path
    s, facts = ctx.sizes, ctx.facts()
    le, rn = s["lenet"], s["resnet"]
    lenet_data = {"name": "synthetic", "validation_size": le["val"], "synthetic_train": le["train"] + le["val"],
                  "synthetic_test": le["test"], "synthetic_shape": [1, 28, 28]}
    resnet_data = {"name": "synthetic", "validation_size": rn["val"], "synthetic_train": rn["train"] + rn["val"],
                   "synthetic_test": rn["test"], "synthetic_shape": rn["shape"], "augment": True}
    if not ctx.dry and facts.get("dataset_mnist"):
        lenet_data = {"name": "mnist", "validation_size": 5000, "test_subset": le["test"]}
    if not ctx.dry and facts.get("dataset_cifar10"):
        resnet_data = {"name": "cifar10", "validation_size": 5000, "test_subset": rn["test"], "augment": True}
    config = {"name": "device_check", "experiments": {
        "lenet": {"family": "lth", "source": "device check: Frankle & Carbin 2019's LeNet-300-100 protocol, shortened",
                  "seeds": [0], "run": {
                      "data": lenet_data, "model": {"name": "lenet_300_100", "init": "glorot_normal"},
                      "train": {"optimizer": "adam", "lr": 0.0012, "batch_size": 60, "steps": f"{le['steps']}it",
                                "eval_every": f"{le['eval']}it"},
                      "prune": {"strategy": "layerwise", "rates": {"fc": 0.2, "output": 0.1}},
                      "imp": {"levels": 1, "rewind": "0it"}}},
        "resnet20": {"family": "stabilized", "source": "device check: open_lth's cifar_resnet_20 protocol, shortened",
                     "seeds": list(range(PACK)), "run": {
                         "data": resnet_data, "model": {"name": "resnet20", "init": "kaiming_normal", "width": rn["width"]},
                         "train": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0001,
                                   "batch_size": rn["batch"], "steps": f"{rn['steps']}it", "eval_every": f"{rn['eval']}it"},
                         "prune": {"strategy": "global", "rates": {"conv": 0.2}},
                         "imp": {"levels": 1, "rewind": f"{rn['rewind']}it"}}}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    return path


class Cli:
    """``python -m ticketbench`` as a user runs it: from the working tree (PYTHONPATH=src), each job's output in its
    own log under O/logs/STEP/."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1",
                    "TICKETBENCH_CACHE": str(ctx.work / "cache")}
        self.runtime = ["--device", ctx.device, "--no-progress", *(["--threads", str(ctx.threads)] if ctx.threads else [])]
        self.walls: dict[str, float] = {}

    def start(self, name: str, *args: Any) -> subprocess.Popen:
        log = self.ctx.log(name).open("w")
        log.write(f"$ python -m ticketbench {' '.join(map(str, args))}\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "ticketbench", *map(str, args)], cwd=REPO, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        proc.name, proc.t0, proc.logfile = name, time.monotonic(), log  # type: ignore[attr-defined]
        return proc

    def wait(self, proc: subprocess.Popen, timeout: float = 600) -> int:
        rc = proc.wait(timeout=timeout)
        self.walls[proc.name] = round(time.monotonic() - proc.t0, 2)  # type: ignore[attr-defined]
        proc.logfile.close()  # type: ignore[attr-defined]
        return rc

    def run(self, name: str, *args: Any) -> int:
        return self.wait(self.start(name, *args))

    def text(self, name: str) -> str:
        return self.ctx.log(name).read_text()


def metrics_steps(job: Path) -> list[int]:
    path = job / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [int(float(row["step"])) for row in csv.DictReader(f)]


def sigterm_after_evaluation(cli: Cli, proc: subprocess.Popen, job: Path, step: int) -> dict[str, Any]:
    """SIGTERM ``proc`` as soon as its job has recorded the evaluation of ``step`` (it is then inside its
    training loop, where SIGTERM means: checkpoint and exit 143, as SLURM's pre-emption does)."""
    sent = None
    while proc.poll() is None:
        steps = metrics_steps(job)
        if steps and max(steps) >= step:
            proc.send_signal(signal.SIGTERM)
            sent = max(steps)
            break
        time.sleep(0.05)
    rc = cli.wait(proc)
    return {"rc": rc, "sigterm_after_step": sent, "checkpoint_written": (job / "checkpoint.pt").is_file(),
            "steps_before_resume": metrics_steps(job)}


def summary_of(job: Path) -> dict[str, Any]:
    path = job / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def evaluated(cli: Cli, name: str, jobs: list[Path], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``ticketbench evaluate`` of finished jobs beside the numbers their training recorded."""
    rc = cli.run(name, "evaluate", *jobs, *cli.runtime, *extra)
    lines = [json.loads(line) for line in cli.text(name).splitlines() if line.startswith("{")]
    out = {"rc": rc}
    for job, line in zip(jobs, lines):
        s = summary_of(job)
        out[job.parent.name + "/" + job.name] = {"test_acc": line["test_acc"], "recorded_test_acc": s.get("final_test_acc"),
                                                 "test_loss": line["test_loss"], "recorded_test_loss": s.get("final_test_loss")}
    return out


def killed_and_resumed(cli: Cli, name: str, job: Path, args: list[Any], kill_at: int) -> dict[str, Any]:
    """A training command, SIGTERMed inside its loop, then rerun: it must exit 143 with a checkpoint, resume from
    it, and finish with every evaluation recorded once."""
    killed = sigterm_after_evaluation(cli, cli.start(f"{name}_killed", *args), job, kill_at)
    rc = cli.run(f"{name}_resumed", *args)
    steps = metrics_steps(job)
    return {"killed": killed, "resumed_rc": rc, "resumed_from_checkpoint": "resuming from" in cli.text(f"{name}_resumed"),
            "metrics_steps": steps, "summary": summary_of(job)}


def _resume_checks(r: dict[str, Any], steps: int, every: int) -> dict[str, bool]:
    return {"sigterm_exit_143": r["killed"]["rc"] == 143, "sigterm_inside_the_loop": r["killed"]["sigterm_after_step"] is not None,
            "checkpoint_written": r["killed"]["checkpoint_written"], "resumed_from_checkpoint": r["resumed_from_checkpoint"],
            "finished": r["resumed_rc"] == 0 and bool(r["summary"]),
            "every_evaluation_once": r["metrics_steps"] == list(range(0, steps + 1, every))}


def lenet(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """LeNet-300-100 through the CLI, --deterministic: killed and resumed, beside an uninterrupted twin trained at
    the same time; resuming must give the twin's network bit for bit. Then ``ticketbench evaluate``."""
    cli, cfg, s = Cli(ctx), experiments_file(ctx), ctx.sizes["lenet"]
    run, twin = ctx.work / "lenet" / "run", ctx.work / "lenet" / "twin"
    common = ["dense", cfg, "--experiment", "lenet", "--seed", "0", "--deterministic", *cli.runtime]
    twin_proc = cli.start("twin", *common, "--run-dir", twin)
    r = killed_and_resumed(cli, "dense", run / "imp" / "level_00", [*common, "--run-dir", run], s["eval"])
    twin_rc = cli.wait(twin_proc)
    a, b = run / "imp" / "level_00", twin / "imp" / "level_00"
    r["twin_rc"] = twin_rc
    sa, sb = r["summary"], summary_of(b)
    exact = bool(sa) and sa.get("model_sha256") == sb.get("model_sha256") and \
        (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    r["evaluate"] = evaluated(cli, "evaluate", [a], ("--deterministic",))
    ev = r["evaluate"].get("imp/level_00", {})
    env = sa.get("environment", {})
    # What one job costs besides its training loop (start, imports, device, data, model, final save): the twin's
    # wall time less its loop's (images/s covers the loop, evaluations included). The projection uses it.
    loop = s["steps"] * 60 / sb["images_per_second"] if sb.get("images_per_second") else None
    overhead = round(cli.walls["twin"] - loop, 2) if loop else None
    checks = {**_resume_checks(r, s["steps"], s["eval"]), "twin_finished": twin_rc == 0,
              "resume_is_exact": exact, "evaluate_matches_training": r["evaluate"]["rc"] == 0 and
              ev.get("test_acc") == ev.get("recorded_test_acc"),
              "environment_recorded": env.get("device") == ctx.device and env.get("deterministic") is True}
    return {"checks": checks, **r, "twin_summary": sb, "wall_seconds": cli.walls, "job_overhead_seconds": overhead,
            "headline": {"resume_is_exact": exact, "final_test_acc": sa.get("final_test_acc"),
                         "images_per_second": sb.get("images_per_second"), "job_overhead_seconds": overhead}}


def resnet(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """ResNet-20 (conv, BatchNorm, augmentation, channels_last) through the CLI with the production settings (no
    --deterministic): killed and resumed; then IMP level 1 (for the interpolation) and ``ticketbench evaluate``."""
    cli, cfg, s = Cli(ctx), experiments_file(ctx), ctx.sizes["resnet"]
    run = ctx.work / "resnet" / "run"
    common = ["--experiment", "resnet20", "--seed", "0", "--run-dir", run, *cli.runtime]
    level0, level1 = run / "imp" / "level_00", run / "imp" / "level_01"
    r = killed_and_resumed(cli, "dense", level0, ["dense", cfg, *common], s["eval"])
    imp_proc = cli.start("imp_level_01", "imp", cfg, *common, "--level", "1")
    r["evaluate"] = evaluated(cli, "evaluate", [level0])
    r["level_01_rc"] = cli.wait(imp_proc)
    s1 = summary_of(level1)
    r["level_01"] = s1
    ev = r["evaluate"].get("imp/level_00", {})
    n_test = ctx.sizes["resnet"]["test"]
    env = r["summary"].get("environment", {})
    checks = {**_resume_checks(r, s["steps"], s["eval"]), "rewind_state_saved": (run / "rewind.pt").is_file(),
              "level_01_finished": r["level_01_rc"] == 0 and bool(s1),
              # cuDNN autotuning may pick other kernels for the re-evaluation: equal within two test images
              "evaluate_matches_training": r["evaluate"]["rc"] == 0 and ev.get("test_acc") is not None and
              abs(ev["test_acc"] - ev["recorded_test_acc"]) <= 2 / n_test,
              "environment_recorded": env.get("device") == ctx.device and env.get("precision") == "fp32"}
    return {"checks": checks, **r, "wall_seconds": cli.walls,
            "headline": {"final_test_acc": r["summary"].get("final_test_acc"), "memory_format": r["summary"].get("memory_format"),
                         "images_per_second": r["summary"].get("images_per_second"),
                         "level_01_density": s1.get("density")}}


def pack(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """``ticketbench pack`` of 8 ResNet-20 jobs (the dense networks of seeds 0-7), batched, with evaluation. Seed 0
    is the lone job of the resnet step: its packed twin rounds differently, within noise."""
    cli, cfg, s = Cli(ctx), experiments_file(ctx), ctx.sizes["resnet"]
    runs, manifest = ctx.work / "pack" / "runs", ctx.work / "pack" / "manifest.json"
    jobs = [f"seed{i}/imp/level_00" for i in range(PACK)]
    rc = cli.run("pack", "pack", cfg, "--experiment", "resnet20", *jobs, "--runs-dir", runs, "--manifest", manifest,
                 "--pack-mode", "batched", *cli.runtime)
    summaries = [summary_of(runs / j) for j in jobs]
    steps = [metrics_steps(runs / j) for j in jobs]
    lone = summary_of(ctx.work / "resnet" / "run" / "imp" / "level_00")
    member = summaries[0]
    diff = abs(member["final_test_acc"] - lone["final_test_acc"]) if member and lone else None
    checks = {"finished": rc == 0 and manifest.is_file() and all(summaries),
              "batched_pack_of_8": all(x.get("pack", {}).get("mode") == "batched" and x["pack"]["size"] == PACK
                                       for x in summaries if x),
              "every_member_evaluated": all(st == list(range(0, s["steps"] + 1, s["eval"])) for st in steps),
              "members_differ": len({x.get("model_sha256") for x in summaries}) == PACK,
              "rewind_states_saved": all((runs / f"seed{i}" / "rewind.pt").is_file() for i in range(PACK))}
    if diff is not None:
        checks["member_0_near_its_lone_job"] = diff <= 0.1  # a gross error, not noise: same config, seed, steps
    rate = member.get("images_per_second")
    return {"checks": checks, "rc": rc, "wall_seconds": cli.walls, "member_summaries": summaries,
            "lone_seed0_test_acc": lone.get("final_test_acc"), "member0_minus_lone_test_acc": diff,
            "headline": {"wall_seconds": cli.walls.get("pack"), "aggregate_images_per_second": rate * PACK if rate else None,
                         "member0_minus_lone_test_acc": diff}}


def analysis(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """The Hessian (Lanczos top eigenvalues, trace) of the ResNet-20 of the resnet step, and the interpolation
    between its IMP levels 0 and 1 (masks none and common), through the CLI."""
    cli = Cli(ctx)
    run = ctx.work / "resnet" / "run"
    level0, level1 = run / "imp" / "level_00", run / "imp" / "level_01"
    hessian_csv, path_csv = ctx.work / "analysis" / "hessian.csv", ctx.work / "analysis" / "interpolation.csv"
    h_rc = cli.run("hessian", "hessian", level0, "-o", hessian_csv, *ctx.sizes["hessian"], *cli.runtime)
    i_rc = cli.run("interpolate", "interpolate", level0, level1, "--mask", "none", "common", "-o", path_csv,
                   *ctx.sizes["interpolation"], *cli.runtime)
    h = _csv_rows(hessian_csv)
    eig = [float(r["value"]) for r in h if r["quantity"] == "eigenvalue"]
    p = _csv_rows(path_csv)
    finite = all(math.isfinite(float(r[k])) for r in p for k in ("train_loss", "test_loss", "test_error"))
    start = [float(r["test_error"]) for r in p if r["mask"] == "none" and float(r["alpha"]) == 0.0]
    recorded = summary_of(level0).get("final_test_acc")
    n_test = ctx.sizes["resnet"]["test"]
    checks = {"hessian_ran": h_rc == 0 and bool(eig), "eigenvalues_finite": all(map(math.isfinite, eig)),
              "top_eigenvalue_positive": bool(eig) and eig[0] > 0, "interpolation_ran": i_rc == 0 and bool(p),
              "path_finite": finite,
              "path_starts_at_the_trained_network": bool(start) and recorded is not None and
              abs(start[0] - (1 - recorded)) <= 2 / n_test}
    first = h[0] if h else {}
    hvps = int(first["hvps"]) if first.get("hvps") else None
    return {"checks": checks, "wall_seconds": cli.walls, "eigenvalues": eig,
            "hvps": hvps, "lanczos_steps": first.get("lanczos_steps"), "converged": first.get("converged"),
            "trace": next((float(r["value"]) for r in h if r["quantity"] == "trace"), None), "path": p,
            "headline": {"top_eigenvalue": eig[0] if eig else None, "hvps": hvps,
                         "hessian_seconds": cli.walls.get("hessian"), "interpolation_seconds": cli.walls.get("interpolate")}}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------
# In-process measurements of the production loops (train.fit, train.fit_packed under Runtime.apply())
# --------------------------------------------------------------------------------------------------


class Bench:
    """One network's config, data on the device, initial state and a pruned mask, for jobs of any length."""

    def __init__(self, ctx: Context, model: str, precision: str = "fp32") -> None:
        sys.path.insert(0, str(REPO / "src"))
        from ticketbench import config, data, masks, models
        from ticketbench.runtime import Runtime

        raw = json.loads(experiments_file(ctx).read_text())["experiments"]["lenet" if model == "lenet" else "resnet20"]["run"]
        if raw["data"]["name"] != "synthetic":  # measurements need no real pixels: no dataset read, no MD5 check
            s = ctx.sizes[model]
            shape = [1, 28, 28] if model == "lenet" else s["shape"]
            raw["data"] = {"name": "synthetic", "validation_size": s["val"], "synthetic_train": s["train"] + s["val"],
                           "synthetic_test": s["test"], "synthetic_shape": shape, "augment": raw["data"].get("augment", False)}
        self.cfg = config.from_dict({**raw, "name": f"device_check_{model}"})
        self.ctx = ctx
        self.runtime = Runtime(device=ctx.device, threads=ctx.threads, progress=False, checkpoint_seconds=math.inf,
                               precision=precision)
        self.device = self.runtime.apply()
        self.data = data.load(self.cfg.data, self.device)
        net = self.build()
        kinds = models.layer_kinds(net)
        dense = masks.dense_mask(net, kinds, self.cfg.prune)
        self.state = {k: v.clone() for k, v in net.state_dict().items()}
        # IMP level 3's mask (about half the weights): sparsity does not change the cost of dense kernels
        self.mask = masks.magnitude_prune(dict(net.named_parameters()), dense, kinds, self.cfg.prune, 3)
        self.cuda = self.device.type == "cuda"

    def set_precision(self, precision: str) -> None:
        import dataclasses

        self.runtime = dataclasses.replace(self.runtime, precision=precision)
        self.runtime.apply()

    def build(self) -> Any:
        from ticketbench import models

        return models.build(self.cfg.model, self.data.shape, self.data.classes, self.cfg.seeds.init)

    def job(self, folder: Path, steps: int, seed: int = 0) -> Any:
        from ticketbench import train

        folder.mkdir(parents=True, exist_ok=True)
        lr = self.cfg.train.lr
        return train.Job(out=folder, state=self.state, mask=self.mask, start=0, end=steps, lr=lambda step: lr,
                         data_order_seed=seed, augmentation_seed=seed, label=f"{folder.name}")

    def fit(self, steps: int, tag: str) -> dict[str, Any]:
        """The lone production loop, evaluating at its first and last step only."""
        from ticketbench import train

        folder = self._fresh(tag)
        return train.fit(self.build(), self.data, self.cfg, self.job(folder, steps), self.runtime, eval_every=max(steps, 1))

    def fit_packed(self, size: int, steps: int, tag: str) -> list[dict[str, Any]]:
        from ticketbench import train

        folder = self._fresh(tag)
        members = [train.Member(build=self.build, data=self.data, cfg=self.cfg, job=self.job(folder / str(i), steps, i))
                   for i in range(size)]
        return train.fit_packed(members, self.runtime, eval_every=max(steps, 1))

    def _fresh(self, tag: str) -> Path:
        folder = self.ctx.work / self.ctx.step / tag
        shutil.rmtree(folder, ignore_errors=True)
        return folder


def syncs(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Synchronising CUDA calls per training step of the production loops, counted with
    torch.cuda.set_sync_debug_mode("warn"): a job of n1 and one of n2 steps (evaluated at their first and last
    step only, so their evaluations and file writes are the same), (count(n2) - count(n1)) / (n2 - n1). The
    probe's control showed that the counter counts. On the CPU there is nothing to count: the loops still run."""
    import torch

    n1, n2 = ctx.sizes["syncs"]["steps"]
    out: dict[str, Any] = {"steps": [n1, n2], "counted": ctx.device == "cuda"}
    checks = {}
    for model in ("lenet", "resnet"):
        b = Bench(ctx, model)
        p = ctx.sizes["syncs"][f"{model}_pack"]
        for kind, run in (("lone", lambda n, t: b.fit(n, t)), (f"pack of {p}", lambda n, t: b.fit_packed(p, n, t))):
            label = f"{model} {kind}"
            if not b.cuda:
                run(n1, "a")
                out[label] = {"per_step": None, "why": "synchronisation is a CUDA notion: the CPU loops ran, uncounted"}
                continue
            run(n1, "warm")  # cuDNN autotuning and first-use allocations happen here, not in the counted runs
            c1, _ = _count_syncs(torch, lambda: run(n1, "a"))
            c2, where = _count_syncs(torch, lambda: run(n2, "b"))
            per_step = (c2 - c1) / (n2 - n1)
            out[label] = {"per_step": per_step, f"total_{n1}_steps": c1, f"total_{n2}_steps": c2,
                          "where_most": dict(where.most_common(8))}
            checks[f"{label.replace(' ', '_')}_no_sync_per_step"] = per_step < 1
    out["checks"] = checks
    out["headline"] = {k: v["per_step"] for k, v in out.items() if isinstance(v, dict) and "per_step" in v}
    return out


def throughput(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of the lone loop and of packs, fp32 and TF32, with the production settings (Runtime.apply():
    cuDNN autotuning, channels_last for conv nets, the run's float32 precision), timed on steady-state steps
    only: a timestamp at the start of every step (a CUDA event on the GPU), the first ``warmup`` steps
    (autotuning, allocator growth, step 0's evaluation) left out, so the figure is the loop's period between
    its first and last evaluation. Also the peak GPU memory of every configuration, above the resident data and
    in all. Writes steps/packing.json in the format bench/projection.py reads."""
    import torch

    from unittest import mock

    sys.path.insert(0, str(REPO / "src"))
    from ticketbench import train

    sizes = ctx.sizes["throughput"]
    rows = []
    for model in ("lenet", "resnet"):
        b = Bench(ctx, model)
        plan = sizes[model]
        for precision in sizes["precisions"]:
            b.set_precision(precision)
            for size in [None, *plan["packs"]]:
                clock = _StepClock(b.cuda)
                if b.cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                tag = f"{precision}_{size or 'lone'}"
                if size is None:
                    with mock.patch.object(train, "masked_step", clock.wrap(train.masked_step)):
                        b.fit(plan["steps"], tag)
                else:
                    with mock.patch.object(train._Stack, "forward", clock.wrap(train._Stack.forward)):
                        b.fit_packed(size, plan["steps"], tag)
                seconds = clock.per_step(plan["warmup"])
                row = {"model": b.cfg.model.name, "precision": precision, "pack": size, "device": str(b.device),
                       "batch_size": b.cfg.train.batch_size, "steps_timed": len(clock.marks) - plan["warmup"] - 1,
                       "ms_per_step": round(seconds * 1000, 4),
                       "images_per_second": b.cfg.train.batch_size * (size or 1) / seconds}
                if b.cuda:
                    peak = torch.cuda.max_memory_allocated()
                    row.update(peak_memory_mib=round(peak / 2**20, 1), peak_above_data_mib=round((peak - base) / 2**20, 1))
                rows.append(row)
                print(f"{row['model']:<14} {precision} {'lone' if size is None else f'pack of {size}':<10} "
                      f"{row['ms_per_step']:9.3f} ms/step {row['images_per_second']:12.0f} images/s"
                      + (f"  peak {row['peak_memory_mib']:.0f} MiB" if b.cuda else ""), flush=True)
    for r in rows:
        lone = next(x for x in rows if x["model"] == r["model"] and x["precision"] == r["precision"] and x["pack"] is None)
        r["ratio_vs_lone"] = r["images_per_second"] / lone["images_per_second"]
        fp32 = next((x for x in rows if x["model"] == r["model"] and x["precision"] == "fp32" and x["pack"] == r["pack"]), None)
        if fp32 is not None and r["precision"] != "fp32":
            r["speedup_vs_fp32"] = r["images_per_second"] / fp32["images_per_second"]
    (ctx.out / "steps" / "packing.json").write_text(json.dumps({"results": rows}, indent=2) + "\n")
    headline = {}
    for r in rows:
        key = f"{r['model']} {r['precision']} {'lone' if r['pack'] is None else 'pack ' + str(r['pack'])}"
        headline[key] = {"images_per_second": round(r["images_per_second"]), "ratio_vs_lone": round(r["ratio_vs_lone"], 2),
                         **({"peak_memory_mib": r["peak_memory_mib"]} if "peak_memory_mib" in r else {})}
    return {"checks": {"every_configuration_timed": all(r["steps_timed"] > 0 for r in rows)}, "results": rows,
            "tf32": None if "tf32" in sizes["precisions"] else "not measured: TF32 exists on CUDA only",
            "headline": headline}


class _StepClock:
    """A timestamp at the start of every step of a production loop (wrapping the function each step calls first)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.marks = cuda, []

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.mark()
            return fn(*args, **kwargs)
        return timed

    def mark(self) -> None:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def per_step(self, warmup: int) -> float:
        marks = self.marks[warmup:]
        if len(marks) < 2:
            raise StepFailed(f"only {len(self.marks)} steps were timed; lengthen the run beyond warmup {warmup}")
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return marks[0].elapsed_time(marks[-1]) / 1000 / (len(marks) - 1)
        return (marks[-1] - marks[0]) / (len(marks) - 1)


def precision(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """How far TF32 moves results: the same ResNet-20 job (same seeds, data order, augmentation) trained in fp32
    twice (run-to-run noise of the autotuned kernels: the yardstick) and in TF32, their final test accuracy and
    loss; and the logits of one batch at initialisation against a float64 reference (relative error)."""
    import torch

    b = Bench(ctx, "resnet")
    steps = ctx.sizes["precision"]["steps"]
    runs = {}
    plan = [("fp32_a", "fp32"), ("fp32_b", "fp32")] + ([("tf32", "tf32")] if b.cuda else [])
    for label, p in plan:
        b.set_precision(p)
        s = b.fit(steps, label)
        runs[label] = {k: s[k] for k in ("final_test_acc", "final_test_loss", "final_train_loss", "model_sha256",
                                         "images_per_second")}
    n = ctx.sizes["precision"]["batch"]
    net = b.build().to(b.device)
    net.load_state_dict(b.state)
    net.eval()
    x = b.data.test.x[:n]
    with torch.no_grad():
        ref = net.double()(x.double())
        net.float()
        logits = {}
        for p in ("fp32", "tf32") if b.cuda else ("fp32",):
            b.set_precision(p)
            logits[p] = float((net(x).double() - ref).abs().max() / ref.abs().max())
    b.set_precision("fp32")
    a, c = runs["fp32_a"], runs["fp32_b"]
    out: dict[str, Any] = {"steps": steps, "runs": runs, "logits_relative_error_vs_float64": logits,
                           "fp32_vs_fp32_test_acc": abs(a["final_test_acc"] - c["final_test_acc"]),
                           "fp32_vs_fp32_test_loss": abs(a["final_test_loss"] - c["final_test_loss"])}
    checks = {"fp32_logits_near_float64": logits["fp32"] < 1e-4}
    if b.cuda:
        t = runs["tf32"]
        out.update(tf32_vs_fp32_test_acc=abs(t["final_test_acc"] - a["final_test_acc"]),
                   tf32_vs_fp32_test_loss=abs(t["final_test_loss"] - a["final_test_loss"]))
    else:
        checks["cpu_fp32_runs_identical"] = a["model_sha256"] == c["model_sha256"]
        out["tf32"] = "not applicable: TF32 exists on CUDA only"
    out["checks"] = checks
    out["headline"] = {k: out.get(k) for k in ("fp32_vs_fp32_test_acc", "tf32_vs_fp32_test_acc", "tf32_vs_fp32_test_loss")}
    out["headline"]["logits_relative_error_vs_float64"] = logits
    return out


# --------------------------------------------------------------------------------------------------
# The workflow (only where snakemake imports) and the projection
# --------------------------------------------------------------------------------------------------


def workflow(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Two training jobs of config/smoke.yaml through Snakemake with ``gpu: 1``, in a copy of the workflow files
    (this tree's results stay untouched): each job starts through ``ticketbench gpu-slot`` and runs with
    --device cuda (on the CPU dry run: --device cpu, with two stand-in GPUs in CUDA_VISIBLE_DEVICES and
    --resources gpu=2, so the two jobs take a slot each)."""
    tree = ctx.work / "workflow"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    for name in ("workflow", "profiles", "config"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tree / name)
    shim = tree / "bin" / "ticketbench"  # the rules call `ticketbench`; here it is the working tree's package
    shim.parent.mkdir()
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m ticketbench \"$@\"\n")
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO / "src"),
           "TICKETBENCH_GPU_SLOTS": str(ctx.work / "slots"), "TICKETBENCH_CACHE": str(ctx.work / "cache")}
    device, gpus = ("cpu", "2") if ctx.dry else ("cuda", "1")
    if ctx.dry:
        env["CUDA_VISIBLE_DEVICES"] = "0,1"
    targets = [f"results/smoke/runs/{e}/seed0/imp/level_00/summary.json" for e in ("lth_lenet", "saleem")]
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/smoke.yaml", "--config", "gpu=1",
           f"device={device}", "--resources", f"gpu={gpus}", "--", *targets]
    log = ctx.log("snakemake")
    with log.open("w") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        t0 = time.monotonic()
        rc = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    job_logs = {e: tree / f"results/smoke/logs/{e}/seed0/imp_level_00.log" for e in ("lth_lenet", "saleem")}
    slots = {e: next((line.strip() for line in p.read_text().splitlines() if line.startswith("gpu-slot:")), None)
             if p.is_file() else None for e, p in job_logs.items()}
    for e, p in job_logs.items():
        if p.is_file():
            shutil.copy(p, ctx.log(f"job_{e}"))
    envs = {e: summary_of(tree / f"results/smoke/runs/{e}/seed0/imp/level_00").get("environment", {}) for e in job_logs}
    checks = {"snakemake_finished": rc == 0, "jobs_started_through_gpu_slot": all(slots.values()),
              "jobs_ran_on_the_device": all(v.get("device") == ctx.device for v in envs.values())}
    if ctx.dry:
        chosen = [s.split("CUDA_VISIBLE_DEVICES=")[1].split()[0] for s in slots.values() if s and "CUDA_VISIBLE_DEVICES=" in s]
        checks["each_job_took_a_slot"] = len(chosen) == 2
    return {"checks": checks, "rc": rc, "seconds": round(time.monotonic() - t0, 1), "gpu_slot_lines": slots,
            "headline": {"gpu_slot_lines": slots}}


def projection(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """bench/projection.py from this run's throughput (steps/packing.json) and job overhead (the lenet step):
    config/config.yaml's device-hours, lone and in packs of 8."""
    lenet_step = json.loads((ctx.out / "steps" / "lenet.json").read_text())
    overhead = lenet_step.get("job_overhead_seconds")
    if overhead is None:
        raise StepFailed("the lenet step recorded no job overhead")
    raw = ctx.work / "projection.json"
    cmd = [sys.executable, str(REPO / "bench" / "projection.py"), "--packing", str(ctx.out / "steps" / "packing.json"),
           "--overhead-seconds", str(overhead), "--workflow-config", str(REPO / "config" / "config.yaml"), "--pack",
           str(PACK), "--out", str(raw)]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True)
    ctx.log("projection").write_text(proc.stdout + proc.stderr)
    result = json.loads(raw.read_text()) if proc.returncode == 0 and raw.is_file() else {}
    total = result.get("total", {})
    return {"checks": {"projected": proc.returncode == 0 and bool(total)}, "projection": result,
            "headline": {k: round(v, 1) for k, v in total.items()}}


# --------------------------------------------------------------------------------------------------
# summary: one JSON of everything (standard library only)
# --------------------------------------------------------------------------------------------------


def summary(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    steps_dir = ctx.out / "steps"
    order = [line.split()[0] for line in (steps_dir / "order.txt").read_text().splitlines()] \
        if (steps_dir / "order.txt").is_file() else []
    steps: dict[str, Any] = {}
    for name in order:
        path, run = steps_dir / f"{name}.json", steps_dir / f"{name}.run.json"
        step = json.loads(path.read_text()) if path.is_file() else {"status": "failed", "error": "wrote no result"}
        if run.is_file():
            step["run"] = json.loads(run.read_text())
            if step["run"].get("timed_out"):
                step["status"] = "timeout"
        steps[name] = step
    preflight_path = ctx.out / "preflight.json"
    statuses = {k: v.get("status") for k, v in steps.items()}
    ok = all(s in ("ok", "skipped") for s in statuses.values()) and (ctx.dry or statuses.get("probe") == "ok")
    report = {"device_check": {"mode": "cpu-dry-run" if ctx.dry else "gpu", "ok": ok, "seconds": round(args.seconds),
                               "budget_seconds": args.budget, "statuses": statuses, "out_dir": str(ctx.out),
                               "note": "dry run: tiny sizes on the CPU; its figures mean nothing" if ctx.dry else None},
              "headline": {k: v.get("headline") or v.get("reason") or v.get("error") for k, v in steps.items()},
              "preflight": json.loads(preflight_path.read_text()) if preflight_path.is_file() else None,
              "steps": steps}
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(report, indent=2, default=str) + "\n")
    width = max(map(len, statuses), default=0)
    for name, status in statuses.items():
        run = steps[name].get("run")
        why = steps[name].get("reason") or ", ".join(steps[name].get("failed_checks", [])) or steps[name].get("error") or ""
        took = f"{run['seconds']:>5} s of {run['budget']:>3} s" if run else " " * 15
        print(f"  {name:<{width}}  {status:<8} {took}  {why}")
    print(f"device_check: {'ok' if ok else 'FAILED'}; wrote {args.summary}")
    return {"checks": {"all_steps_ok": ok}}


STEPS: dict[str, Callable[[Context, argparse.Namespace], dict[str, Any] | None]] = {
    "preflight": preflight, "probe": probe, "lenet": lenet, "resnet": resnet, "pack": pack, "analysis": analysis,
    "syncs": syncs, "throughput": throughput, "precision": precision, "workflow": workflow, "projection": projection,
    "summary": summary}

if __name__ == "__main__":
    sys.exit(main())
