#!/usr/bin/env bash
# The device check: what can only be measured on a GPU, in one script for a bare GPU node (one NVIDIA GPU, a
# system python3 with torch, no project virtualenv, no network, a copy of the working tree without .git, results
# collected from one folder, $OUT). The whole run stays under 8 minutes: every step has a time budget (below;
# they add up to 440 s) enforced with `timeout`, and a step starts only with its budget cut to what is left of
# 465 s, so the worst case is 465 s plus the summary. With --cpu-dry-run every step runs end to end on the CPU
# with tiny sizes (what CI runs, .ci/run): it proves the script, its figures mean nothing.
#
#   OUT=/some/folder bash bench/device_check.sh        # on a GPU node (from the working tree's root or anywhere)
#   bench/device_check.sh --cpu-dry-run --out bench/out/device_check.json
#
# Options: --cpu-dry-run; --out FILE (the summary JSON; default $OUT/device_check.json); the python is $PYTHON,
# else .venv/bin/python where it exists, else python3. Every file goes to the output folder: $OUT if set, else
# FILE without .json (bench/out/device_check/ for the CI call):
#   preflight.json     written at once by this script (nvidia-smi, python), then completed by the preflight step
#   logs/STEP.log      each step's output; logs/STEP/*.log the CLI jobs it ran (kept, failed or not)
#   steps/STEP.json    each step's figures and checks, or why it was skipped; steps/STEP.run.json its exit status,
#                      seconds, budget and whether it timed out
#   jobs/              the small files of the jobs (summary.json, metrics.csv, analysis tables)
#   device_check.json  the summary of all of it (one JSON), or FILE
# Steps (budget in seconds on the GPU; bench/device_check.py holds what each one does and its sizes):
#   preflight   60  python, torch / CUDA / cuDNN versions, devices, importable modules, every package module
#                   imported under this torch; the dataset folders found (synthetic data where none is)
#   probe       30  torch alone on the device: init, matmul fp32/TF32 accuracy and speed, conv + BN backward,
#                   the control of the synchronisation counter
#   lenet       50  LeNet-300-100 via `python -m ticketbench dense --deterministic`: SIGTERM inside the loop,
#                   resume, bit-identical to an uninterrupted twin; `ticketbench evaluate`
#   resnet      55  ResNet-20 (production settings): SIGTERM, resume; IMP level 1; `ticketbench evaluate`
#   pack        40  `ticketbench pack` of 8 ResNet-20 jobs, batched, with evaluation
#   analysis    30  `ticketbench hessian` and `ticketbench interpolate` on the ResNet-20
#   syncs       30  synchronisations per training step of train.fit / fit_packed (set_sync_debug_mode("warn"))
#   throughput  55  images/s lone vs packs, fp32 and TF32, steady-state steps timed with CUDA events, with
#                   Runtime.apply()'s settings; peak GPU memory per pack size
#   precision   30  the same ResNet-20 job in fp32 twice and in TF32: accuracy and loss differences
#   workflow    40  two smoke jobs through Snakemake with gpu: 1 (only where snakemake imports)
#   projection  20  bench/projection.py: config/config.yaml's device-hours lone and packed (needs jsonschema)
# A step whose needs are missing (no python, no torch, the package not importable under this torch, no usable
# CUDA device, no snakemake, a step it builds on) is skipped with the reason in its steps/STEP.json.
set -uo pipefail
start=$(date +%s)
cd "$(dirname "$0")/.."
repo=$PWD

dry=0
out=
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }  # the header above
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-dry-run) dry=1 ;;
        --out) out=${2:?--out needs a file}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "device_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "${OUT:-}" ]; then dir=$OUT; else dir=${out:-bench/out/device_check.json}; dir=${dir%.json}; fi
out=${out:-$dir/device_check.json}
mkdir -p "$dir" && dir=$(cd "$dir" && pwd) || { echo "device_check: cannot create $dir" >&2; exit 2; }
rm -rf "$dir/steps" "$dir/logs" "$dir/jobs"
mkdir -p "$dir/steps" "$dir/logs"
mode=gpu; [ "$dry" = 1 ] && mode=cpu-dry-run

json_str() {  # a JSON string of $1
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//$'\r'/}
    printf '"%s"' "$s"
}

# ---- preflight, part 1: before anything that could hang or fail, what the shell alone can see ----------------
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=$repo/.venv/bin/python
else PY=$(command -v python3 || command -v python || true)
fi
smi=$( { command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi 2>&1; } || echo "nvidia-smi: not found or failed")
pyversion=$( [ -n "$PY" ] && "$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1 || echo "no python found")
{
    printf '{\n  "written_by": "bench/device_check.sh, before any step",\n'
    printf '  "mode": "%s",\n  "date": "%s",\n' "$mode" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '  "host": %s,\n' "$(json_str "$(uname -a)")"
    printf '  "python_found": %s,\n  "python_version_found": %s,\n' "$(json_str "$PY")" "$(json_str "$pyversion")"
    printf '  "nvidia_smi_output": %s\n}\n' "$(json_str "$smi")"
} > "$dir/preflight.json"
echo "device_check: $mode; output in $dir (preflight.json written); python: ${PY:-none} ($pyversion)"

export PYTHONPATH=$repo/src PYTHONUNBUFFERED=1 MPLBACKEND=Agg
work=$(mktemp -d "${TMPDIR:-/tmp}/ticketbench-device-check.XXXXXX")
keep_small_files() {  # the jobs' summaries, metrics and tables, then the work folder (checkpoints, networks) goes
    if [ -d "$work" ]; then
        (cd "$work" && find . \( -path ./cache -o -path ./workflow/config -o -path ./workflow/workflow -o \
            -path ./workflow/profiles -o -path ./workflow/.snakemake \) -prune -o -type f \
            \( -name '*.json' -o -name '*.csv' -o -name '*.yaml' -o -name '*.log' \) -size -2M -print |
            while read -r f; do mkdir -p "$dir/jobs/$(dirname "$f")"; cp "$f" "$dir/jobs/$f"; done)
        rm -rf "$work"
    fi
}
trap keep_small_files EXIT

total=465
[ "$dry" = 1 ] && total=4800
deadline=$((start + total))
have_python=0; why_python="no python found (set PYTHON, or install python3)"
if [ -n "$PY" ] && "$PY" -c 'import json' 2>/dev/null; then have_python=1; fi
have_device=0; why_device="the probe did not pass"
# What the preflight establishes (steps/facts.env); if it could not (it timed out, say), this is why a step waits:
why_torch="the preflight did not establish that torch imports (steps/preflight.json)"
why_package="the preflight did not establish that ticketbench imports with PYTHONPATH=src (steps/preflight.json)"
why_snakemake="the preflight did not find snakemake importable"; why_jsonschema="the preflight did not find jsonschema"

run_step() {  # NAME GPU_BUDGET DRY_BUDGET NEED... : the step NAME of bench/device_check.py, or why it is skipped
    local name=$1 budget=$2; [ "$dry" = 1 ] && budget=$3; shift 3
    local need var why= left t rc t0 seconds timed_out=false
    echo "$name" >> "$dir/steps/order.txt"
    for need in "$@"; do
        var=have_$need
        if [ "${!var:-0}" != 1 ]; then var=why_$need; why=${!var:-"needs step $need, which did not pass"}; break; fi
    done
    left=$((deadline - $(date +%s)))
    [ -z "$why" ] && [ "$left" -lt 10 ] && why="out of time: the run's ${total} s are spent"
    if [ -n "$why" ]; then
        echo "device_check: [$(( $(date +%s) - start )) s] $name: skipped ($why)"
        printf '{\n  "status": "skipped",\n  "reason": %s\n}\n' "$(json_str "$why")" > "$dir/steps/$name.json"
        printf -v "why_$name" '%s' "step $name was skipped: $why"
        return
    fi
    t=$(( budget < left ? budget : left ))
    echo "device_check: [$(( $(date +%s) - start )) s] $name (budget ${budget} s)"
    t0=$(date +%s)
    timeout -k 10 "$t" "$PY" bench/device_check.py "$name" --out-dir "$dir" --work "$work" "${dry_flag[@]}" \
        > "$dir/logs/$name.log" 2>&1
    rc=$?
    seconds=$(( $(date +%s) - t0 ))
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then timed_out=true; fi
    printf '{"rc": %s, "seconds": %s, "budget": %s, "timeout": %s, "timed_out": %s, "log": %s}\n' "$rc" "$seconds" \
        "$budget" "$t" "$timed_out" "$(json_str "logs/$name.log")" > "$dir/steps/$name.run.json"
    if [ "$rc" = 0 ] && grep -q '"status": "ok"' "$dir/steps/$name.json" 2>/dev/null; then
        printf -v "have_$name" 1
        echo "device_check: [$(( $(date +%s) - start )) s] $name: ok (${seconds} s)"
        return
    fi
    printf -v "why_$name" '%s' "step $name did not pass (steps/$name.json, logs/$name.log)"
    if [ ! -f "$dir/steps/$name.json" ]; then  # killed by its timeout, or died before writing its result
        local what="exited with status $rc before writing its result"
        [ "$timed_out" = true ] && what="timed out after $t s (its budget)"
        printf '{\n  "status": "failed",\n  "error": %s\n}\n' "$(json_str "$what")" > "$dir/steps/$name.json"
    fi
    echo "device_check: [$(( $(date +%s) - start )) s] $name: FAILED (exit $rc, ${seconds} s); the end of logs/$name.log:"
    tail -n 15 "$dir/logs/$name.log" | sed 's/^/    /'
}

dry_flag=(); [ "$dry" = 1 ] && dry_flag=(--cpu-dry-run)
#        name       gpu  dry   needs      (dry: generous, a hang guard for a busy 2-core CI machine)
run_step preflight  60   400   python
[ -f "$dir/steps/facts.env" ] && . "$dir/steps/facts.env"
run_step probe      30   200   python torch
if [ "${have_probe:-0}" = 1 ]; then have_device=1
elif [ -n "${why_probe:-}" ] && [ ! -f "$dir/steps/probe.run.json" ]; then why_device=$why_probe
else why_device="the probe failed: $("$PY" -c 'import json, sys; d = json.load(open(sys.argv[1]))
print(d.get("error") or ", ".join(d.get("failed_checks", [])))' "$dir/steps/probe.json" 2>&1) (steps/probe.json)"
fi
run_step lenet      50   600   package device
run_step resnet     55   600   package device
run_step pack       40   500   package device
run_step analysis   30   500   package device resnet
run_step syncs      30   400   package device
run_step throughput 55   500   package device
run_step precision  30   400   package device
run_step workflow   40   600   package device snakemake
run_step projection 20   300   package throughput lenet jsonschema

seconds=$(( $(date +%s) - start ))
if [ "$have_python" = 1 ]; then
    "$PY" bench/device_check.py summary --out-dir "$dir" --work "$work" "${dry_flag[@]}" --summary "$out" \
        --seconds "$seconds" --budget "$total"
    rc=$?
else  # no python at all: the summary is the preflight and the steps' files, side by side
    { printf '{"device_check": {"mode": "%s", "ok": false, "seconds": %s},\n "preflight": ' "$mode" "$seconds"
      cat "$dir/preflight.json"; printf ',\n "steps": {'
      sep=; while read -r name; do printf '%s\n  "%s": ' "$sep" "$name"; cat "$dir/steps/$name.json"; sep=,; done \
        < "$dir/steps/order.txt"
      printf '}}\n'; } > "$out"
    echo "device_check: FAILED (no python); wrote $out"
    rc=1
fi
echo "device_check: finished in ${seconds} s (budget ${total} s); logs in $dir"
exit "$rc"
