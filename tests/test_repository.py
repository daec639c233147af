"""What the repository commits is machine-independent: no output or config names a folder of the machine
that made it (a reviewer's clone lives elsewhere, and such a path leaks who built it where)."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import REPO

MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|root|tmp|Users|mnt|scratch)/[\w.-]+")


def committed(*folders: str) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", *folders], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.split("\0") if p]


def test_no_committed_output_or_config_holds_an_absolute_machine_path():
    found = []
    for rel in committed("results", "config", "dvc.lock", "results/dvc.lock"):
        try:
            text = (REPO / rel).read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # figures (PNG) and files deleted in the work tree
        found += [f"{rel}: {m.group(0)}" for m in MACHINE_PATH.finditer(text)]
    assert not found, "absolute paths of a machine in committed files:\n" + "\n".join(found[:20])
