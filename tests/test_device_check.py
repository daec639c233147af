"""The device check (bench/device_check.sh) on a bare machine: what it promises before any step runs. Its steps
run in CI through the CPU dry run (.ci/run); these tests are the cheap part: no python, no torch."""

from __future__ import annotations

import json
import re
import subprocess

from conftest import REPO

SCRIPT = REPO / "bench" / "device_check.sh"


def test_without_python_it_writes_its_preflight_and_one_summary_and_skips_every_step_saying_why(tmp_path):
    """A node whose python cannot run: preflight.json still comes back (nvidia-smi's output, what python was
    looked for), and the summary lists every step as skipped with the reason, in valid JSON."""
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OUT": str(out), "PYTHON": str(tmp_path / "no-python")}
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    preflight = json.loads((out / "preflight.json").read_text())
    assert preflight["mode"] == "gpu" and "nvidia_smi_output" in preflight
    summary = json.loads((out / "device_check.json").read_text())
    steps = summary["steps"]
    assert list(steps)[:3] == ["preflight", "probe", "lenet"] and len(steps) == 11
    assert all(s["status"] == "skipped" and s["reason"] for s in steps.values()), steps
    assert "no python" in steps["preflight"]["reason"]


def test_the_step_budgets_keep_the_gpu_run_under_8_minutes():
    """Each step's GPU budget is its timeout, and no step may run past the run's deadline: the deadline plus
    the kill grace of the last step stays under 8 minutes, and the budgets fit inside the deadline."""
    text = SCRIPT.read_text()
    budgets = [int(m.group(1)) for m in re.finditer(r"^run_step \w+\s+(\d+)\s+\d+", text, flags=re.M)]
    deadline = int(re.search(r"^total=(\d+)$", text, flags=re.M).group(1))
    grace = int(re.search(r"timeout -k (\d+)", text).group(1))
    assert len(budgets) == 11
    assert sum(budgets) <= deadline and deadline + grace < 8 * 60
