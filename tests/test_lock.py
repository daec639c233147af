"""requirements.lock is the one source of truth for versions (venv, CI, container image). It must agree with the
exact pins of pyproject.toml and, through environment markers, give every supported platform exactly one
version of every package it needs: Linux x86_64 with PyPI's CUDA wheels, macOS arm64 with its CPU/MPS wheels,
each on Python 3.11 and 3.12."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def target_environment(sys_platform: str, machine: str, python: str) -> dict[str, str]:
    """The PEP 508 marker values of a CPython `python` (e.g. "3.12") on that platform, as pip or uv sees them."""
    return {
        "implementation_name": "cpython", "implementation_version": f"{python}.0",
        "platform_python_implementation": "CPython", "python_version": python, "python_full_version": f"{python}.0",
        "os_name": "posix", "sys_platform": sys_platform, "platform_machine": machine,
        "platform_system": {"linux": "Linux", "darwin": "Darwin"}[sys_platform],
        "platform_release": "", "platform_version": "",
    }


# The platforms the lock is made for.
TARGETS = {
    "linux-x86_64-py3.11": target_environment("linux", "x86_64", "3.11"),
    "linux-x86_64-py3.12": target_environment("linux", "x86_64", "3.12"),
    "macos-arm64-py3.11": target_environment("darwin", "arm64", "3.11"),
    "macos-arm64-py3.12": target_environment("darwin", "arm64", "3.12"),
}
LINUX = [name for name in TARGETS if name.startswith("linux")]
MACOS = [name for name in TARGETS if name.startswith("macos")]


def is_cuda_stack(name: str) -> bool:
    """torch's CUDA 13 runtime wheels (PyPI's Linux torch loads them from site-packages) and its GPU compiler."""
    return name.startswith(("nvidia-", "cuda-")) or name == "triton"


def lock_requirements(text: str) -> list[Requirement]:
    """Every requirement of the lock, each an exact `name==version` pin with an optional environment marker;
    anything else is a malformed lock. Understands pip's hash-checking format (`\\` continuations,
    `--hash=sha256:...`), which pip enforces by itself in the image once the lock carries hashes."""
    reqs = []
    for number, raw in enumerate(text.replace("\\\n", " ").splitlines(), 1):
        line = " ".join(t for t in raw.split("#", 1)[0].split() if not t.startswith("--hash="))
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"requirements.lock:{number}: not an exact pin: {raw}"
        reqs.append(req)
    return reqs


def lock_entries(text: str, environment: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(canonical name, version) of every requirement whose marker holds in `environment` (a full set of marker
    values, as TARGETS has; None: this interpreter), i.e. what pip or uv installs there from the lock."""
    return [(canonicalize_name(req.name), next(iter(req.specifier)).version) for req in lock_requirements(text)
            if req.marker is None or req.marker.evaluate(environment)]


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


def lock_text() -> str:
    return (REPO / "requirements.lock").read_text()


def target_lock(target: str) -> dict[str, str]:
    """What the lock installs on that target, by name."""
    return dict(lock_entries(lock_text(), TARGETS[target]))


def all_lines() -> list[tuple[str, str]]:
    """(canonical name, version) of every line of the lock, whatever its marker."""
    return [(canonicalize_name(req.name), next(iter(req.specifier)).version) for req in lock_requirements(lock_text())]


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    return dict(all_lines())


def test_a_package_has_one_version_on_every_platform():
    # One line per package: versions forked by platform would make results differ for a reason other than the
    # hardware. Then every target, whatever its markers select, gets at most one version of each package.
    names = [name for name, _ in all_lines()]
    assert len(names) == len(set(names)), f"listed twice: {sorted({n for n in names if names.count(n) > 1})}"


@pytest.mark.parametrize("target", TARGETS)
def test_every_pyproject_pin_is_installed_at_its_version_on_every_platform(target):
    pins = project_pins()
    assert pins, "pyproject.toml declares no dependencies"
    installed = target_lock(target)
    disagree = {name: (version, installed.get(name)) for name, version in pins.items()
                if installed.get(name) != version}
    assert not disagree, f"{target}: pyproject pin vs lock (None = not installed there): {disagree}"


@pytest.mark.parametrize("target", LINUX)
def test_linux_gets_pypis_cuda_build_of_torch(target):
    installed = target_lock(target)
    cuda = {name for name, _ in all_lines() if is_cuda_stack(name)}
    assert {"nvidia-cublas", "nvidia-cudnn-cu13", "triton"} <= cuda
    assert cuda <= set(installed), f"{target} misses {sorted(cuda - set(installed))}"
    assert installed["torch"] == "2.14.1"


@pytest.mark.parametrize("target", MACOS)
def test_macos_gets_torch_without_any_cuda_wheel(target):
    installed = target_lock(target)
    assert installed["torch"] == "2.14.1" and installed["torchvision"] == "0.29.1"
    assert not [name for name in installed if is_cuda_stack(name)]


@pytest.mark.parametrize("linux, macos", list(zip(LINUX, MACOS)))
def test_macos_gets_what_linux_gets_except_the_cuda_stack(linux, macos):
    on_linux, on_macos = set(target_lock(linux)), set(target_lock(macos))
    assert on_macos <= on_linux, f"only on macOS: {sorted(on_macos - on_linux)}"
    # greenlet: sqlalchemy's marker asks for it on x86_64 and "aarch64" machines; macOS calls its arm64 "arm64".
    only_linux = {name for name in on_linux - on_macos if not is_cuda_stack(name)}
    assert only_linux <= {"greenlet"}, f"only on Linux: {sorted(only_linux)}"


@pytest.mark.parametrize("a, b", [LINUX, MACOS])
def test_python_3_11_and_3_12_get_the_same_packages(a, b):
    assert target_lock(a) == target_lock(b)


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


def test_requires_python_admits_exactly_the_pythons_of_the_targets():
    requires = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    admitted = {f"3.{minor}" for minor in range(8, 16) if requires.contains(f"3.{minor}.0")}
    assert admitted == {env["python_version"] for env in TARGETS.values()}


def test_lock_parser_rejects_a_range_and_reads_a_pin():
    assert lock_entries("Foo_Bar==1.2  # why\n\n") == [("foo-bar", "1.2")]
    assert lock_entries("torch==2.14.1 \\\n    --hash=sha256:305a \\\n    --hash=sha256:99ff\nsix==1.0\n") == [
        ("torch", "2.14.1"), ("six", "1.0")]
    with pytest.raises(AssertionError, match="not an exact pin"):
        lock_entries("torch>=2.0\n")


def test_lock_entries_keep_what_the_marker_selects():
    text = "nvidia-cublas==13.1.1.3 ; sys_platform == 'linux'\nnumpy==2.4.6\n"
    assert lock_entries(text, TARGETS["linux-x86_64-py3.12"]) == [("nvidia-cublas", "13.1.1.3"), ("numpy", "2.4.6")]
    assert lock_entries(text, TARGETS["macos-arm64-py3.11"]) == [("numpy", "2.4.6")]


def test_target_environments_name_every_marker_variable():
    # A marker on a variable missing from a target would raise instead of being evaluated.
    for env in TARGETS.values():
        assert set(env) == set(default_environment())


def test_running_environment_has_every_locked_version():
    """The venv (dev or CI) this suite runs in was installed from the lock; extra packages are allowed."""
    lock = dict(lock_entries(lock_text()))
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in lock.items()
             if installed.get(name) != version}
    assert not wrong, f"lock vs installed (None = not installed): {wrong}"


def test_every_dependency_of_a_locked_package_is_locked_for_this_machine():
    """What the markers leave out on this machine is not needed here: each locked package's own requirements
    (as its installed metadata states them, extras aside) are locked for this machine too."""
    lock = dict(lock_entries(lock_text()))
    missing = {}
    for name in lock:
        for dep in importlib.metadata.distribution(name).requires or []:
            req = Requirement(dep)
            if (req.marker is None or req.marker.evaluate({"extra": ""})) and canonicalize_name(req.name) not in lock:
                missing.setdefault(name, []).append(dep)
    assert not missing, f"locked package: its requirements that the lock leaves out here: {missing}"


# How uv names each target. torch 2.14.1's macOS wheel is tagged macosx_14_0_arm64: macOS 14 or newer.
UV_PLATFORMS = {"linux": "x86_64-manylinux_2_28", "darwin": "aarch64-apple-darwin"}
MACOS_VERSION = "14.0"
# Packages PyPI has only as source archives, all pure Python: they build on any platform without a compiler.
SOURCE_ONLY = ["antlr4-python3-runtime", "connection-pool"]


def package_index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_the_lock_resolves_from_wheels_on_every_platform(target, tmp_path):
    """A real resolution against PyPI, as on that platform (uv evaluates the markers for the target, which pip
    with --platform does not): the lock's lines that hold there, with all their dependencies, resolve to exactly
    those versions, each package from a wheel built for that platform save the pure-Python SOURCE_ONLY ones."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (scripts/setup.sh installs it into .venv)")
    if not package_index_reachable():
        pytest.skip("pypi.org is unreachable: a resolution for another platform needs the package index")
    env = TARGETS[target]
    out = tmp_path / "resolved.txt"
    result = subprocess.run(
        [uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--no-config",
         "--python-platform", UV_PLATFORMS[env["sys_platform"]], "--python-version", env["python_version"],
         "--only-binary", ":all:", *(arg for name in SOURCE_ONLY for arg in ("--no-binary", name)),
         str(REPO / "requirements.lock"), "-o", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "MACOSX_DEPLOYMENT_TARGET": MACOS_VERSION})
    assert result.returncode == 0, result.stderr
    assert dict(lock_entries(out.read_text())) == target_lock(target)
