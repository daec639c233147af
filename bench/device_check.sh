#!/usr/bin/env bash
# The device check: what can only be measured on a GPU, in one script to run the day one is lent
# (at most ~8 minutes on one GPU), and end to end on the CPU with --cpu-dry-run (what CI runs).
#
#   bench/device_check.sh                 # on a machine with a CUDA GPU
#   bench/device_check.sh --cpu-dry-run   # every step on the CPU, with tiny step counts: checks the script
#
# Steps (each one's figures go into one JSON, default bench/out/device_check.json):
#   1. the smoke workflow (config/smoke.yaml) on the device, in a clean clone of this checkout, then
#      `ticketbench compare` of its tables against the committed results/smoke (agreement within noise);
#   2. the throughput benchmark, lone train.fit against packs (bench/throughput.py --packs): LeNet-300-100
#      P = 1, 8, 32 and ResNet-20 P = 1, 4, 8, in fp32 and TF32;
#   3. a --deterministic repeatability check: the same dense run trained twice gives the same final.pt;
#   4. the projection of config/config.yaml's device-hours with and without packing (bench/projection.py)
#      from the measured throughput.
# The dry run shortens every measurement, so its figures mean nothing; it proves the script runs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

dry=0
out=bench/out/device_check.json
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-dry-run) dry=1 ;;
        --out) out=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "device_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PY=${PYTHON:-$repo/.venv/bin/python}
[ -x "$PY" ] || { echo "device_check: $PY not found; run make setup first (or set PYTHON)" >&2; exit 2; }
export PATH="$(dirname "$PY"):$PATH"
work=$(mktemp -d "${TMPDIR:-/tmp}/ticketbench-device-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
step() { echo "device_check: [$(( $(date +%s) - start )) s] $*"; }

if [ "$dry" = 1 ]; then
    device=cpu
    bench_args=(--device cpu --steps 2 --repeats 1 --packs 1 8 --resnet-packs 1 4 --precision fp32 tf32)
else
    device=cuda
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        echo "device_check: no CUDA device is visible to torch; run on a GPU node, or use --cpu-dry-run" >&2; exit 2; }
    bench_args=(--device cuda --packs 1 8 32 --resnet-packs 1 4 8 --precision fp32 tf32)
fi
step "device $device, dry run $dry, work folder $work"

step "1/4 smoke workflow on $device in a clean clone"
git clone --quiet "$repo" "$work/repo"
(cd "$work/repo" && snakemake --cores 2 --configfile config/smoke.yaml --config device="$device" \
    --quiet rules > "$work/smoke.log" 2>&1) || { tail -20 "$work/smoke.log" >&2; echo "device_check: the smoke workflow failed (log above)" >&2; exit 1; }
set +e
ticketbench compare "$work/repo/results/smoke" results/smoke > "$work/compare.txt" 2>&1
compare_rc=$?
set -e
tail -3 "$work/compare.txt"

step "2/4 throughput, lone against packed (${bench_args[*]})"
"$PY" bench/throughput.py --threads 1 "${bench_args[@]}" --out "$work/packing.json" | tee "$work/throughput.txt" | grep -E "^(lenet|resnet)|aggregate"

step "3/4 --deterministic repeatability on $device (and the start-up cost of one job)"
for side in a b; do
    t0=$(date +%s.%N)
    ticketbench imp config/runs/smoke_synthetic.yaml --level 0 --deterministic --device "$device" --no-progress \
        --run-dir "$work/deterministic_$side" > "$work/deterministic_$side.log" 2>&1
    job_seconds=$("$PY" -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$t0" "$(date +%s.%N)")
done
# The smoke run trains for a fraction of a second: its wall time is what a job costs besides training.

step "4/4 projection of config/config.yaml with and without packing"
"$PY" bench/projection.py --packing "$work/packing.json" --workflow-config config/config.yaml \
    --overhead-seconds "$job_seconds" --pack 8 --out "$work/projection.json"

mkdir -p "$(dirname "$out")"
"$PY" - "$work" "$out" "$device" "$dry" "$compare_rc" "$(( $(date +%s) - start ))" <<'EOF'
import hashlib, json, sys, torch
from pathlib import Path
work, out, device, dry, compare_rc, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5]), int(sys.argv[6])
def digest(side):
    folder = work / f"deterministic_{side}" / "imp" / "level_00"
    return {"model_sha256": json.loads((folder / "summary.json").read_text())["model_sha256"],
            "metrics_sha256": hashlib.sha256((folder / "metrics.csv").read_bytes()).hexdigest()}
a, b = digest("a"), digest("b")
report = {
    "device": device, "dry_run": dry, "seconds": seconds, "torch": torch.__version__,
    "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
    "smoke": {"compare_exit_code": compare_rc, "agrees_with_committed": compare_rc == 0,
              "compare": (work / "compare.txt").read_text().splitlines()[-3:]},
    "throughput": json.loads((work / "packing.json").read_text()),
    "deterministic": {"repeatable": a == b, "a": a, "b": b},
    "projection": json.loads((work / "projection.json").read_text()),
}
out.write_text(json.dumps(report, indent=2) + "\n")
print(f"device_check: smoke agrees with the committed results: {compare_rc == 0}; deterministic repeatable: {a == b}")
print(f"device_check: wrote {out}")
sys.exit(0 if a == b else 1)
EOF
step "done"
