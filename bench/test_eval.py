"""What evaluating the test set only at early-stop candidates saves on a paper-protocol LeNet job.

Issue 19: evaluation was about a third of a paper LeNet-300-100 job (50,000 iterations of Adam, the
validation set of 5,000 and the test set of 10,000 images evaluated every 100 iterations). The LTH's
numbers read the test accuracy at early stop (the minimum validation loss) and at the end only, so
``--test-eval early-stop`` evaluates the test set only where the validation loss reaches a new minimum
and at the end (``runtime.Runtime.test_eval``). This script runs the dense job of config/lenet.yaml's
``lth_lenet`` (seed 0) in both modes through the real CLI, each in a fresh process with 1 torch thread,
the modes taking turns, and reports the wall time of each, their ratio, and whether every number the
claims and figures read (early-stop step, val loss and test accuracy, final test/train accuracy, the
weights' SHA-256) is the same in both.

Needs MNIST ($TICKETBENCH_DATA or ./data; ``ticketbench download mnist``). Full jobs, no slices: a
slice would over-count early-stop evaluations, which are dense early in training and rare later.
Run: ``.venv/bin/python bench/test_eval.py [--repeats R] [--steps N]``; writes bench/out/test_eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
OUT = BENCH / "out" / "test_eval.json"
MODES = ("every", "early-stop")
READ_BY_CLAIMS = ["early_stop_step", "early_stop_val_loss", "early_stop_test_acc", "final_test_acc", "final_test_loss",
                  "final_train_acc", "model_sha256"]


def run_job(mode: str, folder: Path, steps: int | None) -> tuple[float, dict]:
    argv = [sys.executable, "-m", "ticketbench.cli", "dense", "config/lenet.yaml", "--experiment", "lth_lenet",
            "--seed", "0", "--run-dir", str(folder), "--threads", "1", "--no-progress", "--test-eval", mode]
    cfg = None
    if steps:  # a shorter schedule, same everything else (a smoke run of this script)
        import yaml

        exp = yaml.safe_load((REPO / "config/lenet.yaml").read_text())
        run = exp["experiments"]["lth_lenet"]["run"]
        run["train"]["steps"] = f"{steps}it"
        cfg = folder.parent / f"{mode}.yaml"
        cfg.write_text(yaml.safe_dump({"name": "bench", "experiments": {"lth_lenet": exp["experiments"]["lth_lenet"]}}))
        argv[4] = str(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    p = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f"test_eval: the {mode} job failed:\n{p.stderr[-2000:]}")
    return wall, json.loads((folder / "imp" / "level_00" / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1, help="runs per mode, taking turns (default 1)")
    ap.add_argument("--steps", type=int, help="train this many iterations instead of 50,000 (smoke run)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    summaries: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TICKETBENCH_CACHE", str(Path(tmp) / "cache"))
        for r in range(args.repeats):
            for mode in MODES:
                folder = Path(tmp) / f"{mode}-{r}"
                wall, summaries[mode] = run_job(mode, folder, args.steps)
                walls[mode].append(wall)
                print(f"{mode:>10}: {wall:7.1f} s (run {r + 1})", flush=True)
    same = {k: summaries["every"][k] == summaries["early-stop"][k] for k in READ_BY_CLAIMS}
    med = {m: statistics.median(w) for m, w in walls.items()}
    result = {"threads": 1, "load_average": os.getloadavg(), "steps": args.steps or 50000, "wall_s": walls,
              "median_s": med, "ratio_early_stop_to_every": med["early-stop"] / med["every"], "same_numbers": same,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"1 thread; median wall time: every {med['every']:.1f} s, early-stop {med['early-stop']:.1f} s, "
          f"ratio {result['ratio_early_stop_to_every']:.2f}; load average {os.getloadavg()[0]:.2f}")
    print("numbers the claims read identical: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
