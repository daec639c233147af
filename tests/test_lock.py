"""requirements.lock is the one source of truth for versions (venv, CI, container image): it must agree with
the exact pins of pyproject.toml, and hold exactly one version of each package."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def lock_entries(text: str) -> list[tuple[str, str]]:
    """(canonical name, version) for every `name==version` requirement; anything else is a malformed lock.
    Understands pip's hash-checking format (`\\` continuations, `--hash=sha256:...`), which pip enforces by
    itself in the image once the lock carries hashes."""
    entries = []
    for number, raw in enumerate(text.replace("\\\n", " ").splitlines(), 1):
        line = " ".join(t for t in raw.split("#", 1)[0].split() if not t.startswith("--hash="))
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"requirements.lock:{number}: not an exact pin: {raw}"
        entries.append((canonicalize_name(req.name), spec[0].version))
    return entries


def project_pins() -> dict[str, str]:
    """Every dependency of pyproject.toml (main and optional groups), each required to be an exact pin."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for group in project.get("optional-dependencies", {}).values():
        deps += group
    pins = {}
    for dep in deps:
        req = Requirement(dep)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"pyproject.toml: {dep} is not an exact pin"
        pins[canonicalize_name(req.name)] = spec[0].version
    return pins


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    entries = lock_entries((REPO / "requirements.lock").read_text())
    names = [name for name, _ in entries]
    assert len(names) == len(set(names)), "requirements.lock lists a package twice"
    return dict(entries)


def test_every_pyproject_pin_is_in_the_lock_at_the_same_version(lock):
    pins = project_pins()
    assert pins, "pyproject.toml declares no dependencies"
    disagree = {name: (version, lock.get(name)) for name, version in pins.items() if lock.get(name) != version}
    assert not disagree, f"pyproject pin vs lock (None = missing from lock): {disagree}"


def test_the_project_itself_is_not_in_the_lock(lock):
    # The lock pins third-party code; the project is installed from the source tree on top of it.
    name = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"]
    assert canonicalize_name(name) not in lock


def test_build_backend_pin_matches_the_lock(lock):
    # The image builds the project without build isolation, i.e. with the lock's setuptools.
    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]:
        req = Requirement(dep)
        (spec,) = req.specifier
        assert lock.get(canonicalize_name(req.name)) == spec.version, dep


def test_lock_parser_rejects_a_range_and_reads_a_pin():
    assert lock_entries("Foo_Bar==1.2  # why\n\n") == [("foo-bar", "1.2")]
    assert lock_entries("torch==2.14.1 \\\n    --hash=sha256:305a \\\n    --hash=sha256:99ff\nsix==1.0\n") == [
        ("torch", "2.14.1"), ("six", "1.0")]
    with pytest.raises(AssertionError, match="not an exact pin"):
        lock_entries("torch>=2.0\n")


def test_running_environment_has_every_locked_version():
    """The venv (dev or CI) this suite runs in was installed from the lock; extra packages are allowed."""
    lock = dict(lock_entries((REPO / "requirements.lock").read_text()))
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in lock.items()
             if installed.get(name) != version}
    assert not wrong, f"lock vs installed (None = not installed): {wrong}"
