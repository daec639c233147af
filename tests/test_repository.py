"""What the repository commits is machine-independent and says what it is: no output, config or document
names a folder of the machine that made it (a reviewer's clone lives elsewhere, and such a path leaks who
built it where), and a reduced config's header states the deviations the report computes, not others."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from conftest import REPO
from ticketbench.report import deviations

MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|root|tmp|Users|mnt|scratch)/[\w.-]+")
COMMITTED_OUTPUTS = ("results", "docs", "config", "dvc.lock")
"""Every committed result (tables, figures' index, report.md/html, metrics.json, DVC locks), every
document and every config."""


def committed(*folders: str) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", *folders], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.split("\0") if p]


def machine_paths(rel: str, text: str) -> list[str]:
    return [f"{rel}: {m.group(0)}" for m in MACHINE_PATH.finditer(text)]


def test_the_machine_path_pattern_finds_folders_of_a_machine_and_spares_urls_and_relative_paths():
    assert machine_paths("x", "papers at /work/shared/papers, runs in /home/ann/r") == [
        "x: /work/shared", "x: /home/ann"]
    assert machine_paths("x", "https://example.org/home/page, ../shared/papers, results/quick/tmp/x") == []


def test_no_committed_output_config_or_document_holds_an_absolute_machine_path():
    found = []
    files = committed(*COMMITTED_OUTPUTS, "results/dvc.lock")
    assert any(f.startswith("docs/") for f in files) and any(f.endswith("report.md") for f in files)
    for rel in files:
        try:
            text = (REPO / rel).read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # figures (PNG) and files deleted in the work tree
        found += machine_paths(rel, text)
    assert not found, "absolute paths of a machine in committed files:\n" + "\n".join(found[:20])


# --------------------------------------------------------------------------------------------------
# The reduced configs against the papers' (config/config.yaml)
# --------------------------------------------------------------------------------------------------


def experiments(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())["experiments"]


def header(name: str) -> str:
    """The leading comment of a config, as one line of text (wrapping does not matter)."""
    lines = []
    for line in (REPO / "config" / name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(" ".join(lines).split())


@pytest.mark.parametrize("name", ["quick.yaml", "smoke.yaml"])
def test_every_reduced_experiment_names_a_paper_experiment_it_shrinks(name):
    paper = experiments(deviations.PAPER_CONFIG)
    for exp, shrunk in deviations.of_workflow(experiments(name), paper).items():
        assert not shrunk.problem, f"{name}: {exp}: {shrunk.problem}"
        assert shrunk.found, f"{name}: {exp} shrinks {shrunk.paper} but deviates from it in nothing"


def test_the_quick_header_names_every_computed_deviation_and_states_the_rewind_fractions_computed():
    """The header of config/quick.yaml is what a reader of the config sees first: each key in which an
    experiment departs from the paper experiment it shrinks is named there (run keys without ``run.``),
    and the rewind points as fractions of training are the computed ones (not "the same fraction")."""
    text = header("quick.yaml")
    paper = experiments(deviations.PAPER_CONFIG)
    unnamed, fractions = set(), []
    for exp, shrunk in deviations.of_workflow(experiments("quick.yaml"), paper).items():
        for d in shrunk.found:
            if d.key.removeprefix("run.") not in text:
                unnamed.add(d.key)
            if d.key == "run.imp.rewind":
                fractions += [d.ours, d.paper]
    assert not unnamed, f"config/quick.yaml's header does not name the computed deviations {sorted(unnamed)}"
    assert fractions and all(f in text for f in fractions), fractions
    assert "same fraction" not in text


def test_the_licence_file_and_the_citation_declare_what_the_package_declares():
    """pyproject's licence is the LICENSE file's, and CITATION.cff (CFF 1.2.0; checked once with
    `cffconvert --validate`) cites this version, under that licence, with the papers it reproduces."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    licence = project["license"]["text"]
    assert (REPO / "LICENSE").read_text().startswith(f"{licence} License\n")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["message"] and cff["title"] and cff["authors"]
    assert cff["version"] == project["version"] and cff["license"] == licence
    cited = {i["value"].rsplit("/", 1)[-1] for ref in cff["references"] for i in ref["identifiers"]}
    assert cited == {"1803.03635", "1903.01611", "1912.05671", "2403.15022"}
    readme = (REPO / "README.md").read_text()
    assert all(f"arXiv:{a}" in readme for a in cited), "README's 'Citing' section names each paper"
