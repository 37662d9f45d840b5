#!/usr/bin/env bash
# One command for a GPU machine: `comem doctor`, the `comem bench train` tables of
# benchmarks/RESULTS.md (with and without --compile) and a short `comem train` on the built-in
# data, within a time budget (default 8 minutes); every JSON and log under one folder, and a
# Markdown summary printed at the end. Needs no network (see RESULTS.md for carrying wheels).
#
#   bash benchmarks/gpu_check.sh [--budget-s 480] [--out DIR] [--wheels DIR] [--dry-run]
#   bash benchmarks/gpu_check.sh --cpu --quick        # the wiring, on a CPU, in about a minute
#
# --wheels DIR installs the wheels in DIR (from the `pip download` line of RESULTS.md) into a
# temporary folder first, for an image that lacks some of comem's dependencies. PYTHON picks the
# interpreter (default python3). The checkout's own src/ is what runs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"

args=()
while (($#)); do
    if [[ "$1" == "--wheels" ]]; then
        (($# >= 2)) || { echo "gpu_check.sh: error: --wheels needs a folder" >&2; exit 2; }
        site="$(mktemp -d)"
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$2"/*.whl
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        shift 2
    else
        args+=("$1")
        shift
    fi
done

export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$python" "$here/gpu_check.py" ${args[@]+"${args[@]}"}
