#!/usr/bin/env bash
# Run the unit suite with CUDA visible, then the benchmarks that take --device on cuda, and
# write a markdown table to benchmarks/results/gpu.md.
#
#   benchmarks/gpu.sh                       # from the repository root, on a machine with a GPU
#   PYTHON=.venv/bin/python benchmarks/gpu.sh
#   BENCHES="pcace proxy" PCACE_ARGS="--images 200" benchmarks/gpu.sh
#   BENCHES=xil XIL_ARGS="--published --step" benchmarks/gpu.sh   # XIL typology's Decoy-FMNIST protocol
#
# Environment: PYTHON (default .venv/bin/python, else python3); BENCHES (default
# "models proxy pcace"); NAME_ARGS (upper-case benchmark name + _ARGS) adds arguments to one
# benchmark; PYTEST_ARGS (default "-q -n 2 -p no:cacheprovider"); OUT (default
# benchmarks/results/gpu.md); DEVICE (default cuda; DEVICE=cpu checks the script itself on a
# machine without a GPU). A benchmark without a --device option is listed, not run (it
# would only run on the CPU). Exits 1 when there is no usable CUDA device, 2 when the suite or
# a benchmark failed (the table is written either way).
# Written without a GPU at hand (none was lent to the task that wrote it): the CUDA path of
# this script has not been run yet.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
BENCHES=${BENCHES:-"models proxy pcace"}
PYTEST_ARGS=${PYTEST_ARGS:-"-q -n 2 -p no:cacheprovider"}
OUT=${OUT:-benchmarks/results/gpu.md}
LOGS=$(dirname "$OUT")/gpu_logs
mkdir -p "$LOGS"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

DEVICE=${DEVICE:-cuda}
info=$(DEVICE=$DEVICE "$PYTHON" - <<'EOF'
import os, torch
if os.environ["DEVICE"] == "cpu":
    print(f"CPU only (DEVICE=cpu, a check of the script); torch {torch.__version__}")
elif not torch.cuda.is_available():
    print("NO_CUDA torch", torch.__version__, "sees no CUDA device")
else:
    p = torch.cuda.get_device_properties(0)
    print(f"{torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.0f} GiB, "
          f"{torch.cuda.device_count()} device(s)); torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}")
EOF
)
if [ $? -ne 0 ] || [[ "$info" == NO_CUDA* ]]; then
  echo "benchmarks/gpu.sh: no usable CUDA device (${info#NO_CUDA })" >&2
  exit 1
fi
echo "device: $info"

status=0
rows=()
seconds() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# 1. the unit suite (conftest.py parametrizes device-aware tests over cpu and cuda)
start=$(seconds)
# shellcheck disable=SC2086
"$PYTHON" -m pytest $PYTEST_ARGS >"$LOGS/suite.log" 2>&1
rc=$?
summary=$(grep -E "(passed|failed|error)" "$LOGS/suite.log" | tail -1 | tr -d '=' | xargs)
# shellcheck disable=SC2086
cuda_tests=$("$PYTHON" -m pytest $PYTEST_ARGS --collect-only -q 2>/dev/null | grep -c "cuda")
[ "$rc" -eq 0 ] || status=2
rows+=("| unit suite | $([ "$rc" -eq 0 ] && echo ok || echo "FAILED (rc $rc)") | $(elapsed "$start" "$(seconds)") | ${summary:-no summary}; $cuda_tests test ids mention cuda | $LOGS/suite.log |")

# 2. the benchmarks that take --device (on $DEVICE)
for name in $BENCHES; do
  script=benchmarks/$name.py
  if [ ! -f "$script" ]; then
    rows+=("| bench $name | not present | - | no $script | - |")
    continue
  fi
  if ! "$PYTHON" "$script" --help 2>/dev/null | grep -q -- "--device"; then
    rows+=("| bench $name | not run | - | $script has no --device option (CPU only) | - |")
    continue
  fi
  var="$(echo "$name" | tr '[:lower:]' '[:upper:]')_ARGS"
  extra=${!var:-}
  start=$(seconds)
  # shellcheck disable=SC2086
  "$PYTHON" "$script" --device "$DEVICE" $extra >"$LOGS/$name.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || status=2
  last=$(grep -v '^\s*$' "$LOGS/$name.log" | tail -1 | cut -c1-120 | tr '|' '/')
  rows+=("| bench $name --device $DEVICE $extra | $([ "$rc" -eq 0 ] && echo ok || echo "FAILED (rc $rc)") | $(elapsed "$start" "$(seconds)") | $last | $LOGS/$name.log |")
done

{
  echo "# GPU run ($(date -u +%Y-%m-%d), device $DEVICE)"
  echo
  echo "Device: $info. Written by \`benchmarks/gpu.sh\`; full outputs in \`$LOGS/\`."
  echo
  echo "| step | status | wall time (s) | result | log |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >"$OUT"
cat "$OUT"
exit "$status"
