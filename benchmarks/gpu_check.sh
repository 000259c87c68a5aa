#!/usr/bin/env bash
# The GPU check in one command (see benchmarks/gpu_check.py): sampling, training and evaluation speed on random
# weights of the Qwen2.5-1.5B / 0.5B shapes, one JSON of figures; under 10 minutes on one H100/H200.
#   bash benchmarks/gpu_check.sh [--out gpu_check.json] [--parts sampling,training,evaluation]
#   bash benchmarks/gpu_check.sh --smoke --out /tmp/smoke.json     # CPU, tiny shapes, well under a minute
# Works with the package installed (pip install -e .) or not (src/ is put on PYTHONPATH).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$(command -v python || command -v python3)}"

out="gpu_check.json"
prev=""
for arg in "$@"; do
  case "$arg" in
    --out=*) out="${arg#--out=}" ;;
  esac
  if [[ "$prev" == "--out" ]]; then out="$arg"; fi
  prev="$arg"
done

rc=0
PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$ROOT/benchmarks/gpu_check.py" "$@" || rc=$?
if [[ -f "$out" ]]; then
  echo "figures: $(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
fi
exit "$rc"
